"""A private PostgreSQL cluster with TLS on, its certificate from a test CA.

Started with the machine's PostgreSQL (Debian's postgresql package; pgserver's binaries
are built without TLS) by initdb and pg_ctl, as the ``postgres`` OS user when the tests
run as root. TCP on 127.0.0.1 only; the server certificate names ``localhost`` and nothing else, so
connecting to ``127.0.0.1`` is the wrong-hostname case.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pg8000.native
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SERVER_NAME = "localhost"
USER = "ingest"
PASSWORD = "tls-Pa55word!"


@dataclass(frozen=True)
class TlsCluster:
    port: int
    ca_bundle: Path  # the CA that signed the server's certificate
    other_ca_bundle: Path  # a CA that signed nothing of this server

    def settings(self, host: str = SERVER_NAME, **overrides: Any) -> dict[str, Any]:
        return {
            "host": host,
            "port": self.port,
            "user": USER,
            "password": PASSWORD,
            "database": "postgres",
            **overrides,
        }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def postgres_bin() -> Path:
    """The newest installed PostgreSQL's binaries (Debian's layout), or skip."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    if not found:
        pytest.skip("needs a PostgreSQL with TLS support in /usr/lib/postgresql (initdb, pg_ctl)")
    return found[-1].parent


def _as_server_user(folder: Path) -> dict[str, Any]:
    """subprocess arguments that run PostgreSQL as the postgres OS user when we are root."""
    if os.geteuid() != 0:
        return {}
    entry = pwd.getpwnam("postgres")
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return {"user": entry.pw_name}


def _pg(tool: str, *args: str, **kwargs: Any) -> None:
    subprocess.run(
        [str(postgres_bin() / tool), *args], check=True, capture_output=True, text=True, **kwargs
    )


def start_tls_cluster() -> Iterator[TlsCluster]:
    """Yield a running cluster; stop and delete it afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="totes-tls-pg-"))
    folder.chmod(0o755)
    data = folder / "data"
    try:
        ca_key, other_key, server_key = _key(), _key(), _key()
        ca = _certificate("totes-ingest test CA", ca_key, "totes-ingest test CA", ca_key, ca=True)
        other = _certificate("another CA", other_key, "another CA", other_key, ca=True)
        server = _certificate(SERVER_NAME, server_key, "totes-ingest test CA", ca_key, ca=False)
        (folder / "ca.pem").write_bytes(_pem(ca))
        (folder / "other-ca.pem").write_bytes(_pem(other))

        user = _as_server_user(folder)
        _pg("initdb", "-D", str(data), "-U", "postgres", "-E", "UTF8", "--auth-local=trust",
            "--auth-host=scram-sha-256", **user)  # fmt: skip
        (data / "server.crt").write_bytes(_pem(server))
        (data / "server.key").write_bytes(
            server_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (data / "server.key").chmod(0o600)
        port = free_port()
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                f"unix_socket_directories = '{folder}'\nssl = on\n"
                "ssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
            )
        user = _as_server_user(folder)
        _pg("pg_ctl", "-D", str(data), "-l", str(folder / "log"), "-w", "start", **user)
        try:
            admin = pg8000.native.Connection(
                "postgres", unix_sock=str(folder / f".s.PGSQL.{port}"), database="postgres"
            )
            admin.run(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
            admin.close()
            yield TlsCluster(port, folder / "ca.pem", folder / "other-ca.pem")
        finally:
            _pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", **user)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
