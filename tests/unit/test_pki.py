"""The CA: made once and kept, the operator's own loaded, certificates issued with the
right identity and usage, and real TLS handshakes that accept and refuse as they should."""

from __future__ import annotations

import asyncio
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from cloudlet import pki
from cloudlet.errors import ConfigError, InvalidInputError


def test_made_at_first_start_then_kept(tmp_path: Path) -> None:
    ca = pki.CertificateAuthority.load_or_create(None, None, tmp_path)
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    again = pki.CertificateAuthority.load_or_create(None, None, tmp_path)
    assert again.fingerprint == ca.fingerprint
    assert ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_operator_ca_is_used(tmp_path: Path) -> None:
    own = pki.CertificateAuthority.generate("Operator CA")
    cert, key = tmp_path / "op.crt", tmp_path / "op.key"
    cert.write_bytes(pki.cert_pem(own.cert))
    pki.write_private(key, pki.key_pem(own.key))
    ca = pki.CertificateAuthority.load_or_create(cert, key, tmp_path / "data")
    assert ca.fingerprint == own.fingerprint
    assert not (tmp_path / "data" / "ca.key").exists()


def test_operator_ca_mistakes_are_config_errors(tmp_path: Path) -> None:
    own, other = pki.CertificateAuthority.generate(), pki.CertificateAuthority.generate()
    cert, key = tmp_path / "op.crt", tmp_path / "op.key"
    cert.write_bytes(pki.cert_pem(own.cert))
    key.write_bytes(pki.key_pem(other.key))
    with pytest.raises(ConfigError, match="does not belong"):
        pki.CertificateAuthority.load_or_create(cert, key, tmp_path)
    with pytest.raises(ConfigError, match="both"):
        pki.CertificateAuthority.load_or_create(cert, None, tmp_path)
    with pytest.raises(ConfigError):
        pki.CertificateAuthority.load_or_create(cert, tmp_path / "missing.key", tmp_path)
    leaf_key, leaf_cert = own.server_identity(["localhost"], 60)
    cert.write_bytes(leaf_cert)
    key.write_bytes(leaf_key)
    with pytest.raises(ConfigError, match="not a CA"):
        pki.CertificateAuthority.load_or_create(cert, key, tmp_path)


def test_site_certificate_names_the_site_not_what_the_csr_asks() -> None:
    ca = pki.CertificateAuthority.generate()
    key = pki.new_key()
    csr = pki.load_csr(pki.make_csr(key, "controller.example", ["controller.example"]).decode())
    issued = ca.issue_site(csr, "site-id-1", "edge-1", validity_s=120)
    cert = issued.cert
    assert pki.peer_cert(cert.public_bytes(pki.serialization.Encoding.DER)) == (
        "site-id-1",
        issued.serial,
        cert.not_valid_after_utc.timestamp(),
    )
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:cloudlet:site:edge-1"]
    assert sans.get_values_for_type(x509.DNSName) == []
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime.total_seconds() == pytest.approx(120 + pki.BACKDATE.total_seconds(), abs=2)


def test_ed25519_csr_is_accepted() -> None:
    ca = pki.CertificateAuthority.generate()
    key = ed25519.Ed25519PrivateKey.generate()
    csr = pki.load_csr(pki.make_csr(key, "x").decode())
    assert ca.issue_site(csr, "s", "n", 60).cert.public_key().public_bytes_raw() == (
        key.public_key().public_bytes_raw()
    )


def test_bad_csrs_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        pki.load_csr("not a csr")
    good = pki.make_csr(pki.new_key(), "x").decode()
    tampered = good.replace(good.splitlines()[3][:10], "A" * 10)
    with pytest.raises(InvalidInputError):
        pki.load_csr(tampered)


def test_server_certificate_carries_ip_and_dns_names() -> None:
    ca = pki.CertificateAuthority.generate()
    csr = pki.load_csr(pki.make_csr(pki.new_key(), "site", ["127.0.0.1", "edge.local"]).decode())
    assert pki.csr_names(csr) == ["edge.local", "127.0.0.1"]
    cert = ca.issue_server(csr.public_key(), pki.csr_names(csr), 60).cert
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert sans.get_values_for_type(x509.DNSName) == ["edge.local"]
    with pytest.raises(InvalidInputError):
        ca.issue_server(csr.public_key(), [], 60)


def test_fingerprint_compare_ignores_colons_and_case() -> None:
    ca = pki.CertificateAuthority.generate()
    fp = ca.fingerprint
    spaced = ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)).upper()
    assert pki.same_fingerprint(ca.cert, spaced)
    assert not pki.same_fingerprint(pki.CertificateAuthority.generate().cert, fp)


# -- real handshakes ------------------------------------------------------------------------


def _files(tmp_path: Path, name: str, key: bytes, cert: bytes) -> tuple[Path, Path]:
    kp, cp = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    kp.write_bytes(key)
    cp.write_bytes(cert)
    return cp, kp


def _client_identity(ca: pki.CertificateAuthority, tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = pki.new_key()
    csr = pki.load_csr(pki.make_csr(key, name).decode())
    issued = ca.issue_site(csr, f"id-{name}", name, 60)
    return _files(tmp_path, name, pki.key_pem(key), pki.cert_pem(issued.cert))


async def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext
) -> tuple[bool, pki.PeerCert | None]:
    seen: list[pki.PeerCert | None] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        seen.append(pki.peer_cert(der) if der else None)
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server)
    port = srv.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        data = await reader.read(2)
        writer.close()
        return data == b"ok", seen[0] if seen else None
    except (ssl.SSLError, ConnectionError):
        return False, None
    finally:
        srv.close()


def test_handshakes(tmp_path: Path) -> None:
    ca, other = pki.CertificateAuthority.generate(), pki.CertificateAuthority.generate()
    (tmp_path / "ca.crt").write_bytes(pki.cert_pem(ca.cert))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=tmp_path / "ca.crt")
    server.verify_mode = ssl.CERT_OPTIONAL
    server.load_cert_chain(*_files(tmp_path, "srv", *ca.server_identity(["127.0.0.1"], 60)))

    def client(identity: tuple[Path, Path] | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=tmp_path / "ca.crt")
        if identity:
            ctx.load_cert_chain(*identity)
        return ctx

    ok, peer = asyncio.run(_handshake(server, client(_client_identity(ca, tmp_path, "a"))))
    assert ok and peer is not None and peer.site_id == "id-a"
    # No client certificate: the TLS layer lets it through, the app decides.
    assert asyncio.run(_handshake(server, client(None))) == (True, None)
    # One from another CA: refused in the handshake.
    assert asyncio.run(_handshake(server, client(_client_identity(other, tmp_path, "b"))))[0] is (
        False
    )
    # A site certificate cannot pose as a server: clientAuth only.
    a_cert, a_key = _client_identity(ca, tmp_path, "c")
    fake = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    fake.load_cert_chain(a_cert, a_key)
    assert asyncio.run(_handshake(fake, client(None)))[0] is False
