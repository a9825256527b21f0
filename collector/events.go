package collector

import (
	"math"
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
//
// Counts are kept at every change (Live). The rest comes from an index
// that Apply keeps up, so that a publish costs what changed since the
// last, not a sweep of every tracked socket: the exact TIME_WAIT entries
// in a heap by the end of their timer, which gives both the remnants
// whose timer ran out and the oldest of them, and each state's earliest
// entry. Only when the earliest entry of a state that still holds
// sockets has left it, or after a dump (which changes entries without
// keeping the index), does Refresh sweep the table and build the index
// anew.
func (t *Tracker) Refresh(now int64) PollResult {
	n := t.since(now)
	if !t.indexed || !t.expireFromIndex(n) {
		t.reindex(n)
	}
	t.sockets.shrink()
	res := PollResult{Sockets: t.live, Tracked: t.sockets.len(), Untracked: t.untrackedN}
	oldest := noneEntered()
	for st := range oldest {
		oldest[st] = t.first[st].at
	}
	if len(t.ends) > 0 {
		oldest[TimeWait] = min(oldest[TimeWait], t.ends[0].end-int64(TimeWaitLifetime))
	}
	res.Oldest = ages(oldest, n)
	for f := range res.Sockets {
		for st := range res.Sockets[f] {
			res.Sockets[f][st] += t.untracked[f][st]
		}
	}
	return res
}

// expire forgets an exact TIME_WAIT entry whose timer ran out.
func (t *Tracker) expire(e entry) {
	if !e.unknown && t.stay != nil {
		t.stay(TimeWait, TimeWaitLifetime)
	}
	t.transitions[TimeWait][Closed]++
	t.live[e.family][TimeWait]--
}

// reindex sweeps the table: it forgets the TIME_WAIT entries whose timer
// ran out by n, and builds the index from the rest.
func (t *Tracker) reindex(n int64) {
	t.ends = t.ends[:0]
	for st := range t.first {
		t.first[st] = firstEntry{at: math.MaxInt64}
	}
	t.sockets.sweep(func(s *slot) bool {
		st := State(s.meta & stateMask)
		if st == TimeWait && s.meta&exactBit != 0 {
			end := s.entered + int64(TimeWaitLifetime)
			if end <= n {
				t.expire(s.entry())
				return false
			}
			t.ends = append(t.ends, timerEnd{end: end, cookie: s.cookie})
			return true
		}
		if f := &t.first[st]; s.entered < f.at {
			f.at, f.cookie = s.entered, s.cookie
		}
		return true
	})
	if cap(t.ends) > 4*len(t.ends)+1024 {
		// Return most of what a peak of remnants took, as the table does.
		t.ends = append(endHeap(nil), t.ends...)
	}
	t.ends.init()
	t.indexed = true
}

// expireFromIndex forgets the TIME_WAIT entries whose timer ran out by n,
// as the index says, and reports whether the index still gives every
// state's earliest entry.
func (t *Tracker) expireFromIndex(n int64) bool {
	for len(t.ends) > 0 {
		top := t.ends[0]
		ref, e, ok := t.sockets.lookup(top.cookie)
		current := ok && e.state == TimeWait && e.exact && e.entered+int64(TimeWaitLifetime) == top.end
		if current && top.end > n {
			break // the oldest remnant, still there
		}
		t.ends.pop()
		if current {
			t.expire(e)
			t.sockets.removeAt(ref)
		}
		// Otherwise the entry changed since: its heap item is stale.
	}
	for st := range t.first {
		f := &t.first[st]
		if !f.left {
			continue
		}
		if State(st) == TimeWait || t.live[IPv4][st]+t.live[IPv6][st] > 0 {
			return false // who is earliest now takes a sweep to know
		}
		*f = firstEntry{at: math.MaxInt64} // the state emptied
	}
	return true
}

// entered notes, for the index, that cookie's entry is now e.
func (t *Tracker) entered(cookie uint64, e entry) {
	switch {
	case !t.indexed:
	case e.state == TimeWait && e.exact:
		t.ends.push(timerEnd{end: e.entered + int64(TimeWaitLifetime), cookie: cookie})
	case e.entered < t.first[e.state].at:
		f := &t.first[e.state]
		f.at, f.cookie = e.entered, cookie
	}
}

// left notes, for the index, that cookie's entry e is leaving: changing,
// or forgotten. An exact TIME_WAIT entry's heap item goes stale and is
// dropped when it comes up; a state's earliest entry leaving makes the
// next Refresh look for the new earliest.
func (t *Tracker) left(cookie uint64, e entry) {
	if !t.indexed || e.state == TimeWait && e.exact {
		return
	}
	if f := &t.first[e.state]; f.at != math.MaxInt64 && f.cookie == cookie {
		f.left = true
	}
}

// firstEntry is a state's earliest entry: when, and whose. at is
// math.MaxInt64 for none. left says it has left since, and the earliest
// entry is not known.
type firstEntry struct {
	at     int64
	cookie uint64
	left   bool
}

// timerEnd is when an exact TIME_WAIT entry's timer runs out.
type timerEnd struct {
	end    int64
	cookie uint64
}

// endHeap is a min-heap of timer ends. It is written out rather than
// used through container/heap, whose Push would allocate for every item.
type endHeap []timerEnd

// push adds x.
func (h *endHeap) push(x timerEnd) {
	*h = append(*h, x)
	a := *h
	for i := len(a) - 1; i > 0; {
		p := (i - 1) / 2
		if a[p].end <= a[i].end {
			break
		}
		a[p], a[i] = a[i], a[p]
		i = p
	}
}

// pop removes the earliest end.
func (h *endHeap) pop() {
	a := *h
	last := len(a) - 1
	a[0] = a[last]
	*h = a[:last]
	h.down(0)
}

// down moves the item at i down to where it belongs.
func (h endHeap) down(i int) {
	for {
		l, m := 2*i+1, i
		if l < len(h) && h[l].end < h[m].end {
			m = l
		}
		if r := l + 1; r < len(h) && h[r].end < h[m].end {
			m = r
		}
		if m == i {
			return
		}
		h[i], h[m] = h[m], h[i]
		i = m
	}
}

// init orders the heap after its items were appended in any order, in
// linear time.
func (h endHeap) init() {
	for i := len(h)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}
