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

// entry is what the tracker remembers of one socket.
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
	sockets table
	stay    func(State, time.Duration)

	// Observations wait in pending until a batch is full, so that the
	// table's cache misses for a whole batch overlap (see flush).
	pending  [batchLen]observation
	npending int

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
	return &Tracker{max: max, stay: stay}
}

// Begin starts applying a dump taken at now.
func (t *Tracker) Begin(now time.Time) {
	if t.epoch.IsZero() {
		t.epoch = now
	}
	t.now = int64(now.Sub(t.epoch))
	if t.now >= maxTime {
		t.rebase(t.now)
	}
	t.cur = PollResult{}
}

// rebase moves the epoch d nanoseconds later, so that times stay within
// what a slot can hold (about 9 years either side of the epoch).
func (t *Tracker) rebase(d int64) {
	t.epoch = t.epoch.Add(time.Duration(d))
	t.now -= d
	t.prevPoll -= d
	t.sockets.each(func(e entry) (entry, bool) {
		e.entered -= d
		e.lastSeen = max(e.lastSeen-d, -maxTime) // seen years before: near enough
		return e, true
	})
}

func mid(a, b int64) int64 { return a + (b-a)/2 }

// observation is what the tracker needs of one socket of a dump.
type observation struct {
	cookie  uint64
	expires uint32
	state   State
	timer   uint8
}

// batchLen is how many observations are applied together.
const batchLen = 32

// Observe applies one socket of the dump and returns its documented state,
// or false for a kernel state with no documented name (counted, not
// tracked). It never allocates once the tracker has grown to the socket
// population.
func (t *Tracker) Observe(s *netlinkdiag.Socket) (State, bool) {
	st, ok := FromKernel(s.State)
	if !ok {
		t.cur.Unknown++
		return 0, false
	}
	fam := IPv4
	if s.Family == syscall.AF_INET6 {
		fam = IPv6
	}
	t.cur.Sockets[fam][st]++
	t.pending[t.npending] = observation{cookie: s.Cookie, expires: s.Expires, state: st, timer: s.Timer}
	t.npending++
	if t.npending == batchLen {
		t.flush()
	}
	return st, true
}

// flush applies the pending observations. At hundreds of thousands of
// sockets nearly every table lookup misses the CPU caches, all the more
// after the kernel's walk of its socket tables between two batches: one
// pass first touches every batch member's slot, with independent loads
// that the CPU overlaps, so that the pass that applies them finds their
// slots cached.
func (t *Tracker) flush() {
	obs := t.pending[:t.npending]
	t.npending = 0
	t.sockets.touch(obs)
	for i := range obs {
		t.apply(&obs[i])
	}
}

func (t *Tracker) apply(o *observation) {
	st := o.state
	ref, e, ok := t.sockets.lookup(o.cookie)
	switch {
	case ok && e.state == st:
		e.lastSeen = t.now
		t.sockets.update(ref, e)
	case ok:
		// Leaving one state is entering the next.
		at := t.entry(o, st, e.lastSeen, mid(e.lastSeen, t.now))
		if !e.unknown && t.stay != nil {
			t.stay(e.state, time.Duration(at-e.entered))
		}
		t.transitions[e.state][st]++
		t.sockets.update(ref, entry{entered: at, lastSeen: t.now, state: st})
	case t.sockets.len() >= t.max:
		t.cur.Untracked++
		return
	case !t.started || t.saturated:
		// Present before tracking began (or perhaps untracked until now):
		// the start is unknown unless a kernel timer pins it.
		n := entry{entered: t.now, lastSeen: t.now, state: st, unknown: true}
		if pinned, ok := t.pinned(o, st, -1<<62); ok {
			n.entered, n.unknown = pinned, false
		}
		t.sockets.put(o.cookie, n)
	default:
		if st != Closed {
			t.transitions[Closed][st]++
		}
		t.sockets.put(o.cookie, entry{entered: t.entry(o, st, t.prevPoll, mid(t.prevPoll, t.now)), lastSeen: t.now, state: st})
	}
}

// entry returns when a socket entered st: the midpoint guess, or the
// kernel's own timer when it pins the moment within (after, now].
func (t *Tracker) entry(o *observation, st State, after, guess int64) int64 {
	if pinned, ok := t.pinned(o, st, after); ok {
		return pinned
	}
	return guess
}

func (t *Tracker) pinned(o *observation, st State, after int64) (int64, bool) {
	if st != TimeWait || o.timer != netlinkdiag.TimerTimeWait {
		return 0, false
	}
	at := t.now - int64(TimeWaitLifetime) + int64(o.expires)*int64(time.Millisecond)
	if at <= after || at > t.now {
		return 0, false
	}
	return at, true
}

// Commit ends a complete dump: sockets it did not see have left their
// state for CLOSED. It returns what the dump found.
func (t *Tracker) Commit() PollResult {
	t.flush()
	var oldest [NumStates]int64
	var have [NumStates]bool
	t.sockets.each(func(e entry) (entry, bool) {
		if e.lastSeen != t.now {
			leave := mid(e.lastSeen, t.now)
			if !e.unknown && t.stay != nil && e.state != Closed {
				t.stay(e.state, time.Duration(leave-e.entered))
			}
			if e.state != Closed {
				t.transitions[e.state][Closed]++
			}
			return e, false
		}
		if !have[e.state] || e.entered < oldest[e.state] {
			oldest[e.state], have[e.state] = e.entered, true
		}
		return e, true
	})
	t.sockets.shrink()
	for s := range oldest {
		if have[s] {
			t.cur.Oldest[s] = time.Duration(t.now - oldest[s])
		}
	}
	t.cur.Tracked = t.sockets.len()
	t.started = true
	t.saturated = t.cur.Untracked > 0
	t.prevPoll = t.now
	return t.cur
}

// Abort ends a dump that cannot be trusted to be whole (an error or an
// interrupted dump). What it saw stands; nothing is inferred from what it
// did not see. It returns what the partial dump found.
func (t *Tracker) Abort() PollResult {
	t.flush()
	t.saturated = t.saturated || t.cur.Untracked > 0
	t.prevPoll = t.now
	return t.cur
}

// Transitions returns the cumulative count of transitions between states,
// indexed [from][to].
func (t *Tracker) Transitions() [NumStates][NumStates]uint64 { return t.transitions }

// release returns the memory the tracker's table holds, at once rather
// than when the garbage collector finds the tracker gone. The tracker must
// not be used afterwards.
func (t *Tracker) release() { t.sockets.release() }

// Len returns the number of sockets tracked.
func (t *Tracker) Len() int {
	t.flush()
	return t.sockets.len()
}
