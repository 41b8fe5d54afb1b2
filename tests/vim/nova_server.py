"""A real nova, served over HTTP on 127.0.0.1, for the openstack driver's tests.

Run by the nova venv's python (scripts/vim-targets/openstack builds it), never by
the project's: `.venv-nova/bin/python tests/vim/nova_server.py --config FILE`.

Nova's own functional-test base runs the real nova-api WSGI application, conductor,
scheduler, placement and two computes on nova's fake virt driver, in this one
process (sqlite, in-process messaging). What nova's tests reach through an
in-process intercept is served here on a real listening socket, behind the pieces
of a cloud that nova's fixtures hold in memory:

- identity (keystone v3): password authentication of the users in the config file,
  scoped to the one project, returning a token and a catalog naming the endpoints
  below; a wrong password is a 401, as is an unknown or expired token anywhere;
- compute: the nova API itself, each request carrying the token's user, project and
  roles as keystonemiddleware would hand them to nova;
- image (glance v2, read only): the Glance fixture's images, which nova boots from;
- network (neutron v2.0): the Neutron fixture's networks, subnets and ports (the
  ports nova creates for its servers), plus floating IPs that can be associated with
  a port and are released when the port goes, as neutron does;
- volume (cinder v3, read only): the Cinder fixture's volumes, which nova creates for
  a server's blank volumes and deletes with it.

`/_test/...` is the tests' control endpoint (no token): make the next N service
requests (of one service, method, path ending) answer 503, change a user's password,
expire every token, count the tokens issued.

Once it listens it prints one line of JSON, {"url", "https_url", "pid"}, on its
standard output; it logs warnings on its standard error. SIGTERM ends it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import ipaddress
import json
import logging
import os
import random
import signal
import socketserver
import ssl
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

# Native threads, not eventlet: the WSGI server below runs a thread per request.
os.environ["OS_NOVA_DISABLE_EVENTLET_PATCHING"] = "1"
from nova import monkey_patch

monkey_patch.patch()

import fixtures  # noqa: E402
from neutronclient.common import exceptions as neutron_client_exc  # noqa: E402
from nova.tests import fixtures as nova_fixtures  # noqa: E402
from nova.tests.fixtures import cinder as cinder_fixture  # noqa: E402
from nova.tests.fixtures import neutron as neutron_fixture  # noqa: E402
from nova.tests.functional import integrated_helpers  # noqa: E402

PROJECT_ID = nova_fixtures.PROJECT_ID
TOKEN_LIFETIME = 3600.0
REGION = "RegionOne"
# The second compute host and the availability zone that holds it, so placement by
# zone and by host has somewhere to go besides nova's default zone.
ZONE_B = "zone-b"
COMPUTE_B = "compute2"
# Images the tests boot from (the Glance fixture's own are all named alike).
IMAGES = ("cirros-0.6.2", "ubuntu-22.04")
# Networks besides the fixture's "private" one: a second tenant network, and an
# external one whose floating IPs are the project's. 198.18.0.0/15 is for tests; no
# traffic goes anywhere, these are records.
MGMT_NET = {"id": "6d9ce2b4-3e54-4b0e-9d3d-3b4c4d3e7a01", "name": "mgmt", "cidr": "198.18.10.0/24"}
PUBLIC_NET = {
    "id": "a1f3c8e2-7b7a-4a53-a4b4-0b6c1c2f9d02",
    "name": "public",
    "cidr": "198.19.100.0/24",
}
FLOATING_IPS = ("198.19.100.10", "198.19.100.11", "198.19.100.12", "198.19.100.13")

LOG = logging.getLogger("nova_server")


def now_iso(offset: float = 0.0) -> str:
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def iso(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


# The fixtures, as nova's tests have them, grown where a cloud does more ---------------


class CloudNeutron(neutron_fixture.NeutronFixture):
    """nova's Neutron fixture, with what neutron itself does that the fixture leaves
    out: each port gets an address of its own from its network's subnet (a requested
    one if free), floating IPs exist and follow their port, and more networks."""

    def __init__(self, test: Any) -> None:
        super().__init__(test)
        self.lock = threading.RLock()
        self.floating_ips: dict[str, dict[str, Any]] = {}
        for net in (MGMT_NET, PUBLIC_NET):
            self._add_network(net, external=net is PUBLIC_NET)
        for address in FLOATING_IPS:
            fip_id = str(uuid.uuid5(uuid.NAMESPACE_URL, address))
            self.floating_ips[fip_id] = {
                "id": fip_id,
                "floating_ip_address": address,
                "floating_network_id": PUBLIC_NET["id"],
                "fixed_ip_address": None,
                "port_id": None,
                "router_id": None,
                "status": "DOWN",
                "description": "",
                "tenant_id": PROJECT_ID,
                "project_id": PROJECT_ID,
                "tags": [],
                "revision_number": 0,
            }

    def _add_network(self, spec: dict[str, str], external: bool) -> None:
        subnet_id = str(uuid.uuid5(uuid.NAMESPACE_URL, spec["cidr"]))
        cidr = ipaddress.ip_network(spec["cidr"])
        hosts = list(cidr.hosts())
        network = copy.deepcopy(self.network_1)
        network.update(
            id=spec["id"], name=spec["name"], subnets=[subnet_id], **{"router:external": external}
        )
        subnet = copy.deepcopy(self.subnet_1)
        subnet.update(
            id=subnet_id,
            name=f"{spec['name']}-subnet",
            network_id=spec["id"],
            cidr=spec["cidr"],
            gateway_ip=str(hosts[0]),
            allocation_pools=[{"start": str(hosts[1]), "end": str(hosts[-1])}],
        )
        self._networks[spec["id"]] = network
        self._subnets[subnet_id] = subnet

    def _allocate(self, network_id: str, wanted: list[dict[str, Any]]) -> list[dict[str, str]]:
        subnets = [
            s
            for s in self._subnets.values()
            if s["network_id"] == network_id and s["ip_version"] == 4
        ]
        if not subnets:
            return []
        subnet = subnets[0]
        used = {
            ip["ip_address"]
            for port in self._ports.values()
            for ip in port.get("fixed_ips", [])
            if ip.get("subnet_id") == subnet["id"]
        }
        pool = subnet["allocation_pools"][0]
        start = ipaddress.ip_address(pool["start"])
        end = ipaddress.ip_address(pool["end"])
        requested = [w["ip_address"] for w in wanted if w.get("ip_address")]
        if requested:
            address = requested[0]
            if ipaddress.ip_address(address) not in ipaddress.ip_network(subnet["cidr"], False):
                raise neutron_client_exc.InvalidIpForNetworkClient(
                    message=f"IP address {address} is not a valid IP for the specified subnet."
                )
            if address in used:
                raise neutron_client_exc.IpAddressInUseClient(
                    message=f"Unable to complete operation for network {network_id}. "
                    f"The IP address {address} is in use."
                )
        else:
            # Neutron's IPAM does not promise an order; the lowest free one does.
            candidate = start + 1 if start == ipaddress.ip_address(subnet["gateway_ip"]) else start
            while str(candidate) in used and candidate < end:
                candidate += 1
            if str(candidate) in used:
                raise neutron_client_exc.IpAddressGenerationFailureClient(
                    message=f"No more IP addresses available on network {network_id}."
                )
            address = str(candidate)
        return [{"ip_address": address, "subnet_id": subnet["id"]}]

    def create_port(self, body: dict[str, Any] | None = None) -> dict[str, Any]:
        with self.lock:
            request = copy.deepcopy((body or {"port": {}})["port"])
            network_id = request.get("network_id", self.network_1["id"])
            port = copy.deepcopy(self.default_port)
            wanted = request.pop("fixed_ips", [])
            port.update(request)
            port.update(
                id=str(uuid.uuid4()),
                network_id=network_id,
                mac_address="fa:16:3e:"
                + ":".join(f"{random.randint(0, 255):02x}" for _ in range(3)),
                fixed_ips=self._allocate(network_id, wanted),
            )
            if not self._networks[network_id].get("port_security_enabled", True):
                port["security_groups"] = []
            self._ports[port["id"]] = port
            return {"port": copy.deepcopy(port)}

    def delete_port(self, port_id: str, **params: Any) -> None:
        with self.lock:
            super().delete_port(port_id, **params)
            # Neutron disassociates the floating IPs of a port it deletes.
            for fip in self.floating_ips.values():
                if fip["port_id"] == port_id:
                    fip.update(port_id=None, fixed_ip_address=None, status="DOWN")

    def list_floatingips(self, retrieve_all: bool = True, **params: Any) -> dict[str, Any]:
        with self.lock:
            found = [
                copy.deepcopy(f)
                for f in self.floating_ips.values()
                if all(f.get(k) == v for k, v in params.items() if k != "fields")
            ]
        return {"floatingips": found}


class CloudCinder(cinder_fixture.CinderFixture):
    """nova's Cinder fixture, which deletes a volume when nova asks (nova deletes a
    server's delete_on_termination volumes with it)."""

    def _create_fakes(self) -> None:
        super()._create_fakes()
        self.useFixture(
            fixtures.MockPatch(
                "nova.volume.cinder.API.delete", side_effect=self.fake_vol_delete, autospec=False
            )
        )

    def fake_vol_delete(self, context: Any, volume_id: str) -> None:
        self.volumes.pop(volume_id, None)
        self.volume_to_attachment.pop(volume_id, None)


class NovaCloud(integrated_helpers._IntegratedTestBase):
    """nova's integrated test set-up, kept running: the services, the fixtures, and the
    API application (not its intercept)."""

    # A create returns at once and the server builds in the background, as in a cloud.
    CAST_AS_CALL = False
    microversion = "latest"

    def runTest(self) -> None:  # testtools names a test method; nothing runs it
        pass

    def setUp(self) -> None:
        # The parent set-up makes the fixtures through these names; ours replace them.
        original = (nova_fixtures.NeutronFixture, nova_fixtures.CinderFixture)
        nova_fixtures.NeutronFixture, nova_fixtures.CinderFixture = CloudNeutron, CloudCinder
        try:
            super().setUp()
        finally:
            nova_fixtures.NeutronFixture, nova_fixtures.CinderFixture = original
        self._start_compute(COMPUTE_B)
        aggregate = self.admin_api.post_aggregate(
            {"aggregate": {"name": ZONE_B, "availability_zone": ZONE_B}}
        )
        self.admin_api.add_host_to_aggregate(aggregate["id"], COMPUTE_B)
        for name in IMAGES:
            self.glance.create(
                None,
                {
                    "id": str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
                    "name": name,
                    "status": "active",
                    "visibility": "public",
                    "container_format": "bare",
                    "disk_format": "qcow2",
                    "size": 21430272,
                    "min_ram": 0,
                    "min_disk": 0,
                    "protected": False,
                    "tags": [],
                    "properties": {"architecture": "x86_64"},
                },
            )
        self.app = self.api_fixture.app()


# HTTP ------------------------------------------------------------------------------

Start = Callable[..., Any]


def respond(
    start: Start, status: int, body: Any = None, headers: Iterable[tuple[str, str]] = ()
) -> list[bytes]:
    reasons = {
        200: "OK",
        201: "Created",
        202: "Accepted",
        204: "No Content",
        300: "Multiple Choices",
        400: "Bad Request",
        401: "Unauthorized",
        403: "Forbidden",
        404: "Not Found",
        405: "Method Not Allowed",
        409: "Conflict",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }
    data = b"" if body is None else json.dumps(body).encode()
    all_headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    start(f"{status} {reasons.get(status, 'Status')}", [*all_headers, *headers])
    return [data]


def read_json(environ: dict[str, Any]) -> Any:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    raw = environ["wsgi.input"].read(length) if length else b""
    return json.loads(raw) if raw else {}


def query(environ: dict[str, Any]) -> dict[str, list[str]]:
    return parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)


def base_url(environ: dict[str, Any]) -> str:
    return f"{environ['wsgi.url_scheme']}://{environ['HTTP_HOST']}"


class Identity:
    """Keystone v3 as far as a password client goes: discovery, issuing a scoped token
    with its catalog, and checking a token."""

    def __init__(self, users: dict[str, dict[str, Any]], project: dict[str, str]) -> None:
        self.users = users
        self.project = project
        self.lock = threading.Lock()
        self.tokens: dict[str, tuple[str, float]] = {}
        self.issued: dict[str, int] = {}

    def expire_all(self) -> int:
        with self.lock:
            count = len(self.tokens)
            self.tokens = {t: (u, 0.0) for t, (u, _) in self.tokens.items()}
        return count

    def check(self, token: str) -> dict[str, Any] | None:
        with self.lock:
            entry = self.tokens.get(token)
        if entry is None or entry[1] < time.time():
            return None
        return self.users[entry[0]] | {"name": entry[0]}

    def __call__(self, environ: dict[str, Any], start: Start, path: str) -> list[bytes]:
        base = base_url(environ)
        method = environ["REQUEST_METHOD"]
        if path in ("", "/") and method == "GET":
            return respond(start, 300, {"versions": {"values": [self._version(base)]}})
        if path.rstrip("/") == "/v3" and method == "GET":
            return respond(start, 200, {"version": self._version(base)})
        if path.rstrip("/") == "/v3/auth/tokens" and method == "POST":
            return self._issue(environ, start, base)
        return respond(start, 404, self._error(404, "Not Found", f"no {method} {path}"))

    @staticmethod
    def _version(base: str) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{base}/identity/v3/"}],
            "media-types": [
                {"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}
            ],
        }

    @staticmethod
    def _error(code: int, title: str, message: str) -> dict[str, Any]:
        return {"error": {"code": code, "title": title, "message": message}}

    def _issue(self, environ: dict[str, Any], start: Start, base: str) -> list[bytes]:
        unauthorized = self._error(
            401, "Unauthorized", "The request you have made requires authentication."
        )
        try:
            auth = read_json(environ)["auth"]
            identity = auth["identity"]
            user = identity["password"]["user"]
            name, password = user.get("name") or user.get("id"), user["password"]
        except (KeyError, TypeError, ValueError):
            return respond(start, 400, self._error(400, "Bad Request", "malformed auth request"))
        known = self.users.get(name)
        if known is None or known["password"] != password:
            return respond(start, 401, unauthorized)
        scope = (auth.get("scope") or {}).get("project") or {}
        if scope and scope.get("name", scope.get("id")) not in (self.project["name"], PROJECT_ID):
            return respond(start, 401, unauthorized)
        token = uuid.uuid4().hex
        with self.lock:
            self.tokens[token] = (name, time.time() + TOKEN_LIFETIME)
            self.issued[name] = self.issued.get(name, 0) + 1
        domain = {"id": "default", "name": self.project["domain"]}
        body = {
            "token": {
                "methods": ["password"],
                "user": {"id": name, "name": name, "domain": domain},
                "project": {"id": PROJECT_ID, "name": self.project["name"], "domain": domain},
                "roles": [{"id": r, "name": r} for r in known["roles"]],
                "catalog": self._catalog(base),
                "issued_at": now_iso(),
                "expires_at": now_iso(TOKEN_LIFETIME),
                "audit_ids": [uuid.uuid4().hex[:22]],
            }
        }
        return respond(start, 201, body, [("X-Subject-Token", token)])

    @staticmethod
    def _catalog(base: str) -> list[dict[str, Any]]:
        services = [
            ("identity", "keystone", f"{base}/identity/v3"),
            ("compute", "nova", f"{base}/compute/v2.1"),
            ("image", "glance", f"{base}/image"),
            ("network", "neutron", f"{base}/network"),
            ("block-storage", "cinder", f"{base}/volume/v3/{PROJECT_ID}"),
            ("volumev3", "cinderv3", f"{base}/volume/v3/{PROJECT_ID}"),
        ]
        return [
            {
                "id": uuid.uuid5(uuid.NAMESPACE_URL, kind).hex,
                "type": kind,
                "name": name,
                "endpoints": [
                    {
                        "id": uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}/{interface}").hex,
                        "interface": interface,
                        "region": REGION,
                        "region_id": REGION,
                        "url": url,
                    }
                    for interface in ("public", "internal", "admin")
                ],
            }
            for kind, name, url in services
        ]


class Images:
    """Glance v2, read only, over the Glance fixture's images."""

    def __init__(self, glance: Any) -> None:
        self.glance = glance

    def __call__(self, environ: dict[str, Any], start: Start, path: str) -> list[bytes]:
        base = base_url(environ)
        if environ["REQUEST_METHOD"] != "GET":
            return respond(start, 405, {"message": "only reading images is served here"})
        if path in ("", "/"):
            link = {"rel": "self", "href": f"{base}/image/v2/"}
            return respond(
                start, 300, {"versions": [{"id": "v2.16", "status": "CURRENT", "links": [link]}]}
            )
        parts = path.strip("/").split("/")
        if parts[:2] != ["v2", "images"] or len(parts) > 3:
            return respond(start, 404, {"message": f"no such resource {path}"})
        images = sorted(self.glance.images.values(), key=lambda i: i["id"])
        if len(parts) == 3:
            for image in images:
                if image["id"] == parts[2]:
                    return respond(start, 200, self._image(image))
            return respond(start, 404, {"message": f"No image found with ID {parts[2]}"})
        q = query(environ)
        for key in ("name", "id", "status", "visibility"):
            if key in q:
                images = [i for i in images if str(i.get(key)) in q[key]]
        if "marker" in q:
            ids = [i["id"] for i in images]
            marker = q["marker"][0]
            images = images[ids.index(marker) + 1 :] if marker in ids else []
        body: dict[str, Any] = {"images": [], "first": "/v2/images", "schema": "/v2/schemas/images"}
        limit = int(q.get("limit", ["25"])[0])
        page = images[:limit]
        body["images"] = [self._image(i) for i in page]
        if len(images) > limit:
            body["next"] = f"/v2/images?limit={limit}&marker={page[-1]['id']}"
        return respond(start, 200, body)

    @staticmethod
    def _image(image: dict[str, Any]) -> dict[str, Any]:
        shown = {
            k: iso(v)
            for k, v in image.items()
            if k not in ("properties", "deleted", "is_public", "deleted_at")
        }
        shown.update({k: v for k, v in image.get("properties", {}).items()})
        shown.setdefault("tags", [])
        shown["self"] = f"/v2/images/{image['id']}"
        shown["file"] = f"/v2/images/{image['id']}/file"
        shown["schema"] = "/v2/schemas/image"
        return shown


class Network:
    """Neutron v2.0 over the Neutron fixture: networks, subnets and ports to read,
    floating IPs to read and (dis)associate."""

    def __init__(self, neutron: CloudNeutron) -> None:
        self.neutron = neutron

    def __call__(self, environ: dict[str, Any], start: Start, path: str) -> list[bytes]:
        base = base_url(environ)
        method = environ["REQUEST_METHOD"]
        if path in ("", "/") and method == "GET":
            link = {"rel": "self", "href": f"{base}/network/v2.0/"}
            return respond(
                start, 200, {"versions": [{"id": "v2.0", "status": "CURRENT", "links": [link]}]}
            )
        parts = path.strip("/").split("/")
        if parts[0] != "v2.0" or len(parts) not in (2, 3):
            return respond(start, 404, self._error("HTTPNotFound", f"no resource {path}"))
        collection = parts[1]
        item = parts[2] if len(parts) == 3 else None
        if collection == "extensions" and method == "GET":
            return respond(start, 200, self.neutron.list_extensions())
        records = self._records(collection)
        if records is None:
            return respond(start, 404, self._error("HTTPNotFound", f"no resource {collection}"))
        singular = collection[:-1]
        kind = {
            "networks": "Network",
            "subnets": "Subnet",
            "ports": "Port",
            "floatingips": "FloatingIP",
        }[collection]
        if method == "GET" and item is None:
            q = query(environ)
            filters = {k: v for k, v in q.items() if k not in ("fields", "limit", "marker")}
            found = [r for r in records if all(str(r.get(k)) in v for k, v in filters.items())]
            return respond(start, 200, {collection: found})
        match = next((r for r in records if r["id"] == item), None)
        if match is None:
            return respond(
                start, 404, self._error(f"{kind}NotFound", f"{kind} {item} could not be found.")
            )
        if method == "GET":
            return respond(start, 200, {singular: match})
        if method == "PUT" and collection == "floatingips":
            return self._update_floating_ip(start, item, read_json(environ).get("floatingip", {}))
        return respond(
            start, 405, self._error("HTTPMethodNotAllowed", f"{method} {path} is not served here")
        )

    @staticmethod
    def _error(kind: str, message: str) -> dict[str, Any]:
        return {"NeutronError": {"type": kind, "message": message, "detail": ""}}

    def _records(self, collection: str) -> list[dict[str, Any]] | None:
        n = self.neutron
        with n.lock:
            if collection == "networks":
                return copy.deepcopy(list(n._networks.values()))
            if collection == "subnets":
                return copy.deepcopy(list(n._subnets.values()))
            if collection == "ports":
                return n.list_ports(is_admin=True)["ports"]
            if collection == "floatingips":
                return copy.deepcopy(list(n.floating_ips.values()))
        return None

    def _update_floating_ip(self, start: Start, fip_id: str, change: dict[str, Any]) -> list[bytes]:
        n = self.neutron
        with n.lock:
            fip = n.floating_ips[fip_id]
            port_id = change.get("port_id")
            if port_id is None:
                fip.update(port_id=None, fixed_ip_address=None, status="DOWN")
                return respond(start, 200, {"floatingip": copy.deepcopy(fip)})
            port = n._ports.get(port_id)
            if port is None:
                return respond(
                    start, 404, self._error("PortNotFound", f"Port {port_id} could not be found.")
                )
            v4 = [
                ip["ip_address"]
                for ip in port["fixed_ips"]
                if ipaddress.ip_address(ip["ip_address"]).version == 4
            ]
            fixed = change.get("fixed_ip_address") or (v4[0] if v4 else None)
            if fixed is None or fixed not in v4:
                return respond(
                    start,
                    400,
                    self._error("BadRequest", f"Port {port_id} does not have fixed ip {fixed}."),
                )
            for other in n.floating_ips.values():
                if (
                    other["id"] != fip_id
                    and other["port_id"] == port_id
                    and other["fixed_ip_address"] == fixed
                ):
                    return respond(
                        start,
                        409,
                        self._error(
                            "FloatingIPPortAlreadyAssociated",
                            f"Cannot associate floating IP {fip['floating_ip_address']} "
                            f"({fip_id}) with port {port_id} using fixed IP {fixed}, as that "
                            "fixed IP already has a floating IP on external network "
                            f"{PUBLIC_NET['id']}.",
                        ),
                    )
            fip.update(port_id=port_id, fixed_ip_address=fixed, status="ACTIVE")
            fip["revision_number"] += 1
            return respond(start, 200, {"floatingip": copy.deepcopy(fip)})


class Volumes:
    """Cinder v3, read only, over the Cinder fixture's volumes (nova makes them)."""

    def __init__(self, cinder: CloudCinder) -> None:
        self.cinder = cinder

    def __call__(self, environ: dict[str, Any], start: Start, path: str) -> list[bytes]:
        parts = path.strip("/").split("/")
        if environ["REQUEST_METHOD"] != "GET" or parts[:1] != ["v3"] or len(parts) < 3:
            return respond(
                start, 404, {"itemNotFound": {"code": 404, "message": f"no resource {path}"}}
            )
        volumes = [self._volume(v) for v in list(self.cinder.volumes.values())]
        if parts[2:] in (["volumes"], ["volumes", "detail"]):
            return respond(start, 200, {"volumes": volumes})
        if len(parts) == 4 and parts[2] == "volumes":
            for volume in volumes:
                if volume["id"] == parts[3]:
                    return respond(start, 200, {"volume": volume})
            return respond(
                start,
                404,
                {
                    "itemNotFound": {
                        "code": 404,
                        "message": f"Volume {parts[3]} could not be found.",
                    }
                },
            )
        return respond(
            start, 404, {"itemNotFound": {"code": 404, "message": f"no resource {path}"}}
        )

    def _volume(self, volume: dict[str, Any]) -> dict[str, Any]:
        attachments = [
            {"attachment_id": a["id"], "server_id": a["instance_uuid"], "volume_id": volume["id"]}
            for a in self.cinder.volume_to_attachment.get(volume["id"], {}).values()
        ]
        return {
            "id": volume["id"],
            "name": volume.get("display_name"),
            "size": volume["size"],
            "status": "in-use" if attachments else volume.get("status", "available"),
            "availability_zone": volume.get("availability_zone"),
            "attachments": attachments,
        }


class Faults:
    """The next N service requests answer this status (the tests' transient errors)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.remaining = 0
        self.status = 503
        self.service = ""
        self.method = ""
        self.path = ""
        self.served = 0

    def set(self, count: int, status: int, service: str, method: str, path: str) -> None:
        with self.lock:
            self.remaining, self.status, self.service = count, status, service
            self.method, self.path = method, path

    def due(self, service: str, method: str, path: str) -> int | None:
        with self.lock:
            if (
                self.remaining > 0
                and self.service in ("", service)
                and self.method in ("", method)
                and path.endswith(self.path)
            ):
                self.remaining -= 1
                self.served += 1
                return self.status
        return None


class Gateway:
    """The one WSGI application on the socket: /identity, /compute, /image, /network,
    /volume and /_test, each service request authenticated by its token."""

    def __init__(self, cloud: NovaCloud, identity: Identity) -> None:
        self.cloud = cloud
        self.identity = identity
        self.faults = Faults()
        self.services: dict[str, Callable[[dict[str, Any], Start, str], list[bytes]]] = {
            "image": Images(cloud.glance),
            "network": Network(cloud.neutron),
            "volume": Volumes(cloud.cinder),
        }
        self.requests: dict[str, int] = {}

    def __call__(self, environ: dict[str, Any], start: Start) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        head, _, rest = path.lstrip("/").partition("/")
        rest = "/" + rest if rest else ""
        try:
            if head == "identity":
                return self.identity(environ, start, rest)
            if head == "_test":
                return self._control(environ, start, rest)
            if head not in ("compute", *self.services):
                return respond(start, 404, {"error": f"no service at /{head}"})
            self.requests[head] = self.requests.get(head, 0) + 1
            status = self.faults.due(head, environ["REQUEST_METHOD"], rest)
            if status is not None:
                return respond(
                    start,
                    status,
                    {
                        "message": "The server is currently unavailable. Please try "
                        "again at a later time."
                    },
                )
            user = self.identity.check(environ.get("HTTP_X_AUTH_TOKEN", ""))
            if user is None:
                auth = f'Keystone uri="{base_url(environ)}/identity"'
                return respond(
                    start,
                    401,
                    {
                        "error": {
                            "code": 401,
                            "title": "Unauthorized",
                            "message": "The request you have made requires authentication.",
                        }
                    },
                    [("WWW-Authenticate", auth)],
                )
            if head == "compute":
                return self._compute(environ, start, rest, user)
            return self.services[head](environ, start, rest)
        except Exception:
            LOG.error(
                "%s %s failed:\n%s", environ.get("REQUEST_METHOD"), path, traceback.format_exc()
            )
            return respond(start, 500, {"error": "internal error of the test cloud"})

    def _compute(
        self, environ: dict[str, Any], start: Start, rest: str, user: dict[str, Any]
    ) -> Iterable[bytes]:
        # What keystonemiddleware hands nova after checking the token; nova's test
        # context builder reads these (a user named admin is an admin, as in its tests).
        environ = dict(environ)
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/compute"
        environ["PATH_INFO"] = rest or "/"
        environ["HTTP_X_AUTH_USER"] = user["name"]
        environ["HTTP_X_AUTH_PROJECT_ID"] = PROJECT_ID
        environ["HTTP_X_ROLES"] = ",".join(user["roles"])
        return self.cloud.app(environ, start)

    def _control(self, environ: dict[str, Any], start: Start, rest: str) -> list[bytes]:
        method = environ["REQUEST_METHOD"]
        if rest == "/fail" and method == "POST":
            body = read_json(environ)
            count = int(body.get("count", 1))
            self.faults.set(
                count,
                int(body.get("status", 503)),
                str(body.get("service", "")),
                str(body.get("method", "")),
                str(body.get("path", "")),
            )
            return respond(start, 200, {"armed": count})
        if rest == "/password" and method == "POST":
            body = read_json(environ)
            self.identity.users[body["user"]]["password"] = body["password"]
            return respond(start, 200, {"changed": body["user"]})
        if rest == "/expire-tokens" and method == "POST":
            return respond(start, 200, {"expired": self.identity.expire_all()})
        if rest == "/stats" and method == "GET":
            return respond(
                start,
                200,
                {
                    "tokens_issued": dict(self.identity.issued),
                    "requests": dict(self.requests),
                    "faults_served": self.faults.served,
                },
            )
        return respond(start, 404, {"error": f"no control {method} {rest}"})


class ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="JSON: users, project, optional tls")
    args = parser.parse_args()
    with open(args.config, encoding="utf-8") as f:
        config = json.load(f)

    cloud = NovaCloud("runTest")
    cloud.setUp()
    # nova's logging fixture formats every DEBUG record (to catch bad log calls in its
    # tests) and keeps INFO ones in memory: a served cloud needs neither, and the cost
    # is paid on every request. Warnings and errors go to stderr.
    logging.disable(logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)

    identity = Identity(config["users"], config["project"])
    app = Gateway(cloud, identity)
    servers = [make_server("127.0.0.1", 0, app, ThreadingServer, QuietHandler)]
    urls = {"url": f"http://127.0.0.1:{servers[0].server_port}", "https_url": None}
    tls = config.get("tls")
    if tls:
        secure = make_server("127.0.0.1", 0, app, ThreadingServer, QuietHandler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls["cert"], tls["key"])
        secure.socket = context.wrap_socket(secure.socket, server_side=True)
        secure.base_environ["HTTPS"] = "on"  # what wsgiref's handler takes the scheme from
        servers.append(secure)
        urls["https_url"] = f"https://127.0.0.1:{secure.server_port}"
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(signum: int, frame: Any) -> None:
        for server in servers:
            threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(json.dumps({**urls, "pid": os.getpid()}), flush=True)
    servers[0].serve_forever()
    # The services' threads belong to nova's fixtures; the process ends with them.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
