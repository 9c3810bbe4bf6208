"""The project's own errors: typed inside, one line and an exit code outside.

The CLI catches XdpfwdError, prints "xdpfwd: <message>" on stderr and exits
with the class's code. The codes are part of the interface (README, EXIT
STATUS); keep them stable.
"""


class XdpfwdError(Exception):
    """A failure the user can act on: a one-line message, and as fields
    what to do about it (hint) and the errno the kernel gave, for callers
    that branch on them (doctor shows the hint as the fix). str() is the
    line the CLI prints: the message, then the hint."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "", errno: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.errno = errno

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message

    def reworded(self, message: str, hint: str = "") -> "XdpfwdError":
        """The same error (its class, so its exit status, its errno and
        whatever else it carries) saying more: built without calling the
        class's own __init__, whose arguments differ from class to class."""
        other = type(self).__new__(type(self))
        other.__dict__.update(self.__dict__)
        Exception.__init__(other, message)
        other.message, other.hint = message, hint
        return other


class UsageError(XdpfwdError):
    """The command line names something that cannot work (bad interface...)."""

    exit_code = 2


class PermissionDenied(XdpfwdError):
    """Not root, or missing CAP_BPF / CAP_NET_ADMIN."""

    exit_code = 3


class MissingDependency(XdpfwdError):
    """bcc, kernel headers or libbpf are not installed."""

    exit_code = 4


class Conflict(XdpfwdError):
    """Something else holds the interface: a foreign XDP program, another attach."""

    exit_code = 5


class KernelRefused(XdpfwdError):
    """The kernel said no: verifier, driver, MTU, forwarding disabled."""

    exit_code = 6


class ForwardingDisabled(KernelRefused):
    """The ports' forwarding sysctls are off: the box is not set up to route."""


class NetfilterInPath(XdpfwdError):
    """nftables or iptables rules sit on the forward path: forwarding past
    them would silently disable them (override: --bypass-netfilter)."""

    exit_code = 7


class IpsecInPath(XdpfwdError):
    """IPsec (xfrm) policies would act on forwarded packets: forwarding
    past them would send in clear what they encrypt, or let through what
    they block (override: --bypass-ipsec)."""

    exit_code = 8
