"""The fleet's certificate authority and the certificates it issues (``cryptography``).

The controller holds the CA: it signs its own server certificate, each site's client
certificate (CN: the site id, SAN ``urn:cloudlet:site:<name>``, clientAuth only) and each
site-local API's server certificate (SANs: the addresses the site asked for, serverAuth
only). Agents make their keys (ECDSA P-256) and send certificate signing requests; the
private keys never leave the host that made them. The controller imports
:class:`CertificateAuthority`; the agent the key, CSR and fingerprint helpers.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloudlet.errors import ConfigError, InvalidInputError

#: URI SAN prefix naming a site in its client certificate.
SITE_URI = "urn:cloudlet:site:"
#: Clock skew tolerated: certificates start this long before they are issued.
BACKDATE = dt.timedelta(minutes=5)

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class PeerCert(NamedTuple):
    """What the controller needs of a verified client certificate, parsed once per
    connection."""

    site_id: str
    serial: str
    not_after: float


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_key(pem: bytes) -> PrivateKey:
    """Raises ConfigError unless ``pem`` is an unencrypted EC or Ed25519 private key."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a usable PEM private key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ConfigError("the key must be ECDSA or Ed25519")
    return key


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(pem: bytes) -> x509.Certificate:
    """Raises InvalidInputError unless ``pem`` is a PEM certificate."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise InvalidInputError(f"not a PEM certificate: {exc}") from exc


def fingerprint(cert: x509.Certificate) -> str:
    """The SHA-256 of the certificate's DER, as lowercase hex (what ``--ca-fingerprint``
    takes; colons and case do not matter there)."""
    return cert.fingerprint(hashes.SHA256()).hex()


def same_fingerprint(cert: x509.Certificate, expected: str) -> bool:
    return fingerprint(cert) == expected.replace(":", "").strip().lower()


def _hash_for(key: PrivateKey) -> hashes.SHA256 | None:
    return None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()


def _sans(names: Iterable[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(n.strip("[]") for n in names if n):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def make_csr(key: PrivateKey, common_name: str, names: Iterable[str] = ()) -> bytes:
    """A PEM certificate signing request for ``key`` (SANs: ``names``, IPs or DNS)."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    )
    if sans := _sans(names):
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, _hash_for(key)).public_bytes(serialization.Encoding.PEM)


def load_csr(pem: str) -> x509.CertificateSigningRequest:
    """Raises InvalidInputError unless ``pem`` is a PEM CSR whose signature checks."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
        valid = csr.is_signature_valid
        public = csr.public_key()
    except ValueError as exc:
        raise InvalidInputError(f"not a usable certificate signing request: {exc}") from exc
    if not valid:
        raise InvalidInputError("the certificate signing request's signature does not check")
    if not isinstance(public, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise InvalidInputError("the CSR's key must be ECDSA (P-256) or Ed25519")
    return csr


def csr_names(csr: x509.CertificateSigningRequest) -> list[str]:
    """The DNS names and IP addresses a CSR asks for."""
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*ext.get_values_for_type(x509.DNSName)] + [
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    ]


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` with mode 0600, atomically (a temporary file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def peer_cert(der: bytes) -> PeerCert | None:
    """The site a (TLS-verified) client certificate names, or None if it names none."""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    return PeerCert(
        str(names[0].value), format(cert.serial_number, "x"), cert.not_valid_after_utc.timestamp()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Issued:
    """A certificate just issued, with what the controller records of it."""

    cert: x509.Certificate

    @property
    def pem(self) -> str:
        return cert_pem(self.cert).decode()

    @property
    def serial(self) -> str:
        return format(self.cert.serial_number, "x")

    @property
    def not_after(self) -> dt.datetime:
        return self.cert.not_valid_after_utc


class CertificateAuthority:
    """A CA key and its self-signed certificate."""

    def __init__(self, key: PrivateKey, cert: x509.Certificate) -> None:
        if cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise ConfigError("the CA certificate does not belong to the CA key")
        self.key = key
        self.cert = cert

    @classmethod
    def generate(cls, common_name: str = "Cloudlet CA", days: int = 3650) -> CertificateAuthority:
        key = new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    @classmethod
    def load_or_create(
        cls, cert_file: Path | None, key_file: Path | None, data_dir: Path
    ) -> CertificateAuthority:
        """The operator's CA (both files given), else the one in ``data_dir``, made at
        first start (``ca.crt``, and ``ca.key`` with mode 0600).

        Raises:
            ConfigError: only one of the files given, a file missing or unusable, or the
                certificate not the key's, or not a CA.
        """
        if (cert_file is None) != (key_file is None):
            raise ConfigError("give both tls.ca_cert_file and tls.ca_key_file, or neither")
        cert_path = cert_file or data_dir / "ca.crt"
        key_path = key_file or data_dir / "ca.key"
        if cert_file is None and not key_path.exists():
            ca = cls.generate()
            write_private(key_path, key_pem(ca.key))
            cert_path.write_bytes(cert_pem(ca.cert))
            return ca
        try:
            key_bytes, cert_bytes = key_path.read_bytes(), cert_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read the CA: {exc}") from exc
        try:
            cert = load_cert(cert_bytes)
        except InvalidInputError as exc:
            raise ConfigError(f"{cert_path}: {exc}") from exc
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.ca:
            raise ConfigError(f"{cert_path} is not a CA certificate")
        return cls(load_key(key_bytes), cert)

    @property
    def pem(self) -> str:
        return cert_pem(self.cert).decode()

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert)

    def _issue(
        self,
        public_key: object,
        common_name: str,
        sans: list[x509.GeneralName],
        validity_s: float,
        usage: x509.ObjectIdentifier,
    ) -> Issued:
        now = _now()
        not_after = min(now + dt.timedelta(seconds=validity_s), self.cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),  # type: ignore[arg-type]
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return Issued(builder.sign(self.key, _hash_for(self.key)))

    def issue_site(
        self, csr: x509.CertificateSigningRequest, site_id: str, site_name: str, validity_s: float
    ) -> Issued:
        """A site's client certificate for the key of ``csr`` (whatever names it asks for:
        the site's identity is the controller's to say)."""
        sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(SITE_URI + site_name)]
        return self._issue(
            csr.public_key(), site_id, sans, validity_s, ExtendedKeyUsageOID.CLIENT_AUTH
        )

    def issue_server(self, public_key: object, names: Iterable[str], validity_s: float) -> Issued:
        """A server certificate (serverAuth) for ``names``: the controller's own, or a
        site-local API's from its CSR."""
        names = list(names)
        if not names:
            raise InvalidInputError("a server certificate needs at least one name")
        return self._issue(
            public_key, names[0], _sans(names), validity_s, ExtendedKeyUsageOID.SERVER_AUTH
        )

    def server_identity(self, names: Iterable[str], validity_s: float) -> tuple[bytes, bytes]:
        """A new key and a server certificate for it (PEM key, PEM cert + CA chain)."""
        key = new_key()
        issued = self.issue_server(key.public_key(), names, validity_s)
        return key_pem(key), cert_pem(issued.cert)
