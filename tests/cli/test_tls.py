"""The API over HTTPS: `escadm init --tls`, escadm verifying the node's certificate,
and certificates that cannot be served refused at start."""

from __future__ import annotations

import json
import ssl
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import escadm, free_port
from cryptography import x509

from esc.config import ConfigError, NodeHome, Settings
from esc.tls import TlsError, check_server_files, generate_self_signed


def make_pair(directory: Path, hosts: list[str], **validity) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    generate_self_signed(cert, key, hosts, **validity)
    return cert, key


def expired_pair(directory: Path) -> tuple[Path, Path]:
    long_ago = datetime.now(UTC) - timedelta(days=400)
    return make_pair(directory, ["127.0.0.1", "localhost"], not_before=long_ago, days=30)


def init(home: Path, *args: str) -> dict:
    result = escadm("init", "--api-port", str(free_port()), "--json", *args, home=home)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def assert_clear_refusal(result, code: int, *words: str) -> None:
    """One `Error: …` line naming the problem, no traceback."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("Error: "), result.stderr
    for word in words:
        assert word in line, line


@pytest.fixture
def tls_home(tmp_path: Path) -> Iterator[tuple[Path, dict]]:
    home = tmp_path / "home"
    created = init(home, "--tls", "--node-name", "esc-test-node")
    yield home, created
    escadm("stop", home=home)


def test_init_tls_makes_a_self_signed_certificate_for_the_api_host(tmp_path: Path) -> None:
    home = tmp_path / "home"
    created = init(home, "--tls", "--node-name", "esc-test-node")
    assert created["api_url"].startswith("https://127.0.0.1:")
    settings = NodeHome(home).load()
    assert (settings.api.tls_cert, settings.api.tls_key) == ("tls/cert.pem", "tls/key.pem")
    assert stat.S_IMODE((home / "tls" / "key.pem").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((home / "tls" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1"}
    assert set(names.get_values_for_type(x509.DNSName)) == {"localhost", "esc-test-node"}
    assert cert.issuer == cert.subject  # self-signed: it is its own CA
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert 365 <= days <= 825


@pytest.mark.slow
def test_escadm_talks_https_and_verifies_the_node(tls_home, tmp_path: Path) -> None:
    home, created = tls_home
    started = escadm("start", home=home)
    assert started.returncode == 0, started.stdout + started.stderr
    status = escadm("status", home=home)
    assert (status.returncode, status.stdout) == (0, "ESC status=0 ESC Standalone Healthy\n")
    health = escadm("health", home=home)
    assert (health.returncode, health.stdout) == (0, "ESC HEALTH PASSED\n")
    listed = escadm("deployment", "list", home=home)
    assert (listed.returncode, listed.stdout) == (0, "No deployments\n")
    # --ca naming the node's own certificate is the same trust, said explicitly.
    cert = home / "tls" / "cert.pem"
    assert escadm("deployment", "list", "--ca", str(cert), home=home).returncode == 0

    url = created["api_url"]
    auth = ("admin", created["admin_password"])
    with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), auth=auth) as client:
        assert client.get(f"{url}/v0/deployments").status_code == 200
    with pytest.raises(httpx.TransportError):  # HTTPS only: plain HTTP is not served
        httpx.get(url.replace("https://", "http://") + "/esc/health", timeout=5)

    other, _ = make_pair(tmp_path / "other", ["127.0.0.1", "localhost"])
    wrong = escadm("deployment", "list", "--ca", str(other), home=home)
    assert_clear_refusal(wrong, 3, "not signed by", str(other), "--ca")
    status = escadm("status", "--ca", str(other), home=home)
    assert status.returncode == 1
    reason, last = status.stdout.splitlines()
    assert reason.startswith("api: the certificate of") and "not signed by" in reason
    assert last == "ESC status=1 ESC Standalone Unhealthy"
    unhealthy = escadm("health", "--ca", str(other), home=home)
    assert unhealthy.returncode == 1
    assert "api: the certificate of" in unhealthy.stdout and "not signed by" in unhealthy.stdout
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("not a certificate\n")
    assert_clear_refusal(
        escadm("deployment", "list", "--ca", str(not_pem), home=home), 2, "not a PEM certificate"
    )


@pytest.mark.slow
def test_a_certificate_for_another_host_is_refused_by_escadm(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path / "pki", ["elsewhere.example"])
    home = tmp_path / "home"
    init(home, "--tls-cert", str(cert), "--tls-key", str(key))
    assert NodeHome(home).load().api.tls_cert == str(cert)  # the operator's files, in place
    try:
        # It starts, but escadm says at once that it cannot trust it rather than wait.
        started = escadm("start", home=home)
        assert_clear_refusal(started, 1, "cannot be trusted", "not issued for that host")
        refused = escadm("deployment", "list", home=home)
        assert_clear_refusal(refused, 3, "not issued for that host", "[api] host")
    finally:
        escadm("stop", home=home)


def test_expired_or_mismatched_certificates_are_refused_at_start(tls_home, tmp_path) -> None:
    home, _ = tls_home
    node_cert, node_key = home / "tls" / "cert.pem", home / "tls" / "key.pem"
    good_cert = node_cert.read_bytes()

    expired_cert, _ = expired_pair(tmp_path / "expired")
    node_cert.write_bytes(expired_cert.read_bytes())  # the node's key no longer matches either
    for command in ("start", "run"):
        assert_clear_refusal(escadm(command, home=home, timeout=60), 2, str(node_cert), "expired")

    other_cert, _ = make_pair(tmp_path / "other", ["127.0.0.1"])
    node_cert.write_bytes(other_cert.read_bytes())
    for command in ("start", "run"):
        assert_clear_refusal(
            escadm(command, home=home, timeout=60), 2, str(node_key), "is not the key of"
        )
    assert escadm("status", home=home).returncode == 3  # nothing was left running

    node_cert.write_bytes(good_cert)
    node_key.unlink()
    assert_clear_refusal(escadm("start", home=home), 2, str(node_key), "cannot read")


def test_init_refuses_an_unusable_operator_certificate(tmp_path: Path) -> None:
    expired_cert, expired_key = expired_pair(tmp_path / "expired")
    other_cert, _ = make_pair(tmp_path / "other", ["127.0.0.1"])
    home = tmp_path / "home"
    cases = [
        (["--tls-cert", str(expired_cert), "--tls-key", str(expired_key)], "expired"),
        (["--tls-cert", str(other_cert), "--tls-key", str(expired_key)], "is not the key of"),
        (["--tls-cert", str(other_cert)], "--tls-key"),
        (["--tls", "--tls-cert", str(other_cert), "--tls-key", str(expired_key)], "not both"),
    ]
    for args, words in cases:
        result = escadm("init", "--api-port", str(free_port()), *args, home=home)
        assert_clear_refusal(result, 2, words)
        assert not home.exists()  # refused before anything was created


def test_check_server_files_names_the_problem(tmp_path: Path) -> None:
    cert, key = make_pair(tmp_path / "pki", ["127.0.0.1"])
    check_server_files(cert, key)  # a good pair passes
    with pytest.raises(TlsError, match="not a PEM certificate"):
        check_server_files(key, key)
    with pytest.raises(TlsError, match="not a PEM key"):
        check_server_files(cert, cert)
    later = datetime.now(UTC) + timedelta(days=826)
    with pytest.raises(TlsError, match="expired on"):
        check_server_files(cert, key, now=later)
    with pytest.raises(TlsError, match="not valid before"):
        check_server_files(cert, key, now=datetime.now(UTC) - timedelta(days=1))
    with pytest.raises(TlsError, match="already exists"):  # an existing key is never replaced
        generate_self_signed(cert, key, ["127.0.0.1"])
    check_server_files(cert, key)


def test_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    home = NodeHome(tmp_path)
    home.config_file.write_text('[api]\ntls_cert = "tls/cert.pem"\n')
    with pytest.raises(ConfigError, match="set both tls_cert and tls_key"):
        home.load()
    assert Settings().api.scheme == "http"


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"[]")

    def log_message(self, *_args: object) -> None:
        pass


def test_escadm_refuses_an_expired_certificate_clearly(tmp_path: Path) -> None:
    """A certificate that expires while the node runs: the client says so."""
    home = tmp_path / "home"
    init(home, "--tls")
    settings = NodeHome(home).load()
    cert, key = expired_pair(tmp_path / "expired")
    (home / "tls" / "cert.pem").write_bytes(cert.read_bytes())
    server = ThreadingHTTPServer(("127.0.0.1", settings.api.port), _Answer)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        refused = escadm("deployment", "list", home=home, timeout=30)
        assert_clear_refusal(refused, 3, "has expired", "renew")
    finally:
        server.shutdown()
        server.server_close()
