"""TLS contexts for the exporter, with pyOpenSSL.

Python's ssl module knows three client-certificate policies (none,
optional and verified, required and verified); exporter-toolkit has five,
two of which ask for a certificate without verifying its chain (Go's
RequestClientCert and RequireAnyClientCert: the client still proves that
it holds the key). OpenSSL does that with a verify callback that accepts
the chain, which pyOpenSSL exposes and the ssl module does not.
"""

import ipaddress
import re

from OpenSSL import SSL, crypto

from xdpfwd.exporter.webconfig import TlsSettings

# OpenSSL's SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER:
# the server retries a send that would block with a new slice of the same
# bytes; pyOpenSSL names neither constant.
_WRITE_MODES = 0x1 | 0x2
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def _certificates(pem: bytes) -> list:
    return [crypto.load_certificate(crypto.FILETYPE_PEM, block) for block in _PEM_CERT.findall(pem)]


def _no_passphrase(*_):
    raise ValueError("the key is encrypted")


def _sans(cert) -> list[str]:
    """The values exporter-toolkit's VerifyPeerCertificate() compares:
    DNS names, e-mail addresses, IP addresses, URIs."""
    from cryptography import x509

    try:
        ext = cert.to_cryptography().extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    names = ext.value
    values = [*names.get_values_for_type(x509.DNSName), *names.get_values_for_type(x509.RFC822Name),
              *names.get_values_for_type(x509.UniformResourceIdentifier)]
    values += [str(ipaddress.ip_address(ip)) for ip in names.get_values_for_type(x509.IPAddress)]
    return values


def context(s: TlsSettings) -> SSL.Context:
    """A server context for these settings; raises SSL.Error, crypto.Error
    or ValueError on a certificate, key or CA that cannot be used."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(s.min_version)
    ctx.set_max_proto_version(s.max_version)
    options = SSL.OP_NO_COMPRESSION | SSL.OP_NO_RENEGOTIATION
    if s.prefer_server_ciphers:
        options |= SSL.OP_CIPHER_SERVER_PREFERENCE
    ctx.set_options(options)
    ctx.set_mode(_WRITE_MODES)
    chain = _certificates(s.cert)
    if not chain:
        raise ValueError("no PEM certificate in it")
    ctx.use_certificate(chain[0])
    for extra in chain[1:]:
        ctx.add_extra_chain_cert(extra)
    ctx.use_privatekey(crypto.load_privatekey(crypto.FILETYPE_PEM, s.key, _no_passphrase))
    ctx.check_privatekey()
    # Resumed sessions skip the client certificate: OpenSSL refuses to
    # resume without a session id context once peers are verified.
    ctx.set_session_id(b"xdpfwd-exporter")
    if s.client_ca:
        cas = _certificates(s.client_ca)
        if not cas:
            raise ValueError("no PEM certificate in the client CA")
        store = ctx.get_cert_store()
        for ca in cas:
            store.add_cert(ca)
        # As Go does with ClientCAs: tell the client whose certificates count.
        ctx.set_client_ca_list([ca.get_subject() for ca in cas])
    if s.asks_for_certificate:
        mode = SSL.VERIFY_PEER
        if s.requires_certificate:
            mode |= SSL.VERIFY_FAIL_IF_NO_PEER_CERT
        ctx.set_verify(mode, _verifier(s))
    else:
        ctx.set_verify(SSL.VERIFY_NONE, None)
    return ctx


def _verifier(s: TlsSettings):
    allowed = set(s.allowed_sans) if s.allowed_sans is not None else None

    def verify(conn, cert, errnum, depth, ok):
        if not s.verifies_certificate:
            ok = True  # RequestClientCert, RequireAnyClientCert: any chain
        if ok and depth == 0 and allowed is not None:
            ok = bool(allowed.intersection(_sans(cert)))
        return bool(ok)

    return verify


def check(s: TlsSettings, fail) -> None:
    """Refuse at start what a handshake would trip over later; fail(key,
    problem) raises."""
    if not _certificates(s.cert):
        fail("cert_file", "no PEM certificate in it")
    try:
        crypto.load_privatekey(crypto.FILETYPE_PEM, s.key, _no_passphrase)
    except (crypto.Error, ValueError) as e:
        fail("key_file", f"not a usable PEM private key{': encrypted' if isinstance(e, ValueError) else ''}")
    if s.client_ca is not None and not _certificates(s.client_ca):
        fail("client_ca_file", "no PEM certificate in it")
    try:
        context(s)
    except SSL.Error as e:
        reason = "; ".join(r[2] for r in e.args[0] if len(r) > 2) if e.args and isinstance(e.args[0], list) else str(e)
        key = "key_file" if "key" in reason.lower() else "cert_file"
        fail(key, f"OpenSSL refused it: {reason or e}")
    except (crypto.Error, ValueError) as e:
        fail("cert_file", f"cannot be used: {e}")
