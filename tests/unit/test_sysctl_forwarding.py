"""sysctl.kernel_forwards() judged on saved values: the rule the AF_PACKET
worker follows for what the kernel forwarded before it started (IPv4: the
port's switch; IPv6: "all", or the port's force_forwarding)."""

import pytest

from xdpfwd import sysctl

V4 = str(sysctl.forwarding_path("ipv4", "eth1"))
V6_ALL = str(sysctl.forwarding_path("ipv6", "all"))
V6_PORT = str(sysctl.forwarding_path("ipv6", "eth1"))
FORCED = str(sysctl.force_forwarding_path("eth1"))


@pytest.mark.parametrize("saved,v4,v6", [
    ({V4: "1", V6_ALL: "1", V6_PORT: "1", FORCED: "0"}, True, True),
    ({V4: "0", V6_ALL: "0", V6_PORT: "1", FORCED: "0"}, False, False),  # the port's own v6 value does not count
    ({V4: "1", V6_ALL: "0", V6_PORT: "0", FORCED: "1"}, True, True),    # forced on the port
    ({V4: "1", V6_ALL: "0", V6_PORT: "0"}, True, False),                # a kernel without force_forwarding
])
def test_saved_values_decide(saved, v4, v6):
    assert sysctl.kernel_forwards("ipv4", "eth1", saved) is v4
    assert sysctl.kernel_forwards("ipv6", "eth1", saved) is v6
