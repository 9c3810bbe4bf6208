"""The kernel side of xdpfwd: redirect.c and counters.h, shipped as package
data (xdpfwd.bpf) so that the compiler and the layout parser find them
installed and in a checkout (an editable install maps this folder)."""
