# Shared by the two VM labs' host scripts (qemu/vm-lab, libvirt/vagrant-lab):
# sourced, not run. Expects $repo (the repository) and a say() function.

# Debian packages for this host, only for the VM labs (make test and CI do
# without them), without recommends: libvirt-daemon-system, say, would
# start a system libvirtd and its default network in the root namespace.
need_debs() {
    local p need=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
    done
    [ ${#need[@]} -gt 0 ] || return 0
    say "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The wheelhouse: xdpfwd's Python dependencies (with the test extras and the
# build backend) for scripts/setup's offline mode in the router VM, whose
# Python (Debian 12's 3.11) is the host's /usr/bin/python3. Remade when
# pyproject.toml changes, so a dependency added there reaches the VMs.
make_wheelhouse() {
    local wheelhouse="$repo/vagrant/build/wheelhouse" wkey
    wkey=$(sha256sum <"$repo/pyproject.toml" | cut -c1-12)
    [ "$(cat "$wheelhouse/.key" 2>/dev/null)" != "$wkey" ] || return 0
    say "pip download: the wheelhouse for the VMs"
    rm -rf "$wheelhouse"
    mkdir -p "$wheelhouse"
    "$repo/.venv/bin/pip" download -q --disable-pip-version-check -d "$wheelhouse" \
        "$repo[test]" 'setuptools>=64' wheel 2> >(grep -v 'is ignored: it is neither a file nor a directory' >&2)
    rm -f "$wheelhouse"/xdpfwd-*  # the project itself comes from the repository
    echo "$wkey" >"$wheelhouse/.key"
}
