"""--web.config.file: what is accepted and what is refused, with
exporter-toolkit's own validator as the oracle.

`promtool check web-config` (Debian's prometheus) runs exporter-toolkit's
web.Validate() on the same file: where it accepts, xdpfwd must accept;
where it refuses, xdpfwd must refuse, with one line naming the key. The
few places where xdpfwd is stricter on purpose are marked and say why.
Then the real CLI: a bad file is one line and exit status 2, before
anything binds.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import webpki
from xdpfwd.exporter import webconfig

XDPFWD = str(Path(sys.executable).with_name("xdpfwd"))


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    pki = webpki.make(tmp_path_factory.mktemp("pki"))
    (pki.dir / "empty.pem").write_text("")
    return pki


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    assert path, "promtool is missing: apt-get install prometheus (make setup does)"
    return path


HASH = "$2y$10$QOauhQNbBCuQDKes6eFzPeMqBSjb7Mr5DUmpZ/VcEd00UAV/LDeSi"
TLS = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"

# (name, file text, None if valid else the key the refusal must name,
#  why xdpfwd is stricter than exporter-toolkit or None)
CASES = [
    ("empty", "", None, None),
    ("tls", TLS, None, None),
    ("tls, every policy key", TLS + "  client_auth_type: RequireAndVerifyClientCert\n"
     "  client_ca_file: ca.pem\n  min_version: TLS13\n  max_version: TLS13\n"
     "  prefer_server_cipher_suites: false\n", None, None),
    ("request a certificate", TLS + "  client_auth_type: RequestClientCert\n", None, None),
    ("any certificate", TLS + "  client_auth_type: RequireAnyClientCert\n", None, None),
    ("old spelling", TLS + "  client_auth_type: RequireClientCert\n", None, None),
    ("basic auth, no tls", f"basic_auth_users:\n  prom: '{HASH}'\n", None, None),
    ("headers", TLS + "http_server_config:\n  http2: false\n  headers:\n"
     "    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=31536000\n", None, None),
    ("not yaml", "tls_server_config: [\n", "", None),
    ("not a mapping", "- a\n- b\n", "", None),
    ("unknown top key", TLS + "tls_client_config: {}\n", "tls_client_config", None),
    ("unknown tls key", TLS + "  cert_path: x\n", "tls_server_config.cert_path", None),
    ("no key", "tls_server_config:\n  cert_file: server.pem\n", "tls_server_config.key_file", None),
    ("no cert", "tls_server_config:\n  key_file: server.key\n", "tls_server_config.cert_file", None),
    ("only a policy", "tls_server_config:\n  client_auth_type: RequestClientCert\n",
     "tls_server_config.cert_file", None),
    ("cert missing", "tls_server_config:\n  cert_file: nothere.pem\n  key_file: server.key\n",
     "tls_server_config.cert_file", None),
    ("key is a cert", "tls_server_config:\n  cert_file: server.pem\n  key_file: server.pem\n",
     "tls_server_config.key_file", None),
    ("key of another cert", "tls_server_config:\n  cert_file: server.pem\n  key_file: client.key\n",
     "tls_server_config.key_file", None),
    ("bad policy", TLS + "  client_auth_type: Maybe\n", "tls_server_config.client_auth_type", None),
    ("ca without policy", TLS + "  client_ca_file: ca.pem\n", "tls_server_config.client_ca_file",
     None),
    ("ca missing", TLS + "  client_auth_type: RequireAndVerifyClientCert\n"
     "  client_ca_file: nothere.pem\n", "tls_server_config.client_ca_file", None),
    ("bad version", TLS + "  min_version: TLS14\n", "tls_server_config.min_version", None),
    ("plain password", "basic_auth_users:\n  prom: secret\n", "basic_auth_users.prom", None),
    ("forbidden header", TLS + "http_server_config:\n  headers:\n    X-Foo: a\n",
     "http_server_config.headers.X-Foo", None),
    ("bad header value", TLS + "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
     "http_server_config.headers.X-Frame-Options", None),
    # Stricter than exporter-toolkit, on purpose:
    ("verify without a CA", TLS + "  client_auth_type: VerifyClientCertIfGiven\n",
     "tls_server_config.client_ca_file",
     "Go would verify client certificates against the system's public CAs"),
    ("CA file without certificates", TLS + "  client_auth_type: RequireAndVerifyClientCert\n"
     "  client_ca_file: empty.pem\n", "tls_server_config.client_ca_file",
     "no client certificate could ever pass"),
    ("versions crossed", TLS + "  min_version: TLS13\n  max_version: TLS12\n",
     "tls_server_config.max_version", "no handshake could ever succeed"),
]


@pytest.mark.parametrize("name, text, key, stricter", CASES, ids=[c[0] for c in CASES])
def test_web_config_like_exporter_toolkit(pki, promtool, name, text, key, stricter):
    path = pki.dir / "web.yml"
    path.write_text(text)
    oracle = subprocess.run([promtool, "check", "web-config", str(path)], capture_output=True,
                            text=True, timeout=60)
    try:
        webconfig.load(str(path))
        refused = None
    except webconfig.WebConfigError as e:
        refused = str(e)
    if key is None:
        assert refused is None, refused
    else:
        assert refused is not None, f"{name}: accepted"
        assert "\n" not in refused and refused.startswith(f"{path}: {key}:" if key else f"{path}: ")
    toolkit_accepts = oracle.returncode == 0
    if stricter:
        assert toolkit_accepts, f"exporter-toolkit refuses it now too: drop the note ({oracle.stdout})"
    else:
        assert toolkit_accepts == (refused is None), f"{name}: promtool says {oracle.stdout.strip()}"


@pytest.mark.parametrize("key", ["cipher_suites", "curve_preferences"])
def test_unimplemented_settings_are_refused_not_ignored(pki, key):
    path = pki.dir / "web.yml"
    path.write_text(TLS + f"  {key}: [X]\n")
    with pytest.raises(webconfig.WebConfigError, match=f"tls_server_config.{key}: not supported"):
        webconfig.load(str(path))


def test_relative_paths_are_taken_from_the_files_directory(pki, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = pki.dir / "web.yml"
    path.write_text(TLS)
    config = webconfig.load(str(path))
    assert config.tls.cert == (pki.dir / "server.pem").read_bytes()
    assert str(pki.dir / "server.key") in config.files


def test_the_deploy_example_is_valid(pki, promtool, tmp_path):
    example = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "xdpfwd-web.yml"
    text = example.read_text()
    for name in ("server.pem", "server.key", "ca.pem"):
        text = text.replace(f"/etc/xdpfwd/tls/{name}", pki.path(name))
    path = tmp_path / "web.yml"
    path.write_text(text)
    config = webconfig.load(str(path))
    assert config.tls.client_auth == "RequireAndVerifyClientCert" and config.users
    oracle = subprocess.run([promtool, "check", "web-config", str(path)], capture_output=True,
                            text=True, timeout=60)
    assert oracle.returncode == 0, oracle.stdout + oracle.stderr


@pytest.mark.parametrize("args, expected", [
    (["--web.config.file", "{dir}/nothere.yml"], "--web.config.file {dir}/nothere.yml: No such file"),
    (["--web.config.file", "{dir}/bad.yml"], "{dir}/bad.yml: tls_server_config.client_auth_type: "),
    (["--web.config.file", "{dir}/bad.yml", "--tls-cert", "x", "--tls-key", "y"],
     "give either --web.config.file or --tls-cert/--tls-key"),
    (["--tls-cert", "{dir}/server.pem"], "TLS needs both --tls-cert and --tls-key"),
    (["--tls-cert", "{dir}/server.pem", "--tls-key", "{dir}/ca.pem"], "--tls-key"),
])
def test_cli_refuses_with_one_line(pki, args, expected):
    (pki.dir / "bad.yml").write_text(TLS + "  client_auth_type: Maybe\n")
    args = [a.format(dir=pki.dir) for a in args]
    # Port 1 is never bound: a refusal must come before listening.
    proc = subprocess.run([XDPFWD, "exporter", "--listen", "127.0.0.1:1", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("xdpfwd: " + expected.format(dir=pki.dir)), proc.stderr
