"""xdpfwd: route IPv4 and IPv6 between interfaces in the kernel's XDP hook."""

__version__ = "0.1.0"
