package collector

import (
	"net/netip"
	"syscall"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// KernelTransition is one state change as the kernel's
// sock:inet_sock_set_state tracepoint reports it, in kernel states.
type KernelTransition struct {
	At       int64  // CLOCK_MONOTONIC nanoseconds
	Cookie   uint64 // the socket's cookie
	Netns    uint32 // the socket's network namespace inode
	Family   uint8  // AF_INET or AF_INET6
	Old, New uint8  // kernel states (include/net/tcp_states.h)
	Err      uint16 // the socket's sk_err at the change
	// FinReceived and Orphan, at X->CLOSE: the peer's FIN had come, the
	// socket's owner had closed it (see bpfsource.Event).
	FinReceived, Orphan bool
	// Src and Dst are the connection's local and remote ends.
	Src, Dst netip.AddrPort
}

// Transition maps a kernel state change onto the documented states. It
// reports false for a change it cannot map (a state with no documented
// name, an unknown family).
//
// Two changes mean something else than they say:
//
//   - LISTEN -> SYN_RECV is the listener's child, a new socket, entering
//     SYN_RCVD (the listener stays in LISTEN): CLOSED -> SYN_RCVD for the
//     child's cookie. The request socket that stood for the connection
//     before the handshake's last ACK emits nothing; it shares the child's
//     cookie, so where a dump saw it the SYN_RCVD stay counts from its
//     arrival (see Tracker.Apply), otherwise from the child's creation.
//   - FIN_WAIT2 or CLOSING -> CLOSE without a socket error, after the
//     peer's FIN, is the full socket handing over to its timewait remnant,
//     which keeps the cookie and emits nothing more: -> TIME_WAIT.
//
// And one means nothing: an orphan's FIN_WAIT2 -> CLOSE before the peer's
// FIN hands over to a remnant that stays in FIN_WAIT2 (RemnantInFinWait2),
// and Transition reports false for it.
func (k KernelTransition) Transition() (Transition, bool) {
	from, ok1 := FromKernel(k.Old)
	to, ok2 := FromKernel(k.New)
	if !ok1 || !ok2 {
		return Transition{}, false
	}
	tr := Transition{Cookie: k.Cookie, Netns: k.Netns, From: from, To: to, At: k.At}
	switch k.Family {
	case syscall.AF_INET:
		tr.Family = IPv4
	case syscall.AF_INET6:
		tr.Family = IPv6
	default:
		return Transition{}, false
	}
	switch {
	case k.Old == netlinkdiag.StateListen && k.New == netlinkdiag.StateSynRecv:
		tr.From = Closed
	case k.RemnantInFinWait2():
		return Transition{}, false
	case k.New == netlinkdiag.StateClose && k.Err == 0 && k.FinReceived &&
		(k.Old == netlinkdiag.StateFinWait2 || k.Old == netlinkdiag.StateClosing):
		tr.To = TimeWait
	}
	return tr, true
}

// RemnantInFinWait2 reports whether k is an orphaned socket handing over,
// in FIN_WAIT2, to a timewait remnant that waits there for the peer's FIN:
// the connection stays in FIN_WAIT2. The remnant turns into TIME_WAIT when
// the FIN comes, and dies at a reset or when its timer (tcp_fin_timeout)
// runs out, all without an event: the peer's own change shows the first
// two where the peer is observed too (PeerClosing), and dumps show the
// rest.
func (k KernelTransition) RemnantInFinWait2() bool {
	return k.Old == netlinkdiag.StateFinWait2 && k.New == netlinkdiag.StateClose &&
		k.Err == 0 && k.Orphan && !k.FinReceived
}

// PeerClosing reports what k does to the other end of its connection when
// that end is a remnant in FIN_WAIT2: CLOSE_WAIT -> LAST_ACK sends the FIN
// that takes the remnant to TIME_WAIT, CLOSE_WAIT -> CLOSE (an abort, or a
// reset the remnant sent) ends it. It reports false for any other change.
func (k KernelTransition) PeerClosing() (State, bool) {
	switch {
	case k.Old != netlinkdiag.StateCloseWait:
		return 0, false
	case k.New == netlinkdiag.StateLastAck:
		return TimeWait, true
	case k.New == netlinkdiag.StateClose:
		return Closed, true
	}
	return 0, false
}

// Refresh brings the tracker up to now between dumps, as events move it:
// TIME_WAIT sockets whose timer has run out (their end emits no event) are
// gone, at the moment it ran out. It returns the counts, oldest ages and
// tracked sockets as of now; the sockets the last complete dump counted
// but could not track are counted as that dump found them.
func (t *Tracker) Refresh(now int64) PollResult {
	n := t.since(now)
	oldest := noneEntered()
	t.sockets.sweep(func(s *slot) bool {
		st := State(s.meta & stateMask)
		if st == TimeWait && s.meta&exactBit != 0 {
			if end := s.entered + int64(TimeWaitLifetime); end <= n {
				e := s.entry()
				if !e.unknown && t.stay != nil {
					t.stay(TimeWait, TimeWaitLifetime)
				}
				t.transitions[TimeWait][Closed]++
				t.live[e.family][TimeWait]--
				return false
			}
		}
		oldest[st] = min(oldest[st], s.entered)
		return true
	})
	t.sockets.shrink()
	res := PollResult{Sockets: t.live, Oldest: ages(oldest, n), Tracked: t.sockets.len(), Untracked: t.untrackedN}
	for f := range res.Sockets {
		for st := range res.Sockets[f] {
			res.Sockets[f][st] += t.untracked[f][st]
		}
	}
	return res
}
