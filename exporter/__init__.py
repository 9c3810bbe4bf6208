"""The Prometheus exporter: xdpfwd's counters, read from the kernel at scrape time."""

DEFAULT_PORT = 10420
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_PORT}"
