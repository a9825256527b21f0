package collector

import (
	"syscall"
	"time"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// TimeWaitLifetime is how long the kernel keeps a socket in TIME_WAIT
// (TCP_TIMEWAIT_LEN). A TIME_WAIT socket's timer counts down from it, which
// pins the moment the socket entered the state.
const TimeWaitLifetime = 60 * time.Second

// entry is what the tracker remembers of one socket: 24 bytes, so a map of a
// million of them stays well under 100 bytes per socket.
type entry struct {
	entered  int64 // ns since the tracker's epoch when the socket entered state
	lastSeen int64 // ns since the epoch of the last poll that saw it in state
	state    State
	unknown  bool // entered before tracking began: age is a lower bound
}

// Counts is the per-poll tally of sockets, by family and documented state.
type Counts [NumFamilies][NumStates]int

// PollResult is what one complete poll found.
type PollResult struct {
	Sockets   Counts
	Oldest    [NumStates]time.Duration // age of the longest-standing tracked socket per state, 0 if none
	Tracked   int                      // sockets the tracker remembers
	Untracked int                      // sockets counted but not tracked (over the limit)
	Unknown   int                      // sockets in a kernel state with no documented name
}

// Tracker remembers, per socket cookie, the documented state each socket is
// in and when it entered it. Feed it one dump at a time: Begin, Observe for
// every socket, then Commit (complete dump) or Abort (partial dump).
//
// Entry and exit times are midpoints between the polls on either side of a
// change, so their precision is the poll interval. A Tracker is not safe
// for concurrent use.
type Tracker struct {
	max     int
	sockets map[uint64]entry
	stay    func(State, time.Duration)

	epoch    time.Time
	now      int64 // the poll being applied
	prevPoll int64 // the last poll applied before it
	started  bool  // a complete poll has been committed
	// saturated: the last poll left sockets untracked, so a socket new to
	// the tracker may be one that was there all along.
	saturated bool

	cur         PollResult
	transitions [NumStates][NumStates]uint64
}

// NewTracker returns a tracker that remembers at most max sockets and
// reports each completed stay in a state (entry and exit both observed) to
// stay, which may be nil.
func NewTracker(max int, stay func(State, time.Duration)) *Tracker {
	if max < 0 {
		max = 0
	}
	return &Tracker{max: max, sockets: make(map[uint64]entry), stay: stay}
}

// Begin starts applying a dump taken at now.
func (t *Tracker) Begin(now time.Time) {
	if t.epoch.IsZero() {
		t.epoch = now
	}
	t.now = int64(now.Sub(t.epoch))
	t.cur = PollResult{}
}

func mid(a, b int64) int64 { return a + (b-a)/2 }

// Observe applies one socket of the dump. It never allocates once the map
// has grown to the socket population.
func (t *Tracker) Observe(s *netlinkdiag.Socket) {
	st, ok := FromKernel(s.State)
	if !ok {
		t.cur.Unknown++
		return
	}
	fam := IPv4
	if s.Family == syscall.AF_INET6 {
		fam = IPv6
	}
	t.cur.Sockets[fam][st]++

	e, ok := t.sockets[s.Cookie]
	switch {
	case ok && e.state == st:
		e.lastSeen = t.now
	case ok:
		// Leaving one state is entering the next.
		at := t.entry(s, st, e.lastSeen, mid(e.lastSeen, t.now))
		if !e.unknown && t.stay != nil {
			t.stay(e.state, time.Duration(at-e.entered))
		}
		t.transitions[e.state][st]++
		e = entry{entered: at, lastSeen: t.now, state: st}
	case len(t.sockets) >= t.max:
		t.cur.Untracked++
		return
	case !t.started || t.saturated:
		// Present before tracking began (or perhaps untracked until now):
		// the start is unknown unless a kernel timer pins it.
		e = entry{entered: t.now, lastSeen: t.now, state: st, unknown: true}
		if pinned, ok := t.pinned(s, st, -1<<62); ok {
			e.entered, e.unknown = pinned, false
		}
	default:
		if st != Closed {
			t.transitions[Closed][st]++
		}
		e = entry{entered: t.entry(s, st, t.prevPoll, mid(t.prevPoll, t.now)), lastSeen: t.now, state: st}
	}
	t.sockets[s.Cookie] = e
}

// entry returns when a socket entered st: the midpoint guess, or the
// kernel's own timer when it pins the moment within (after, now].
func (t *Tracker) entry(s *netlinkdiag.Socket, st State, after, guess int64) int64 {
	if pinned, ok := t.pinned(s, st, after); ok {
		return pinned
	}
	return guess
}

func (t *Tracker) pinned(s *netlinkdiag.Socket, st State, after int64) (int64, bool) {
	if st != TimeWait || s.Timer != netlinkdiag.TimerTimeWait {
		return 0, false
	}
	at := t.now - int64(TimeWaitLifetime) + int64(s.Expires)*int64(time.Millisecond)
	if at <= after || at > t.now {
		return 0, false
	}
	return at, true
}

// Commit ends a complete dump: sockets it did not see have left their
// state for CLOSED. It returns what the dump found.
func (t *Tracker) Commit() PollResult {
	var oldest [NumStates]int64
	var have [NumStates]bool
	for cookie, e := range t.sockets {
		if e.lastSeen != t.now {
			leave := mid(e.lastSeen, t.now)
			if !e.unknown && t.stay != nil && e.state != Closed {
				t.stay(e.state, time.Duration(leave-e.entered))
			}
			if e.state != Closed {
				t.transitions[e.state][Closed]++
			}
			delete(t.sockets, cookie)
			continue
		}
		if !have[e.state] || e.entered < oldest[e.state] {
			oldest[e.state], have[e.state] = e.entered, true
		}
	}
	for s := range oldest {
		if have[s] {
			t.cur.Oldest[s] = time.Duration(t.now - oldest[s])
		}
	}
	t.cur.Tracked = len(t.sockets)
	t.started = true
	t.saturated = t.cur.Untracked > 0
	t.prevPoll = t.now
	return t.cur
}

// Abort ends a dump that cannot be trusted to be whole (an error or an
// interrupted dump). What it saw stands; nothing is inferred from what it
// did not see. It returns what the partial dump found.
func (t *Tracker) Abort() PollResult {
	t.saturated = t.saturated || t.cur.Untracked > 0
	t.prevPoll = t.now
	return t.cur
}

// Transitions returns the cumulative count of transitions between states,
// indexed [from][to].
func (t *Tracker) Transitions() [NumStates][NumStates]uint64 { return t.transitions }

// Len returns the number of sockets tracked.
func (t *Tracker) Len() int { return len(t.sockets) }
