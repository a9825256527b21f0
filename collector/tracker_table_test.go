package collector

// The tracker as it was with a Go map, kept as the reference the table-based
// Tracker must agree with.

import (
	stdcmp "cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

type mapEntry struct {
	entered  int64
	lastSeen int64
	state    State
	unknown  bool
}

// mapTracker is the Tracker as it was, over a Go map.
type mapTracker struct {
	max     int
	sockets map[uint64]mapEntry
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

// NewmapTracker returns a tracker that remembers at most max sockets and
// reports each completed stay in a state (entry and exit both observed) to
// stay, which may be nil.
func newMapTracker(max int, stay func(State, time.Duration)) *mapTracker {
	if max < 0 {
		max = 0
	}
	return &mapTracker{max: max, sockets: make(map[uint64]mapEntry), stay: stay}
}

// Begin starts applying a dump taken at now.
func (t *mapTracker) Begin(now time.Time) {
	if t.epoch.IsZero() {
		t.epoch = now
	}
	t.now = int64(now.Sub(t.epoch))
	t.cur = PollResult{}
}

// Observe applies one socket of the dump. It never allocates once the map
// has grown to the socket population.
func (t *mapTracker) Observe(s *netlinkdiag.Socket) {
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
		at := t.entryAt(s, st, e.lastSeen, mid(e.lastSeen, t.now))
		if !e.unknown && t.stay != nil {
			t.stay(e.state, time.Duration(at-e.entered))
		}
		t.transitions[e.state][st]++
		e = mapEntry{entered: at, lastSeen: t.now, state: st}
	case len(t.sockets) >= t.max:
		t.cur.Untracked++
		return
	case !t.started || t.saturated:
		// Present before tracking began (or perhaps untracked until now):
		// the start is unknown unless a kernel timer pins it.
		e = mapEntry{entered: t.now, lastSeen: t.now, state: st, unknown: true}
		if pinned, ok := t.pinned(s, st, -1<<62); ok {
			e.entered, e.unknown = pinned, false
		}
	default:
		if st != Closed {
			t.transitions[Closed][st]++
		}
		e = mapEntry{entered: t.entryAt(s, st, t.prevPoll, mid(t.prevPoll, t.now)), lastSeen: t.now, state: st}
	}
	t.sockets[s.Cookie] = e
}

// entry returns when a socket entered st: the midpoint guess, or the
// kernel's own timer when it pins the moment within (after, now].
func (t *mapTracker) entryAt(s *netlinkdiag.Socket, st State, after, guess int64) int64 {
	if pinned, ok := t.pinned(s, st, after); ok {
		return pinned
	}
	return guess
}

func (t *mapTracker) pinned(s *netlinkdiag.Socket, st State, after int64) (int64, bool) {
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
func (t *mapTracker) Commit() PollResult {
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
func (t *mapTracker) Abort() PollResult {
	t.saturated = t.saturated || t.cur.Untracked > 0
	t.prevPoll = t.now
	return t.cur
}

// Transitions returns the cumulative count of transitions between states,
// indexed [from][to].
func (t *mapTracker) Transitions() [NumStates][NumStates]uint64 { return t.transitions }

// Len returns the number of sockets tracked.
func (t *mapTracker) Len() int { return len(t.sockets) }

// TestTrackerMatchesMapReference drives the Tracker and the map-based
// reference through the same random polls (growth, churn, state changes,
// aborted partial dumps, the tracking limit, TIME_WAIT timers, cookie 0,
// a burst that grows and empties the table) and wants identical results.
func TestTrackerMatchesMapReference(t *testing.T) {
	for _, tc := range []struct {
		seed uint64
		max  int
		pop  int
	}{
		{1, 1 << 20, 40},
		{2, 1 << 20, 700},
		{3, 500, 700},
		{4, 1 << 20, 3000},
		{5, 64, 100},
	} {
		t.Run(fmt.Sprintf("seed=%d/max=%d/pop=%d", tc.seed, tc.max, tc.pop), func(t *testing.T) {
			compareWithReference(t, tc.seed, tc.max, tc.pop, 0)
		})
	}
	// Every 2^57 ns (4.5 years) the tracker moves its epoch: four jumps of
	// half that between polls cross it twice, and would overflow a slot's
	// times without the move.
	t.Run("epoch-move", func(t *testing.T) {
		compareWithReference(t, 6, 1<<20, 500, time.Duration(maxTime/2))
	})
}

type stayRec struct {
	State State
	D     time.Duration
}

func compareWithReference(t *testing.T, seed uint64, max, pop int, jump time.Duration) {
	rng := rand.New(rand.NewPCG(seed, 99))
	var got, want []stayRec
	tr := NewTracker(max, func(s State, d time.Duration) { got = append(got, stayRec{s, d}) })
	ref := newMapTracker(max, func(s State, d time.Duration) { want = append(want, stayRec{s, d}) })

	kernelStates := []uint8{
		netlinkdiag.StateEstablished, netlinkdiag.StateEstablished, netlinkdiag.StateEstablished,
		netlinkdiag.StateSynSent, netlinkdiag.StateSynRecv, netlinkdiag.StateNewSynRecv,
		netlinkdiag.StateFinWait1, netlinkdiag.StateFinWait2, netlinkdiag.StateTimeWait,
		netlinkdiag.StateClose, netlinkdiag.StateCloseWait, netlinkdiag.StateLastAck,
		netlinkdiag.StateListen, netlinkdiag.StateClosing, netlinkdiag.StateBoundInactive, 99,
	}
	nextCookie := uint64(1)
	newSock := func() netlinkdiag.Socket {
		s := netlinkdiag.Socket{Family: unix.AF_INET, State: kernelStates[rng.IntN(len(kernelStates))]}
		switch r := rng.IntN(100); {
		case r == 0:
			s.Cookie = 0
		case r < 5:
			s.Cookie = rng.Uint64()
		default:
			s.Cookie = nextCookie
			nextCookie += 1 + uint64(rng.IntN(3))
		}
		if rng.IntN(4) == 0 {
			s.Family = unix.AF_INET6
		}
		return s
	}
	var socks []netlinkdiag.Socket
	for range pop {
		socks = append(socks, newSock())
	}
	now := time.Unix(1_700_000_000, 0)
	for poll := range 300 {
		// Evolve: some vanish, some change state, some appear.
		kept := socks[:0]
		for _, s := range socks {
			switch r := rng.IntN(100); {
			case r < 5:
				continue
			case r < 12:
				s.State = kernelStates[rng.IntN(len(kernelStates))]
			}
			if s.State == netlinkdiag.StateTimeWait && rng.IntN(3) > 0 {
				s.Timer, s.Expires = netlinkdiag.TimerTimeWait, uint32(rng.IntN(70_000))
			} else {
				s.Timer, s.Expires = netlinkdiag.TimerNone, 0
			}
			kept = append(kept, s)
		}
		socks = kept
		target := pop
		if poll >= 100 && poll < 110 {
			target = 10 * pop // a burst, gone again by poll 120
		}
		for len(socks) < target && rng.IntN(20) > 0 {
			socks = append(socks, newSock())
		}
		if poll == 110 {
			socks = socks[:min(len(socks), pop/2)]
		}
		rng.Shuffle(len(socks), func(i, j int) { socks[i], socks[j] = socks[j], socks[i] })
		// Duplicate cookies in one dump can happen (a socket moving buckets
		// mid-walk); keep the first.
		seen := map[uint64]bool{}
		dump := socks[:0:0]
		for _, s := range socks {
			if !seen[s.Cookie] {
				seen[s.Cookie] = true
				dump = append(dump, s)
			}
		}

		now = now.Add(time.Duration(500+rng.IntN(1500)) * time.Millisecond)
		if poll == 150 || poll == 200 || poll == 250 || poll == 280 {
			now = now.Add(jump)
		}
		abort := rng.IntN(10) == 0
		if abort {
			dump = dump[:rng.IntN(len(dump)+1)]
		}
		tr.Begin(now)
		ref.Begin(now)
		for i := range dump {
			s := dump[i]
			tr.Observe(&s)
			ref.Observe(&dump[i])
		}
		var res, wantRes PollResult
		if abort {
			res, wantRes = tr.Abort(), ref.Abort()
		} else {
			res, wantRes = tr.Commit(), ref.Commit()
		}
		if d := cmp.Diff(wantRes, res); d != "" {
			t.Fatalf("poll %d (abort %v): result (-map +table)\n%s", poll, abort, d)
		}
		if d := cmp.Diff(ref.Transitions(), tr.Transitions()); d != "" {
			t.Fatalf("poll %d: transitions (-map +table)\n%s", poll, d)
		}
		if tr.Len() != ref.Len() {
			t.Fatalf("poll %d: Len %d, map %d", poll, tr.Len(), ref.Len())
		}
		order := func(a, b stayRec) int { return stdcmp.Or(stdcmp.Compare(a.State, b.State), stdcmp.Compare(a.D, b.D)) }
		slices.SortFunc(got, order)
		slices.SortFunc(want, order)
		if d := cmp.Diff(want, got); d != "" {
			t.Fatalf("poll %d: stays (-map +table)\n%s", poll, d)
		}
		got, want = got[:0], want[:0]
	}
}

// TestTableRemoveKeepsEveryEntryReachable fills a small table to its limit
// with colliding cookies, removes entries in every position, wrapped runs
// included, and checks the rest are still found.
func TestTableRemoveKeepsEveryEntryReachable(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for round := range 200 {
		var tb table
		in := map[uint64]int64{}
		for len(in) < 51 { // 80% of 64 slots
			c := rng.Uint64()%512 + 1
			if _, dup := in[c]; dup {
				continue
			}
			in[c] = int64(len(in))
			tb.put(c, entry{entered: in[c], lastSeen: 1, state: Established})
		}
		tb.each(func(e entry) (entry, bool) {
			if rng.IntN(2) == 0 {
				for c, v := range in {
					if v == e.entered {
						delete(in, c)
					}
				}
				return e, false
			}
			return e, true
		})
		if tb.len() != len(in) {
			t.Fatalf("round %d: %d entries, want %d", round, tb.len(), len(in))
		}
		for c, v := range in {
			_, e, ok := tb.lookup(c)
			if !ok || e.entered != v {
				t.Fatalf("round %d: cookie %d lost after removals", round, c)
			}
		}
	}
}
