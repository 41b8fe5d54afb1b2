"""The VNF program of the local VIM: one VM = one process running this file.

Standard library only, started as `python -I -S vnf.py`, so it loads nothing
of ESC and stays small. It serves a health endpoint on 127.0.0.1 and
behaves as its image says:

  healthy              always answers 200
  crash-after:N        exits with code 1 after N seconds
  unhealthy-after:N    answers 503 after N seconds, process stays up
  slow-boot:N          answers 503 for the first N seconds (a slow boot), then 200

It holds an exclusive lock on its instance directory for its whole life:
two processes can never run one VM, and "is the VM running?" is answered
by the lock, not by a pid that may have been reused.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LOCK_WAIT_SECONDS = 3.0
EXIT_ALREADY_RUNNING = 3


def parse_image(image: str) -> tuple[str, float]:
    """('healthy', 0) | (KIND, N) for the KINDs above; ValueError otherwise."""
    if image == "healthy":
        return "healthy", 0.0
    kind, sep, value = image.partition(":")
    if sep and kind in ("crash-after", "unhealthy-after", "slow-boot"):
        seconds = float(value)
        if seconds >= 0 and seconds == seconds and seconds != float("inf"):
            return kind, seconds
    raise ValueError(image)


def write_atomic(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def process_start_ticks(pid: int) -> int:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def acquire_lock(instance_dir: Path) -> int:
    fd = os.open(instance_dir / "instance.lock", os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            # The controller probes the lock briefly to ask "running?": wait that out.
            if time.monotonic() > deadline:
                os.close(fd)
                raise
            time.sleep(0.05)


def make_handler(spec: dict, started: float, kind: str, after: float) -> type:
    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            uptime = time.monotonic() - started
            if self.path == "/health":
                healthy = not (
                    (kind == "unhealthy-after" and uptime >= after)
                    or (kind == "slow-boot" and uptime < after)
                )
                self._send(
                    200 if healthy else 503,
                    {
                        "status": "alive" if healthy else "unhealthy",
                        "vm_id": spec["vm_id"],
                        "name": spec["name"],
                    },
                )
            elif self.path == "/day0":
                self._send(200, spec.get("day0_config", {}))
            elif self.path == "/":
                self._send(200, {**spec, "uptime": uptime, "pid": os.getpid()})
            else:
                self._send(404, {"error": "not found"})

        def log_message(self, *_args: object) -> None:
            pass  # a VM's console is not an access log

    return Handler


def bind_server(instance_dir: Path, handler: type) -> ThreadingHTTPServer:
    """Bind the port used before when it is free, so a rebooted VM keeps its address."""
    port_file = instance_dir / "port"
    hint = int(port_file.read_text()) if port_file.exists() else 0
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    try:
        server = ThreadingHTTPServer(("127.0.0.1", hint), handler)
    except OSError:
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port_file.write_text(str(server.server_address[1]))
    return server


def serve(instance_dir: Path, ready_fd: int | None) -> int:
    spec = json.loads((instance_dir / "spec.json").read_text())
    kind, after = parse_image(spec["image"])
    try:
        acquire_lock(instance_dir)  # held, by its open descriptor, for the process's life
    except BlockingIOError:
        report(ready_fd, {"error": "instance already running"})
        return EXIT_ALREADY_RUNNING
    started = time.monotonic()
    server = bind_server(instance_dir, make_handler(spec, started, kind, after))
    port = server.server_address[1]
    write_atomic(
        instance_dir / "state.json",
        {
            "pid": os.getpid(),
            "port": port,
            "start_ticks": process_start_ticks(os.getpid()),
            "started_at": time.time(),
        },
    )
    # A VM keeps no state to flush: stop at once (the kernel releases the lock).
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    if kind == "crash-after":

        def crash() -> None:
            time.sleep(after)
            print(f"image {spec['image']}: crashing now", flush=True)
            os._exit(1)

        threading.Thread(target=crash, daemon=True).start()
    report(ready_fd, {"pid": os.getpid(), "port": port})
    print(f"VM {spec['name']} ({spec['vm_id']}) up on 127.0.0.1:{port}", flush=True)
    server.serve_forever()  # until SIGTERM; the lock goes with the process
    return 0


def report(ready_fd: int | None, message: dict) -> None:
    if ready_fd is not None:
        os.write(ready_fd, (json.dumps(message) + "\n").encode())
        os.close(ready_fd)


def detach(instance_dir: Path) -> int:
    """Fork the VM off (new session, stdio to console.log) and wait until it reports."""
    read_fd, write_fd = os.pipe()
    if os.fork() == 0:  # the VM itself
        os.close(read_fd)
        os.setsid()
        if os.fork() != 0:  # the second fork: the VM is no session leader, no child of ours
            os._exit(0)
        console = os.open(
            instance_dir / "console.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(console, 1)
        os.dup2(console, 2)
        try:
            code = serve(instance_dir, write_fd)
        except BaseException as exc:
            with contextlib.suppress(OSError):  # the launcher may be gone already
                report(write_fd, {"error": f"{exc.__class__.__name__}: {exc}"})
            code = 1
        os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as ready:
        line = ready.readline()
    message = json.loads(line) if line else {"error": "VM exited before it was ready"}
    if "error" in message:
        print(message["error"], file=sys.stderr)
        return EXIT_ALREADY_RUNNING if "already running" in message["error"] else 1
    print(json.dumps(message), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="A VM of ESC's local VIM.")
    parser.add_argument("--instance-dir", required=True, type=Path)
    parser.add_argument("--detach", action="store_true")
    args = parser.parse_args()
    if args.detach:
        return detach(args.instance_dir)
    return serve(args.instance_dir, None)


if __name__ == "__main__":
    sys.exit(main())
