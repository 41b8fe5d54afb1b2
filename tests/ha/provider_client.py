"""A node's side of the node provider, run inside a lab host for the tests.

    python provider_client.py HOME URL TOKEN_FILE [TIMEOUT]

Loads the provider as a node does (esc.ha.provider.load_provider from an [ha] section
naming `lab`), then answers one JSON request per line on stdin with one JSON line
on stdout:

    {"op": "fence", "address": A}               → {"ok": true, "result": null, "seconds": S}
    {"op": "power_on", "node": A}               (power_on, power_off, status: "node")
    {"op": "mark_outdated", "address": A, "reason": R}
    {"op": "outdated", "address": A}            → {"ok": true, "result": REASON | null, ...}
    {"op": ..., "token_file": F}                 the same call through a provider reading F
    a failure                                   → {"ok": false, "kind": CLASS, "error": MESSAGE}

One long-lived process per node, so a call's time is the provider's, not Python's
start-up.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from esc.config import HaSettings
from esc.ha.provider import NodeProvider, ProviderError, load_provider

# NodeProvider's calls, and the lab provider's own `status` (what the agent knows of a node).
OPS = {"fence", "power_on", "power_off", "mark_outdated", "clear_outdated", "outdated", "check"}
OPS |= {"status"}


def main() -> int:
    home = Path(sys.argv[1])
    url, token_file = sys.argv[2], sys.argv[3]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    providers: dict[str, NodeProvider] = {}

    def provider(token: str) -> NodeProvider:
        if token not in providers:
            ha = HaSettings(
                provider="lab",
                provider_url=url,
                provider_token_file=token,
                provider_timeout=timeout,
            )
            loaded = load_provider(home, ha)
            assert loaded is not None
            providers[token] = loaded
        return providers[token]

    for line in sys.stdin:
        request = json.loads(line)
        op = request.pop("op")
        token = request.pop("token_file", token_file)
        started = time.monotonic()
        reply: dict[str, Any]
        try:
            if op not in OPS:
                raise ValueError(f"unknown op {op}")
            result = getattr(provider(token), op)(**request)
            reply = {"ok": True, "result": result}
        except ProviderError as exc:
            reply = {"ok": False, "kind": type(exc).__name__, "error": str(exc)}
        reply["seconds"] = time.monotonic() - started
        print(json.dumps(reply), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
