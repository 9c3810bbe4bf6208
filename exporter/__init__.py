"""The Prometheus exporter: xdpfwd's counters, read from the kernel at scrape time."""

DEFAULT_PORT = 10420
