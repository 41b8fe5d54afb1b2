"""Resetting an account's password on the node itself: the database written directly,
so it works while the API is down and needs no old password, only the node's files
(root or the home's owner can read the database and esc.toml; nobody else can)."""

from __future__ import annotations

from sqlalchemy import select

from esc.config import NodeHome, Settings
from esc.db.models import User
from esc.db.session import Database
from esc.security import ADMIN_USER, LOCAL_USER, hash_password

MIN_PASSWORD_LENGTH = 12


class AccountError(Exception):
    """The password was not set; the message says why and what to do."""


def reset_password(home: NodeHome, settings: Settings, user: str, password: str) -> None:
    """Set `user`'s password (creating `admin` if the database lacks it)."""
    if user == LOCAL_USER:
        raise AccountError(
            f"{LOCAL_USER!r} is the node-local account of escadm, its secret kept in "
            f"{home.local_credential_file}; reset another account, e.g. --user {ADMIN_USER}"
        )
    if len(password) < MIN_PASSWORD_LENGTH or password != password.strip():
        raise AccountError(
            f"the new password must have at least {MIN_PASSWORD_LENGTH} characters and no "
            "leading or trailing blanks"
        )
    db = Database(home.database_url(settings))
    try:
        with db.write() as session:
            account = session.scalar(select(User).where(User.name == user))
            if account is None and user != ADMIN_USER:
                raise AccountError(f"no account {user!r} in {db.display_url}")
            if account is None:
                session.add(User(name=user, password_hash=hash_password(password)))
            else:
                account.password_hash = hash_password(password)
    finally:
        db.dispose()
