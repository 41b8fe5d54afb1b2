"""A fake Cisco CSP 2100 for the tests: its REST API over HTTPS, as csp_api_shapes.json
records it, served by uvicorn on 127.0.0.1 from a thread of the test process.

No CSP simulator exists, so this one is built from the recorded shapes (paths,
bodies, status codes, the media type and ConfD's error form all come from that
file) and refuses what a CSP refuses: a wrong credential (401), a body that is
not application/vnd.yang.data+json, an unknown element, a duplicate name, an
iso_name or day-0 file the repository does not hold, a network it does not
have, a service beyond the resource's free CPUs or memory, deleting a service
that is powered on. A service takes `boot_seconds` to be deployed after it is
powered on and `stop_seconds` to be powered off, as its operational data shows.

The certificate is self-signed for 127.0.0.1 and localhost (cert_file): a client
trusts it by that file, as an operator sets [vim.csp] cacert. A test reaches the
state directly (services, repository, requests) and makes the CSP fail:
`fail_next` answers the next N matching requests 503, `fail_next_boot` fails the
next service powered on, `operational = False` makes it answer no operational
data, `password` may be changed as an administrator would.
"""

from __future__ import annotations

import base64
import io
import json
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pycdlib
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from esc.tls import generate_self_signed

SHAPES = json.loads(Path(__file__).with_name("csp_api_shapes.json").read_text())
MEDIA_TYPE: str = SHAPES["media_type"]
REQUESTS: dict[str, Any] = SHAPES["requests"]
ERRORS: dict[str, Any] = SHAPES["errors"]
NAME_MAX: int = SHAPES["service_name_max_length"]["value"]

USERNAME = "admin"
PASSWORD = "csp-Secret-1"
HOST = "csp-2100"
IMAGES = (
    "csr1000v-universalk9.16.09.01.qcow2",
    "ubuntu-22.04-server-cloudimg-amd64.qcow2",
    "asav9-18-1.qcow2",
)
PNICS = ("enp1s0f0", "enp1s0f1", "enp7s0f1")
NETWORKS = ("Internal1",)  # a network made on the CSP, beside its physical NICs


class Refused(Exception):
    """A refusal in ConfD's form: the error `kind` of csp_api_shapes.json, its fields."""

    def __init__(self, kind: str, **fields: Any) -> None:
        super().__init__(kind)
        self.kind, self.fields = kind, fields


def _path_pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template)) + r"\Z")


@dataclass
class _Service:
    config: dict[str, Any]
    changed_at: float  # when its power was last asked on or off
    error: str = ""  # why its last boot failed


@dataclass
class _Failure:
    count: int
    method: str | None
    path: str | None
    status: int


@dataclass
class FakeCsp:
    directory: Path
    username: str = USERNAME
    password: str = PASSWORD
    host: str = HOST
    cpus: int = 8
    ram_mb: int = 16384
    boot_seconds: float = 0.05
    stop_seconds: float = 0.05
    images: tuple[str, ...] = IMAGES
    operational: bool = True
    lock: threading.RLock = field(default_factory=threading.RLock)
    services: dict[str, _Service] = field(default_factory=dict)
    repository: dict[str, bytes] = field(default_factory=dict)
    requests: list[tuple[str, str, int]] = field(default_factory=list)  # method, path, status
    resource_settings: dict[str, Any] = field(default_factory=dict)
    _failures: list[_Failure] = field(default_factory=list)
    _boot_failures: list[str] = field(default_factory=list)
    _sessions: set[str] = field(default_factory=set)
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    port: int = 0

    def __post_init__(self) -> None:
        self.cert_file = self.directory / "csp-cert.pem"
        self.key_file = self.directory / "csp-key.pem"
        generate_self_signed(self.cert_file, self.key_file, ["127.0.0.1", "localhost"])
        # What reset() returns to: a test may change any of these for itself.
        self._initial = {
            name: getattr(self, name)
            for name in ("password", "cpus", "ram_mb", "boot_seconds", "stop_seconds")
        }
        self.reset()
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Response]]] = [
            (REQUESTS[name]["method"], _path_pattern(REQUESTS[name]["path"]), handler)
            for name, handler in (
                ("list_services", self._list_services),
                ("create_service", self._create_service),
                ("get_service", self._get_service),
                ("patch_service", self._patch_service),
                ("delete_service", self._delete_service),
                ("get_vnics", self._get_vnics),
                ("get_vnic", self._get_vnic),
                ("get_serial_ports", self._get_serial_ports),
                ("get_serial_port", self._get_serial_port),
                ("get_service_state", self._get_service_state),
                ("get_resource", self._get_resource),
                ("patch_resource", self._patch_resource),
                ("list_pnics", self._list_pnics),
                ("get_pnic", self._get_pnic),
                ("get_images", self._get_images),
                ("delete_image", self._delete_image),
                ("logout", self._logout),
            )
        ]

    # the server ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=list(_METHODS))])
        config = uvicorn.Config(
            app,
            ssl_certfile=str(self.cert_file),
            ssl_keyfile=str(self.key_file),
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="fake-csp", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake CSP did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            # Clients keep their connections alive (as the driver does): close them now
            # rather than wait for them to hang up.
            self._server.should_exit = self._server.force_exit = True
            self._thread.join(10)

    def client(self, password: str | None = None) -> httpx.Client:
        """A client of the API as a script uses it: basic auth, the certificate trusted."""
        return httpx.Client(
            base_url=self.url,
            auth=(self.username, self.password if password is None else password),
            verify=ssl.create_default_context(cafile=str(self.cert_file)),
            headers={"Accept": MEDIA_TYPE, "Content-Type": MEDIA_TYPE},
            timeout=10,
        )

    # what a test controls and reads ------------------------------------------------------

    def reset(self) -> None:
        """Back to a CSP with no service and the initial images, answering normally."""
        with self.lock:
            self.services.clear()
            self.repository = {name: b"QFI\xfb" for name in self.images}
            self.requests.clear()
            self.resource_settings = {"host_name": "csp-test", "ip_address": "127.0.0.1"}
            self._failures.clear()
            self._boot_failures.clear()
            self._sessions.clear()
            self.operational = True
            for name, value in self._initial.items():
                setattr(self, name, value)

    def fail_next(
        self,
        count: int = 1,
        *,
        method: str | None = None,
        path: str | None = None,
        status: int = 503,
    ) -> None:
        """The next `count` requests (of `method` to `path` only, when given) answer
        `status` with ConfD's error body, without being acted on."""
        with self.lock:
            self._failures.append(_Failure(count, method, path, status))

    def fail_next_boot(self, reason: str) -> None:
        """The next service powered on ends in error with `reason` instead of deploying."""
        with self.lock:
            self._boot_failures.append(reason)

    def names(self) -> list[str]:
        with self.lock:
            return sorted(self.services)

    def service(self, name: str) -> dict[str, Any] | None:
        """The running configuration of service `name`, as CSP holds it."""
        with self.lock:
            service = self.services.get(name)
            return json.loads(json.dumps(service.config)) if service else None

    def powered_on(self, name: str) -> bool:
        """Service `name` exists and actually runs (deployed and powered on)."""
        with self.lock:
            service = self.services.get(name)
            return service is not None and self._operational(service) == ("deployed", "on")

    def day0_files(self, file_name: str) -> dict[str, str]:
        """The files on the day-0 ISO `file_name` of the repository, by their names."""
        with self.lock:
            data = self.repository[file_name]
        image = pycdlib.PyCdlib()
        image.open_fp(io.BytesIO(data))
        try:
            found = {}
            for child in image.list_children(rr_path="/"):
                if child.is_file():
                    name = child.rock_ridge.name().decode()
                    out = io.BytesIO()
                    image.get_file_from_iso_fp(out, rr_path=f"/{name}")
                    found[name] = out.getvalue().decode()
            return found
        finally:
            image.close()

    def volume_label(self, file_name: str) -> str:
        with self.lock:
            data = self.repository[file_name]
        image = pycdlib.PyCdlib()
        image.open_fp(io.BytesIO(data))
        try:
            return image.pvd.volume_identifier.decode().strip()
        finally:
            image.close()

    def count(self, method: str, path: str, status: int | None = None) -> int:
        """How many requests of `method` to `path` came (answered `status`, when given)."""
        with self.lock:
            return sum(
                1
                for m, p, s in self.requests
                if m == method and p == path and (status is None or s == status)
            )

    def used(self) -> tuple[int, int]:
        """(CPUs, MiB of memory) the services hold."""
        with self.lock:
            return (
                sum(int(s.config["numcpu"]) for s in self.services.values()),
                sum(int(s.config["memory"]) for s in self.services.values()),
            )

    # the request path ---------------------------------------------------------------------

    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        body = await request.body()
        form = await request.form() if path == REQUESTS["upload_file"]["path"] else None
        with self.lock:
            response = self._answer(request, path, body, form)
            self.requests.append((request.method, path, response.status_code))
            return response

    def _answer(self, request: Request, path: str, body: bytes, form: Any) -> Response:
        for failure in self._failures:
            if (
                failure.count > 0
                and (failure.method is None or failure.method == request.method)
                and (failure.path is None or failure.path == path)
            ):
                failure.count -= 1
                return self._error("unavailable", path, status=failure.status)
        try:
            if path == REQUESTS["upload_file"]["path"] and request.method == "POST":
                return self._upload(request, form)
            if not self._authenticated(request):
                return self._error(
                    "access_denied", path, headers={"WWW-Authenticate": 'Basic realm="CSP"'}
                )
            if path == REQUESTS["login"]["path"] and request.method == "POST":
                return self._login()
            document = self._document(request, body)
            for method, pattern, handler in self._routes:
                found = pattern.match(path)
                if found and method == request.method:
                    return handler(document, request=request, **found.groupdict())
            raise Refused("not_found", path=path)
        except Refused as refused:
            return self._error(refused.kind, path, **refused.fields)

    def _authenticated(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        return secrets.compare_digest(f"{user}:{password}", f"{self.username}:{self.password}")

    def _document(self, request: Request, body: bytes) -> Any:
        if not body.strip():
            return None
        media_type = request.headers.get("content-type", "").split(";")[0].strip()
        if media_type != MEDIA_TYPE:
            raise Refused("media_type", media_type=media_type or "(none)")
        try:
            return json.loads(body)
        except ValueError as exc:
            raise Refused("malformed", detail=str(exc)) from None

    @staticmethod
    def _error(
        kind: str,
        urlpath: str,
        *,
        status: int | None = None,
        headers: dict | None = None,
        **fields: Any,
    ) -> Response:
        spec = ERRORS[kind]
        error = {
            "error-message": spec["message"].format(**fields),
            "error-urlpath": urlpath,
            "error-tag": spec["tag"],
        }
        return Response(
            json.dumps({"errors": {"error": [error]}}),
            status or spec["status"],
            headers=headers,
            media_type=MEDIA_TYPE,
        )

    @staticmethod
    def _json(name: str, document: Any) -> Response:
        return Response(json.dumps(document), REQUESTS[name]["status"], media_type=MEDIA_TYPE)

    @staticmethod
    def _empty(name: str) -> Response:
        return Response(b"", REQUESTS[name]["status"])

    # services -----------------------------------------------------------------------------

    def _list_services(self, document: Any, request: Request) -> Response:
        if not self.services:
            return self._empty("list_services_none")
        deep = "deep" in request.query_params
        listed = [self.services[n].config if deep else {"name": n} for n in sorted(self.services)]
        return self._json("list_services", {"services": {"service": listed}})

    def _create_service(self, document: Any, request: Request) -> Response:
        shape = REQUESTS["create_service"]
        service = self._service_document(document, "create_service")
        name = str(service.get("name", ""))
        for key in service:
            if key not in shape["required"] and key not in shape["optional"]:
                raise Refused("unknown_element", element=key, name=name)
        for key in shape["required"]:
            if key not in service:
                raise Refused("malformed", detail=f"missing element: {key} in /services/service")
        if not 1 <= len(name) <= NAME_MAX:
            raise Refused(
                "invalid_value", value=name, element="name", why=f"length must be 1..{NAME_MAX}"
            )
        if name in self.services:
            raise Refused("exists", name=name)
        config = {**shape["defaults"], **service}
        for key in ("numcpu", "memory", "disk_size"):
            config[key] = self._positive(config[key], key)
        if config["power"] not in ("on", "off"):
            raise Refused("invalid_value", value=config["power"], element="power", why="on or off")
        for key in ("iso_name", "day0_filename"):
            if key in config and config[key] not in self.repository:
                raise Refused("unknown_file", element=key, file=config[key])
        self._check_vnics(name, config.get("vnics", {"vnic": []}))
        self._check_room(name, config["numcpu"], config["memory"])
        self.services[name] = _Service(config, time.monotonic())
        if config["power"] == "on":
            self._boot(self.services[name])
        return self._empty("create_service")

    def _check_vnics(self, name: str, vnics: Any) -> None:
        fields = REQUESTS["create_service"]["vnic_fields"]
        if not isinstance(vnics, dict) or not isinstance(vnics.get("vnic"), list):
            raise Refused("malformed", detail="vnics must hold a vnic list")
        for vnic in vnics["vnic"]:
            for key in vnic:
                if key not in fields:
                    raise Refused("unknown_element", element=f"vnic/{key}", name=name)
            if vnic.get("type") not in ("access", "trunk"):
                raise Refused(
                    "invalid_value", value=vnic.get("type"), element="type", why="access or trunk"
                )
            if vnic.get("network_name") not in PNICS + NETWORKS:
                raise Refused(
                    "unknown_network",
                    name=name,
                    nic=vnic.get("nic"),
                    network=vnic.get("network_name"),
                )

    def _check_room(
        self, name: str, numcpu: int, memory: int, *, leaving: _Service | None = None
    ) -> None:
        cpus_used, ram_used = self.used()
        if leaving is not None:
            cpus_used -= int(leaving.config["numcpu"])
            ram_used -= int(leaving.config["memory"])
        cpus_free, ram_free = self.cpus - cpus_used, self.ram_mb - ram_used
        if numcpu > cpus_free or memory > ram_free:
            raise Refused(
                "over_capacity",
                host=self.host,
                name=name,
                numcpu=numcpu,
                memory=memory,
                cpus_free=cpus_free,
                ram_free=ram_free,
            )

    @staticmethod
    def _positive(value: Any, element: str) -> int:
        # The public scripts send numbers and numeric strings alike.
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if isinstance(value, bool) or number < 1:
            raise Refused("invalid_value", value=value, element=element, why="a positive integer")
        return number

    @staticmethod
    def _service_document(document: Any, shape: str) -> dict[str, Any]:
        if not isinstance(document, dict) or not isinstance(document.get("service"), dict):
            raise Refused("malformed", detail=f'{shape} takes {{"service": {{...}}}}')
        return document["service"]

    def _found(self, name: str, request: Request) -> _Service:
        service = self.services.get(name)
        if service is None:
            raise Refused("not_found", path=request.url.path)
        return service

    def _get_service(self, document: Any, request: Request, name: str) -> Response:
        return self._json("get_service", {"service": self._found(name, request).config})

    def _patch_service(self, document: Any, request: Request, name: str) -> Response:
        service = self._found(name, request)
        changes = self._service_document(document, "patch_service")
        for key in changes:
            if key not in REQUESTS["patch_service"]["fields"]:
                raise Refused("unknown_element", element=key, name=name)
        if "numcpu" in changes:
            numcpu = self._positive(changes["numcpu"], "numcpu")
            self._check_room(name, numcpu, int(service.config["memory"]), leaving=service)
            service.config["numcpu"] = numcpu
        if "serial_ports" in changes:
            service.config["serial_ports"] = changes["serial_ports"]
        power = changes.get("power")
        if power is not None:
            if power not in ("on", "off"):
                raise Refused("invalid_value", value=power, element="power", why="on or off")
            if power != service.config["power"]:
                service.config["power"] = power
                service.changed_at = time.monotonic()
                if power == "on":
                    self._boot(service)
        return self._empty("patch_service")

    def _boot(self, service: _Service) -> None:
        service.error = self._boot_failures.pop(0) if self._boot_failures else ""

    def _operational(self, service: _Service) -> tuple[str, str]:
        """(state, actual power) of a service now."""
        since = time.monotonic() - service.changed_at
        if service.config["power"] == "on":
            if since < self.boot_seconds:
                return "deploying", "off"
            return ("error", "off") if service.error else ("deployed", "on")
        state = "error" if service.error else "deployed"
        was_running = not service.error
        return state, "on" if was_running and since < self.stop_seconds else "off"

    def _delete_service(self, document: Any, request: Request, name: str) -> Response:
        service = self._found(name, request)
        if service.config["power"] == "on" or self._operational(service)[1] == "on":
            raise Refused("powered_on", name=name)
        del self.services[name]
        return self._empty("delete_service")

    def _get_vnics(self, document: Any, request: Request, name: str) -> Response:
        config = self._found(name, request).config
        return self._json("get_vnics", {"vnics": config.get("vnics", {"vnic": []})})

    def _get_vnic(self, document: Any, request: Request, name: str, nic: str) -> Response:
        config = self._found(name, request).config
        for vnic in config.get("vnics", {"vnic": []})["vnic"]:
            if str(vnic.get("nic")) == nic:
                return self._json("get_vnic", {"vnic": vnic})
        raise Refused("not_found", path=request.url.path)

    def _get_serial_ports(self, document: Any, request: Request, name: str) -> Response:
        config = self._found(name, request).config
        ports = config.get("serial_ports", {"serial_port": []})
        return self._json("get_serial_ports", {"serial_ports": ports})

    def _get_serial_port(self, document: Any, request: Request, name: str, serial: str) -> Response:
        config = self._found(name, request).config
        for port in config.get("serial_ports", {"serial_port": []})["serial_port"]:
            if str(port.get("serial")) == serial:
                return self._json("get_serial_port", {"serial_port": port})
        raise Refused("not_found", path=request.url.path)

    def _get_service_state(self, document: Any, request: Request, name: str) -> Response:
        if not self.operational:
            raise Refused("not_found", path=request.url.path)
        service = self._found(name, request)
        state, power = self._operational(service)
        return self._json(
            "get_service_state",
            {
                "service": {
                    "name": name,
                    "state": state,
                    "power_state": power,
                    "error_message": service.error if state == "error" else "",
                }
            },
        )

    # the resource, NICs, repository -------------------------------------------------------

    def _resource(self, host: str, request: Request) -> dict[str, Any]:
        if host != self.host:
            raise Refused("not_found", path=request.url.path)
        cpus_used, ram_used = self.used()
        return {
            "resource_name": self.host,
            **self.resource_settings,
            "csp_version": "02.08.00.10",
            "num_cpus_total": self.cpus,
            "num_cpus_used": cpus_used,
            "ram_total_mb": self.ram_mb,
            "ram_used_mb": ram_used,
            "disk_space_total_gb": 819,
            "num_service": len(self.services),
        }

    def _get_resource(self, document: Any, request: Request, host: str) -> Response:
        return self._json("get_resource", {"resource": self._resource(host, request)})

    def _patch_resource(self, document: Any, request: Request, host: str) -> Response:
        self._resource(host, request)
        if not isinstance(document, dict) or not isinstance(document.get("resource"), dict):
            raise Refused("malformed", detail='patch_resource takes {"resource": {...}}')
        for key in document["resource"]:
            if key in REQUESTS["patch_resource"]["read_only"]:
                raise Refused("read_only", element=key)
        self.resource_settings.update(document["resource"])
        return self._empty("patch_resource")

    def _list_pnics(self, document: Any, request: Request) -> Response:
        return self._json("list_pnics", {"pnics": {"pnic": [{"name": n} for n in PNICS]}})

    def _get_pnic(self, document: Any, request: Request, name: str) -> Response:
        if name not in PNICS:
            raise Refused("not_found", path=request.url.path)
        return self._json("get_pnic", {"pnic": {"name": name, "lldp": "enabled"}})

    def _get_images(self, document: Any, request: Request) -> Response:
        images = [{"name": n} for n in sorted(self.repository)]
        return self._json("get_images", {"output": {"image": images}})

    def _delete_image(self, document: Any, request: Request) -> Response:
        try:
            name = document["input"]["name"]
        except (TypeError, KeyError):
            raise Refused(
                "malformed", detail='delete_image takes {"input": {"name": ...}}'
            ) from None
        if name not in self.repository:
            raise Refused("not_found", path=f"repository/{name}")
        del self.repository[name]
        return self._empty("delete_image")

    def _login(self) -> Response:
        token = secrets.token_hex(16)
        self._sessions.add(token)
        response = self._empty("login")
        response.set_cookie(REQUESTS["login"]["cookie"], token, secure=True, httponly=True)
        return response

    def _logout(self, document: Any, request: Request) -> Response:
        self._sessions.discard(request.cookies.get(REQUESTS["login"]["cookie"], ""))
        return self._empty("logout")

    def _upload(self, request: Request, form: Any) -> Response:
        # The repository's upload is the web UI's: a login session, not basic auth.
        if request.cookies.get(REQUESTS["login"]["cookie"]) not in self._sessions:
            return self._error("access_denied", request.url.path)
        upload = form.get(REQUESTS["upload_file"]["form_field"]) if form is not None else None
        if upload is None or not getattr(upload, "filename", None):
            raise Refused("malformed", detail="uploadfile takes a multipart field 'file'")
        self.repository[upload.filename] = upload.file.read()
        return self._empty("upload_file")


_METHODS = ("GET", "POST", "PATCH", "PUT", "DELETE")
