package bpfsource

import (
	"encoding/binary"
	"net/netip"
)

// Event is one TCP state change of one socket, as the kernel announced it
// on the inet_sock_set_state tracepoint.
//
// Not every state a socket passes through is announced. Request sockets
// (NEW_SYN_RECV) emit nothing: an accepted socket first appears as
// LISTEN->SYN_RECV. A socket's hand-over to its timewait remnant shows only
// as X->CLOSE (FIN_WAIT2->CLOSE, for one); the remnant, which sock_diag
// reports in FIN_WAIT2 or TIME_WAIT, keeps the cookie, and its own changes
// and its end emit nothing. FinReceived, Orphan and Err tell the hand-over
// from the socket's end.
type Event struct {
	// Time is when the state changed, in nanoseconds of CLOCK_MONOTONIC
	// (bpf_ktime_get_ns).
	Time int64
	// Cookie is the socket's kernel cookie, as SO_COOKIE and sock_diag
	// report it. Every event gives the socket a cookie if it had none, so
	// that its timewait remnant inherits it. Since Linux 6.15 an accepted
	// socket's LISTEN->SYN_RECV already carries its own cookie.
	Cookie uint64
	// Netns is the inode number of the socket's network namespace (as
	// stat(2) of /proc/PID/ns/net shows it), read from the socket itself.
	Netns uint32
	// Family is the socket's address family: AF_INET (2) or AF_INET6 (10).
	Family uint8
	// OldState and NewState are kernel TCP states, numbered as in the
	// kernel's include/net/tcp_states.h (1 ESTABLISHED ... 7 CLOSE,
	// 10 LISTEN, 11 CLOSING, 12 NEW_SYN_RECV).
	OldState, NewState uint8
	// SrcPort and DstPort are the local and remote ports of the
	// connection. At CLOSE->SYN_SENT an ephemeral port is not chosen yet:
	// SrcPort 0.
	SrcPort, DstPort uint16
	// Src and Dst are the local and remote addresses: 4-byte addresses for
	// AF_INET, 16-byte ones for AF_INET6 (an IPv4 peer of an IPv6 socket
	// shows as a v4-mapped address, as the socket holds it). The zero Addr
	// for any other family.
	Src, Dst netip.Addr
	// Err is the socket's sk_err at the change: 0, or an errno such as
	// ECONNRESET (104) on the socket whose peer reset the connection.
	Err uint16
	// FinReceived and Orphan are set only at X->CLOSE. FinReceived says
	// the peer's FIN had come (SOCK_DONE), Orphan that the socket's owner
	// had closed it (SOCK_DEAD). From FIN_WAIT2 or CLOSING, with Err 0,
	// the socket has handed over to a timewait remnant in TIME_WAIT if
	// FinReceived; if not, an orphan's FIN_WAIT2->CLOSE has handed over to
	// a remnant that waits for the FIN in FIN_WAIT2, and anything else
	// left nothing behind.
	FinReceived, Orphan bool
}

// The record the BPF program writes, struct event in tcpstate.bpf.c, in the
// host's byte order (the program is built for little-endian hosts only).
// TestRecordLayout holds these offsets against the type bpf2go generates.
const (
	recordSize = 64

	offTime     = 0
	offCookie   = 8
	offNetns    = 16
	offSrcPort  = 20
	offDstPort  = 22
	offSrc      = 24
	offDst      = 40
	offFamily   = 56
	offOldState = 57
	offNewState = 58
	offFlags    = 59
	offErr      = 60
)

// Bits of the record's flags byte (EVENT_* in tcpstate.bpf.c).
const (
	flagFinReceived = 1 << 0
	flagOrphan      = 1 << 1
)

// batchEvents is the most events Read hands over in one call of its fn.
const batchEvents = 1024

// Address families, from the kernel's include/linux/socket.h.
const (
	afInet  = 2
	afInet6 = 10
)

// decodeRecord decodes one record into e, and reports whether it could: a
// record that is not exactly recordSize bytes long is malformed, and e is
// left as it was.
func decodeRecord(b []byte, e *Event) bool {
	if len(b) != recordSize {
		return false
	}
	le := binary.LittleEndian
	e.Time = int64(le.Uint64(b[offTime:]))
	e.Cookie = le.Uint64(b[offCookie:])
	e.Netns = le.Uint32(b[offNetns:])
	e.SrcPort = le.Uint16(b[offSrcPort:])
	e.DstPort = le.Uint16(b[offDstPort:])
	e.Family = b[offFamily]
	e.OldState = b[offOldState]
	e.NewState = b[offNewState]
	e.Err = le.Uint16(b[offErr:])
	e.FinReceived = b[offFlags]&flagFinReceived != 0
	e.Orphan = b[offFlags]&flagOrphan != 0
	switch e.Family {
	case afInet:
		e.Src = netip.AddrFrom4([4]byte(b[offSrc : offSrc+4]))
		e.Dst = netip.AddrFrom4([4]byte(b[offDst : offDst+4]))
	case afInet6:
		e.Src = netip.AddrFrom16([16]byte(b[offSrc : offSrc+16]))
		e.Dst = netip.AddrFrom16([16]byte(b[offDst : offDst+16]))
	default:
		e.Src, e.Dst = netip.Addr{}, netip.Addr{}
	}
	return true
}
