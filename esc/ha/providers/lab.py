"""The lab node provider: the host agent (esc.ha.labhost) that owns the network
namespaces the pair's nodes run in, over HTTP.

`[ha] provider = "lab"`, `provider_url` the agent's --listen address
(http://IP:PORT), `provider_token_file` a file holding the agent's token. Both nodes
of a pair name the same agent. Each call is one JSON request: a connection refused
or reset, a timeout or a 5xx is a TransientProviderError (the agent is down,
restarting, or could not finish a fence yet: ask again); a 4xx is a
PermanentProviderError with the agent's own message (a wrong token, an unknown node).

The agent also deploys nodes of its own (`escadm node --provider local`): a deploy
is accepted at once and made in the background, so `deploy` asks how it goes until
the node is RUNNING (or ERROR: a PermanentProviderError with the agent's reason),
within `deploy_timeout` seconds.
"""

from __future__ import annotations

import ipaddress
import re
import time
from pathlib import Path
from typing import Any

from esc.config import HaSettings
from esc.ha.provider import (
    CONNECT_TIMEOUT,
    NodeProvider,
    NodeSpec,
    NodeStatus,
    PermanentProviderError,
    ProviderError,
    TransientProviderError,
    UnknownNode,
)
from esc.service import TokenClient, TokenError, Unreachable, not_json
from esc.vim.base import InstanceState

API = "/v1"
# What the agent answers GET /v1/check with, so a wrong URL (another service) is named.
SERVICE = "esc-lab-provider"
TOKEN_SERVICE = "node provider"
# The agent names the kind of a refusal, so the caller sees the same class as here.
ERROR_KINDS: dict[str, type[ProviderError]] = {
    cls.__name__: cls for cls in (PermanentProviderError, TransientProviderError, UnknownNode)
}


# A name the agent may know a node by (a node it deployed, or a namespace).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
DEPLOY_TIMEOUT = 900.0
POLL = 0.25


def node_path(address: str, names: bool = False) -> str:
    """The agent's URL path of the node at `address` (an IP address; with `names`, also
    a node's name)."""
    try:
        return f"/nodes/{ipaddress.ip_address(address)}"
    except ValueError:
        if names and _NAME.match(address):
            return f"/nodes/{address}"
        raise PermanentProviderError(
            f"{address!r} is not a node address: the provider names nodes by their IP "
            "address ([ha] node_list)" + (", or by their name" if names else "")
        ) from None


def node_status(answer: Any) -> NodeStatus:
    """The agent's status of a node as a NodeStatus."""
    try:
        return NodeStatus(
            name=answer["name"],
            state=InstanceState(answer["state"]),
            ip=answer.get("ip") or None,
            image=answer.get("image", ""),
            detail=answer.get("detail", ""),
            parameters=answer.get("parameters") or {},
        )
    except (KeyError, TypeError, ValueError):
        raise TransientProviderError(
            f"the node provider sent a malformed status: {answer!r}"
        ) from None


class LabProvider(NodeProvider):
    name = "lab"

    def __init__(
        self,
        url: str,
        token_file: Path,
        timeout: float = 5.0,
        deploy_timeout: float = DEPLOY_TIMEOUT,
    ) -> None:
        self.timeout = timeout
        self.deploy_timeout = deploy_timeout
        self.http = TokenClient(url, API, token_file, TOKEN_SERVICE, timeout, CONNECT_TIMEOUT)
        self.url, self.token_file = self.http.url, self.http.token_file
        self.where = f"the lab's host agent at {self.url}"

    @classmethod
    def from_settings(cls, ha: HaSettings, home: Path) -> LabProvider:
        if not ha.provider_url or not ha.provider_token_file:
            raise PermanentProviderError(
                "the lab node provider needs [ha] provider_url and provider_token_file in "
                "esc.toml (the agent's --listen and --token-file)"
            )
        return cls(ha.provider_url, home / ha.provider_token_file, ha.provider_timeout)

    def close(self) -> None:
        self.http.close()

    # the HTTP exchange ------------------------------------------------------------------

    def _call(
        self, method: str, path: str, what: str, body: Any = None, timeout: float | None = None
    ) -> Any:
        try:
            status, answer, message = self.http.exchange(method, path, body, timeout)
        except TokenError as exc:
            raise PermanentProviderError(f"{exc} ([ha] provider_token_file)") from None
        except Unreachable as exc:
            if exc.timed_out:
                raise TransientProviderError(
                    f"the node provider at {self.url} timed out {exc.phase} to {what} "
                    f"(connect bound {min(self.timeout, CONNECT_TIMEOUT):g} s, call bound "
                    f"{timeout or self.timeout:g} s, [ha] provider_timeout): check that it "
                    "runs and that this node reaches it"
                ) from None
            raise TransientProviderError(
                f"the node provider at {self.url} cannot be reached to {what}: {exc}; start "
                "it (python -m esc.ha.labhost) or correct [ha] provider_url"
            ) from None
        if status == 401:
            raise PermanentProviderError(
                f"the node provider at {self.url} refused the token of {self.token_file}: "
                f"{message or 'unauthorized'}; put the agent's token (its --token-file) there "
                "([ha] provider_token_file)"
            )
        if status >= 400:
            named = answer.get("kind") if isinstance(answer, dict) else None
            kind = ERROR_KINDS.get(named or "")
            if kind is None:
                kind = TransientProviderError if status >= 500 else PermanentProviderError
            raise kind(
                f"the node provider at {self.url} could not {what}: {message or f'HTTP {status}'}"
            )
        if status >= 300 or not_json(answer):
            raise PermanentProviderError(
                f"{self.url} answered HTTP {status} to {method} {API}{path}, not as the lab "
                "node provider does: check [ha] provider_url"
            )
        return answer

    def _expect(self, answer: Any, key: str, value: Any, what: str) -> None:
        if not isinstance(answer, dict) or answer.get(key) != value:
            raise TransientProviderError(
                f"the node provider answered {answer!r} to {what}, not {key} {value!r}"
            )

    # fencing and power ------------------------------------------------------------------

    def fence(self, address: str) -> None:
        what = f"fence {address}"
        answer = self._call("POST", f"{node_path(address, names=True)}/fence", what)
        self._expect(answer, "power", "off", what)

    def power_off(self, node: str, grace: float = 0.0) -> None:
        what = f"power {node} off"
        path = f"{node_path(node, names=True)}/power-off"
        # The agent answers once the node is off: after up to `grace` s of shutdown.
        answer = self._call("POST", path, what, {"grace": grace}, self.timeout + grace)
        self._expect(answer, "power", "off", what)

    def power_on(self, node: str) -> None:
        what = f"power {node} on"
        answer = self._call("POST", f"{node_path(node, names=True)}/power-on", what)
        self._expect(answer, "power", "on", what)

    def status(self, node: str) -> dict[str, Any]:
        """What the agent knows of the node: power, links, processes, outdated mark."""
        answer = self._call("GET", node_path(node, names=True), f"tell the status of {node}")
        if not isinstance(answer, dict):
            raise TransientProviderError(f"the node provider sent a malformed status: {answer!r}")
        return answer

    # the nodes it deploys -----------------------------------------------------------------

    def deploy(self, spec: NodeSpec) -> NodeStatus:
        spec.check()
        body = {
            **{
                k: v
                for k, v in vars(spec).items()
                if k not in ("ha_node_list", "init_options", "vim_settings")
            },
            "ha_node_list": list(spec.ha_node_list),
            "init_options": dict(spec.init_options),
            "vim_settings": dict(spec.vim_settings),
        }
        status = node_status(self._call("POST", "/nodes", f"deploy node {spec.name}", body))
        deadline = time.monotonic() + self.deploy_timeout
        while status.state is InstanceState.BUILDING:
            if time.monotonic() > deadline:
                raise TransientProviderError(
                    f"node {spec.name} is still being deployed after {self.deploy_timeout:g} s: "
                    "show it again later"
                )
            time.sleep(POLL)
            status = self.show(spec.name)
        if status.state is InstanceState.ERROR:
            raise PermanentProviderError(
                f"the node provider at {self.url} could not deploy node {spec.name}: "
                f"{status.detail}; delete it (its boot log stays until then)"
            )
        return status

    def delete(self, node: str) -> None:
        self._call("DELETE", node_path(node, names=True), f"delete node {node}")

    def show(self, node: str) -> NodeStatus:
        return node_status(self.status(node))

    def nodes(self) -> list[NodeStatus]:
        answer = self._call("GET", "/nodes", "list its nodes")
        if not isinstance(answer, dict) or not isinstance(answer.get("nodes"), list):
            raise TransientProviderError(f"the node provider sent a malformed list: {answer!r}")
        return sorted((node_status(n) for n in answer["nodes"]), key=lambda n: n.name)

    # the witness record -----------------------------------------------------------------

    def mark_outdated(self, address: str, reason: str) -> None:
        body = {"reason": reason}
        self._call("PUT", f"{node_path(address)}/outdated", f"mark {address} outdated", body)

    def clear_outdated(self, address: str) -> None:
        self._call("DELETE", f"{node_path(address)}/outdated", f"clear {address}'s outdated mark")

    def outdated(self, address: str) -> str | None:
        what = f"tell whether {address} is outdated"
        answer = self._call("GET", f"{node_path(address)}/outdated", what)
        if not isinstance(answer, dict) or not (
            answer.get("outdated") is None or isinstance(answer.get("outdated"), str)
        ):
            raise TransientProviderError(f"the node provider sent a malformed mark: {answer!r}")
        return answer["outdated"]

    def check(self) -> None:
        answer = self._call("GET", "/check", "check its service")
        if not isinstance(answer, dict) or answer.get("service") != SERVICE:
            raise PermanentProviderError(
                f"{self.url} answers, but is not the lab node provider: check [ha] provider_url"
            )
