"""The Vagrant lab's Vagrantfile: `vagrant validate` passes, and its
addresses come from control/lab.json (which the namespace lab reads too),
not from the Vagrantfile itself."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
VAGRANT = ROOT / "vagrant"
LAB = json.loads((ROOT / "control" / "lab.json").read_text())


def _vagrant(tmp_path, *args, env=None):
    # Fails, never skips, without vagrant: scripts/setup installs it.
    assert shutil.which("vagrant"), "vagrant is not installed (scripts/setup installs Debian's vagrant)"
    # Vagrant's state goes to the test's directory, not to vagrant/.vagrant.
    e = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1",
             VAGRANT_DOTFILE_PATH=str(tmp_path / "dot-vagrant"))
    e.update(env or {})
    return subprocess.run(["vagrant", *args], cwd=VAGRANT, env=e, capture_output=True, text=True,
                          timeout=120)


def test_vagrant_validate(tmp_path):
    p = _vagrant(tmp_path, "validate")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "validated successfully" in p.stdout


def test_vagrant_validate_e1000(tmp_path):
    p = _vagrant(tmp_path, "validate", env={"XDPFWD_VM_NIC": "e1000"})
    assert p.returncode == 0, p.stdout + p.stderr


def test_vagrant_refuses_an_unknown_nic_model(tmp_path):
    p = _vagrant(tmp_path, "validate", env={"XDPFWD_VM_NIC": "rtl8139"})
    assert p.returncode != 0
    assert "virtio or e1000" in p.stdout + p.stderr


def test_no_address_written_twice():
    """Every lab address lives in lab.json; none is repeated in vagrant/."""
    addresses = {a.split("/")[0] for h in LAB["hosts"].values()
                 for addrs in h["interfaces"].values() for a in addrs}
    prefixes = {r[0] for h in LAB["hosts"].values() for r in h["routes"]}
    files = []
    for d, dirs, names in os.walk(VAGRANT):
        # Not the image cache (build/), Vagrant's state, nor the README's examples.
        dirs[:] = [x for x in dirs if x not in ("build", ".vagrant", "__pycache__")]
        files += [Path(d, n) for n in names if not n.endswith(".md")]
    assert VAGRANT / "Vagrantfile" in files
    for f in files:
        text = f.read_text(errors="replace")
        for a in sorted(addresses | prefixes):
            assert not re.search(rf"(?<![\w:.]){re.escape(a)}(?![\w:])", text), f"{f}: {a}"
        assert not re.search(r"\b10\.0\.1[01]\.\d+", text), f"{f}: a lab address"


def test_vagrantfile_defines_the_lab_machines(tmp_path):
    """The machines Vagrant sees are lab.json's hosts (vagrant status works
    without a provider: it only reads the Vagrantfile and local state)."""
    p = _vagrant(tmp_path, "status", "--machine-readable")
    names = {line.split(",")[1] for line in p.stdout.splitlines()
             if line.count(",") >= 3 and line.split(",")[2] == "state"}
    assert p.returncode == 0 or names, p.stdout + p.stderr
    assert names == set(LAB["hosts"]), p.stdout + p.stderr


def test_vagrant_validate_tcg(tmp_path):
    p = _vagrant(tmp_path, "validate", env={"XDPFWD_VM_DRIVER": "qemu"})
    assert p.returncode == 0, p.stdout + p.stderr


def test_vagrant_refuses_an_unknown_libvirt_driver(tmp_path):
    p = _vagrant(tmp_path, "validate", env={"XDPFWD_VM_DRIVER": "xen"})
    assert p.returncode != 0
    assert "kvm or qemu" in p.stdout + p.stderr


def _ruby_strings(name: str) -> list[str]:
    """The string list given to NAME: [...] in the Vagrantfile."""
    text = (VAGRANT / "Vagrantfile").read_text()
    m = re.search(rf"{name}:\s*\[(.*?)\]", text, re.S)
    assert m, f"Vagrantfile: no {name}"
    return re.findall(r'"([^"]*)"', m.group(1))


def test_rsync_sends_the_wheelhouse_and_not_the_images(tmp_path):
    """The synced folder's rules, run by the real rsync in the order
    Vagrant's rsync helper gives them (rsync__args, then each exclude): the
    wheelhouse reaches the VMs (the router's make setup is offline with it),
    the images, boxes and the repository's own build/ do not."""
    src, dst = tmp_path / "repo", tmp_path / "vm"
    files = ["control/lab.json", "vagrant/provision", "vagrant/build/wheelhouse/typer-0.1-py3-none-any.whl",
             "vagrant/build/image-abc/rootfs.raw", "vagrant/build/box-abc/xdpfwd-debian12.box",
             "vagrant/build/vagrant.d/boxes/x", "build/lib/xdpfwd/cli.py", ".venv/bin/python",
             ".git/HEAD", "vagrant/.vagrant/machines/x", "xdpfwd.egg-info/PKG-INFO",
             "control/__pycache__/cli.cpython-311.pyc"]
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        (src / f).write_text(f)
    args = [a for a in _ruby_strings("rsync__args") if a not in ("-z", "--verbose")]
    excludes = [x for e in _ruby_strings("rsync__exclude") for x in ("--exclude", e)]
    subprocess.run(["rsync", *args, *excludes, f"{src}/", str(dst)], check=True, capture_output=True)
    sent = sorted(str(p.relative_to(dst)) for p in dst.rglob("*") if p.is_file())
    assert sent == ["control/lab.json", "vagrant/build/wheelhouse/typer-0.1-py3-none-any.whl",
                    "vagrant/provision"]


def test_vagrant_lab_refuses_beside_a_libvirtd_of_the_users(tmp_path):
    """make vagrant-lab starts a libvirtd of its own: where one runs already
    it says so in one line and exits 5, before it changes anything. The
    bad VG_DRIVER makes sure that, were the refusal gone, the script would
    stop at its settings (exit 2) rather than build and boot a lab."""
    fake = tmp_path / "libvirtd"  # the process name is what the script sees
    shutil.copy("/bin/sleep", fake)
    daemon = subprocess.Popen([str(fake), "60"])
    try:
        p = subprocess.run([str(VAGRANT / "libvirt" / "vagrant-lab")], env=dict(os.environ, VG_DRIVER="bogus"),
                           capture_output=True, text=True, timeout=60)
    finally:
        daemon.kill()
        daemon.wait()
    assert p.returncode == 5, p.stdout + p.stderr
    assert p.stdout == "" and len(p.stderr.splitlines()) == 1, p.stdout + p.stderr
    assert "a libvirt daemon already runs here" in p.stderr
