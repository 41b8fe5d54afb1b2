"""escadm sends each write with a fresh Idempotency-Key and, when the node does not
answer or answers 503, sends it again with the same key, for up to [cli]
retry_seconds, saying so on stderr; a 4xx is final. Against a real node: its answer
lost on the way back, its API stopped, MAINTENANCE."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
from conftest import ESCADM, escadm

from esc.config import NodeHome, api_base_url
from esc.node.service_requests import request_start, request_stop
from esc.security import LOCAL_USER

DESCRIPTOR = """
tenant: retry
deployment:
  name: {name}
  vm_groups:
    - {{name: g, image: {image}, flavor: m1.tiny}}
"""
NOTE = re.compile(
    r"^escadm: POST /v0/deployments: (.*); "
    r"sending it again in [\d.e+-]+ s with the same Idempotency-Key$",
    re.M,
)


def descriptor(tmp_path: Path, name: str, image: str = "healthy") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(DESCRIPTOR.format(name=name, image=image))
    return str(path)


def deploy_in_background(home: Path, file: str) -> subprocess.Popen:
    return subprocess.Popen(
        [ESCADM, "deployment", "deploy", file, "--no-wait", "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def set_retry_seconds(home: Path, seconds: float) -> None:
    node = NodeHome(home)
    settings = node.load()
    settings.cli.retry_seconds = seconds
    node.save(settings)


def transactions(home: Path) -> list[dict]:
    node = NodeHome(home)
    secret = node.local_credential_file.read_text().strip()
    url = api_base_url(node.load())
    return httpx.get(f"{url}/v0/transactions", auth=(LOCAL_USER, secret), timeout=10).json()


class AnswerLosingProxy:
    """Between escadm and the node: the first connection's request reaches the node,
    and once the node answers (its commit done) the connection is closed without the
    answer, as a failover between the commit and the answer would; later connections
    are relayed as they are. `sent` holds every byte escadm sent."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sent = bytearray()
        self.answers_lost = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def keys(self) -> list[str]:
        with self._lock:
            return re.findall(r"(?im)^idempotency-key: (\S+)\r$", self.sent.decode("latin-1"))

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            lose = self.answers_lost == 0
            if lose:
                self.answers_lost += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            back = self._drop_answer if lose else self._pump
            threading.Thread(target=back, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client:
                    with self._lock:
                        self.sent += data
                target.sendall(data)
        except OSError:
            pass
        finally:
            _hang_up(source, target)

    @staticmethod
    def _drop_answer(upstream: socket.socket, client: socket.socket, _from_client: bool) -> None:
        upstream.recv(1)  # the node has answered: the write is committed
        _hang_up(upstream, client)


def _hang_up(*ends: socket.socket) -> None:
    """Close both ends (a shutdown also wakes the other direction's pump)."""
    for end in ends:
        with contextlib.suppress(OSError):
            end.shutdown(socket.SHUT_RDWR)
        end.close()


def test_a_write_whose_answer_was_lost_is_sent_again_and_done_once(
    running: Path, tmp_path: Path
) -> None:
    settings = NodeHome(running).load()
    proxy = AnswerLosingProxy(settings.api.port)
    # escadm of a home like the node's whose API port is the proxy's.
    client = tmp_path / "client"
    (client / "data").mkdir(parents=True)
    shutil.copy2(running / "data" / "escadm.credential", client / "data" / "escadm.credential")
    settings.api.port = proxy.port
    NodeHome(client).save(settings)
    try:
        done = escadm(
            "deployment", "deploy", descriptor(tmp_path, "lost"), "--no-wait", home=client
        )
    finally:
        proxy.close()
    assert done.returncode == 0, done.stderr
    assert proxy.answers_lost == 1
    (note,) = NOTE.findall(done.stderr)
    assert "ESC does not answer" in note and "RemoteProtocolError" in note
    first, again = proxy.keys()
    assert first == again and re.fullmatch(r"[0-9a-f-]{36}", first)  # a uuid4, sent twice
    assert [(t["operation"], t["deployment"]) for t in transactions(running)] == [
        ("DEPLOY", "lost")
    ]


def test_a_write_to_a_stopped_api_waits_for_it_and_a_4xx_is_final(
    running: Path, tmp_path: Path
) -> None:
    node = NodeHome(running)
    request_stop(node, "escmanager")
    waiting = deploy_in_background(running, descriptor(tmp_path, "later"))
    try:
        time.sleep(1.5)  # refused a few times
        assert waiting.poll() is None, waiting.communicate()
        request_start(node, "escmanager")
        _, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr
    notes = NOTE.findall(stderr)
    assert len(notes) >= 2 and all("ConnectError" in n for n in notes), stderr

    started = time.monotonic()
    refused = escadm(
        "deployment", "deploy", descriptor(tmp_path, "bad", "no-such-image"), home=running
    )
    assert refused.returncode == 1 and "(422)" in refused.stderr
    assert not NOTE.findall(refused.stderr) and time.monotonic() - started < 15
    assert [t["deployment"] for t in transactions(running)] == ["later"]


def test_maintenance_is_waited_out_for_up_to_retry_seconds(running: Path, tmp_path: Path) -> None:
    assert escadm("op_mode", "set", "--mode=maintenance", home=running).returncode == 0
    set_retry_seconds(running, 1.5)
    started = time.monotonic()
    refused = escadm("deployment", "deploy", descriptor(tmp_path, "refused"), home=running)
    waited = time.monotonic() - started
    assert refused.returncode == 1 and "(503)" in refused.stderr
    notes = NOTE.findall(refused.stderr)
    assert len(notes) >= 2 and all("MAINTENANCE" in n for n in notes), refused.stderr
    assert 1.5 <= waited < 15

    set_retry_seconds(running, 60)
    waiting = deploy_in_background(running, descriptor(tmp_path, "after"))
    try:
        time.sleep(1.5)
        assert escadm("op_mode", "set", "--mode=operation", home=running).returncode == 0
        _, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, stderr
    assert NOTE.findall(stderr)
    assert [t["deployment"] for t in transactions(running)] == ["after"]


def test_no_node_running_in_the_home_is_said_at_once(home: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    result = escadm("deployment", "deploy", descriptor(tmp_path, "none"), home=home)
    assert result.returncode == 3 and f"no ESC node runs in {home}" in result.stderr
    assert not NOTE.findall(result.stderr) and time.monotonic() - started < 15
