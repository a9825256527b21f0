package collector

import (
	"math"
	"time"
)

// TimeWaitLifetime is how long the kernel keeps a socket in TIME_WAIT
// (TCP_TIMEWAIT_LEN). A TIME_WAIT socket's timer counts down from it, which
// pins the moment the socket entered the state and the moment it ends.
const TimeWaitLifetime = 60 * time.Second

// MissesToClose is how many consecutive complete dumps must leave a socket
// out before the tracker takes it for closed. A sock_diag dump is not a
// consistent snapshot: a socket that stays open is skipped now and then
// when sockets ahead of it in its hash bucket close between two batches of
// the dump, so one absence proves nothing. A socket in TIME_WAIT whose
// kernel timer has run out is gone at once, without waiting.
const MissesToClose = 2

// Observation is one socket as a source saw it: a socket of a dump, or the
// state a kernel event left it in.
type Observation struct {
	Cookie uint64 // kernel socket cookie
	Netns  uint32 // network namespace inode; 0 when the source observes one namespace
	Family Family
	State  State
	// TimeWaitEnd is when the kernel's TIME_WAIT timer fires, in
	// CLOCK_MONOTONIC nanoseconds, for a socket in TIME_WAIT whose timer
	// the source reports; 0 otherwise.
	TimeWaitEnd int64
}

// Transition is one socket's change of state at a moment the kernel
// reported, exact to the nanosecond.
type Transition struct {
	Cookie   uint64
	Netns    uint32
	Family   Family
	From, To State
	At       int64 // CLOCK_MONOTONIC nanoseconds
}

// entry is what the tracker remembers of one socket. Times are nanoseconds
// since the tracker's epoch.
type entry struct {
	entered  int64 // when the socket entered state
	lastSeen int64 // the last dump that saw it
	state    State
	family   Family
	unknown  bool  // entered before tracking began: age is a lower bound
	exact    bool  // entered is the kernel's own time, not a midpoint between polls
	misses   uint8 // consecutive complete dumps that left it out
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
	// Missing counts sockets this dump left out that are not yet known to
	// be closed (see MissesToClose). They are counted in Sockets, in the
	// state they were last seen in.
	Missing int
	// Duplicates counts sockets this dump reported more than once; each
	// was counted and tracked once.
	Duplicates int
	// Skipped counts sockets this dump reported that earlier complete
	// dumps had left out: misses that were not closes.
	Skipped int
	// Corrections counts, once kernel events drive the tracker, what this
	// dump found that the events had not said, by kind.
	Corrections [NumCorrections]int
}

// Correction is a kind of disagreement between a dump and the kernel
// events that drive the tracker: each means an event was lost, or that the
// events were read wrong. In a healthy run there are none. Changes that
// emit no event are not corrections: a request socket's arrival, a
// remnant's change from FIN_WAIT2 to TIME_WAIT and the end of a remnant.
type Correction uint8

// The kinds of correction.
const (
	// CorrectionState: a dump found a socket in another state than its
	// last event left it in.
	CorrectionState Correction = iota
	// CorrectionHandover: a dump found in FIN_WAIT2 a socket that an
	// event had put in TIME_WAIT: a hand-over read wrong (see
	// KernelTransition.Transition).
	CorrectionHandover
	// CorrectionUnannounced: a dump found a socket no event had announced
	// (request sockets, which emit nothing, aside).
	CorrectionUnannounced
	// CorrectionVanished: two dumps missed a socket, not a remnant in
	// TIME_WAIT or FIN_WAIT2, whose close no event reported.
	CorrectionVanished
	// CorrectionPeer: the peer's events showed a change of an observed
	// socket that the kernel did not announce, an orphan's FIN_WAIT1 ->
	// FIN_WAIT2 and hand-over (see Poller.followClose). Unlike the
	// others, it comes with no dump, and is not always zero: it counts a
	// known gap in the kernel's events, repaired.
	CorrectionPeer

	// NumCorrections is the number of kinds.
	NumCorrections = 5
)

var correctionNames = [NumCorrections]string{"state", "handover", "unannounced", "vanished", "peer"}

// String returns the kind's label value.
func (c Correction) String() string { return label(correctionNames[:], c) }

// Tracker remembers, per socket cookie, the documented state each socket is
// in and when it entered it. Dumps feed it one at a time: Begin, then
// ObserveBatch for the dump's sockets, then Commit (a complete dump) or
// Abort (one that broke off). Apply feeds it a transition the kernel
// reported, at its exact time.
//
// Times are CLOCK_MONOTONIC nanoseconds. Entry and exit times a dump
// reveals are midpoints between the polls on either side of a change, so
// their precision is the poll interval; transitions applied with Apply are
// exact. A Tracker is not safe for concurrent use: one goroutine owns it.
type Tracker struct {
	max     int
	sockets table
	stay    func(State, time.Duration)

	epoch    int64 // the clock's reading that times in entries count from
	hasEpoch bool
	now      int64 // the dump being applied, since the epoch
	began    bool  // a dump has begun
	// complete holds the times of the latest complete dumps, newest at
	// complete[ncomplete%len], for the first dump that missed a socket.
	complete  [MissesToClose + 1]int64
	ncomplete int
	started   bool // a complete poll has been committed
	// saturated: the last poll left sockets untracked, so a socket new to
	// the tracker may be one that was there all along.
	saturated bool

	cur         PollResult
	transitions [NumStates][NumStates]uint64
	// live counts the tracked sockets by the family and state the tracker
	// holds them in, kept at every change, so that counts can follow
	// events between dumps.
	live Counts
	// untracked is what the last complete dump counted but could not
	// track, by family and state.
	untracked  Counts
	untrackedN int
	// events: kernel events drive the tracker, and a dump that disagrees
	// with them is correcting it.
	events bool

	// Between dumps, Refresh works from an index rather than sweeping the
	// whole table every publish (see Refresh): it is built by a sweep,
	// kept up by Apply, and dropped by anything else that changes entries
	// (a dump, a move of the epoch). indexed says it is up to date.
	indexed bool
	ends    endHeap               // exact TIME_WAIT entries by the end of their timer
	first   [NumStates]firstEntry // per state, its earliest entry; for TIME_WAIT, of those not in ends
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

// SetMax changes how many sockets the tracker may remember from the next
// dump on.
func (t *Tracker) SetMax(max int) { t.max = max }

// since turns a clock reading into time since the epoch, setting the epoch
// at the first reading and moving it forward before times outgrow a slot.
func (t *Tracker) since(mono int64) int64 {
	if !t.hasEpoch {
		t.epoch, t.hasEpoch = mono, true
	}
	d := mono - t.epoch
	if d >= maxTime {
		t.rebase(d - maxTime/2)
		d = mono - t.epoch
	}
	return d
}

// Begin starts applying a dump taken at now, a CLOCK_MONOTONIC reading in
// nanoseconds. A clock that has not moved since the last dump is taken to
// have moved by a nanosecond, so that dumps never share a time.
func (t *Tracker) Begin(now int64) {
	n := t.since(now)
	if t.began && n <= t.now {
		n = t.now + 1
	}
	t.now, t.began = n, true
	t.cur = PollResult{}
	t.indexed = false // the dump changes entries without keeping it
}

// rebase moves the epoch d nanoseconds later, so that times stay within
// what a slot holds (maxTime, about 104 days, either side of the epoch).
func (t *Tracker) rebase(d int64) {
	t.indexed = false
	t.epoch += d
	t.now -= d
	for i := range t.complete {
		t.complete[i] -= d
	}
	t.sockets.each(func(e entry) (entry, bool) {
		e.entered -= d
		e.lastSeen = max(e.lastSeen-d, -maxTime) // seen that long before: near enough
		return e, true
	})
}

func mid(a, b int64) int64 { return a + (b-a)/2 }

// noneEntered starts the search for each state's earliest entry time.
func noneEntered() [NumStates]int64 {
	var e [NumStates]int64
	for i := range e {
		e[i] = math.MaxInt64
	}
	return e
}

// ages turns each state's earliest entry time into its age at now; 0 for
// a state no socket is in.
func ages(earliest [NumStates]int64, now int64) [NumStates]time.Duration {
	var a [NumStates]time.Duration
	for s, at := range earliest {
		if at != math.MaxInt64 {
			a[s] = time.Duration(max(now-at, 0))
		}
	}
	return a
}

// BatchLen is how many observations ObserveBatch applies together at
// most; a longer slice is applied in batches of it.
const BatchLen = 32

// ObserveBatch applies up to BatchLen sockets of the dump under way, and
// sets dup[i] when obs[i] repeats a socket the dump already reported (the
// kernel repeats sockets when its tables change during the walk): such a
// socket is counted and tracked once, from its first report. dup must be
// at least as long as obs. It never allocates once the tracker has grown
// to the socket population.
//
// At hundreds of thousands of sockets nearly every table lookup misses the
// CPU caches: one pass first touches every observation's slot, with
// independent loads that the CPU overlaps, so that the pass that applies
// them finds their slots cached.
func (t *Tracker) ObserveBatch(obs []Observation, dup []bool) {
	if len(obs) > BatchLen {
		t.ObserveBatch(obs[:BatchLen], dup[:BatchLen])
		t.ObserveBatch(obs[BatchLen:], dup[BatchLen:])
		return
	}
	t.sockets.touch(obs)
	for i := range obs {
		dup[i] = !t.observe(&obs[i])
	}
}

// observe applies one observation and reports false for a duplicate.
func (t *Tracker) observe(o *Observation) bool {
	st := o.State
	if st >= NumStates || o.Family >= NumFamilies {
		t.cur.Unknown++
		return true
	}
	s := t.sockets.get(o.Cookie)
	if s != nil {
		// The common case first: seen in the same state by the last dump.
		m := s.meta
		if m>>metaBits == t.now {
			// Reported again by this dump: the first report stands.
			t.cur.Duplicates++
			return false
		}
		if m&(stateMask|missesMask|familyMask) == int64(st)|int64(o.Family)<<familyShift {
			s.meta = t.now<<metaBits | m&(1<<metaBits-1)
			t.cur.Sockets[o.Family][st]++
			return true
		}
	}
	if s == nil && t.events && st == TimeWait && o.TimeWaitEnd != 0 && o.TimeWaitEnd-t.epoch <= t.now {
		// A remnant whose timer has run out, which the kernel has not
		// reaped yet (its 60 s timer fires a few seconds late at times):
		// the tracker ended it on time. Left out, like a repeat.
		return false
	}
	var e entry
	if s != nil {
		e = s.entry()
	}
	switch ok := s != nil; {
	case ok:
		if e.misses > 0 {
			t.cur.Skipped++
		}
		if e.state == st {
			t.live[e.family][st]--
			t.live[o.Family][st]++
			e.lastSeen, e.misses, e.family = t.now, 0, o.Family
			s.set(e)
			break
		}
		switch {
		case !t.events || !e.exact:
		case e.state == FinWait2 && st == TimeWait:
			// A remnant in FIN_WAIT2 got its FIN: no event says so.
		case e.state == TimeWait && st == FinWait2:
			t.cur.Corrections[CorrectionHandover]++
		default:
			t.cur.Corrections[CorrectionState]++
		}
		// Leaving one state is entering the next.
		at, exact := t.entry(o, e.lastSeen, mid(e.lastSeen, t.now))
		if !e.unknown && t.stay != nil {
			t.stay(e.state, time.Duration(at-e.entered))
		}
		t.transitions[e.state][st]++
		t.live[e.family][e.state]--
		t.live[o.Family][st]++
		s.set(entry{entered: at, lastSeen: t.now, state: st, family: o.Family, exact: exact})
	case t.sockets.len() >= t.max:
		t.cur.Untracked++
	case !t.started || t.saturated:
		// Present before tracking began (or perhaps untracked until now):
		// the start is unknown unless a kernel timer pins it.
		n := entry{entered: t.now, lastSeen: t.now, state: st, family: o.Family, unknown: true}
		if pinned, ok := t.pinned(o, -1<<62); ok {
			n.entered, n.unknown, n.exact = pinned, false, true
		}
		t.sockets.put(o.Cookie, n)
		t.live[o.Family][st]++
	default:
		if st != Closed {
			t.transitions[Closed][st]++
		}
		if t.events && st != SynRcvd {
			t.cur.Corrections[CorrectionUnannounced]++
		}
		at, exact := t.entry(o, t.prevPoll(), mid(t.prevPoll(), t.now))
		t.sockets.put(o.Cookie, entry{entered: at, lastSeen: t.now, state: st, family: o.Family, exact: exact})
		t.live[o.Family][st]++
	}
	t.cur.Sockets[o.Family][st]++
	return true
}

// prevPoll is the latest complete dump before the one being applied.
func (t *Tracker) prevPoll() int64 { return t.complete[t.ncomplete%len(t.complete)] }

// entry returns when a socket entered o.State: the midpoint guess, or the
// kernel's own timer when it pins the moment within (after, now].
func (t *Tracker) entry(o *Observation, after, guess int64) (int64, bool) {
	if pinned, ok := t.pinned(o, after); ok {
		return pinned, true
	}
	return guess, false
}

func (t *Tracker) pinned(o *Observation, after int64) (int64, bool) {
	if o.State != TimeWait || o.TimeWaitEnd == 0 {
		return 0, false
	}
	at := o.TimeWaitEnd - t.epoch - int64(TimeWaitLifetime)
	if at <= after || at > t.now {
		return 0, false
	}
	return at, true
}

// Commit ends a complete dump. A socket it left out has closed if the
// dumps before it left it out too (MissesToClose in all), or if it was in
// TIME_WAIT and its timer has run out; it left at the midpoint after the
// last dump that saw it (or when its timer ran out). Until then it is
// counted in the state it was last seen in. Commit returns what the dump
// found.
func (t *Tracker) Commit() PollResult {
	oldest := noneEntered()
	t.sockets.sweep(func(s *slot) bool {
		if m := s.meta; m>>metaBits != t.now {
			st := State(m & stateMask)
			if misses := (m&missesMask)>>missesShift + 1; misses < MissesToClose && (st != TimeWait || m&exactBit == 0) {
				// Missed, not yet closed: the common case under churn.
				s.meta = m + 1<<missesShift
				t.cur.Missing++
				t.cur.Sockets[(m>>familyShift)&1][st]++
				oldest[st] = min(oldest[st], s.entered)
				return true
			}
			e := s.entry()
			e.misses++
			if leave, gone := t.gone(e); gone {
				if t.events && e.exact && e.state != TimeWait && e.state != FinWait2 {
					// A remnant's end emits nothing, early (reused,
					// reset) or not: no event was lost.
					t.cur.Corrections[CorrectionVanished]++
				}
				if !e.unknown && t.stay != nil && e.state != Closed {
					t.stay(e.state, time.Duration(leave-e.entered))
				}
				if e.state != Closed {
					t.transitions[e.state][Closed]++
				}
				t.live[e.family][e.state]--
				return false
			}
			s.set(e)
			t.cur.Missing++
			t.cur.Sockets[e.family][e.state]++
		}
		st := State(s.meta & stateMask)
		oldest[st] = min(oldest[st], s.entered)
		return true
	})
	t.sockets.shrink()
	t.cur.Oldest = ages(oldest, t.now)
	t.cur.Tracked = t.sockets.len()
	for f := range t.untracked {
		for st := range t.untracked[f] {
			t.untracked[f][st] = t.cur.Sockets[f][st] - t.live[f][st]
		}
	}
	t.untrackedN = t.cur.Untracked
	t.started = true
	t.saturated = t.cur.Untracked > 0
	t.ncomplete++
	t.complete[t.ncomplete%len(t.complete)] = t.now
	return t.cur
}

// gone says whether a socket the dump being committed left out has closed,
// and when it left. e.misses counts this dump.
func (t *Tracker) gone(e entry) (leave int64, ok bool) {
	if e.state == TimeWait && e.exact {
		if end := e.entered + int64(TimeWaitLifetime); end <= t.now {
			return max(end, e.lastSeen), true
		}
	}
	if e.misses < MissesToClose {
		return 0, false
	}
	// The first dump that missed it is the e.misses-th latest complete
	// one, this one counted; the ring holds the ones before this.
	first := t.now
	if m := int(e.misses); m > 1 {
		first = t.complete[(t.ncomplete-m+2+len(t.complete))%len(t.complete)]
	}
	return mid(e.lastSeen, first), true
}

// Abort ends a dump that cannot be trusted to be whole (an error). What it
// saw stands; nothing is inferred from what it did not see, and it is not
// a poll that later entry times are estimated from. It returns what the
// partial dump found.
func (t *Tracker) Abort() PollResult {
	t.saturated = t.saturated || t.cur.Untracked > 0
	return t.cur
}

// Apply applies one transition the kernel reported, at its exact time: the
// stay in the state it left ends then, and the stay in the state it
// entered begins then. A transition to CLOSED forgets the socket. A
// transition into the state the tracker already holds the socket in (a
// dump saw it first) is not counted again.
func (t *Tracker) Apply(tr Transition) {
	if tr.From >= NumStates || tr.To >= NumStates || tr.Family >= NumFamilies {
		return
	}
	t.events = true
	at := t.since(tr.At)
	ref, e, ok := t.sockets.lookup(tr.Cookie)
	if ok && e.state == tr.To && tr.To != Closed {
		// A dump saw the socket there first, and counted its arrival: a
		// request socket, which shares its cookie with the child that
		// LISTEN->SYN_RECV announces and started SYN_RCVD earlier, or a
		// change the dump caught before its event came. The event only
		// pins the moment of a change between two states.
		if tr.From != Closed && !e.exact {
			t.left(tr.Cookie, e)
			e.entered, e.exact = at, true
			t.sockets.update(ref, e)
			t.entered(tr.Cookie, e)
		}
		return
	}
	if ok && at < e.lastSeen {
		// A dump that began after the change saw the socket, and has
		// counted it where the change and any later ones had taken it:
		// an event that comes late (see RunFeed) is not counted again.
		return
	}
	t.transitions[tr.From][tr.To]++
	if ok {
		if e.state == tr.From && !e.unknown && t.stay != nil {
			t.stay(e.state, time.Duration(at-e.entered))
		}
		t.live[e.family][e.state]--
		t.left(tr.Cookie, e)
		if tr.To == Closed {
			t.sockets.removeAt(ref)
			return
		}
		t.live[tr.Family][tr.To]++
		// The event shows the socket there at its time: a dump that left
		// it out before did not see it close.
		n := entry{entered: at, lastSeen: max(e.lastSeen, at), state: tr.To, family: tr.Family, exact: true}
		t.sockets.update(ref, n)
		t.entered(tr.Cookie, n)
		return
	}
	if tr.To == Closed || t.sockets.len() >= t.max {
		return
	}
	n := entry{entered: at, lastSeen: at, state: tr.To, family: tr.Family, exact: true}
	t.sockets.put(tr.Cookie, n)
	t.live[tr.Family][tr.To]++
	t.entered(tr.Cookie, n)
}

// Live returns the tracked sockets by family and state as the tracker
// holds them now: after a Commit, the dump's counts less the untracked
// sockets; between dumps, as the transitions applied since have moved
// them.
func (t *Tracker) Live() Counts { return t.live }

// Exact reports whether the tracker knows cookie's entry into its state
// from the kernel's own clock (an event or a TIME_WAIT timer) rather than
// as a midpoint between polls, and whether it tracks the socket at all.
func (t *Tracker) Exact(cookie uint64) (exact, tracked bool) {
	_, e, ok := t.sockets.lookup(cookie)
	return e.exact, ok
}

// State returns the state the tracker holds cookie's socket in, and
// whether it tracks the socket at all.
func (t *Tracker) State(cookie uint64) (State, bool) {
	_, e, ok := t.sockets.lookup(cookie)
	return e.state, ok
}

// Transitions returns the cumulative count of transitions between states,
// indexed [from][to].
func (t *Tracker) Transitions() [NumStates][NumStates]uint64 { return t.transitions }

// release returns the memory the tracker's table holds, at once rather
// than when the garbage collector finds the tracker gone. The tracker must
// not be used afterwards.
func (t *Tracker) release() { t.sockets.release() }

// Len returns the number of sockets tracked.
func (t *Tracker) Len() int { return t.sockets.len() }

// A slot counts at most maxMisses misses.
var _ [maxMisses - MissesToClose]struct{}
