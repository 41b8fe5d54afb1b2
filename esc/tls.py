"""TLS for the northbound API and for outgoing notifications.

The node serves HTTPS with `[api] tls_cert` / `tls_key`; `escadm init --tls`
makes a self-signed pair. Clients verify by default: escadm trusts the node's
own certificate (a self-signed certificate is its own CA; a CA-issued one is
pinned) unless `--ca` names the CA to trust instead. Every failure becomes a
message naming the file or the problem and the fix.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from esc.config import ConfigError, NodeHome, Settings

if TYPE_CHECKING:
    from cryptography import x509

# cryptography is imported where certificates are made or read, not at module level:
# it costs every escadm command a quarter of a second, and most of them only verify
# (the ssl module does that).

# Long enough not to surprise an operator within a release cycle, short enough to
# be below the 825 days most TLS clients accept for a server certificate.
SELF_SIGNED_DAYS = 825
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"


class TlsError(ConfigError):
    """A certificate or key cannot be used; the message names the file and the fix."""


def _general_name(host: str) -> x509.GeneralName:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def api_hosts(settings: Settings) -> list[str]:
    """The names a client may reach the API by: loopback, the node name, the API host."""
    hosts = ["127.0.0.1", "localhost", settings.node.name]
    if settings.api.host not in ("0.0.0.0", "::", ""):
        hosts.append(settings.api.host)
    if settings.ha.enabled and settings.ha.address and settings.ha.kad_vip:
        hosts += [str(settings.ha.kad_vip.ip), str(settings.ha.address)]
    # A certificate names hosts in ASCII (IDNA A-labels); other node names are left out.
    return list(dict.fromkeys(h for h in hosts if h and h.isascii()))


def generate_self_signed(
    cert_file: Path,
    key_file: Path,
    hosts: list[str],
    *,
    not_before: datetime | None = None,
    days: int = SELF_SIGNED_DAYS,
) -> x509.Certificate:
    """Write a self-signed certificate for `hosts` and its key (mode 0600, never
    overwritten: an existing key is the operator's)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or datetime.now(UTC) - timedelta(minutes=5)  # tolerate clock skew
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])])
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), False)
        .sign(key, hashes.SHA256())
    )
    key_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise TlsError(
            f"{key_file} already exists: remove it to make a new self-signed certificate, "
            "or give that pair with --tls-cert and --tls-key"
        ) from None
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert


def _read(path: Path, what: str, setting: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsError(
            f"cannot read the TLS {what} {path} ({exc.strerror}): fix [api] {setting} in "
            "esc.toml, or make the file readable by the node's owner"
        ) from None


def check_server_files(cert_file: Path, key_file: Path, now: datetime | None = None) -> None:
    """Refuse a certificate/key pair the API cannot serve: unreadable, not PEM,
    not yet or no longer valid, or a key that is not the certificate's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    renew = (
        "renew it, or make a new self-signed one (openssl, or escadm init --tls on a "
        "scratch home) and point [api] tls_cert/tls_key at it"
    )
    cert_pem = _read(cert_file, "certificate", "tls_cert")
    key_pem = _read(key_file, "key", "tls_key")
    try:
        cert = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError:
        raise TlsError(
            f"{cert_file} is not a PEM certificate: [api] tls_cert must name one "
            "(-----BEGIN CERTIFICATE-----)"
        ) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        reason = "it is encrypted" if isinstance(exc, TypeError) else "it is not a PEM key"
        raise TlsError(
            f"{key_file} cannot be used as the TLS key ({reason}): [api] tls_key must name "
            "an unencrypted PEM private key"
        ) from None
    now = now or datetime.now(UTC)
    if cert.not_valid_after_utc <= now:
        raise TlsError(
            f"the certificate {cert_file} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} "
            f"UTC: {renew}"
        )
    if cert.not_valid_before_utc > now:
        raise TlsError(
            f"the certificate {cert_file} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC: check the clock, or {renew}"
        )
    if key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise TlsError(
            f"the key {key_file} is not the key of the certificate {cert_file}: point "
            "[api] tls_key at the key the certificate was issued for"
        )


def server_files(home: NodeHome, settings: Settings) -> tuple[Path, Path] | None:
    """The checked (certificate, key) the API serves, or None for plain HTTP."""
    files = home.tls_files(settings)
    if files is not None:
        check_server_files(*files)
    return files


def load_certificates(pem: str) -> list[x509.Certificate]:
    """The certificates of a PEM bundle; ValueError naming the problem if it holds none."""
    from cryptography import x509

    if "-----BEGIN CERTIFICATE-----" not in pem:
        raise ValueError("not a PEM certificate bundle (no -----BEGIN CERTIFICATE----- line)")
    try:
        return x509.load_pem_x509_certificates(pem.encode())
    except ValueError as exc:
        raise ValueError(f"not a valid PEM certificate bundle: {exc}") from None


def trust_context(*, cafile: Path | None = None, cadata: str | None = None) -> ssl.SSLContext:
    """A verifying client context that trusts only the given certificates. Partial
    chains are accepted, so a CA-issued server certificate can be trusted by itself."""
    context = ssl.create_default_context(
        cafile=str(cafile) if cafile else None, cadata=cadata or None
    )
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def client_verify(
    home: NodeHome, settings: Settings, ca: Path | None = None
) -> ssl.SSLContext | bool:
    """How escadm verifies the node: `ca`, else the node's own certificate."""
    files = home.tls_files(settings)
    if files is None:
        return True  # plain HTTP: nothing to verify
    cafile, setting = (ca, "--ca") if ca else (files[0], "[api] tls_cert")
    _read(cafile, "CA certificate", setting)
    try:
        return trust_context(cafile=cafile)
    except ssl.SSLError:
        raise TlsError(
            f"{cafile} is not a PEM certificate: give {setting} the CA (or the certificate) "
            "the node's API is served with"
        ) from None


def trusted_ca(home: NodeHome, settings: Settings, ca: Path | None = None) -> str:
    """The file a client trusts, as named in its errors."""
    own = home.tls_files(settings)
    return str(ca or (own[0] if own else ""))


def certificate_problem(exc: BaseException, url: str, trusted: str) -> str | None:
    """What is wrong with the server's certificate when that made `exc`, else None."""
    refused = verify_failure(exc)
    return describe_verify_failure(refused, url, trusted) if refused else None


def verify_failure(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification error behind an httpx transport error, if any."""
    seen: BaseException | None = exc
    for _ in range(10):  # a cause chain is short; bounded in case of a cycle
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


# OpenSSL's X509_V_ERR_* codes the operator can act on.
_EXPIRED = 10
_NOT_YET_VALID = 9
_HOST_MISMATCH = {62, 64}  # host name, IP address
_UNTRUSTED = {2, 18, 19, 20, 21}


def describe_verify_failure(error: ssl.SSLCertVerificationError, url: str, ca: str) -> str:
    """One line: what is wrong with the server's certificate and what to do."""
    code = error.verify_code
    if code == _EXPIRED:
        return (
            f"the certificate of {url} has expired: renew the node's [api] tls_cert and restart ESC"
        )
    if code == _NOT_YET_VALID:
        return f"the certificate of {url} is not valid yet: check this host's clock"
    if code in _HOST_MISMATCH:
        return (
            f"the certificate of {url} is not issued for that host ({error.verify_message}): "
            "use a certificate whose names include the [api] host, or set [api] host to one "
            "of its names"
        )
    if code in _UNTRUSTED:
        return (
            f"the certificate of {url} is not signed by {ca} ({error.verify_message}): give "
            "--ca the CA that issued the node's certificate"
        )
    return f"the certificate of {url} is refused: {error.verify_message}"
