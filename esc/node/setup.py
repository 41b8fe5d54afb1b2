"""Creating a node home: esc.toml, data/, log/, run/, the schema and the accounts."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select

from esc.config import ConfigError, NodeHome, Settings
from esc.db.migrate import upgrade_to_head
from esc.db.models import User
from esc.db.session import Database
from esc.security import ADMIN_USER, LOCAL_USER, generate_password, hash_password
from esc.tls import api_hosts, generate_self_signed


@dataclass(frozen=True)
class InitResult:
    home: NodeHome
    admin_password: str | None  # None when the database already had an admin
    database_url: str


def init_node(home: NodeHome, settings: Settings, *, self_signed_tls: bool = False) -> InitResult:
    """Create the node home and its database; refuse to overwrite an existing node.
    `self_signed_tls`: also make the self-signed certificate [api] tls_cert names."""
    if home.exists():
        raise ConfigError(
            f"a node already exists at {home.root} ({home.config_file.name} is there); "
            "choose another --home, or remove that directory to start afresh"
        )
    home.root.mkdir(parents=True, exist_ok=True)
    for directory in (home.data, home.log, home.run):
        directory.mkdir(mode=0o700, exist_ok=True)
    admin_password, local_password, display_url = create_schema_and_accounts(
        home.database_url(settings)
    )
    write_local_credential(home, local_password)
    if self_signed_tls:
        generate_self_signed(*home.tls_files(settings), api_hosts(settings))
    # esc.toml last: its presence is what marks a complete node.
    home.save(settings)
    return InitResult(home, admin_password, display_url)


def create_schema_and_accounts(url: str) -> tuple[str | None, str, str]:
    """The schema at its head and the accounts: `admin` (unless the database has one
    already: a shared database keeps its admin) and the node-local `escadm`. Returns
    (admin password or None, escadm's secret, the database's display URL)."""
    db = Database(url)
    try:
        upgrade_to_head(db.engine)
        admin_password: str | None = generate_password()
        local_password = generate_password()
        with db.write() as session:
            existing = set(session.scalars(select(User.name)))
            if ADMIN_USER in existing:
                admin_password = None
            else:
                session.add(User(name=ADMIN_USER, password_hash=hash_password(admin_password)))
            session.merge(User(name=LOCAL_USER, password_hash=hash_password(local_password)))
        return admin_password, local_password, db.display_url
    finally:
        db.dispose()


def write_local_credential(home: NodeHome, secret: str) -> None:
    """The node-local escadm account's secret, readable by the node's owner only."""
    credential = home.local_credential_file
    credential.touch(mode=0o600)
    credential.write_text(secret + "\n")
