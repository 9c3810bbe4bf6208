/* SPDX-License-Identifier: GPL-2.0 */
/*
 * xdpfwd.afpacket._fastpath: the AF_PACKET forwarder's per-frame work in C.
 *
 * Python costs microseconds per frame; this walks a worker's receive rings
 * (TPACKET_V3), makes the decision of packet.decide() -- the same checks in
 * the same order with the same outcomes -- from a cache of the answers the
 * Python side got from fib.Fib, and writes what it forwards straight into
 * the egress port's transmit ring (TPACKET_V2). Everything it cannot finish
 * goes back to Python as bytes and takes the Python path unchanged: a frame
 * whose answer is not cached yet (Python fills the cache afterwards, see
 * worker.learn()), and every outcome the slow path handles.
 *
 * packet.py stays the reference: a rule is added there and here alike, and
 * tests/unit/test_afpacket_fastpath.py runs both on the same frames.
 * Nothing here hard-codes an outcome's index or a counter's offset: the
 * worker passes them in from xdpfwd.layout (bpf/counters.h).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <linux/if_packet.h>
#include <linux/virtio_net.h>

#ifndef XDPFWD_FASTPATH_SOURCE_HASH
#error "setup.py defines XDPFWD_FASTPATH_SOURCE_HASH (the sources' sha256)"
#endif

#define MAX_PORTS 64		/* XDPFWD_MAX_PORTS */
#define MAX_OUTCOMES 64		/* outcome indexes fit a 64-bit mask */
#define MISS (-1)

/* Both caches: open addressing in a table twice the size they may fill;
 * full, they start over, as fib.Fib does at MAX_CACHED. */
#define HOPS_SLOTS (1u << 17)
#define HOPS_MAX (1u << 16)
#define REV_SLOTS (1u << 17)
#define REV_MAX (1u << 16)

/* Where a TPACKET_V2 frame's data starts without PACKET_TX_HAS_OFF:
 * tpacket_parse_header() in net/packet/af_packet.c. */
#define TX_DATA_OFFSET (TPACKET2_HDRLEN - sizeof(struct sockaddr_ll))
/* The frame follows a struct virtio_net_hdr there (PACKET_VNET_HDR: the
 * TxRing docstring in rings.py says why). */
#define TX_FRAME_OFFSET (TX_DATA_OFFSET + sizeof(struct virtio_net_hdr))

/* The outcomes the decision names, by their labels in bpf/counters.h. */
struct outcomes {
	int forwarded, not_ip, vlan, malformed, multicast, bad_checksum,
	    ip_options, link_local, ttl, frag_needed, not_a_port, same_port,
	    no_neigh, redirect_failed, other_host, reverse_path, fwd_disabled,
	    martian_source, martian_dest, ipv6_disabled, ndp, icmp_error;
};

static const struct {
	const char *label;
	size_t offset;
} OUTCOME_LABELS[] = {
	{"forwarded", offsetof(struct outcomes, forwarded)},
	{"not_ip", offsetof(struct outcomes, not_ip)},
	{"vlan", offsetof(struct outcomes, vlan)},
	{"malformed", offsetof(struct outcomes, malformed)},
	{"multicast", offsetof(struct outcomes, multicast)},
	{"bad_checksum", offsetof(struct outcomes, bad_checksum)},
	{"ip_options", offsetof(struct outcomes, ip_options)},
	{"link_local", offsetof(struct outcomes, link_local)},
	{"ttl_exceeded", offsetof(struct outcomes, ttl)},
	{"fib_frag_needed", offsetof(struct outcomes, frag_needed)},
	{"egress_not_a_port", offsetof(struct outcomes, not_a_port)},
	{"egress_is_ingress", offsetof(struct outcomes, same_port)},
	{"fib_no_neighbour", offsetof(struct outcomes, no_neigh)},
	{"redirect_failed", offsetof(struct outcomes, redirect_failed)},
	{"other_host", offsetof(struct outcomes, other_host)},
	{"reverse_path", offsetof(struct outcomes, reverse_path)},
	{"fib_forwarding_disabled", offsetof(struct outcomes, fwd_disabled)},
	{"martian_source", offsetof(struct outcomes, martian_source)},
	{"martian_destination", offsetof(struct outcomes, martian_dest)},
	{"ipv6_disabled", offsetof(struct outcomes, ipv6_disabled)},
	{"ndp", offsetof(struct outcomes, ndp)},
	{"icmp_error", offsetof(struct outcomes, icmp_error)},
};

/* fib.Fib.lookup()'s answer for one destination (a Hop). */
struct hop {
	uint32_t gen;		/* valid while equal to the cache's generation */
	uint8_t family;
	uint8_t dst[16];
	int16_t outcome;	/* index of hop.outcome */
	int16_t egress_slot;	/* the egress port's slot, -1 when not a port */
	uint32_t ifindex;
	uint32_t mtu;
	uint8_t dmac[6], smac[6];
};

/* fib.Fib.reverse_ok() for an IPv4 source arriving on a port: Fib keys it
 * by the source, and its answer compares with the ingress. */
struct rev {
	uint32_t gen;
	uint8_t src[4];
	uint8_t slot;
	uint8_t ok;
};

enum miss_kind { MISS_PORT = 1, MISS_HOP, MISS_REVERSE };

struct verdict {
	int outcome;		/* an index, or MISS */
	uint32_t egress;	/* ifindex, as packet.decide() returns it */
	const struct hop *hop;
	uint32_t out_len;	/* forwarded: the frame cut to the IP length */
	int family;
	enum miss_kind miss;
};

struct rx {
	PyObject *ring;		/* rings.RxRing */
	PyObject *map;		/* its mmap */
	uint32_t block_size, block_nr;
};

struct tx {
	PyObject *ring;		/* rings.TxRing */
	PyObject *map;
	uint32_t frame_size, frame_nr;
	int fd;
	/* during run() only */
	Py_buffer buf;
	uint32_t next;
	uint64_t queued;
	int kicked;
};

typedef struct {
	PyObject_HEAD
	int nports;
	uint32_t ports[MAX_PORTS];
	uint8_t disabled4[MAX_PORTS], disabled6[MAX_PORTS];
	uint8_t mac[MAX_PORTS][6];
	uint8_t ipv6_off[MAX_PORTS];	/* fib.ipv6_disabled(), learnt with the MAC */
	uint32_t port_gen[MAX_PORTS];	/* mac and ipv6_off valid while equal to gen */
	struct outcomes o;
	uint64_t slow;		/* outcomes the Python path takes (slowpath.SLOW) */
	Py_ssize_t port_words, rx_word, outcome_word, tx_word;
	uint64_t *counts;	/* added to the worker's counters by add_counts() */
	Py_ssize_t ncounts;
	uint32_t gen;		/* starts at 1: zeroed entries are never valid */
	struct hop *hops;
	uint32_t nhops;
	struct rev *revs;
	uint32_t nrevs;
	int nrx, ntx;
	struct rx rx[MAX_PORTS];
	struct tx tx[MAX_PORTS];
} FastPath;

/* -- the caches ---------------------------------------------------------- */

static uint64_t mix(uint64_t h)
{
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

static uint64_t hash_bytes(const uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t h = seed;
	uint64_t w;

	while (n >= 8) {
		memcpy(&w, p, 8);
		h = mix(h ^ w) + 0x9e3779b97f4a7c15ULL;
		p += 8;
		n -= 8;
	}
	w = 0;
	memcpy(&w, p, n);
	return mix(h ^ w ^ ((uint64_t)n << 56));
}

static size_t addr_len(int family)
{
	return family == 4 ? 4 : 16;
}

static struct hop *hop_slot(FastPath *fp, int family, const uint8_t *dst, int *found)
{
	size_t len = addr_len(family);
	uint32_t i = (uint32_t)hash_bytes(dst, len, (uint64_t)family) & (HOPS_SLOTS - 1);

	for (;;) {
		struct hop *h = &fp->hops[i];

		if (h->gen != fp->gen) {
			*found = 0;
			return h;
		}
		if (h->family == family && !memcmp(h->dst, dst, len)) {
			*found = 1;
			return h;
		}
		i = (i + 1) & (HOPS_SLOTS - 1);
	}
}

static struct rev *rev_slot(FastPath *fp, const uint8_t *src, int slot, int *found)
{
	uint32_t i = (uint32_t)hash_bytes(src, 4, 0x100u + (uint64_t)slot) & (REV_SLOTS - 1);

	for (;;) {
		struct rev *r = &fp->revs[i];

		if (r->gen != fp->gen) {
			*found = 0;
			return r;
		}
		if (r->slot == slot && !memcmp(r->src, src, 4)) {
			*found = 1;
			return r;
		}
		i = (i + 1) & (REV_SLOTS - 1);
	}
}

static void flush(FastPath *fp)
{
	/* A new generation empties both caches and the ports' MACs at once. */
	fp->gen++;
	if (fp->gen == 0) {
		memset(fp->hops, 0, sizeof(*fp->hops) * HOPS_SLOTS);
		memset(fp->revs, 0, sizeof(*fp->revs) * REV_SLOTS);
		memset(fp->port_gen, 0, sizeof(fp->port_gen));
		fp->gen = 1;
	}
	fp->nhops = 0;
	fp->nrevs = 0;
}

static int port_slot(FastPath *fp, uint32_t ifindex)
{
	for (int i = 0; i < fp->nports; i++)
		if (fp->ports[i] == ifindex)
			return i;
	return -1;
}

/* -- the decision: packet.decide(), check for check ---------------------- */

static int zero(const uint8_t *a, size_t n)
{
	while (n--)
		if (*a++)
			return 0;
	return 1;
}

static int all_ones4(const uint8_t *a)
{
	return a[0] == 0xff && a[1] == 0xff && a[2] == 0xff && a[3] == 0xff;
}

static int ipv6_any_or_loopback(const uint8_t *a)
{
	return zero(a, 15) && a[15] <= 1;
}

static int ipv4_checksum_ok(const uint8_t *ip)
{
	uint32_t sum = 0;

	for (int i = 0; i < 20; i += 2)
		sum += (uint32_t)ip[i] << 8 | ip[i + 1];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return sum == 0xffff;
}

static int out(struct verdict *v, int outcome, uint32_t egress)
{
	v->outcome = outcome;
	v->egress = egress;
	return outcome;
}

static int miss(struct verdict *v, enum miss_kind kind)
{
	v->miss = kind;
	return out(v, MISS, 0);
}

/* icmp_is_err(): the ICMP errors the kernel's multipath hash takes from the
 * quoted header (bpf/redirect.c). */
static int icmp_is_err(uint8_t type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

/* packet.ipv6_nd_message() with its default limit (bpf/redirect.c's):
 * a Neighbour Discovery message past the extension headers, walked as
 * ipv6_skip_exthdr() walks them. f is the frame, end the IP packet's end. */
#define IPV6_EXT_MAX 6
enum { V6_NOT_ND, V6_ND, V6_DEEP };

static int ipv6_nd_message(const uint8_t *f, size_t end)
{
	uint8_t nexthdr = f[20];
	size_t off = 54;
	int walked = 0;

	for (;;) {
		switch (nexthdr) {
		case 0: case 43: case 44: case 51: case 60:
			break;
		case 58:
			return off < end && f[off] >= 133 && f[off] <= 137 ? V6_ND : V6_NOT_ND;
		default:
			return V6_NOT_ND;
		}
		if (walked == IPV6_EXT_MAX)
			return V6_DEEP;
		if (off + 2 > end)
			return V6_NOT_ND;
		if (nexthdr == 44) {
			/* A fragment other than the first stops the walk. */
			if (off + 4 > end || ((f[off + 2] << 8 | f[off + 3]) & 0xfff8))
				return V6_NOT_ND;
			nexthdr = f[off];
			off += 8;
		} else {
			size_t len = nexthdr == 51 ? ((size_t)f[off + 1] + 2) << 2	/* ipv6_authlen() */
						   : ((size_t)f[off + 1] + 1) << 3;	/* ipv6_optlen() */
			nexthdr = f[off];
			off += len;
		}
		walked++;
	}
}

static int decide(FastPath *fp, const uint8_t *f, size_t n, int slot, int vlan,
		  struct verdict *v)
{
	const struct outcomes *o = &fp->o;
	const uint8_t *src, *dst;
	const struct hop *hop;
	uint32_t total;
	uint16_t ethertype;
	int found;

	v->hop = NULL;
	if (n < 14)
		return out(v, o->malformed, 0);
	if (f[0] & 1)
		return out(v, o->multicast, 0);
	if (fp->port_gen[slot] != fp->gen)
		return miss(v, MISS_PORT);
	if (memcmp(f, fp->mac[slot], 6))
		return out(v, o->other_host, 0);
	/* AF_PACKET hands VLAN frames over untagged, the tag in the metadata. */
	ethertype = (uint16_t)(f[12] << 8 | f[13]);
	if (vlan || ethertype == 0x8100 || ethertype == 0x88a8)
		return out(v, o->vlan, 0);

	if (ethertype == 0x0800) {
		uint8_t vihl, ihl;

		if (n < 34)
			return out(v, o->malformed, 0);
		vihl = f[14];
		ihl = vihl & 0xf;
		total = (uint32_t)f[16] << 8 | f[17];
		/* ip_rcv_core(): the length must cover the header, options included. */
		if (vihl >> 4 != 4 || ihl < 5 || total < ihl * 4u || 14 + total > n)
			return out(v, o->malformed, 0);
		if (ihl != 5)
			return out(v, o->ip_options, 0);
		if (!ipv4_checksum_ok(f + 14))
			return out(v, o->bad_checksum, 0);
		src = f + 26;
		dst = f + 30;
		/* ip_route_input_slow(); ipv4_is_zeronet() is 0.0.0.0 only. */
		if (src[0] >> 4 == 0xe || all_ones4(src) || zero(src, 4) || src[0] == 127)
			return out(v, o->martian_source, 0);
		if (dst[0] >> 4 == 0xe || all_ones4(dst))
			return out(v, o->multicast, 0);
		if (zero(dst, 4) || dst[0] == 127)
			return out(v, o->martian_dest, 0);
		if (f[22] <= 1)
			return out(v, o->ttl, 0);
		/* An ICMP error takes the path of the packet it quotes (the
		 * kernel's multipath hash): the slow path's to route. */
		if (f[23] == 1 && !((f[20] << 8 | f[21]) & 0x1fff) && total > 20 &&
		    icmp_is_err(f[34]))
			return out(v, o->icmp_error, 0);
		if (fp->disabled4[slot])
			return out(v, o->fwd_disabled, 0);
		v->family = 4;
	} else if (ethertype == 0x86dd) {
		uint32_t payload;

		/* ip6_rcv_core() drops it before looking at the header. */
		if (fp->ipv6_off[slot])
			return out(v, o->ipv6_disabled, 0);
		if (n < 54)
			return out(v, o->malformed, 0);
		payload = (uint32_t)f[18] << 8 | f[19];
		if (f[14] >> 4 != 6 || 54 + payload > n)
			return out(v, o->malformed, 0);
		if (f[20] == 0)	/* IPPROTO_HOPOPTS */
			return out(v, o->ip_options, 0);
		src = f + 22;
		dst = f + 38;
		if (src[0] == 0xff || ipv6_any_or_loopback(src))
			return out(v, o->martian_source, 0);
		if (ipv6_any_or_loopback(dst))
			return out(v, o->martian_dest, 0);
		if (dst[0] == 0xff)
			return out(v, o->multicast, 0);
		if ((src[0] == 0xfe && (src[1] & 0xc0) == 0x80) ||
		    (dst[0] == 0xfe && (dst[1] & 0xc0) == 0x80))
			return out(v, o->link_local, 0);
		if (f[21] <= 1)
			return out(v, o->ttl, 0);
		total = 40 + payload;
		/* ip6_forward(): ND for a proxied address is the kernel's to answer. */
		switch (ipv6_nd_message(f, 14 + total)) {
		case V6_ND:
			return out(v, o->ndp, 0);
		case V6_DEEP:
			return out(v, o->ip_options, 0);
		}
		if (f[20] == 58 && total > 40 && f[54] >= 1 && f[54] <= 4)	/* icmpv6_is_err() */
			return out(v, o->icmp_error, 0);
		/* Routing, fragment, destination options: policy rules and the
		 * multipath hash by ports look past them (bpf/redirect.c). */
		if (f[20] == 43 || f[20] == 44 || f[20] == 60)
			return out(v, o->ip_options, 0);
		if (fp->disabled6[slot])
			return out(v, o->fwd_disabled, 0);
		v->family = 6;
	} else {
		return out(v, o->not_ip, 0);
	}

	hop = hop_slot(fp, v->family, dst, &found);
	if (!found)
		return miss(v, MISS_HOP);
	v->hop = hop;
	/* bpf_fib_lookup() checks the MTU once it has a route, before it looks
	 * for the neighbour: FRAG_NEEDED wins over NO_NEIGH there, so here too. */
	if ((hop->outcome == o->forwarded || hop->outcome == o->no_neigh) && total > hop->mtu)
		return out(v, o->frag_needed, hop->ifindex);
	if (hop->outcome != o->forwarded)
		return out(v, hop->outcome, hop->ifindex);
	if (hop->egress_slot < 0)
		return out(v, o->not_a_port, hop->ifindex);
	if (hop->egress_slot == slot)
		return out(v, o->same_port, hop->ifindex);
	if (v->family == 4) {
		const struct rev *r = rev_slot(fp, src, slot, &found);

		if (!found)
			return miss(v, MISS_REVERSE);
		if (!r->ok)
			return out(v, o->reverse_path, hop->ifindex);
	}
	v->out_len = 14 + total;
	return out(v, o->forwarded, hop->ifindex);
}

/* The forwarded frame: MACs rewritten, TTL / hop limit decremented, IPv4's
 * checksum updated as ip_decrease_ttl() (include/net/ip.h) does, cut to the
 * IP length as ip_rcv_core() trims it. */
static void rewrite(uint8_t *to, const uint8_t *f, const struct verdict *v)
{
	memcpy(to, v->hop->dmac, 6);
	memcpy(to + 6, v->hop->smac, 6);
	memcpy(to + 12, f + 12, v->out_len - 12);
	if (v->family == 4) {
		uint32_t check = ((uint32_t)f[24] << 8 | f[25]) + 0x0100;

		check = (check + (check >= 0xffff)) & 0xffff;
		to[22] = f[22] - 1;
		to[24] = (uint8_t)(check >> 8);
		to[25] = (uint8_t)check;
	} else {
		to[21] = f[21] - 1;
	}
}

/* -- counters, as worker.py's _received() / _count() / transmit() -------- */

static void count(FastPath *fp, int slot, Py_ssize_t word, uint64_t bytes)
{
	uint64_t *c = fp->counts + slot * fp->port_words + word;

	c[0] += 1;
	c[1] += bytes;
}

/* -- transmit -------------------------------------------------------------- */

static void kick(struct tx *t)
{
	/* Sends every slot marked SEND_REQUEST (tpacket_snd()). What it
	 * could not send stays marked; TxRing.flush() sees that and sends
	 * it, and drops a frame the device refused (its errors are left to
	 * flush(), which knows what each means). */
	(void)send(t->fd, NULL, 0, MSG_DONTWAIT);
	t->queued = 0;
	t->kicked = 1;
}

static int slot_free(const struct tpacket2_hdr *h)
{
	uint32_t status = __atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE);

	return status == TP_STATUS_AVAILABLE || status == TP_STATUS_WRONG_FORMAT;
}

/* TxRing.queue(): 0 when the ring is full or the frame too long. */
static int transmit(struct tx *t, const uint8_t *f, const struct verdict *v)
{
	uint8_t *frame;
	struct tpacket2_hdr *h;

	if (v->out_len > t->frame_size - TX_FRAME_OFFSET)
		return 0;
	frame = (uint8_t *)t->buf.buf + (size_t)t->next * t->frame_size;
	h = (struct tpacket2_hdr *)frame;
	if (!slot_free(h)) {
		kick(t);
		if (!slot_free(h))
			return 0;
	}
	/* hdr_len = the whole frame: copied into the skb, no offloads. */
	memset(frame + TX_DATA_OFFSET, 0, sizeof(struct virtio_net_hdr));
	/* The host's byte order: vio_le() in net/packet/af_packet.c. */
	((struct virtio_net_hdr *)(frame + TX_DATA_OFFSET))->hdr_len = (__virtio16)v->out_len;
	rewrite(frame + TX_FRAME_OFFSET, f, v);
	h->tp_len = sizeof(struct virtio_net_hdr) + v->out_len;
	/* The kernel reads a slot only once its status says SEND_REQUEST. */
	__atomic_store_n(&h->tp_status, TP_STATUS_SEND_REQUEST, __ATOMIC_RELEASE);
	t->next = (t->next + 1) % t->frame_nr;
	t->queued++;
	return 1;
}

/* -- receive: one frame ------------------------------------------------------ */

/* Returns 0, or -1 with an exception set. */
static int handle_frame(FastPath *fp, int ring, const uint8_t *f, size_t n, int vlan, PyObject *back)
{
	struct verdict v;
	int outcome;

	count(fp, ring, fp->rx_word, n);
	outcome = decide(fp, f, n, ring, vlan, &v);
	if (outcome == MISS || (fp->slow >> outcome & 1)) {
		PyObject *item = Py_BuildValue("(iy#OO)", ring, (const char *)f, (Py_ssize_t)n,
					       vlan ? Py_True : Py_False,
					       outcome == MISS ? Py_True : Py_False);
		int err;

		if (!item)
			return -1;
		err = PyList_Append(back, item);
		Py_DECREF(item);
		return err;
	}
	if (outcome == fp->o.forwarded) {
		int egress = v.hop->egress_slot;

		if (transmit(&fp->tx[egress], f, &v))
			count(fp, egress, fp->tx_word, v.out_len);
		else
			outcome = fp->o.redirect_failed;
	}
	count(fp, ring, fp->outcome_word + 2 * outcome, n);
	return 0;
}

/* -- Python: attributes of the rings ---------------------------------------- */

static int get_u32(PyObject *obj, const char *name, uint32_t *value)
{
	PyObject *attr = PyObject_GetAttrString(obj, name);
	unsigned long v;

	if (!attr)
		return -1;
	v = PyLong_AsUnsignedLong(attr);
	Py_DECREF(attr);
	if (v == (unsigned long)-1 && PyErr_Occurred())
		return -1;
	if (v > UINT32_MAX) {
		PyErr_Format(PyExc_ValueError, "%s out of range", name);
		return -1;
	}
	*value = (uint32_t)v;
	return 0;
}

static int get_u64(PyObject *obj, const char *name, uint64_t *value)
{
	PyObject *attr = PyObject_GetAttrString(obj, name);
	unsigned long long v;

	if (!attr)
		return -1;
	v = PyLong_AsUnsignedLongLong(attr);
	Py_DECREF(attr);
	if (v == (unsigned long long)-1 && PyErr_Occurred())
		return -1;
	*value = v;
	return 0;
}

static int set_u64(PyObject *obj, const char *name, uint64_t value)
{
	PyObject *v = PyLong_FromUnsignedLongLong(value);
	int err;

	if (!v)
		return -1;
	err = PyObject_SetAttrString(obj, name, v);
	Py_DECREF(v);
	return err;
}

/* -- Python: the type ---------------------------------------------------------- */

static void FastPath_dealloc(FastPath *fp)
{
	for (int i = 0; i < fp->nrx; i++) {
		Py_XDECREF(fp->rx[i].ring);
		Py_XDECREF(fp->rx[i].map);
	}
	for (int i = 0; i < fp->ntx; i++) {
		Py_XDECREF(fp->tx[i].ring);
		Py_XDECREF(fp->tx[i].map);
	}
	PyMem_Free(fp->counts);
	PyMem_Free(fp->hops);
	PyMem_Free(fp->revs);
	Py_TYPE(fp)->tp_free((PyObject *)fp);
}

static int init_outcomes(FastPath *fp, PyObject *outcomes, PyObject *slow)
{
	for (size_t i = 0; i < sizeof(OUTCOME_LABELS) / sizeof(OUTCOME_LABELS[0]); i++) {
		PyObject *index = PyDict_GetItemString(outcomes, OUTCOME_LABELS[i].label);
		long value;

		if (!index) {
			PyErr_Format(PyExc_KeyError, "outcomes: no %s", OUTCOME_LABELS[i].label);
			return -1;
		}
		value = PyLong_AsLong(index);
		if (value == -1 && PyErr_Occurred())
			return -1;
		if (value < 0 || value >= MAX_OUTCOMES) {
			PyErr_Format(PyExc_ValueError, "outcome %s: index %ld", OUTCOME_LABELS[i].label,
				     value);
			return -1;
		}
		*(int *)((char *)&fp->o + OUTCOME_LABELS[i].offset) = (int)value;
	}
	PyObject *it = PyObject_GetIter(slow), *item;

	if (!it)
		return -1;
	while ((item = PyIter_Next(it))) {
		long value = PyLong_AsLong(item);

		Py_DECREF(item);
		if (value == -1 && PyErr_Occurred())
			break;
		if (value < 0 || value >= MAX_OUTCOMES) {
			PyErr_Format(PyExc_ValueError, "slow: outcome index %ld", value);
			break;
		}
		fp->slow |= 1ULL << value;
	}
	Py_DECREF(it);
	return PyErr_Occurred() ? -1 : 0;
}

static int init_rings(FastPath *fp, PyObject *rx, PyObject *tx)
{
	PyObject *rxs = PySequence_Fast(rx, "rx: a sequence of RxRing");
	PyObject *txs = NULL;
	int err = -1;

	if (!rxs)
		return -1;
	txs = PySequence_Fast(tx, "tx: a sequence of TxRing");
	if (!txs)
		goto out;
	/* Whatever is received may go out of any port: with rings, all of them. */
	if (PySequence_Fast_GET_SIZE(rxs) > fp->nports || (PySequence_Fast_GET_SIZE(rxs) &&
	    PySequence_Fast_GET_SIZE(txs) != fp->nports)) {
		PyErr_SetString(PyExc_ValueError, "rx: at most a ring per port; tx: one per port");
		goto out;
	}
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(rxs); i++) {
		struct rx *r = &fp->rx[i];
		uint32_t ifindex;

		r->ring = Py_NewRef(PySequence_Fast_GET_ITEM(rxs, i));
		fp->nrx = (int)i + 1;
		r->map = PyObject_GetAttrString(r->ring, "map");
		if (!r->map || get_u32(r->ring, "block_size", &r->block_size) ||
		    get_u32(r->ring, "block_nr", &r->block_nr) ||
		    get_u32(r->ring, "ifindex", &ifindex))
			goto out;
		/* A ring's frames count for the port at the same slot. */
		if (ifindex != fp->ports[i]) {
			PyErr_SetString(PyExc_ValueError, "rx: rings in the order of the ports");
			goto out;
		}
		if (r->block_nr == 0 || r->block_size < sizeof(struct tpacket_block_desc)) {
			PyErr_SetString(PyExc_ValueError, "rx: no blocks");
			goto out;
		}
	}
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(txs); i++) {
		struct tx *t = &fp->tx[i];
		uint32_t ifindex;
		PyObject *sock, *fd;

		t->ring = Py_NewRef(PySequence_Fast_GET_ITEM(txs, i));
		fp->ntx = (int)i + 1;
		t->map = PyObject_GetAttrString(t->ring, "map");
		if (!t->map || get_u32(t->ring, "frame_size", &t->frame_size) ||
		    get_u32(t->ring, "frame_nr", &t->frame_nr) ||
		    get_u32(t->ring, "ifindex", &ifindex))
			goto out;
		if (ifindex != fp->ports[i]) {
			PyErr_SetString(PyExc_ValueError, "tx: rings in the order of the ports");
			goto out;
		}
		if (t->frame_nr == 0 || t->frame_size <= TX_FRAME_OFFSET) {
			PyErr_SetString(PyExc_ValueError, "tx: no frames");
			goto out;
		}
		sock = PyObject_GetAttrString(t->ring, "sock");
		if (!sock)
			goto out;
		fd = PyObject_CallMethod(sock, "fileno", NULL);
		Py_DECREF(sock);
		if (!fd)
			goto out;
		t->fd = (int)PyLong_AsLong(fd);
		Py_DECREF(fd);
		if (t->fd == -1 && PyErr_Occurred())
			goto out;
	}
	err = 0;
out:
	Py_DECREF(rxs);
	Py_XDECREF(txs);
	return err;
}

static int FastPath_init(FastPath *fp, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"ports", "outcomes", "slow", "disabled", "port_words",
				 "rx_word", "outcome_word", "tx_word", "rx", "tx", NULL};
	PyObject *ports, *outcomes, *slow, *disabled, *rx = NULL, *tx = NULL;
	PyObject *seq, *it, *item;

	if (fp->counts) {
		PyErr_SetString(PyExc_RuntimeError, "FastPath: initialised once");
		return -1;
	}
	if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO!OOnnnn|OO", kwlist, &ports,
					 &PyDict_Type, &outcomes, &slow, &disabled,
					 &fp->port_words, &fp->rx_word, &fp->outcome_word,
					 &fp->tx_word, &rx, &tx))
		return -1;
	seq = PySequence_Fast(ports, "ports: a sequence of ifindexes");
	if (!seq)
		return -1;
	if (PySequence_Fast_GET_SIZE(seq) < 1 || PySequence_Fast_GET_SIZE(seq) > MAX_PORTS) {
		Py_DECREF(seq);
		PyErr_SetString(PyExc_ValueError, "ports: 1 to 64 ifindexes");
		return -1;
	}
	fp->nports = (int)PySequence_Fast_GET_SIZE(seq);
	for (int i = 0; i < fp->nports; i++) {
		unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seq, i));

		if (!PyErr_Occurred() && v > UINT32_MAX)
			PyErr_SetString(PyExc_OverflowError, "an ifindex is a 32-bit number");
		if (PyErr_Occurred()) {
			Py_DECREF(seq);
			return -1;
		}
		fp->ports[i] = (uint32_t)v;
	}
	Py_DECREF(seq);
	if (init_outcomes(fp, outcomes, slow))
		return -1;
	/* disabled: (family, ifindex) pairs, as worker.kernel_forwarding_off(). */
	it = PyObject_GetIter(disabled);
	if (!it)
		return -1;
	while ((item = PyIter_Next(it))) {
		int family;
		unsigned int ifindex;
		int ok = PyArg_ParseTuple(item, "iI", &family, &ifindex);
		int slot = ok ? port_slot(fp, ifindex) : -1;

		Py_DECREF(item);
		if (!ok)
			break;
		if (slot >= 0 && family == 4)
			fp->disabled4[slot] = 1;
		else if (slot >= 0 && family == 6)
			fp->disabled6[slot] = 1;
	}
	Py_DECREF(it);
	if (PyErr_Occurred())
		return -1;
	/* A bound on port_words keeps nports * port_words * 8 (the counts'
	 * allocation) from overflowing. */
	if (fp->port_words < 2 || fp->port_words > (1 << 20) ||
	    fp->rx_word < 0 || fp->tx_word < 0 || fp->outcome_word < 0 ||
	    fp->rx_word + 2 > fp->port_words || fp->tx_word + 2 > fp->port_words) {
		PyErr_SetString(PyExc_ValueError, "counter words outside a port's counters");
		return -1;
	}
	for (size_t i = 0; i < sizeof(OUTCOME_LABELS) / sizeof(OUTCOME_LABELS[0]); i++) {
		int index = *(int *)((char *)&fp->o + OUTCOME_LABELS[i].offset);

		if (fp->outcome_word + 2 * index + 2 > fp->port_words) {
			PyErr_SetString(PyExc_ValueError, "an outcome outside a port's counters");
			return -1;
		}
	}
	for (int i = 0; i < MAX_OUTCOMES; i++) {
		if ((fp->slow >> i & 1) && fp->outcome_word + 2 * i + 2 > fp->port_words) {
			PyErr_SetString(PyExc_ValueError, "a slow outcome outside a port's counters");
			return -1;
		}
	}
	fp->ncounts = fp->nports * fp->port_words;
	fp->counts = PyMem_Calloc((size_t)fp->ncounts, sizeof(uint64_t));
	fp->hops = PyMem_Calloc(HOPS_SLOTS, sizeof(struct hop));
	fp->revs = PyMem_Calloc(REV_SLOTS, sizeof(struct rev));
	if (!fp->counts || !fp->hops || !fp->revs) {
		PyErr_NoMemory();
		return -1;
	}
	fp->gen = 1;
	{
		PyObject *none = PyTuple_New(0);
		int err;

		if (!none)
			return -1;
		err = init_rings(fp, rx ? rx : none, tx ? tx : none);
		Py_DECREF(none);
		return err;
	}
}

/* -- Python: methods ------------------------------------------------------------ */

static int ingress_slot(FastPath *fp, unsigned int ifindex)
{
	int slot = port_slot(fp, ifindex);

	if (slot < 0)
		PyErr_Format(PyExc_ValueError, "ifindex %u is not a port", ifindex);
	return slot;
}

static PyObject *FastPath_run(FastPath *fp, PyObject *Py_UNUSED(ignored))
{
	PyObject *back = PyList_New(0);
	int held = 0, failed = 0;

	if (!back)
		return NULL;
	for (; held < fp->ntx; held++) {
		struct tx *t = &fp->tx[held];

		if (PyObject_GetBuffer(t->map, &t->buf, PyBUF_WRITABLE))
			goto out;
		if ((size_t)t->buf.len < (size_t)t->frame_size * t->frame_nr) {
			PyBuffer_Release(&t->buf);
			PyErr_SetString(PyExc_ValueError, "tx: map shorter than its ring");
			goto out;
		}
		if (get_u32(t->ring, "next", &t->next)) {
			PyBuffer_Release(&t->buf);
			goto out;
		}
		t->next %= t->frame_nr;
		t->queued = 0;
		t->kicked = 0;
	}
	for (int i = 0; i < fp->nrx && !failed; i++) {
		struct rx *r = &fp->rx[i];
		uint32_t next;
		uint64_t read;
		Py_buffer buf;

		if (PyObject_GetBuffer(r->map, &buf, PyBUF_WRITABLE))
			goto out;
		if ((size_t)buf.len < (size_t)r->block_size * r->block_nr ||
		    get_u32(r->ring, "next_block", &next) || get_u64(r->ring, "read", &read)) {
			if (!PyErr_Occurred())
				PyErr_SetString(PyExc_ValueError, "rx: map shorter than its ring");
			PyBuffer_Release(&buf);
			goto out;
		}
		next %= r->block_nr;
		for (;;) {
			uint8_t *base = (uint8_t *)buf.buf + (size_t)next * r->block_size;
			struct tpacket_hdr_v1 *bh = &((struct tpacket_block_desc *)base)->hdr.bh1;
			uint32_t num, off;

			if (!(__atomic_load_n(&bh->block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
				break;
			num = bh->num_pkts;
			off = bh->offset_to_first_pkt;
			for (uint32_t k = 0; k < num; k++) {
				struct tpacket3_hdr *h = (struct tpacket3_hdr *)(base + off);

				/* The kernel keeps every frame inside its block;
				 * a ring that says otherwise is not read further. */
				if (off + sizeof(*h) > r->block_size ||
				    h->tp_mac + (size_t)h->tp_snaplen > r->block_size - off)
					break;
				if (handle_frame(fp, i, base + off + h->tp_mac, h->tp_snaplen,
					  !!(h->tp_status & TP_STATUS_VLAN_VALID), back)) {
					failed = 1;
					break;
				}
				off += h->tp_next_offset;
			}
			read += num;
			__atomic_store_n(&bh->block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
			next = (next + 1) % r->block_nr;
			if (failed)
				break;
		}
		PyBuffer_Release(&buf);
		if (failed) {
			/* The ring's position still goes back to Python (its
			 * blocks are the kernel's again), with handle_frame()'s
			 * exception kept, not replaced by a later call's. */
			PyObject *type, *value, *tb;

			PyErr_Fetch(&type, &value, &tb);
			if (set_u64(r->ring, "next_block", next) || set_u64(r->ring, "read", read))
				PyErr_Clear();
			PyErr_Restore(type, value, tb);
			goto out;
		}
		if (set_u64(r->ring, "next_block", next) || set_u64(r->ring, "read", read))
			goto out;
	}
out:
	for (int i = 0; i < held; i++) {
		struct tx *t = &fp->tx[i];
		uint64_t queued = 0;

		PyBuffer_Release(&t->buf);
		if (PyErr_Occurred())
			continue;
		/* TxRing.flush() sends what is queued, once per batch; a kick
		 * here sent what Python had queued before. */
		if (!t->kicked && get_u64(t->ring, "queued", &queued))
			continue;
		if (set_u64(t->ring, "next", t->next))
			continue;
		set_u64(t->ring, "queued", queued + t->queued);
	}
	if (PyErr_Occurred()) {
		Py_DECREF(back);
		return NULL;
	}
	return back;
}

/* decide()/missing() take a frame from Python: the tests, and learning. */
static int parse_frame(FastPath *fp, PyObject *args, Py_buffer *buf, int *slot, int *vlan)
{
	unsigned int ingress;

	if (!PyArg_ParseTuple(args, "y*Ip", buf, &ingress, vlan))
		return -1;
	*slot = ingress_slot(fp, ingress);
	if (*slot < 0) {
		PyBuffer_Release(buf);
		return -1;
	}
	return 0;
}

static PyObject *FastPath_decide(FastPath *fp, PyObject *args)
{
	Py_buffer buf;
	struct verdict v;
	PyObject *frame = Py_None, *result;
	int slot, vlan;

	if (parse_frame(fp, args, &buf, &slot, &vlan))
		return NULL;
	decide(fp, buf.buf, (size_t)buf.len, slot, vlan, &v);
	if (v.outcome == MISS) {
		PyBuffer_Release(&buf);
		Py_RETURN_NONE;
	}
	if (v.outcome == fp->o.forwarded) {
		frame = PyBytes_FromStringAndSize(NULL, v.out_len);
		if (!frame) {
			PyBuffer_Release(&buf);
			return NULL;
		}
		rewrite((uint8_t *)PyBytes_AS_STRING(frame), buf.buf, &v);
		result = Py_BuildValue("(iIN)", v.outcome, v.egress, frame);
	} else {
		result = Py_BuildValue("(iIO)", v.outcome, v.egress, frame);
	}
	PyBuffer_Release(&buf);
	return result;
}

static PyObject *FastPath_missing(FastPath *fp, PyObject *args)
{
	Py_buffer buf;
	struct verdict v;
	PyObject *result;
	const uint8_t *f;
	int slot, vlan;

	if (parse_frame(fp, args, &buf, &slot, &vlan))
		return NULL;
	f = buf.buf;
	decide(fp, f, (size_t)buf.len, slot, vlan, &v);
	if (v.outcome != MISS)
		result = Py_NewRef(Py_None);
	else if (v.miss == MISS_PORT)
		result = Py_BuildValue("(s)", "port");
	else if (v.miss == MISS_HOP)
		result = Py_BuildValue("(siy#)", "hop", v.family,
				       (const char *)(v.family == 4 ? f + 30 : f + 38),
				       (Py_ssize_t)addr_len(v.family));
	else
		result = Py_BuildValue("(sy#y#I)", "reverse", (const char *)f + 26, (Py_ssize_t)4,
				       (const char *)f + 30, (Py_ssize_t)4, v.hop->ifindex);
	PyBuffer_Release(&buf);
	return result;
}

static PyObject *FastPath_learn_port(FastPath *fp, PyObject *args)
{
	unsigned int ifindex;
	Py_buffer mac;
	int slot, ipv6_disabled;

	if (!PyArg_ParseTuple(args, "Iy*p", &ifindex, &mac, &ipv6_disabled))
		return NULL;
	slot = ingress_slot(fp, ifindex);
	if (slot >= 0 && mac.len != 6) {
		PyErr_SetString(PyExc_ValueError, "mac: 6 bytes");
		slot = -1;
	}
	if (slot >= 0) {
		memcpy(fp->mac[slot], mac.buf, 6);
		fp->ipv6_off[slot] = (uint8_t)ipv6_disabled;
		fp->port_gen[slot] = fp->gen;
	}
	PyBuffer_Release(&mac);
	if (slot < 0)
		return NULL;
	Py_RETURN_NONE;
}

static PyObject *FastPath_learn_hop(FastPath *fp, PyObject *args)
{
	int family, outcome, found;
	unsigned int ifindex, mtu;
	Py_buffer dst, dmac, smac;
	struct hop *h;
	PyObject *result = NULL;

	if (!PyArg_ParseTuple(args, "iy*iIIy*y*", &family, &dst, &outcome, &ifindex, &mtu,
			      &dmac, &smac))
		return NULL;
	if ((family != 4 && family != 6) || dst.len != (Py_ssize_t)addr_len(family)) {
		PyErr_SetString(PyExc_ValueError, "hop: family 4 or 6 and its address");
		goto out;
	}
	if (outcome < 0 || outcome >= MAX_OUTCOMES || fp->outcome_word + 2 * outcome + 2 > fp->port_words) {
		PyErr_SetString(PyExc_ValueError, "hop: an outcome index");
		goto out;
	}
	if ((dmac.len != 6 && dmac.len != 0) || (smac.len != 6 && smac.len != 0) ||
	    (outcome == fp->o.forwarded && (dmac.len != 6 || smac.len != 6))) {
		PyErr_SetString(PyExc_ValueError, "hop: MACs of 6 bytes");
		goto out;
	}
	h = hop_slot(fp, family, dst.buf, &found);
	if (!found && fp->nhops >= HOPS_MAX) {
		flush(fp);
		h = hop_slot(fp, family, dst.buf, &found);
	}
	memset(h, 0, sizeof(*h));
	h->family = (uint8_t)family;
	memcpy(h->dst, dst.buf, dst.len);
	h->outcome = (int16_t)outcome;
	h->ifindex = ifindex;
	h->egress_slot = (int16_t)port_slot(fp, ifindex);
	h->mtu = mtu;
	memcpy(h->dmac, dmac.buf, dmac.len);
	memcpy(h->smac, smac.buf, smac.len);
	h->gen = fp->gen;
	if (!found)
		fp->nhops++;
	result = Py_NewRef(Py_None);
out:
	PyBuffer_Release(&dst);
	PyBuffer_Release(&dmac);
	PyBuffer_Release(&smac);
	return result;
}

static PyObject *FastPath_learn_reverse(FastPath *fp, PyObject *args)
{
	Py_buffer src;
	unsigned int ingress;
	int ok, slot, found;
	struct rev *r;

	if (!PyArg_ParseTuple(args, "y*Ip", &src, &ingress, &ok))
		return NULL;
	slot = ingress_slot(fp, ingress);
	if (slot >= 0 && src.len != 4) {
		PyErr_SetString(PyExc_ValueError, "reverse: an IPv4 source");
		slot = -1;
	}
	if (slot < 0) {
		PyBuffer_Release(&src);
		return NULL;
	}
	r = rev_slot(fp, src.buf, slot, &found);
	if (!found && fp->nrevs >= REV_MAX) {
		flush(fp);
		r = rev_slot(fp, src.buf, slot, &found);
	}
	memcpy(r->src, src.buf, 4);
	r->slot = (uint8_t)slot;
	r->ok = (uint8_t)ok;
	r->gen = fp->gen;
	if (!found)
		fp->nrevs++;
	PyBuffer_Release(&src);
	Py_RETURN_NONE;
}

static PyObject *FastPath_flush(FastPath *fp, PyObject *Py_UNUSED(ignored))
{
	flush(fp);
	Py_RETURN_NONE;
}

static PyObject *FastPath_add_counts(FastPath *fp, PyObject *local)
{
	if (!PyList_Check(local) || PyList_GET_SIZE(local) < fp->ncounts) {
		PyErr_SetString(PyExc_ValueError, "add_counts: the worker's list of counter words");
		return NULL;
	}
	for (Py_ssize_t i = 0; i < fp->ncounts; i++) {
		PyObject *old, *add, *sum;

		if (!fp->counts[i])
			continue;
		old = PyList_GET_ITEM(local, i);
		add = PyLong_FromUnsignedLongLong(fp->counts[i]);
		if (!add)
			return NULL;
		sum = PyNumber_Add(old, add);
		Py_DECREF(add);
		if (!sum)
			return NULL;
		PyList_SetItem(local, i, sum);	/* steals sum, drops old */
		fp->counts[i] = 0;
	}
	Py_RETURN_NONE;
}

static PyMethodDef FastPath_methods[] = {
	{"run", (PyCFunction)FastPath_run, METH_NOARGS,
	 "run() -> [(ring index, frame, vlan, learn)]: read every block the rings hold, "
	 "count and forward what the cache answers; the rest goes back to the Python path "
	 "(learn: the cache lacked an answer)."},
	{"decide", (PyCFunction)FastPath_decide, METH_VARARGS,
	 "decide(frame, ingress, vlan) -> (outcome, egress, frame out or None), as "
	 "packet.decide(); None when the cache lacks an answer."},
	{"missing", (PyCFunction)FastPath_missing, METH_VARARGS,
	 "missing(frame, ingress, vlan) -> the answer the cache lacks for this frame: "
	 "('port',), ('hop', family, dst), ('reverse', src, dst, egress); or None."},
	{"learn_port", (PyCFunction)FastPath_learn_port, METH_VARARGS,
	 "learn_port(ifindex, mac, ipv6_disabled): a port's own address and IPv6 switch."},
	{"learn_hop", (PyCFunction)FastPath_learn_hop, METH_VARARGS,
	 "learn_hop(family, dst, outcome, ifindex, mtu, dmac, smac): fib.lookup()'s Hop."},
	{"learn_reverse", (PyCFunction)FastPath_learn_reverse, METH_VARARGS,
	 "learn_reverse(src, ingress, ok): fib.reverse_ok() for an IPv4 source."},
	{"flush", (PyCFunction)FastPath_flush, METH_NOARGS,
	 "flush(): forget every answer (fib.Fib dropped its own)."},
	{"add_counts", (PyCFunction)FastPath_add_counts, METH_O,
	 "add_counts(local): add what was counted since to the worker's counter words."},
	{NULL, NULL, 0, NULL},
};

static PyTypeObject FastPathType = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "xdpfwd.afpacket._fastpath.FastPath",
	.tp_doc = "One worker's fast path: its ports, its rings, its cache of answers.",
	.tp_basicsize = sizeof(FastPath),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)FastPath_init,
	.tp_dealloc = (destructor)FastPath_dealloc,
	.tp_methods = FastPath_methods,
};

static struct PyModuleDef module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "xdpfwd.afpacket._fastpath",
	.m_doc = "The AF_PACKET forwarder's per-frame work (see fastpath.c).",
	.m_size = -1,
};

PyMODINIT_FUNC PyInit__fastpath(void)
{
	PyObject *m;

	if (PyType_Ready(&FastPathType) < 0)
		return NULL;
	m = PyModule_Create(&module);
	if (!m)
		return NULL;
	if (PyModule_AddObjectRef(m, "FastPath", (PyObject *)&FastPathType) ||
	    PyModule_AddStringConstant(m, "SOURCE_HASH", XDPFWD_FASTPATH_SOURCE_HASH) ||
	    PyModule_AddIntConstant(m, "TX_DATA_OFFSET", (long)TX_DATA_OFFSET) ||
	    PyModule_AddIntConstant(m, "TX_FRAME_OFFSET", (long)TX_FRAME_OFFSET)) {
		Py_DECREF(m);
		return NULL;
	}
	return m;
}
