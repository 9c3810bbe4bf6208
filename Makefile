# xdpfwd. Run as root on Debian 12; every target sets up what it needs.
.PHONY: setup demo test unit clean

setup:
	@scripts/setup

demo: setup
	@scripts/demo

# The whole suite: pure logic, BPF_PROG_TEST_RUN verdicts and the lab.
test: setup
	.venv/bin/pytest

clean:
	rm -rf .venv build *.egg-info
