# xdpfwd. Run as root on Debian 12; every target sets up what it needs.
.PHONY: setup demo test bench soak vm-lab vagrant-lab clean

setup:
	@scripts/setup

demo: setup
	@scripts/demo

# The whole suite: pure logic, BPF_PROG_TEST_RUN verdicts and the lab.
test: setup
	.venv/bin/pytest

# The benchmark (bench/): kernel forwarding, xdpfwd native/skb/afpacket, a
# naive AF_PACKET loop, the peer (xdp-tools' xdp-forward, fetched by apt into
# bench/build/ on first use) and an XDP drop ceiling, interleaved, in a lab
# of its own (namespaces bench-*). QUICK=1: 2 rounds, 64 B, 1 and 1000 flows,
# about 5 min. Prints the table, writes bench/results/latest.{md,json,svg}, ends
# with TARGET lines.
bench: setup
	XDPFWD_LAB_PREFIX=bench- .venv/bin/python -m bench \
		$(if $(filter 1 yes true,$(QUICK)),--quick) \
		--command "make bench$(if $(filter 1 yes true,$(QUICK)), QUICK=1)"

# The VM lab booted here: a Debian image built once (vagrant/build/), three
# VMs under qemu (TCG; VM_ACCEL=kvm where KVM works), native XDP on
# virtio_net, the end-to-end check, everything torn down. Takes minutes,
# so not part of `make test`. See vagrant/README.md.
vm-lab: setup
	vagrant/qemu/vm-lab

# The Vagrant lab for real: `vagrant up` of vagrant/Vagrantfile with
# vagrant-libvirt and a box built here from the same image, libvirtd started
# in a network namespace of its own (TCG; VG_DRIVER=kvm where KVM works), a
# second `vagrant provision` that must not reboot, the same check, then
# everything torn down and the root namespace compared. Takes minutes, so not
# part of `make test`. See vagrant/README.md.
vagrant-lab: setup
	vagrant/libvirt/vagrant-lab

# The long reliability runs: every mode under minutes of numbered traffic,
# the differential test on 100 000 generated frames, and the kernel-oracle
# test on 100 000 frames through the lab router (paced: see README, GUARANTEES).
soak: setup
	XDPFWD_SOAK_SECONDS=120 XDPFWD_DIFF_FRAMES=100000 XDPFWD_ORACLE_FRAMES=100000 \
		XDPFWD_ORACLE_RATE=3000 .venv/bin/pytest \
		tests/reliability/test_soak.py tests/reliability/test_differential.py \
		tests/reliability/test_oracle.py

clean:
	rm -rf .venv build *.egg-info
