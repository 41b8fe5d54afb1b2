"""The node provider: the infrastructure that runs a node of the HA pair, which can
fence it and keeps the pair's witness record.

Fencing is STONITH: before a standby takes over from an active it cannot be sure is
gone, it has the provider make that node certainly unable to act (powered off, or
cut off from the network and its processes killed). Only the infrastructure under a
node can promise that; the two nodes cannot, since a node that does not answer may
still be writing.

The witness record is the one fact the pair cannot keep itself: which node's data
is outdated. An active that loses its standby marks it outdated at the provider
before it goes on committing without it (asynchronously), and clears the mark once
the standby has caught up. A standby marked outdated is never promoted automatically:
its copy lacks commits the active acknowledged.

As the VIM drivers are, a provider is one abstract class with one module per
provider (`esc.ha.providers.<name>`), the concrete class found by the name in
esc.toml ([ha] provider). Every call is idempotent (fencing a fenced node, clearing
a clear mark) and bounded by [ha] provider_timeout. Errors come in two kinds, so
that the caller knows whether asking again can help.
"""

from __future__ import annotations

import abc
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

if TYPE_CHECKING:
    from esc.config import HaSettings, NodeHome

# The providers [ha] provider may name, for the error that lists them.
PROVIDERS = ("lab",)
# Connecting is quick on the pair's LAN, or the provider is not there: a failover must
# not wait the whole call timeout to learn that.
CONNECT_TIMEOUT = 1.0


class ProviderError(Exception):
    """The node provider refused or failed; the message names what and the fix.

    A plain ProviderError counts as permanent: an error not known to pass is not
    retried.
    """


class PermanentProviderError(ProviderError):
    """Asking again gets the same answer: a wrong token, an unknown node, a provider
    that cannot do what was asked. An operator must act."""


class TransientProviderError(ProviderError):
    """The provider could not answer now (unreachable, timed out, busy, a fence not yet
    complete): asking again may succeed."""


class NodeProvider(abc.ABC):
    """The infrastructure that runs the pair's nodes, each named by its address."""

    name: ClassVar[str]

    @classmethod
    @abc.abstractmethod
    def from_settings(cls, ha: HaSettings, home: Path) -> Self:
        """The provider as [ha] configures it; relative paths are in the node home."""

    @abc.abstractmethod
    def fence(self, address: str) -> None:
        """Make the node at `address` certainly unable to act, and return only then.

        Powered off, or cut off from every network with nothing left running: a node
        that was fenced never sends or writes again until it is powered on. Fencing a
        fenced node is not an error. Raise ProviderError (naming what failed) when
        that cannot be promised, never return without it.
        """

    @abc.abstractmethod
    def mark_outdated(self, address: str, reason: str) -> None:
        """Record in the witness record that the node's data is outdated (and why)."""

    @abc.abstractmethod
    def clear_outdated(self, address: str) -> None:
        """Remove the node's outdated mark; a node without one is not an error."""

    @abc.abstractmethod
    def outdated(self, address: str) -> str | None:
        """The reason the node was marked outdated, or None when it is not."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise ProviderError when the provider cannot be reached or used (endpoint,
        credentials), naming the setting to correct."""

    def power_on(self, address: str) -> None:
        """Start a fenced or powered-off node again, as after a reboot."""
        raise PermanentProviderError(
            f"the {self.name} node provider cannot power nodes on: start {address} by hand"
        )

    def power_off(self, address: str, grace: float = 0.0) -> None:
        """Shut the node down: `grace` seconds for its processes to stop, then as fence."""
        raise PermanentProviderError(
            f"the {self.name} node provider cannot power nodes off: stop {address} by hand"
        )

    def close(self) -> None:  # noqa: B027 - a provider without connections has nothing to close
        """Release the provider's connections."""


def load_provider(home: NodeHome | Path, ha: HaSettings) -> NodeProvider | None:
    """The node provider [ha] names, or None when [ha] provider is empty.

    `home` is the node home (a NodeHome or its root directory): a relative
    provider_token_file is there. Without a provider a standby never takes over from a
    peer it cannot confirm is gone.
    """
    name = ha.provider
    if not name:
        return None
    if not name.isidentifier():
        raise PermanentProviderError(
            f"node provider name {name!r} is not valid: set [ha] provider in esc.toml to one "
            f"of: {', '.join(PROVIDERS)}, or leave it empty for none"
        )
    module_name = f"esc.ha.providers.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the provider exists but lacks a dependency: say that, not "unknown"
        raise PermanentProviderError(
            f"unknown node provider {name!r}: set [ha] provider in esc.toml to one of: "
            f"{', '.join(PROVIDERS)}, or leave it empty for none"
        ) from exc
    root = home if isinstance(home, Path) else home.root
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, NodeProvider)
            and value is not NodeProvider
            and getattr(value, "name", None) == name
        ):
            return value.from_settings(ha, root)
    raise PermanentProviderError(f"module {module_name} defines no NodeProvider named {name!r}")
