"""The VIM host: ESC's local VIM on a host of its own, served over HTTP.

    python -m esc.vim.host --dir DIR --listen IP:PORT [--token-file FILE] [--vm-address IP]

The VMs are the local VIM's (one OS process each, detached), started by this
service in DIR, so they outlive every controller, and this service too: a
restarted host finds them running. Controllers reach it with the vimhost
driver ([vim] driver = "vimhost"); the VMs listen on the host's address, so
a controller's deploys and monitors ask each VM's health endpoint directly
(esc.monitor.liveness): the host reports VIM state only.

Every request carries `Authorization: Bearer TOKEN`, the token of
--token-file (else of $ESC_VIM_TOKEN); the token is never logged. The API,
JSON both ways, under /v1:

    GET    /check                     {"service": "esc-vim-host", ...}: the VIM is usable
    POST   /images/validate           {"image": I}: 204, or 422 naming the known images
    POST   /flavors/validate          {"flavor": F}: 204, or 422 naming the known flavors
    GET    /vms                       {"vms": [VM_ID, ...]}
    PUT    /vms/VM_ID                 {"name", "image", "flavor", "day0_config"}: create
    GET    /vms/VM_ID                 the VM's status: {"vm_id", "state", "address", "detail"}
    POST   /vms/VM_ID/start|stop|reboot   the status after it
    DELETE /vms/VM_ID                 204 (an absent VM too)
    GET    /vms/VM_ID/alive           {"alive": true|false}: its health endpoint answers
                                      (what controllers before 1.3 ask)

A refusal is {"error": MESSAGE, "kind": CLASS}: 422 an unknown image or
flavor, 409 another permanent refusal, 503 a transient failure (a busy host),
401 a wrong or missing token.

FastAPI and uvicorn, as the controller's API: the bodies are validated by
pydantic models, the local VIM's blocking calls (a VM start waits for its
process) run in the server's thread pool, connections are kept alive.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from fastapi import Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from esc import service
from esc.monitor.liveness import vm_is_up
from esc.service import UsageError, bind, error_response, service_app, url_of
from esc.vim.base import (
    InstanceStatus,
    TransientVimError,
    UnknownFlavor,
    UnknownImage,
    VimError,
    VmSpec,
)
from esc.vim.local import LocalVim
from esc.vim.vimhost import API, SERVICE

log = logging.getLogger("esc.vim.host")

TOKEN_ENV = "ESC_VIM_TOKEN"
MAX_BODY = 1_048_576  # a VM's day-0 configuration included
# Longer than the driver keeps an idle connection (httpx: 5 s), so the driver is the one
# that closes it, never the host just as the driver sends on it.
KEEP_ALIVE = 60
EXIT_USAGE = 2


class VmBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    image: str = Field(min_length=1, max_length=255)
    flavor: str = Field(min_length=1, max_length=255)
    day0_config: dict[str, Any] = Field(default_factory=dict)


class ImageBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(max_length=255)


class FlavorBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flavor: str = Field(max_length=255)


def _refusal(exc: VimError) -> JSONResponse:
    if isinstance(exc, TransientVimError):
        return error_response(503, str(exc), "TransientVimError")
    if isinstance(exc, UnknownImage | UnknownFlavor):
        return error_response(422, str(exc), type(exc).__name__)
    # A plain VimError is permanent, as the driver interface says.
    return error_response(409, str(exc), "PermanentVimError")


def _status(status: InstanceStatus) -> dict[str, Any]:
    return {
        "vm_id": status.vm_id,
        "state": status.state.value,
        "address": status.address,
        "detail": status.detail,
    }


def create_app(vim: LocalVim, token: str) -> Any:
    """The VIM host's ASGI application, serving `vim` to holders of `token`."""
    app = service_app("ESC VIM host", "the VIM host", VimError, _refusal, log)

    @app.get(f"{API}/check")
    def check() -> dict[str, Any]:
        vim.check()
        return {"service": SERVICE, "vim": vim.name, "vm_address": vim.vm_address}

    @app.post(f"{API}/images/validate", status_code=204)
    def validate_image(body: ImageBody) -> Response:
        vim.validate_image(body.image)
        return Response(status_code=204)

    @app.post(f"{API}/flavors/validate", status_code=204)
    def validate_flavor(body: FlavorBody) -> Response:
        vim.validate_flavor(body.flavor)
        return Response(status_code=204)

    @app.get(f"{API}/vms")
    def list_vms() -> dict[str, Any]:
        return {"vms": vim.list_instances()}

    @app.put(f"{API}/vms/{{vm_id}}")
    def create_vm(vm_id: str, body: VmBody) -> dict[str, Any]:
        spec = VmSpec(vm_id, body.name, body.image, body.flavor, body.day0_config)
        return _status(vim.create_vm(spec))

    @app.get(f"{API}/vms/{{vm_id}}")
    def vm_status(vm_id: str) -> dict[str, Any]:
        return _status(vim.status(vm_id))

    @app.get(f"{API}/vms/{{vm_id}}/alive")
    def vm_alive(vm_id: str) -> dict[str, Any]:
        # What drivers of releases before 1.3 ask (they left liveness to the VIM): a
        # VIM host serves the controllers of a pair upgraded across that release too.
        return {"alive": vm_is_up(vim.status(vm_id))}

    @app.post(f"{API}/vms/{{vm_id}}/start")
    def start_vm(vm_id: str) -> dict[str, Any]:
        return _status(vim.start_vm(vm_id))

    @app.post(f"{API}/vms/{{vm_id}}/stop")
    def stop_vm(vm_id: str) -> dict[str, Any]:
        return _status(vim.stop_vm(vm_id))

    @app.post(f"{API}/vms/{{vm_id}}/reboot")
    def reboot_vm(vm_id: str) -> dict[str, Any]:
        return _status(vim.reboot_vm(vm_id))

    @app.delete(f"{API}/vms/{{vm_id}}", status_code=204)
    def delete_vm(vm_id: str) -> Response:
        vim.delete_vm(vm_id)
        return Response(status_code=204)

    return service.BearerGuard(app, token, service="VIM host", log=log, max_body=MAX_BODY)


# the service ------------------------------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """IP:PORT (IPv6 as [IP]:PORT) → (ip, port); port 0: any free port."""
    return service.parse_listen(text, "198.18.0.10:8470", "since the VMs listen on it too")


def vm_address_for(listen_host: str, vm_address: str | None) -> str:
    """Where the VMs listen: --vm-address, else the address the host listens on."""
    chosen = vm_address or listen_host
    try:
        address = ipaddress.ip_address(chosen)
    except ValueError:
        raise UsageError(f"--vm-address {chosen!r} is not an IP address") from None
    if address.is_unspecified:
        raise UsageError(
            f"the VMs need an address the controllers reach them at, not {chosen}: "
            "give --vm-address IP (an address of this host)"
        )
    return chosen


def host_token(token_file: Path | None) -> str:
    return service.service_token(token_file, TOKEN_ENV, "VIM host")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m esc.vim.host",
        description="Serve ESC's local VIM over HTTP, with VMs on this host.",
    )
    parser.add_argument("--dir", required=True, type=Path, help="where the VMs are kept")
    parser.add_argument("--listen", required=True, help="IP:PORT to serve on")
    parser.add_argument(
        "--token-file", type=Path, help=f"the shared token (mode 0600); else ${TOKEN_ENV}"
    )
    parser.add_argument("--vm-address", help="the IP the VMs listen on (default: the --listen IP)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        host, port = parse_listen(args.listen)
        vm_address = vm_address_for(host, args.vm_address)
        token = host_token(args.token_file)
        vim = LocalVim(args.dir.absolute(), vm_address)
        try:
            vim.check()
        except VimError as exc:
            raise UsageError(str(exc)) from None
        sock = bind(host, port)
    except UsageError as exc:
        print(f"esc.vim.host: {exc}", file=sys.stderr)
        return EXIT_USAGE
    vim.recover()  # deletions this host's crash interrupted
    url = url_of(host, sock.getsockname()[1])
    # The socket listens already: a client connecting from now on is served.
    print(json.dumps({"url": url, "pid": os.getpid(), "vm_address": vm_address}), flush=True)
    log.info(
        "VIM host serving %s on %s, VMs on %s (%d VMs held)",
        vim.data_dir,
        url,
        vm_address,
        len(vim.list_instances()),
    )
    service.serve(create_app(vim, token), sock, keep_alive=KEEP_ALIVE)
    log.info("VIM host stopped; its VMs keep running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
