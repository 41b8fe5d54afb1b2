"""The VNF program of the local VIM: one VM = one process running this file.

Standard library only, started as `python -I -S vnf.py`, so it loads nothing
of ESC and stays small. It serves HTTP on 127.0.0.1 (or the --address it is
given, when a VIM host serves it to other hosts) and behaves as its image
says:

  healthy              GET /health always answers 200
  crash-after:N        the process exits with code 1 N seconds after each boot
  unhealthy-after:N    GET /health answers 503 once the instance is N seconds old,
                       the process stays up; its "disk" has gone bad: a reboot
                       does not help, a redeploy (a new instance) does
  slow-boot:N          GET /health answers 503 for the first N seconds (a slow boot), then 200

N is a number of seconds >= 0 (e.g. 3 or 2.5). Other endpoints: GET /day0
(the day-0 configuration), GET / (the spec and the uptime), GET /metrics (the
load figure MONA's threshold metric reads) and PUT /load {"load": X} (tell the
VM which load to report; 0 after each boot). The server keeps connections
alive (HTTP/1.1), so a monitor polling every second reuses one connection.

Command line: vnf.py --instance-dir DIR [--address ADDR] [--detach]. DIR holds spec.json,
written by the driver: vm_id, name, image, flavor, day0_config. The VNF holds
an exclusive flock on DIR/instance.lock for its whole life: two processes can
never run one VM, and "is the VM running?" is answered by the lock, not by a
pid that may have been reused.

Once serving it records itself in DIR/state.json: pid, host, port, start_ticks (exact
start time, /proc/PID/stat field 22), create_time (the same as psutil's
Process.create_time()) and started_at (wall clock). DIR/port keeps the port,
reused on the next start when it is free.

With --detach the launched process forks the VM off into its own session
(stdio to DIR/console.log, reparented away from the caller), waits until it
reports ready, prints {"pid": .., "host": .., "port": ..} and exits 0; or prints the
error on stderr and exits non-zero (3: the instance is already running).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

LOCK_WAIT_SECONDS = 2.0
# Where a VM listens unless told otherwise: this host only (the standalone node).
DEFAULT_ADDRESS = "127.0.0.1"
EXIT_ALREADY_RUNNING = 3
IMAGE_KINDS = ("crash-after", "unhealthy-after", "slow-boot")
MAX_LOAD = 1_000_000.0
MAX_BODY = 1024
_SECONDS = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)\Z")


class AlreadyRunning(Exception):
    pass


def parse_image(image: str) -> tuple[str, float]:
    """('healthy', 0.0) or (KIND, N) for the images above; ValueError for anything else."""
    if image == "healthy":
        return "healthy", 0.0
    kind, sep, value = image.partition(":")
    # A strict pattern, not float(): "nan", "inf", "-0", " 1" and "1e9" are not durations.
    if sep and kind in IMAGE_KINDS and _SECONDS.match(value):
        return kind, float(value)
    raise ValueError(f"unknown image {image!r}")


def write_atomic(path: Path, data: dict[str, Any], durable: bool = False) -> None:
    """Readers see the old file or the new one, never a partial write."""
    # A writer's own name: two writers of one file never move each other's partial write.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out)
        if durable:
            out.flush()
            os.fsync(out.fileno())
    os.replace(tmp, path)


def process_start_ticks(pid: int) -> int:
    """Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).

    Exact and immune to wall-clock steps, so (pid, start ticks) names one process
    for good: a reused pid has other start ticks.
    """
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def boot_time() -> float:
    """Boot time in seconds since the epoch, as psutil.boot_time() computes it."""
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            if line.startswith("btime"):
                return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


class Reporter:
    """The pipe to the --detach launcher: one message, then closed (fd numbers get reused)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def send(self, message: dict[str, Any]) -> bool:
        """False when the launcher is gone (killed when its caller gave up waiting)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return True
        try:
            os.write(fd, (json.dumps(message) + "\n").encode())
            return True
        except OSError:
            return False
        finally:
            os.close(fd)


def acquire_lock(instance_dir: Path) -> int:
    """The instance lock, kept by its open descriptor until the process ends."""
    fd = os.open(instance_dir / "instance.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            # The driver probes the lock for an instant to ask "running?": wait that out;
            # a lock held for longer belongs to a VNF already running this instance.
            if time.monotonic() >= deadline:
                os.close(fd)
                raise AlreadyRunning(f"instance already running ({instance_dir})") from None
            time.sleep(0.02)


def make_handler(spec: dict[str, Any], kind: str, after: float, started: float) -> type:
    from http.server import BaseHTTPRequestHandler  # imported late: see main()

    identity = {"vm_id": spec.get("vm_id"), "name": spec.get("name")}
    # The instance's age counts from its creation (kept across reboots); a spec
    # written before created_at was recorded counts from this boot.
    born = spec.get("created_at") or time.time()
    load = [0.0]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: one connection per poller

        def do_GET(self) -> None:
            uptime = time.monotonic() - started
            if self.path == "/health":
                healthy = not (
                    (kind == "unhealthy-after" and time.time() - born >= after)
                    or (kind == "slow-boot" and uptime < after)
                )
                status = "alive" if healthy else "unhealthy"
                self._send(200 if healthy else 503, {"status": status, **identity})
            elif self.path == "/metrics":
                self._send(200, {"load": load[0], **identity})
            elif self.path == "/day0":
                self._send(200, spec.get("day0_config") or {})
            elif self.path == "/":
                self._send(200, {**spec, "uptime": round(uptime, 3), "pid": os.getpid()})
            else:
                self._send(404, {"error": f"no such endpoint {self.path}"})

        def do_PUT(self) -> None:
            if self.path != "/load":
                self._send(404, {"error": f"no such endpoint {self.path}"})
                return
            try:
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 < length <= MAX_BODY:
                    raise ValueError(f"body must be 1 to {MAX_BODY} bytes")
                value = json.loads(self.rfile.read(length))["load"]
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ValueError("load must be a number")
                if not 0 <= value <= MAX_LOAD:
                    raise ValueError(f"load must be 0 to {MAX_LOAD:g}")
            except (ValueError, KeyError, TypeError) as exc:
                self.close_connection = True  # the body may not have been read
                self._send(400, {"error": f'send {{"load": NUMBER}}: {exc}'})
                return
            load[0] = float(value)
            self._send(200, {"load": load[0], **identity})

        def _send(self, status: int, body: dict[str, Any]) -> None:
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")  # so the client does not reuse it
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            """No access log: health is polled every second, it would fill the console."""

    return Handler


def bind_server(instance_dir: Path, handler: type, host: str = DEFAULT_ADDRESS) -> Any:
    """Bind the port used before when it is free, so a rebooted VM keeps its address."""
    port_file = instance_dir / "port"
    try:
        hint = int(port_file.read_text())
    except (OSError, ValueError):
        hint = 0
    try:
        server = server_class(host)((host, hint), handler)
    except OSError:  # taken meanwhile by someone else: any free port will do
        server = server_class(host)((host, 0), handler)
    port = server.server_address[1]
    tmp = port_file.with_name(".port.tmp")
    tmp.write_text(str(port))
    os.replace(tmp, port_file)
    return server


def server_class(host: str) -> type:
    import socket
    import socketserver
    from http.server import ThreadingHTTPServer  # imported late: see main()

    def server_bind(self: ThreadingHTTPServer) -> None:
        # http.server names itself with socket.getfqdn(address): a reverse name lookup
        # that sends a query to the host's resolver and, where none answers, holds the
        # VM's start for its timeout. A VM is reached by its address.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return type(
        "VmHttpServer",
        (ThreadingHTTPServer,),
        {"address_family": family, "server_bind": server_bind},
    )


def http_address(host: str, port: int) -> str:
    """The URL a VM answers at (an IPv6 address in brackets)."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def stop_on_sigterm(signum: int, frame: object) -> None:
    # os.write, not print: the handler may interrupt a print holding stdout's buffer.
    os.write(1, b"SIGTERM: stopping\n")
    # Nothing to flush or remove: exiting releases the lock; the records stay for a restart.
    os._exit(0)


def crash_later(image: str, after: float) -> None:
    def crash() -> None:
        print(f"image {image}: crashing now", flush=True)
        os._exit(1)

    timer = threading.Timer(after, crash)
    timer.daemon = True
    timer.start()


def serve(instance_dir: Path, reporter: Reporter, host: str = DEFAULT_ADDRESS) -> int:
    acquire_lock(instance_dir)
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    spec = json.loads((instance_dir / "spec.json").read_text())
    kind, after = parse_image(spec["image"])
    started = time.monotonic()
    server = bind_server(instance_dir, make_handler(spec, kind, after, started), host)
    pid, port = os.getpid(), server.server_address[1]
    ticks = process_start_ticks(pid)
    write_atomic(
        instance_dir / "state.json",
        {
            "pid": pid,
            "host": host,
            "port": port,
            "start_ticks": ticks,
            # What psutil.Process(pid).create_time() returns, for tools that compare with it.
            "create_time": boot_time() + ticks / os.sysconf("SC_CLK_TCK"),
            "started_at": time.time(),
        },
    )
    if not reporter.send({"pid": pid, "host": host, "port": port}):
        # The caller was told the start failed (or will be): running anyway would leave
        # a VM nobody knows of.
        print("the launcher is gone (it timed out?): not starting", flush=True)
        return 1
    print(f"VM {spec.get('name')} ({spec.get('vm_id')}) up on {host}:{port}", flush=True)
    if kind == "crash-after":
        # Armed only once ready was reported, so even crash-after:0 starts successfully.
        crash_later(spec["image"], after)
    server.serve_forever()
    return 0


def redirect_stdio(console: Path) -> None:
    log_fd = os.open(console, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    # Replacing 1 and 2 also lets go of the launcher's pipes, so its caller sees EOF.
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.close(null_fd)


def become_vm(instance_dir: Path, ready_fd: int, host: str) -> NoReturn:
    """In the first child: a new session, a second fork, then serve as the VM."""
    reporter = Reporter(ready_fd)
    code = 1
    try:
        os.setsid()
        if os.fork() != 0:
            os._exit(0)  # the VM is now no session leader and no child of the launcher
        os.chdir("/")  # pin no working directory of the caller
        redirect_stdio(instance_dir / "console.log")
        code = serve(instance_dir, reporter, host)
    except AlreadyRunning as exc:
        code = EXIT_ALREADY_RUNNING
        reporter.send({"error": str(exc), "exit": code})
    except BaseException as exc:
        import traceback  # only on this path: it is not small

        traceback.print_exc()
        reporter.send({"error": f"{exc.__class__.__name__}: {exc}", "exit": code})
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def detach(instance_dir: Path, host: str) -> int:
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_fd)
        become_vm(instance_dir, write_fd, host)
    os.close(write_fd)
    os.waitpid(child, 0)  # the first child exits at once: reap it, leave no zombie
    with os.fdopen(read_fd) as ready:
        line = ready.readline()
    message = json.loads(line) if line else {"error": "the VM exited before it was ready"}
    if "error" in message:
        print(f"{message['error']}; see {instance_dir / 'console.log'}", file=sys.stderr)
        return int(message.get("exit", 1))
    print(json.dumps(message), flush=True)
    return 0


def main() -> int:
    # http.client (under http.server) imports ssl when it can, and OpenSSL would then be
    # the largest thing in this process (about 4 MB resident), for a VM serving plain
    # HTTP. Marking ssl "cannot import" is only done here, in the VNF's own
    # process: the driver imports this module too, and needs its ssl.
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    parser = argparse.ArgumentParser(description="A VM of ESC's local VIM.")
    parser.add_argument("--instance-dir", required=True, type=Path)
    parser.add_argument(
        "--address", default=DEFAULT_ADDRESS, help="the IP address to serve on (127.0.0.1)"
    )
    parser.add_argument("--detach", action="store_true", help="run in the background")
    args = parser.parse_args()
    instance_dir = args.instance_dir.absolute()
    if args.detach:
        return detach(instance_dir, args.address)
    try:
        return serve(instance_dir, Reporter(None), args.address)
    except AlreadyRunning as exc:
        print(exc, file=sys.stderr)
        return EXIT_ALREADY_RUNNING


if __name__ == "__main__":
    sys.exit(main())
