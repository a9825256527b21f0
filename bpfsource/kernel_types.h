/*
 * The few kernel and UAPI types tcpstate.bpf.c reads, in place of a
 * generated vmlinux.h. The kernel structs keep only the fields the program
 * reads and carry preserve_access_index, so that every access is relocated
 * (CO-RE) against the running kernel's BTF: their layout here is irrelevant,
 * only the field names and types must match the kernel's. Fields the kernel
 * keeps in anonymous unions and structs are found there by name.
 */
#ifndef TCPSTATE_KERNEL_TYPES_H
#define TCPSTATE_KERNEL_TYPES_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;

/* UAPI values from include/uapi/linux/bpf.h, in.h and socket.h; stable. */
enum {
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_RINGBUF = 27,
};
enum {
	BPF_RB_NO_WAKEUP = 1,
	BPF_RB_FORCE_WAKEUP = 2,
};
enum {
	BPF_RB_AVAIL_DATA = 0,
};
enum {
	IPPROTO_TCP = 6,
};
/* include/net/tcp_states.h: not UAPI, but unchanged since 2.6. */
enum {
	TCP_CLOSE = 7,
};
enum {
	AF_INET = 2,
	AF_INET6 = 10,
};

struct __attribute__((preserve_access_index)) in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
};

struct __attribute__((preserve_access_index)) ns_common {
	unsigned int inum;
};

struct __attribute__((preserve_access_index)) net {
	struct ns_common ns;
};

typedef struct __attribute__((preserve_access_index)) {
	struct net *net;
} possible_net_t;

/* include/net/sock.h; relocated by name, as the values are not UAPI. */
enum sock_flags {
	SOCK_DEAD,
	SOCK_DONE,
};

struct __attribute__((preserve_access_index)) sock_common {
	unsigned long skc_flags; /* sk_flags, since Linux 6.10 */
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

struct __attribute__((preserve_access_index)) sock {
	struct sock_common __sk_common;
	int sk_err;
	unsigned long sk_flags; /* before Linux 6.10 */
	__u16 sk_protocol;
};

struct __attribute__((preserve_access_index)) inet_sock {
	struct sock sk;
	__be16 inet_sport;
};

#endif
