//go:build ignore

/*
 * Every TCP state change, from the inet_sock_set_state tracepoint, as one
 * fixed-size record in a ring buffer. Built by bpf2go (see gen.go); the Go
 * side is event.go (the record) and source_linux.go (loading, reading).
 */
#include "kernel_types.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

/*
 * One state change. event.go decodes it by these offsets; a test checks
 * them against the type bpf2go generates from this declaration.
 */
struct event {
	__u64 time_ns;	 /*  0: bpf_ktime_get_ns, CLOCK_MONOTONIC */
	__u64 cookie;	 /*  8: bpf_get_socket_cookie */
	__u32 netns;	 /* 16: inode of the socket's network namespace */
	__u16 sport;	 /* 20: local port, host byte order */
	__u16 dport;	 /* 22: remote port, host byte order */
	__u8 saddr[16];	 /* 24: local address; IPv4 in the first 4 bytes */
	__u8 daddr[16];	 /* 40: remote address; IPv4 in the first 4 bytes */
	__u8 family;	 /* 56: AF_INET or AF_INET6 */
	__u8 oldstate;	 /* 57: include/net/tcp_states.h */
	__u8 newstate;	 /* 58 */
	__u8 flags;	 /* 59: EVENT_* below, at X->CLOSE */
	__u16 err;	 /* 60: sk_err */
	__u16 pad1;	 /* 62 */
};			 /* 64 bytes */

/*
 * What the socket had been through at a change to CLOSE, which tells what
 * it left behind. tcp_time_wait() puts a timewait remnant in the socket's
 * place before tcp_done() sets CLOSE, and nothing in the closing socket
 * shows whether it did (it is unhashed either way by the time the
 * tracepoint fires). It does so from FIN_WAIT2 after the peer's FIN, which
 * sets SOCK_DONE: the remnant is in TIME_WAIT. It does so from FIN_WAIT2
 * before the peer's FIN only for an orphan (SOCK_DEAD, closed by its
 * owner): the remnant waits for the FIN in FIN_WAIT2. An owner's abort
 * (SO_LINGER 0) comes before the orphaning, and a reset sets sk_err.
 */
enum {
	EVENT_FIN_RECEIVED = 1 << 0, /* SOCK_DONE: the peer's FIN had come */
	EVENT_ORPHAN = 1 << 1,	     /* SOCK_DEAD: its owner had closed it */
};

/*
 * Puts struct event into the object's BTF, for bpf2go to generate its Go
 * type (tcpstateEvent), which a test holds event.go's offsets against.
 */
struct event *const unused_event __attribute__((unused)) = 0;

/* Records of state changes; its size is set from Go before loading. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20);
} events SEC(".maps");

/* Index of each loss counter in losses. */
enum {
	LOSS_RINGBUF = 0, /* no room in the ring buffer for a record */
	LOSS_MAX,
};

/* What the program could not deliver, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOSS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} losses SEC(".maps");

/*
 * Records are submitted without waking the reader until this many bytes
 * are pending; the reader also looks on a timer. Set from Go.
 */
volatile const __u64 wakeup_bytes = 256 << 10;

/*
 * The IP protocol whose sockets are followed. Always IPPROTO_TCP, except
 * in a test that shows the filter at work on MPTCP sockets.
 */
volatile const __u16 protocol = IPPROTO_TCP;

static __always_inline void count_loss(__u32 index)
{
	__u64 *n = bpf_map_lookup_elem(&losses, &index);
	if (n)
		*n += 1;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(inet_sock_set_state, const struct sock *sk, int oldstate, int newstate)
{
	/* The tracepoint also fires for SCTP, DCCP and MPTCP sockets. */
	if (BPF_CORE_READ(sk, sk_protocol) != protocol)
		return 0;

	/*
	 * Before anything can fail: the first call gives the socket its
	 * cookie, which tcp_time_wait() copies to the TIME_WAIT remnant.
	 */
	__u64 cookie = bpf_get_socket_cookie((void *)sk);

	struct event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_loss(LOSS_RINGBUF);
		return 0;
	}

	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);

	e->time_ns = bpf_ktime_get_ns();
	e->cookie = cookie;
	e->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	/*
	 * skc_num is cleared when the socket gives its port back, just before
	 * X->CLOSE; inet_sport still holds the port the connection used.
	 */
	e->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	if (!e->sport && newstate == TCP_CLOSE)
		e->sport = bpf_ntohs(BPF_CORE_READ((const struct inet_sock *)sk, inet_sport));
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__be32 *)e->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__be32 *)e->daddr, sk, __sk_common.skc_daddr);
	} else if (family == AF_INET6 && bpf_core_field_exists(sk->__sk_common.skc_v6_daddr)) {
		BPF_CORE_READ_INTO((struct in6_addr *)e->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO((struct in6_addr *)e->daddr, sk, __sk_common.skc_v6_daddr);
	}
	e->family = family;
	e->oldstate = oldstate;
	e->newstate = newstate;
	e->flags = 0;
	if (newstate == TCP_CLOSE) {
		unsigned long sk_flags;
		if (bpf_core_field_exists(sk->__sk_common.skc_flags))
			sk_flags = BPF_CORE_READ(sk, __sk_common.skc_flags);
		else
			sk_flags = BPF_CORE_READ(sk, sk_flags);
		if (sk_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DONE)))
			e->flags |= EVENT_FIN_RECEIVED;
		if (sk_flags & (1UL << bpf_core_enum_value(enum sock_flags, SOCK_DEAD)))
			e->flags |= EVENT_ORPHAN;
	}
	e->err = BPF_CORE_READ(sk, sk_err);
	e->pad1 = 0;

	long flags = BPF_RB_NO_WAKEUP;
	if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(e, flags);
	return 0;
}

/* GPL-compatible, as the tracing helpers require. */
char LICENSE[] SEC("license") = "Dual MIT/GPL";
