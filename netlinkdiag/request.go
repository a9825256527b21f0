package netlinkdiag

import "encoding/binary"

// Netlink and sock_diag numbers from the Linux UAPI headers. They are spelled
// out here rather than taken from x/sys/unix so that the decoder builds, and
// decodes Linux bytes, on every OS.
const (
	nlmsgHdrLen = 16 // sizeof(struct nlmsghdr)

	nlmsgNoop  = 1
	nlmsgError = 2
	nlmsgDone  = 3

	nlmFRequest  = 0x1
	nlmFDumpIntr = 0x10
	nlmFDump     = 0x300 // NLM_F_ROOT | NLM_F_MATCH

	tcpdiagGetsock   = 18 // legacy inet_diag request and reply type
	sockDiagByFamily = 20

	afInet     = 2
	afInet6    = 10
	ipprotoTCP = 6

	inetDiagSockIDLen = 48 // sizeof(struct inet_diag_sockid)
	inetDiagReqLen    = 60 // sizeof(struct inet_diag_req)
	inetDiagReqV2Len  = 56 // sizeof(struct inet_diag_req_v2)
	inetDiagMsgLen    = 72 // sizeof(struct inet_diag_msg)

	// Errnos with which inet_diag says it has no handler for TCP
	// (include/uapi/asm-generic/errno-base.h and errno.h).
	errnoENOENT     = 2
	errnoEOPNOTSUPP = 95
)

// Attribute types that may follow an inet_diag_msg (enum in
// include/uapi/linux/inet_diag.h), as passed to the Attributes callback.
const (
	AttrMemInfo   = 1  // INET_DIAG_MEMINFO: struct inet_diag_meminfo
	AttrInfo      = 2  // INET_DIAG_INFO: struct tcp_info
	AttrVegasInfo = 3  // INET_DIAG_VEGASINFO: struct tcpvegas_info
	AttrCong      = 4  // INET_DIAG_CONG: congestion control name, NUL-terminated
	AttrTOS       = 5  // INET_DIAG_TOS: u8
	AttrTClass    = 6  // INET_DIAG_TCLASS: u8
	AttrSkMemInfo = 7  // INET_DIAG_SKMEMINFO: [SK_MEMINFO_VARS]u32
	AttrShutdown  = 8  // INET_DIAG_SHUTDOWN: u8, sent for every full socket
	AttrDCTCPInfo = 9  // INET_DIAG_DCTCPINFO: struct tcp_dctcp_info
	AttrProtocol  = 10 // INET_DIAG_PROTOCOL: u8
	AttrSkV6Only  = 11 // INET_DIAG_SKV6ONLY: u8, sent for IPv6 listening and closed sockets
	AttrMark      = 15 // INET_DIAG_MARK: u32, sent when the reader has CAP_NET_ADMIN
	AttrBBRInfo   = 16 // INET_DIAG_BBRINFO: struct tcp_bbr_info
	AttrClassID   = 17 // INET_DIAG_CLASS_ID: u32
	AttrULPInfo   = 19 // INET_DIAG_ULP_INFO: nested
	AttrCgroupID  = 21 // INET_DIAG_CGROUP_ID: u64
	AttrSockOpt   = 22 // INET_DIAG_SOCKOPT: u16 of socket option bits
)

// Extension bits for Request.Extensions: each asks the kernel to append the
// attribute of the same name to every socket's message.
const (
	ExtMemInfo   uint8 = 1 << (AttrMemInfo - 1)
	ExtInfo      uint8 = 1 << (AttrInfo - 1)
	ExtVegasInfo uint8 = 1 << (AttrVegasInfo - 1)
	ExtCong      uint8 = 1 << (AttrCong - 1)
	ExtTOS       uint8 = 1 << (AttrTOS - 1)
	ExtTClass    uint8 = 1 << (AttrTClass - 1)
	ExtSkMemInfo uint8 = 1 << (AttrSkMemInfo - 1)
	ExtShutdown  uint8 = 1 << (AttrShutdown - 1)
)

// Options says where a Conn dumps sockets.
type Options struct {
	// NetNS selects the network namespace: "" is the caller's; a name
	// without a slash is one under /run/netns (as `ip netns` makes them);
	// anything else is a path such as /proc/PID/ns/net.
	NetNS string
}

// Request says which TCP sockets a dump returns and what it reports about
// them.
type Request struct {
	// States is a mask of kernel states, bit n for state n (1<<StateListen
	// and so on); 0 means AllStates, bound-inactive sockets included.
	States uint32

	// Extensions is a mask of Ext bits naming the attributes the kernel
	// appends to each socket (see Socket.Attrs); 0 asks for none.
	Extensions uint8

	// PerFamily sends two SOCK_DIAG_BY_FAMILY requests, AF_INET then
	// AF_INET6, instead of the default single legacy TCPDIAG_GETSOCK request,
	// which walks the socket tables once and returns both families.
	PerFamily bool
}

func (r Request) states() uint32 {
	if r.States == 0 {
		return AllStates
	}
	return r.States
}

// appendRequest appends a dump request to b: TCPDIAG_GETSOCK with a struct
// inet_diag_req when family is 0, else SOCK_DIAG_BY_FAMILY with a struct
// inet_diag_req_v2 for that family. The socket id is left zero: a dump
// ignores it.
func appendRequest(b []byte, seq uint32, family uint8, r Request) []byte {
	ne := binary.NativeEndian
	typ, plen := uint16(tcpdiagGetsock), inetDiagReqLen
	if family != 0 {
		typ, plen = sockDiagByFamily, inetDiagReqV2Len
	}
	start := len(b)
	b = append(b, make([]byte, nlmsgHdrLen+plen)...)
	h := b[start:]
	ne.PutUint32(h[0:4], uint32(nlmsgHdrLen+plen))
	ne.PutUint16(h[4:6], typ)
	ne.PutUint16(h[6:8], nlmFRequest|nlmFDump)
	ne.PutUint32(h[8:12], seq)
	ne.PutUint32(h[12:16], 0) // port id: the kernel fills in the sender's
	p := h[nlmsgHdrLen:]
	if family == 0 {
		// struct inet_diag_req: family, src_len, dst_len, ext, id, states, dbs.
		// The kernel ignores the family here and dumps both.
		p[3] = r.Extensions
		ne.PutUint32(p[4+inetDiagSockIDLen:], r.states())
		return b
	}
	// struct inet_diag_req_v2: family, protocol, ext, pad, states, id.
	p[0] = family
	p[1] = ipprotoTCP
	p[2] = r.Extensions
	ne.PutUint32(p[4:8], r.states())
	return b
}
