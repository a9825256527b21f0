package collector

import (
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
//   - FIN_WAIT2 or CLOSING -> CLOSE without a socket error is the full
//     socket handing over to its timewait remnant, which keeps the cookie
//     and emits nothing more: -> TIME_WAIT. A reset sets sk_err. An
//     orphaned socket's remnant waits for the peer's FIN in FIN_WAIT2
//     first (sock_diag shows it so) and turns into TIME_WAIT without an
//     event; a dump that finds it still in FIN_WAIT2 corrects it
//     (CorrectionHandover).
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
	case k.New == netlinkdiag.StateClose && k.Err == 0 &&
		(k.Old == netlinkdiag.StateFinWait2 || k.Old == netlinkdiag.StateClosing):
		tr.To = TimeWait
	}
	return tr, true
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
