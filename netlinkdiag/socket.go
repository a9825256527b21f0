package netlinkdiag

import "net/netip"

// Kernel TCP states as reported in inet_diag_msg.idiag_state
// (include/net/tcp_states.h).
const (
	StateEstablished   = 1
	StateSynSent       = 2
	StateSynRecv       = 3
	StateFinWait1      = 4
	StateFinWait2      = 5
	StateTimeWait      = 6
	StateClose         = 7
	StateCloseWait     = 8
	StateLastAck       = 9
	StateListen        = 10
	StateClosing       = 11
	StateNewSynRecv    = 12
	StateBoundInactive = 13
)

// AllStates is a state mask that selects every kernel state, bound-inactive
// sockets (bit 13) included.
const AllStates uint32 = 1<<14 - 2

// Kernel timer kinds as reported in inet_diag_msg.idiag_timer.
const (
	TimerNone      = 0 // no timer pending
	TimerRetrans   = 1 // retransmit timer
	TimerKeepalive = 2 // keepalive timer
	TimerTimeWait  = 3 // TIME_WAIT timer
	TimerProbe     = 4 // zero-window probe timer
)

// Socket is one socket of a dump, decoded from an inet_diag_msg.
//
// A Socket passed to a callback lives in memory the next message reuses:
// copy what must outlive the callback.
type Socket struct {
	Family  uint8 // unix.AF_INET or unix.AF_INET6
	State   uint8 // kernel state, one of the State constants
	Timer   uint8 // pending timer, one of the Timer constants
	Retrans uint8 // retransmits (or probes) of the pending timer

	Src     netip.AddrPort // local address and port
	Dst     netip.AddrPort // remote address and port
	IfIndex uint32         // bound interface, 0 if none
	Cookie  uint64         // kernel socket cookie, stable for the socket's life

	Expires uint32 // milliseconds until the pending timer fires
	RQueue  uint32 // LISTEN: accept queue length; otherwise bytes unread
	WQueue  uint32 // LISTEN: accept queue limit; otherwise bytes unacknowledged
	UID     uint32 // owner's user id
	Inode   uint32 // socket inode, 0 for request, TIME_WAIT and orphaned sockets

	// Attrs holds the raw netlink attributes that followed the message:
	// those Request.Extensions asked for, and a few the kernel sends
	// unasked (INET_DIAG_SHUTDOWN on full sockets, INET_DIAG_MARK to a
	// reader with CAP_NET_ADMIN, ...); empty when there are none. It
	// aliases the receive buffer; see Attributes to walk it.
	Attrs []byte
}
