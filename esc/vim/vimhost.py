"""The vimhost driver: the local VIM of a VIM host (esc.vim.host), over HTTP.

The VMs run on the VIM host, not on the controller's node, so they outlive
any controller: both nodes of an active/standby pair point [vim] url at the
same host and manage the same VMs. Every call is one JSON request on a kept-
alive connection, authenticated with the host's shared token; the host runs
the local VIM, so this driver keeps its contract (idempotent by VM id, the
same images, flavors and errors).

What reaches the engine: connection refused or reset, a timeout, or a 5xx is
a TransientVimError (the host is down, restarting or busy; the engine asks
again); a 4xx is a PermanentVimError carrying the host's own message (the
local VIM's refusal, or a wrong token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from esc.config import VimSettings
from esc.service import TokenClient, TokenError, Unreachable, not_json
from esc.vim.base import (
    InstanceState,
    InstanceStatus,
    PermanentVimError,
    TransientVimError,
    UnknownFlavor,
    UnknownImage,
    VimDriver,
    VimError,
    VmSpec,
    check_vm_id,
)

API = "/v1"
# What the host answers GET /v1/check with, so a wrong URL (another service) is named.
SERVICE = "esc-vim-host"
# The host names the kind of a refusal, so the engine sees the same class as with `local`.
ERROR_KINDS: dict[str, type[VimError]] = {
    cls.__name__: cls for cls in (PermanentVimError, TransientVimError, UnknownImage, UnknownFlavor)
}
# Connecting is quick or the host is not there: no need to wait the full call timeout.
CONNECT_TIMEOUT = 3.0


class VimHostDriver(VimDriver):
    name = "vimhost"

    def __init__(self, url: str, token_file: Path, timeout: float = 30.0) -> None:
        self.timeout = timeout
        self.http = TokenClient(url, API, token_file, "VIM host", timeout, CONNECT_TIMEOUT)
        self.url, self.token_file = self.http.url, self.http.token_file

    @classmethod
    def from_settings(cls, data_dir: Path, settings: VimSettings, home: Path) -> VimHostDriver:
        if not settings.url or not settings.token_file:
            raise PermanentVimError(
                "the vimhost driver needs [vim] url and token_file in esc.toml "
                "(the VIM host's --listen and --token-file)"
            )
        return cls(settings.url, home / settings.token_file, settings.timeout)

    def close(self) -> None:
        self.http.close()

    # the HTTP exchange ------------------------------------------------------------------

    def _call(self, method: str, path: str, what: str, body: Any = None) -> Any:
        try:
            status, answer, message = self.http.exchange(method, path, body)
        except TokenError as exc:
            raise PermanentVimError(f"{exc} ([vim] token_file)") from None
        except Unreachable as exc:
            if exc.timed_out:
                raise TransientVimError(
                    f"the VIM host at {self.url} did not answer within {self.timeout:g} s "
                    f"([vim] timeout) to {what}"
                ) from None
            raise TransientVimError(
                f"the VIM host at {self.url} cannot be reached to {what}: {exc}; start it "
                "(python -m esc.vim.host) or correct [vim] url"
            ) from None
        if status == 401:
            raise PermanentVimError(
                f"the VIM host at {self.url} refused the token of {self.token_file}: "
                f"{message or 'unauthorized'}; put the host's token (its --token-file) there"
            )
        if status >= 500:
            raise TransientVimError(
                f"the VIM host at {self.url} failed to {what}: {message or f'HTTP {status}'}"
            )
        if status >= 400:
            kind = ERROR_KINDS.get(answer.get("kind", "") if isinstance(answer, dict) else "")
            if kind is not None and message:
                raise kind(message)  # the local VIM's refusal, in its own words
            raise PermanentVimError(
                f"the VIM host at {self.url} refused to {what}: {message or f'HTTP {status}'}"
            )
        if status >= 300 or not_json(answer):
            raise PermanentVimError(
                f"{self.url} answered HTTP {status} to {method} {API}{path}, not as a VIM "
                "host does: check [vim] url"
            )
        return answer

    @staticmethod
    def _status(answer: Any) -> InstanceStatus:
        try:
            return InstanceStatus(
                str(answer["vm_id"]),
                InstanceState(answer["state"]),
                answer.get("address"),
                str(answer.get("detail", "")),
            )
        except (KeyError, ValueError, TypeError, AttributeError):
            raise TransientVimError(
                f"the VIM host sent a malformed VM status: {answer!r}"
            ) from None

    def _vm(self, vm_id: str) -> str:
        check_vm_id(vm_id)  # refused here, as `local` refuses it, not as an unknown URL
        return f"/vms/{vm_id}"

    # images and flavors -----------------------------------------------------------------

    def validate_image(self, image: str) -> None:
        self._call("POST", "/images/validate", f"check image {image!r}", {"image": image})

    def validate_flavor(self, flavor: str) -> None:
        self._call("POST", "/flavors/validate", f"check flavor {flavor!r}", {"flavor": flavor})

    # life cycle -------------------------------------------------------------------------

    def create_vm(self, spec: VmSpec) -> InstanceStatus:
        body = {
            "name": spec.name,
            "image": spec.image,
            "flavor": spec.flavor,
            "day0_config": spec.day0_config,
        }
        path = self._vm(spec.vm_id)
        return self._status(self._call("PUT", path, f"create VM {spec.vm_id}", body))

    def start_vm(self, vm_id: str) -> InstanceStatus:
        return self._status(self._call("POST", f"{self._vm(vm_id)}/start", f"start VM {vm_id}"))

    def stop_vm(self, vm_id: str) -> InstanceStatus:
        return self._status(self._call("POST", f"{self._vm(vm_id)}/stop", f"stop VM {vm_id}"))

    def reboot_vm(self, vm_id: str) -> InstanceStatus:
        path = f"{self._vm(vm_id)}/reboot"
        return self._status(self._call("POST", path, f"reboot VM {vm_id}"))

    def delete_vm(self, vm_id: str) -> None:
        self._call("DELETE", self._vm(vm_id), f"delete VM {vm_id}")

    # queries ----------------------------------------------------------------------------

    def status(self, vm_id: str) -> InstanceStatus:
        return self._status(self._call("GET", self._vm(vm_id), f"tell the status of VM {vm_id}"))

    def list_instances(self) -> list[str]:
        answer = self._call("GET", "/vms", "list its VMs")
        if not isinstance(answer, dict) or not isinstance(answer.get("vms"), list):
            raise TransientVimError(f"the VIM host sent a malformed VM list: {answer!r}")
        return [str(vm_id) for vm_id in answer["vms"]]

    def check(self) -> None:
        answer = self._call("GET", "/check", "check its VIM")
        if not isinstance(answer, dict) or answer.get("service") != SERVICE:
            raise PermanentVimError(
                f"{self.url} answers, but is not an ESC VIM host: check [vim] url"
            )
