"""The VMware driver's session with vCenter: logging in as [vim.vmware] says (TLS checked
against its cacert, or not at all only when `insecure` says so), logging in again once
when vCenter has forgotten the session, waiting on a task with a bound, and vCenter's
faults turned into the engine's two kinds of VimError, in vCenter's own words.

What is transient: vCenter or its host cannot be reached or did not answer in time, an
HTTP 5xx, a fault that says "busy" (TaskInProgress, HostCommunication, ConcurrentAccess,
Timedout, SystemError); asking again can help. Everything else vCenter refuses is
permanent: a login refused (naming the settings to fix), a missing privilege, a resource
limit (InsufficientResourcesFault and its kin, NoDiskSpace), a bad request.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from esc.config import ConfigError, VmwareSettings, read_secret
from esc.tls import verify_failure
from esc.vim.base import PermanentVimError, TransientVimError, VimError

T = TypeVar("T")

PASSWORD_SETTINGS = "[vim.vmware] password_file / password_env"
# Faults after which the same request may well succeed: vCenter or a host was busy or
# briefly out of reach.
TRANSIENT_FAULTS = (
    vim.fault.TaskInProgress,
    vim.fault.ConcurrentAccess,
    vim.fault.Timedout,
    vmodl.fault.HostCommunication,
    vmodl.fault.SystemError,
    vmodl.fault.RequestCanceled,
)
# A task is looked at again after this long, growing to TASK_POLL_MAX: most finish in
# well under a second, a clone of a large disk in minutes.
TASK_POLL_FIRST = 0.05
TASK_POLL_MAX = 2.0
_HTTP_STATUS = re.compile(r"(\d{3})\b")


def fault_words(fault: vmodl.MethodFault) -> str:
    """vCenter's own words for a fault: its message and any fault messages, then its type."""
    words: list[str] = []
    for text in [fault.msg, *(m.message for m in getattr(fault, "faultMessage", None) or [])]:
        if text and text not in words:
            words.append(text)
    kind = type(fault).__name__
    return f"{'; '.join(words)} [{kind}]" if words else kind


class VcenterSession:
    """One login to vCenter, shared by the driver's threads (pyVmomi's stub pools its
    connections); made on first use, so building a driver reaches nothing."""

    def __init__(self, settings: VmwareSettings, home: Path) -> None:
        self.settings = settings
        self.home = home
        self.endpoint = f"{settings.protocol}://{settings.host}:{settings.port}/sdk"
        self._lock = threading.Lock()
        self._si: Any = None
        self._content: Any = None

    # connecting ---------------------------------------------------------------------------

    @property
    def content(self) -> Any:
        """vCenter's service content (logging in first if need be)."""
        with self._lock:
            if self._si is None:
                self._connect()
            return self._content

    @property
    def stub(self) -> Any:
        """The SOAP stub a managed object reference is bound to."""
        self.content  # noqa: B018 - logs in if need be
        return self._si._stub

    def _password(self) -> str:
        s = self.settings
        try:
            return read_secret(self.home, s.password_file, s.password_env, PASSWORD_SETTINGS)
        except ConfigError as exc:
            raise PermanentVimError(str(exc)) from None

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.protocol != "https":
            return None
        if s.insecure:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if not s.cacert:
            return ssl.create_default_context()
        path = self.home / s.cacert
        try:
            return ssl.create_default_context(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise PermanentVimError(
                f"[vim.vmware] cacert: cannot load CA certificates from {path}: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None

    def _connect(self) -> None:
        s = self.settings
        password = self._password()
        context = self._tls()
        try:
            si = SmartConnect(
                protocol=s.protocol,
                host=s.host,
                port=s.port,
                user=s.user,
                pwd=password,
                sslContext=context,
                httpConnectionTimeout=s.request_timeout,
            )
        except vim.fault.InvalidLogin as exc:
            raise self._auth_refused(exc) from None
        except Exception as exc:  # every failure is named, none escapes raw
            raise self.vim_error(exc, "log in") from None
        try:
            content = si.RetrieveContent()
        except Exception as exc:
            raise self.vim_error(exc, "read its service content") from None
        self._si, self._content = si, content

    def _auth_refused(self, fault: vmodl.MethodFault) -> PermanentVimError:
        return PermanentVimError(
            f"vCenter at {self.endpoint} refused the login of user {self.settings.user!r}: "
            f"{fault_words(fault)}; fix [vim.vmware] user or the password of "
            f"{PASSWORD_SETTINGS}"
        )

    def relogin(self) -> None:
        """Log in again on the same connection, so the objects already looked up stay
        valid: vCenter forgot the session (it expired, or was terminated)."""
        with self._lock:
            if self._si is None:
                self._connect()
                return
            manager = self._content.sessionManager
            try:
                if manager.currentSession is not None:
                    return  # another thread has logged in again meanwhile
            except vim.fault.NotAuthenticated:
                pass  # vCenter refuses even to say: not logged in
            try:
                manager.Login(self.settings.user, self._password())
            except vim.fault.InvalidLogin as exc:
                raise self._auth_refused(exc) from None

    def close(self) -> None:
        """Log out (vCenter keeps an idle session for its own timeout otherwise)."""
        with self._lock:
            si, self._si, self._content = self._si, None, None
        if si is not None:
            # A session vCenter has already dropped is what logging out wants.
            with contextlib.suppress(Exception):
                Disconnect(si)

    # calls --------------------------------------------------------------------------------

    def call(self, what: str, operation: Callable[[], T]) -> T:
        """`operation` (the driver's whole idempotent step), its failures as VimErrors; a
        session vCenter no longer knows is logged in again once and the step run again."""
        try:
            try:
                return operation()
            except vim.fault.NotAuthenticated:
                self.relogin()
                return operation()
        except VimError:
            raise
        except Exception as exc:  # every failure is named, none escapes raw
            raise self.vim_error(exc, what) from None

    def wait(self, task: Any, what: str, deadline: float) -> Any:
        """The result of a vCenter task, waiting until `deadline` (time.monotonic()); its
        error is raised as the fault vCenter reports (with its localized message)."""
        interval = TASK_POLL_FIRST
        while True:
            info = task.info
            if info.state == vim.TaskInfo.State.success:
                return info.result
            if info.state == vim.TaskInfo.State.error:
                raise info.error
            if time.monotonic() >= deadline:
                raise TransientVimError(
                    f"vCenter did not finish to {what} within {self.settings.timeout:g} s "
                    f"([vim.vmware] timeout); its task {info.key} goes on"
                )
            time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
            interval = min(TASK_POLL_MAX, interval * 2)

    def deadline(self) -> float:
        return time.monotonic() + self.settings.timeout

    # errors -------------------------------------------------------------------------------

    def vim_error(self, exc: BaseException, what: str) -> VimError:
        """`exc`, raised while trying to `what`, as the VimError the engine acts on."""
        where = f"vCenter at {self.endpoint}"
        if isinstance(exc, VimError):
            return exc
        if isinstance(exc, vim.fault.InvalidLogin):
            return self._auth_refused(exc)
        if isinstance(exc, vim.fault.NotAuthenticated):
            return PermanentVimError(
                f"{where} does not accept the session of user {self.settings.user!r} even "
                f"after logging in again, to {what}: {fault_words(exc)}; check the user's "
                f"account and [vim.vmware] user and {PASSWORD_SETTINGS}"
            )
        if isinstance(exc, vim.fault.NoPermission):
            return PermanentVimError(
                f"{where}: user {self.settings.user!r} may not {what}: {fault_words(exc)} "
                f"(privilege {exc.privilegeId or '?'}); grant it to the user's role"
            )
        if isinstance(exc, TRANSIENT_FAULTS):
            return TransientVimError(f"{where} could not {what} now: {fault_words(exc)}")
        if isinstance(exc, vmodl.fault.ManagedObjectNotFound):
            # Something looked up a moment ago went away (deleted meanwhile): looking it
            # up again, as a retry does, finds what is there now.
            return TransientVimError(f"{where}: an object vanished while trying to {what}")
        if isinstance(exc, vmodl.MethodFault):
            return PermanentVimError(f"{where} refused to {what}: {fault_words(exc)}")
        if (refused := verify_failure(exc)) is not None:
            return PermanentVimError(
                f"the TLS certificate of {where} is refused ({refused.verify_message}): set "
                "[vim.vmware] cacert to the PEM file of the CA that signed it, and host to a "
                "name the certificate is issued for"
            )
        if isinstance(exc, ssl.SSLError):
            return TransientVimError(f"TLS with {where} failed, to {what}: {exc}")
        if isinstance(exc, TimeoutError):
            return TransientVimError(
                f"{where} did not answer within {self.settings.request_timeout:g} s "
                f"([vim.vmware] request_timeout), to {what}"
            )
        if isinstance(exc, http.client.HTTPException):
            status = _HTTP_STATUS.match(str(exc))
            if status and 400 <= int(status.group(1)) < 500:
                return PermanentVimError(
                    f"{where} answered HTTP {exc} to {what}: is it vCenter's /sdk? check "
                    "[vim.vmware] host, port and protocol"
                )
            return TransientVimError(f"{where} failed to {what}: HTTP {exc}")
        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc) or type(exc).__name__
            return TransientVimError(
                f"{where} cannot be reached to {what}: {reason}; check [vim.vmware] host and "
                "port, and that vCenter runs"
            )
        return PermanentVimError(f"{where}: unexpected answer to {what}: {exc!r}")
