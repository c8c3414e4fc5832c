"""MLLP over TLS with client-certificate authentication, and the client's retries: a real
listener on a real socket, certificates made for the test."""

from __future__ import annotations

import datetime as dt
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from integration.ingest import nak_for
from integration.mllp import MllpServer, server_tls_context
from integration.mllp_client import AckRejectedError, MllpClient, MllpClientError, ack_code
from tests.integration.test_mllp_server import MSG, echo_handler
from tests.support.mllp_thread import serving


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("test-ca", ca_key, None, ca=True)
    _write(d / "ca", ca, None)
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        _write(d / name, _cert(name, key, (ca.subject, ca_key)), key)
    return d


@pytest.fixture
def tls_port(pki: Path) -> Iterator[int]:
    ctx = server_tls_context(
        cert=pki / "server.crt", key=pki / "server.key", client_ca=pki / "ca.crt"
    )
    server = MllpServer(
        handler=echo_handler,
        nak=nak_for,
        host="127.0.0.1",
        port=0,
        max_frame=10_000,
        idle_timeout_s=5.0,
        ssl_context=ctx,
    )
    with serving(server) as port:
        yield port


def _client_ctx(pki: Path, *, with_cert: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if with_cert:
        ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    return ctx


def test_mutual_tls_peer_is_served(tls_port: int, pki: Path) -> None:
    ctx = _client_ctx(pki, with_cert=True)
    with MllpClient("localhost", tls_port, timeout_s=10, ssl_context=ctx) as c:
        assert ack_code(c.send(MSG % 1)) == "AA"
        assert ack_code(c.send(MSG % 2)) == "AA"


def test_peer_without_a_client_certificate_is_refused(tls_port: int, pki: Path) -> None:
    ctx = _client_ctx(pki, with_cert=False)
    with (
        pytest.raises((ssl.SSLError, OSError)),
        MllpClient("localhost", tls_port, timeout_s=10, ssl_context=ctx) as c,
    ):
        c.send(MSG % 3)


def test_plain_tcp_to_a_tls_listener_gets_no_ack(tls_port: int) -> None:
    with pytest.raises(MllpClientError), MllpClient("127.0.0.1", tls_port, timeout_s=5) as c:
        c.send(MSG % 4)


def test_deliver_retries_until_the_listener_is_back(tls_port: int, pki: Path) -> None:
    ctx = _client_ctx(pki, with_cert=True)
    sleeps: list[float] = []
    dead = MllpClient("localhost", 1, timeout_s=2, ssl_context=ctx)
    with pytest.raises(MllpClientError):
        dead.deliver(MSG % 5, attempts=3, backoff_s=0.01, sleep=sleeps.append)
    assert sleeps == [0.01, 0.02, 0.04]
    live = MllpClient("localhost", tls_port, timeout_s=10, ssl_context=ctx)
    assert ack_code(live.deliver(MSG % 6)) == "AA"
    with pytest.raises(AckRejectedError) as err:
        live.deliver((MSG % 7) + b"\rOBX|1|NA|I||" + b"1^" * 20_000)  # over the frame cap
    assert err.value.code == "AR"
    live.close()
