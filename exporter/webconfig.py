"""The exporter's web configuration: TLS, client certificates and basic
auth, in the Prometheus exporter-toolkit's format (`--web.config.file`,
the file node_exporter and most official exporters read):

    tls_server_config:
      cert_file: server.pem            # or cert: <PEM text>
      key_file: server.key             # or key: <PEM text>
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.pem   # or client_ca: <PEM text>
      client_allowed_sans: [prometheus.example.net]
      min_version: TLS12
      max_version: TLS13
    http_server_config:
      headers: {X-Content-Type-Options: nosniff}
    basic_auth_users:
      prometheus: $2b$12$...           # bcrypt

Relative paths are taken from the file's directory, as exporter-toolkit's
SetDirectory() does. Unknown keys are refused, as its UnmarshalStrict
does; so are the keys xdpfwd does not implement (cipher_suites,
curve_preferences, rate_limit), rather than silently ignoring a security
setting. Every refusal is one line naming the key.

The TLS side (pyOpenSSL) is imported only where TLS is configured, so a
plain exporter keeps its small footprint.
"""

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from xdpfwd.errors import UsageError

# exporter-toolkit's ConfigToTLSConfig(): the five values, plus the old
# spelling it keeps for backwards compatibility.
CLIENT_AUTH_TYPES = ("NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                     "VerifyClientCertIfGiven", "RequireAndVerifyClientCert")
_CLIENT_AUTH_ALIASES = {"RequireClientCert": "RequireAnyClientCert", "": "NoClientCert"}
TLS_VERSIONS = {"TLS10": 0x301, "TLS11": 0x302, "TLS12": 0x303, "TLS13": 0x304}
# exporter-toolkit's validateHeaderConfig(): these headers only, some with
# fixed values.
EXTRA_HEADERS = {"Strict-Transport-Security": None, "X-Content-Type-Options": ("nosniff",),
                 "X-Frame-Options": ("deny", "sameorigin"), "X-XSS-Protection": None,
                 "Content-Security-Policy": None}

_TLS_KEYS = {"cert_file", "key_file", "cert", "key", "client_auth_type", "client_ca_file",
             "client_ca", "client_allowed_sans", "min_version", "max_version",
             "prefer_server_cipher_suites", "cipher_suites", "curve_preferences"}
_UNSUPPORTED = {"tls_server_config.cipher_suites": "OpenSSL's default cipher suites are used",
                "tls_server_config.curve_preferences": "OpenSSL's default groups are used",
                "rate_limit": "put a rate limit in front of the exporter if one is needed"}
_BCRYPT = re.compile(rb"^\$2[abxy]?\$(\d\d)\$[./A-Za-z0-9]{53}$")


class WebConfigError(UsageError):
    """The web configuration cannot be used; the message names the key."""


@dataclass(frozen=True)
class TlsSettings:
    cert: bytes  # PEM: the server's certificate, then any intermediates
    key: bytes
    client_auth: str = "NoClientCert"
    client_ca: bytes | None = None
    allowed_sans: tuple[str, ...] | None = None
    min_version: int = TLS_VERSIONS["TLS12"]
    max_version: int = TLS_VERSIONS["TLS13"]
    prefer_server_ciphers: bool = True

    @property
    def asks_for_certificate(self) -> bool:
        return self.client_auth != "NoClientCert"

    @property
    def requires_certificate(self) -> bool:
        return self.client_auth in ("RequireAnyClientCert", "RequireAndVerifyClientCert")

    @property
    def verifies_certificate(self) -> bool:
        return self.client_auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert")


@dataclass(frozen=True)
class WebConfig:
    tls: TlsSettings | None = None
    users: dict[str, bytes] = field(default_factory=dict)  # name -> bcrypt hash
    headers: dict[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()  # everything read, for reload()


def _fail(source: str, key: str, problem: str):
    raise WebConfigError(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


def _mapping(source, key, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(source, key, f"must be a mapping, not {type(value).__name__}")
    return value


def _string(source, key, value) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        _fail(source, key, f"must be a string, not {type(value).__name__}")
    return value


def _check_keys(source, prefix, mapping, known):
    for k in mapping:
        name = f"{prefix}{k}"
        if name in _UNSUPPORTED:
            _fail(source, name, f"not supported by xdpfwd ({_UNSUPPORTED[name]})")
        if k not in known:
            _fail(source, name, f"unknown key (known: {', '.join(sorted(known))})")


def _read(source, key, path: Path, files: list) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        _fail(source, key, f"cannot read {path}: {e.strerror or e}")
    files.append(str(path))
    return data


def _pem_or_file(source, tls, base: Path, text_key: str, file_key: str, files: list) -> bytes | None:
    text = _string(source, f"tls_server_config.{text_key}", tls.get(text_key))
    path = _string(source, f"tls_server_config.{file_key}", tls.get(file_key))
    if text and path:
        _fail(source, f"tls_server_config.{file_key}", f"give either {text_key} or {file_key}, not both")
    if path:
        return _read(source, f"tls_server_config.{file_key}", base / path, files)
    return text.encode() if text else None


def _tls(source: str, tls: dict, base: Path, files: list) -> TlsSettings | None:
    _check_keys(source, "tls_server_config.", tls, _TLS_KEYS)
    # exporter-toolkit's TLSConfig.IsEnabled(): any of these turns TLS on.
    if not any(tls.get(k) for k in ("cert_file", "cert", "key_file", "key", "client_ca_file",
                                     "client_ca", "client_auth_type")):
        return None
    cert = _pem_or_file(source, tls, base, "cert", "cert_file", files)
    if not cert:
        _fail(source, "tls_server_config.cert_file", "missing: TLS needs cert_file (or cert)")
    key = _pem_or_file(source, tls, base, "key", "key_file", files)
    if not key:
        _fail(source, "tls_server_config.key_file", "missing: TLS needs key_file (or key)")
    auth = _string(source, "tls_server_config.client_auth_type", tls.get("client_auth_type"))
    auth = _CLIENT_AUTH_ALIASES.get(auth, auth)
    if auth not in CLIENT_AUTH_TYPES:
        _fail(source, "tls_server_config.client_auth_type",
              f"{auth!r} is not one of {', '.join(CLIENT_AUTH_TYPES)}")
    ca = _pem_or_file(source, tls, base, "client_ca", "client_ca_file", files)
    ca_key = "tls_server_config.client_ca_file"
    if ca and auth == "NoClientCert":
        _fail(source, ca_key, "set, but client_auth_type is NoClientCert "
              "(exporter-toolkit: client CAs configured without a client auth policy)")
    if not ca and auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        # Go would fall back to the system's CAs here: any certificate a
        # public CA signed would then pass. Stricter on purpose.
        _fail(source, ca_key, f"missing: client_auth_type {auth} verifies client certificates "
              "against it")
    sans = tls.get("client_allowed_sans")
    if sans is not None:
        if not isinstance(sans, list) or not all(isinstance(s, str) for s in sans):
            _fail(source, "tls_server_config.client_allowed_sans", "must be a list of strings")
        if auth not in ("RequireAnyClientCert", "RequireAndVerifyClientCert"):
            _fail(source, "tls_server_config.client_allowed_sans",
                  "needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert")
    versions = {}
    for k, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        v = _string(source, f"tls_server_config.{k}", tls.get(k)) or default
        if v not in TLS_VERSIONS:
            _fail(source, f"tls_server_config.{k}", f"{v!r} is not one of {', '.join(TLS_VERSIONS)}")
        versions[k] = TLS_VERSIONS[v]
    if versions["min_version"] > versions["max_version"]:
        _fail(source, "tls_server_config.max_version", "is below min_version")
    prefer = tls.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        _fail(source, "tls_server_config.prefer_server_cipher_suites", "must be true or false")
    settings = TlsSettings(cert, key, auth, ca, tuple(sans) if sans is not None else None,
                           versions["min_version"], versions["max_version"], prefer)
    try:
        from xdpfwd.exporter import tls as tlsmod
    except ImportError as e:
        _fail(source, "tls_server_config", f"TLS needs pyOpenSSL: {e}")
    tlsmod.check(settings, lambda key, problem: _fail(source, f"tls_server_config.{key}", problem))
    return settings


def _users(source: str, users: dict) -> dict[str, bytes]:
    result = {}
    for name, hashed in users.items():
        key = f"basic_auth_users.{name}"
        if not isinstance(name, str) or not isinstance(hashed, str):
            _fail(source, key, "user names and bcrypt hashes must be strings")
        m = _BCRYPT.match(hashed.encode())
        # exporter-toolkit's validateUsers(): bcrypt.Cost() must parse it.
        if not m or not 4 <= int(m.group(1)) <= 31:
            _fail(source, key, "not a bcrypt hash (make one with: htpasswd -nBC 10 '' | tr -d ':')")
        result[name] = hashed.encode()
    return result


def _headers(source: str, http: dict) -> dict[str, str]:
    _check_keys(source, "http_server_config.", http, {"http2", "headers"})
    if "http2" in http and not isinstance(http["http2"], bool):
        _fail(source, "http_server_config.http2", "must be true or false")
    headers = _mapping(source, "http_server_config.headers", http.get("headers"))
    for name, value in headers.items():
        key = f"http_server_config.headers.{name}"
        if name not in EXTRA_HEADERS:
            _fail(source, key, f"cannot be set (allowed: {', '.join(EXTRA_HEADERS)})")
        allowed = EXTRA_HEADERS[name]
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            _fail(source, key, "must be a one-line string")
        if allowed and value not in allowed:
            _fail(source, key, f"{value!r} is not one of {', '.join(allowed)}")
    return dict(headers)


def parse(text: bytes | str, source: str, base: Path) -> WebConfig:
    """The configuration in text; raises WebConfigError."""
    import yaml

    files: list[str] = []
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        _fail(source, "", f"not valid YAML{where}: {problem}")
    top = _mapping(source, "", doc)
    _check_keys(source, "", top, {"tls_server_config", "http_server_config", "basic_auth_users"})
    tls = _tls(source, _mapping(source, "tls_server_config", top.get("tls_server_config")), base,
               files)
    users = _users(source, _mapping(source, "basic_auth_users", top.get("basic_auth_users")))
    headers = _headers(source, _mapping(source, "http_server_config", top.get("http_server_config")))
    return WebConfig(tls, users, headers, tuple(files))


def load(path: str) -> WebConfig:
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as e:
        raise WebConfigError(f"--web.config.file {path}: {e.strerror or e}") from None
    config = parse(text, path, p.parent.absolute())
    return WebConfig(config.tls, config.users, config.headers, (str(p), *config.files))


def from_tls_files(certfile: str, keyfile: str) -> WebConfig:
    """--tls-cert/--tls-key: the same as a file naming only these two."""
    files: list[str] = []
    cert = _read("--tls-cert", "", Path(certfile), files)
    key = _read("--tls-key", "", Path(keyfile), files)
    settings = TlsSettings(cert, key)
    from xdpfwd.exporter import tls as tlsmod

    tlsmod.check(settings, lambda key, problem: _fail(f"--tls-{key.split('_')[0]}", "", problem))
    return WebConfig(tls=settings, files=tuple(files))


class Source:
    """The configuration now in force. Like exporter-toolkit, which reads
    its file again for each new connection, a change of the file or of a
    certificate, key or CA it names takes effect without a restart; here
    the files are re-read only when their stat() changed. A change that
    does not parse keeps the last good configuration and says why once on
    stderr; so does one that would switch between HTTP and HTTPS, which
    needs a restart (the listening socket's clients expect one of them)."""

    def __init__(self, web_config: str | None = None, certfile: str | None = None,
                 keyfile: str | None = None):
        self._path, self._certfile, self._keyfile = web_config, certfile, keyfile
        self.config = self._read()
        self._signature = self._stat(self.config.files)
        self._refused = None
        self.generation = 0  # grows at every change that took effect

    def _read(self) -> WebConfig:
        if self._path:
            return load(self._path)
        if self._certfile:
            return from_tls_files(self._certfile, self._keyfile)
        return WebConfig()

    @staticmethod
    def _stat(files) -> tuple:
        sig = []
        for f in files:
            try:
                st = os.stat(f)
                sig.append((st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns))
            except OSError:
                sig.append(None)
        return tuple(sig)

    def current(self) -> WebConfig:
        if not self.config.files:
            return self.config
        sig = self._stat(self.config.files)
        if sig == self._signature:
            return self.config
        try:
            new = self._read()
            if (new.tls is None) != (self.config.tls is None):
                raise WebConfigError("switching between HTTP and HTTPS needs a restart")
        except WebConfigError as e:
            if sig != self._refused:
                self._refused = sig
                print(f"xdpfwd exporter: keeping the previous web configuration: {e}",
                      file=sys.stderr, flush=True)
            return self.config
        # The stat() taken before reading: a change made while reading
        # shows up at the next connection.
        self._signature = sig if new.files == self.config.files else self._stat(new.files)
        self.config, self._refused = new, None
        self.generation += 1
        return new
