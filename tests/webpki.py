"""Certificates and web configuration files for the exporter's tests: a CA,
a server certificate for 127.0.0.1, client certificates from that CA and
from a stranger's, and bcrypt hashes. Written to a directory as PEM files."""

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PASSWORD = "scrape-me-not"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def _cert(subject: str, key, issuer_name, issuer_key, *, ca=False, sans=(), usage=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer_name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


@dataclass
class Pki:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)


def make(d: Path) -> Pki:
    """ca.pem; server.pem/.key (127.0.0.1, localhost); client.pem/.key
    (SAN DNS prometheus.test) from ca; stranger-ca.pem and
    stranger.pem/.key from another CA."""
    d.mkdir(parents=True, exist_ok=True)
    made = {}
    for ca_name in ("ca", "stranger-ca"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"xdpfwd test {ca_name}", key, _name(f"xdpfwd test {ca_name}"), key, ca=True)
        (d / f"{ca_name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        made[ca_name] = (key, cert)
    leaves = {
        "server": ("ca", "127.0.0.1", [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.DNSName("localhost")], ExtendedKeyUsageOID.SERVER_AUTH),
        "client": ("ca", "prometheus", [x509.DNSName("prometheus.test")],
                   ExtendedKeyUsageOID.CLIENT_AUTH),
        "stranger": ("stranger-ca", "stranger", [x509.DNSName("stranger.test")],
                     ExtendedKeyUsageOID.CLIENT_AUTH),
    }
    for name, (ca_name, cn, sans, usage) in leaves.items():
        ca_key, ca_cert = made[ca_name]
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(cn, key, ca_cert.subject, ca_key, sans=sans, usage=usage)
        (d / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, d / f"{name}.key")
    return Pki(d)


def bcrypt_hash(password: str = PASSWORD, cost: int = 10) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()


def web_config(pki: Pki, path: Path, **tls) -> Path:
    """A web configuration file: the server certificate and key plus the
    tls_server_config keys given; users=... becomes basic_auth_users."""
    users = tls.pop("users", None)
    doc = {}
    if tls.pop("tls", True):
        doc["tls_server_config"] = {"cert_file": pki.path("server.pem"),
                                    "key_file": pki.path("server.key"), **tls}
    if users:
        doc["basic_auth_users"] = users
    path.write_text(yaml.safe_dump(doc))
    return path
