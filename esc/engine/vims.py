"""The VIM connections a controller deploys on, and the controller's id on them.

Two kinds, one namespace: the node's own `[vim]` of esc.toml, named `default`, and
the rows of `vim_connections` that `escadm vim add` makes (replicated to a standby,
kept by backup and restore, like every other row). A deployment records the
connection its VMs are on (NULL: the default), and every step of its transactions
uses that one.

A connection row holds its driver's name and that driver's section of `[vim]`
(`[vim.openstack]` …), validated by the same settings classes as esc.toml; never a
secret itself, only the file or the variable that holds it.

The controller's id (made by the schema migration that introduced it) is the value
every driver tags its instances with: the same on both nodes of a pair and after a
restore, so the instances stay this controller's wherever it runs next.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from esc.config import ConfigError, NodeHome, Settings, VimSettings, describe_validation
from esc.db.models import ControllerSetting, Deployment, VimConnection
from esc.db.session import Database
from esc.vim.base import PermanentVimError, VimDriver, VimError, driver_for, load_driver

DEFAULT = "default"
CONTROLLER_ID = "controller_id"


def connection_name(name: str | None) -> str | None:
    """The name a deployment records: None for the default connection."""
    return None if name in (None, DEFAULT) else name


def vim_label(name: str | None) -> str:
    """A deployment's VIM connection as the operator knows it."""
    return repr(name) if connection_name(name) else f"{DEFAULT!r} (the node's own [vim])"


def read_controller_id(session: Session) -> str | None:
    return session.scalar(
        select(ControllerSetting.value).where(ControllerSetting.name == CONTROLLER_ID)
    )


def _has_section(driver: str) -> bool:
    """The driver's settings are a section of their own ([vim.openstack]), not keys of
    [vim] itself (local and vimhost, from before drivers had sections)."""
    field = VimSettings.model_fields.get(driver)
    return (
        field is not None
        and isinstance(field.annotation, type)
        and issubclass(field.annotation, BaseModel)
    )


def stored_settings(driver: str, section: dict[str, Any]) -> dict[str, Any]:
    """What a connection row holds for the driver's section as an operator gives it."""
    return {driver: section} if _has_section(driver) else dict(section)


def driver_section(vim: VimSettings) -> dict[str, Any]:
    """The settings of [vim]'s driver alone, to show (what others' sections say is not
    this connection's)."""
    if _has_section(vim.driver):
        return getattr(vim, vim.driver).model_dump(mode="json")
    return {
        key: value
        for key, value in vim.model_dump(mode="json").items()
        if key != "driver" and not _has_section(key)
    }


def connection_settings(driver: str, settings: dict[str, Any]) -> VimSettings:
    """A connection's settings (as stored_settings makes them), validated as esc.toml's
    [vim] would be with `driver`; raises PermanentVimError naming the wrong key."""
    if "driver" in settings:
        raise PermanentVimError("a connection's settings do not name the driver: it is given apart")
    try:
        return VimSettings.model_validate({"driver": driver, **settings})
    except ValidationError as exc:
        raise PermanentVimError(
            f"invalid settings for a {driver} VIM connection: {describe_validation(exc)}"
        ) from None


class Vims:
    """The drivers of every connection, each made once and kept while its row is
    unchanged; safe to share between the API's and the engine's threads."""

    def __init__(self, home: NodeHome, settings: Settings, db: Database) -> None:
        self.home, self.settings, self.db = home, settings, db
        self.default = driver_for(home, settings)
        self._rows: dict[str, tuple[datetime, VimDriver]] = {}
        self._controller_id: str | None = None
        self._lock = threading.Lock()

    def controller_id(self) -> str:
        """The controller's id, once the schema has it (the active role migrates first)."""
        if self._controller_id is None:
            with self.db.read() as session:
                found = read_controller_id(session)
            if found is None:
                raise VimError(
                    "the database has no controller id yet: its schema predates VIM "
                    "connections; the node's active role migrates it at start (escadm start)"
                )
            self._controller_id = found
        return self._controller_id

    def get(self, name: str | None) -> VimDriver:
        """The driver of connection `name` (None or 'default': the node's own [vim])."""
        controller_id = self.controller_id()
        name = connection_name(name)
        if name is None:
            self.default.controller_id = controller_id
            return self.default
        with self.db.read() as session:
            row = session.get(VimConnection, name)
            if row is None:
                raise PermanentVimError(
                    f"there is no VIM connection {name!r}: see escadm vim list, or add it "
                    "with escadm vim add"
                )
            driver_name, settings, changed = row.driver, dict(row.settings), row.updated_at
        with self._lock:
            cached = self._rows.get(name)
            if cached is not None and cached[0] == changed:
                return cached[1]
        driver = self.build(name, driver_name, settings, controller_id)
        with self._lock:
            self._rows[name] = (changed, driver)
        return driver

    def build(
        self, name: str, driver: str, settings: dict[str, Any], controller_id: str
    ) -> VimDriver:
        """A driver for a connection that need not be a row yet (`escadm vim add`
        checks one before it writes it)."""
        try:
            return load_driver(
                driver,
                self.home.vims_dir / name,
                connection_settings(driver, settings),
                self.home.root,
                controller_id,
            )
        except ConfigError as exc:  # a secret its settings name cannot be read
            raise PermanentVimError(f"VIM connection {name!r}: {exc}") from None

    def checked(self, name: str, driver: str, section: dict[str, Any]) -> dict[str, Any]:
        """The row settings of a new connection, once its driver could be made and has
        reached the VIM with its credentials; raises VimError naming what failed."""
        if connection_name(name) is None:
            raise PermanentVimError(
                f"{DEFAULT!r} is the node's own [vim] of esc.toml: give the connection another name"
            )
        stored = stored_settings(driver, section)
        self.build(name, driver, stored, self.controller_id()).check()
        return stored

    def forget(self, name: str) -> None:
        """Drop the driver kept for a connection that is removed."""
        with self._lock:
            self._rows.pop(name, None)

    def for_deployment(self, deployment_id: str | None) -> VimDriver:
        """The driver of the connection a deployment's VMs are on."""
        if deployment_id is None:
            return self.get(None)
        with self.db.read() as session:
            name = session.scalar(select(Deployment.vim).where(Deployment.id == deployment_id))
        return self.get(name)

    def names(self) -> list[str]:
        """Every connection: the default first, then the rows by name."""
        with self.db.read() as session:
            rows = list(session.scalars(select(VimConnection.name).order_by(VimConnection.name)))
        return [DEFAULT, *rows]

    def recover(self) -> None:
        """Finish what a crash interrupted, on every connection (at the role's start)."""
        for name in self.names():
            self.get(name).recover()
