package collector

// The tracker as it was with a Go map, kept as the reference the table-based
// Tracker must agree with.

import (
	stdcmp "cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

type mapEntry struct {
	entered, lastSeen int64
	state             State
	family            Family
	unknown, exact    bool
	misses            int
}

// mapTracker is the Tracker's specification, written plainly over a Go map
// and a full history of complete polls.
type mapTracker struct {
	max     int
	sockets map[uint64]mapEntry
	stay    func(State, time.Duration)

	epoch     int64
	hasEpoch  bool
	now       int64
	began     bool
	complete  []int64 // every complete poll, oldest first
	started   bool
	saturated bool

	cur         PollResult
	transitions [NumStates][NumStates]uint64
	untracked   Counts // the last complete dump's untracked sockets
	untrackedN  int
	events      bool // Apply was called
}

func newMapTracker(max int, stay func(State, time.Duration)) *mapTracker {
	return &mapTracker{max: max, sockets: make(map[uint64]mapEntry), stay: stay}
}

func (t *mapTracker) rel(mono int64) int64 {
	if !t.hasEpoch {
		t.epoch, t.hasEpoch = mono, true
	}
	return mono - t.epoch
}

func (t *mapTracker) Begin(now int64) {
	n := t.rel(now)
	if t.began && n <= t.now {
		n = t.now + 1
	}
	t.now, t.began = n, true
	t.cur = PollResult{}
}

func (t *mapTracker) prevPoll() int64 {
	if len(t.complete) == 0 {
		return 0
	}
	return t.complete[len(t.complete)-1]
}

func (t *mapTracker) pinned(o Observation, after int64) (int64, bool) {
	if o.State != TimeWait || o.TimeWaitEnd == 0 {
		return 0, false
	}
	at := o.TimeWaitEnd - t.epoch - int64(TimeWaitLifetime)
	return at, at > after && at <= t.now
}

// Observe applies one observation and reports whether it was a repeat.
func (t *mapTracker) Observe(o Observation) (dup bool) {
	if o.State >= NumStates {
		t.cur.Unknown++
		return false
	}
	e, ok := t.sockets[o.Cookie]
	switch {
	case ok && e.lastSeen == t.now:
		t.cur.Duplicates++
		return true
	case ok:
		if e.misses > 0 {
			t.cur.Skipped++
		}
		if e.state == o.State {
			e.lastSeen, e.misses, e.family = t.now, 0, o.Family
			t.sockets[o.Cookie] = e
			break
		}
		if t.events && e.exact && !(e.state == FinWait2 && o.State == TimeWait) {
			if e.state == TimeWait && o.State == FinWait2 {
				t.cur.Corrections[CorrectionHandover]++
			} else {
				t.cur.Corrections[CorrectionState]++
			}
		}
		at, exact := mid(e.lastSeen, t.now), false
		if p, ok := t.pinned(o, e.lastSeen); ok {
			at, exact = p, true
		}
		if !e.unknown {
			t.stay(e.state, time.Duration(at-e.entered))
		}
		t.transitions[e.state][o.State]++
		t.sockets[o.Cookie] = mapEntry{entered: at, lastSeen: t.now, state: o.State, family: o.Family, exact: exact}
	case len(t.sockets) >= t.max:
		t.cur.Untracked++
	case !t.started || t.saturated:
		n := mapEntry{entered: t.now, lastSeen: t.now, state: o.State, family: o.Family, unknown: true}
		if p, ok := t.pinned(o, -1<<62); ok {
			n.entered, n.unknown, n.exact = p, false, true
		}
		t.sockets[o.Cookie] = n
	default:
		if o.State != Closed {
			t.transitions[Closed][o.State]++
		}
		if t.events && o.State != SynRcvd {
			t.cur.Corrections[CorrectionUnannounced]++
		}
		at, exact := mid(t.prevPoll(), t.now), false
		if p, ok := t.pinned(o, t.prevPoll()); ok {
			at, exact = p, true
		}
		t.sockets[o.Cookie] = mapEntry{entered: at, lastSeen: t.now, state: o.State, family: o.Family, exact: exact}
	}
	t.cur.Sockets[o.Family][o.State]++
	return false
}

func (t *mapTracker) Commit() PollResult {
	var oldest [NumStates]int64
	var have [NumStates]bool
	for c, e := range t.sockets {
		if e.lastSeen != t.now {
			e.misses++
			leave, gone := int64(0), false
			if end := e.entered + int64(TimeWaitLifetime); e.state == TimeWait && e.exact && end <= t.now {
				leave, gone = max(end, e.lastSeen), true
			} else if e.misses >= MissesToClose {
				// The first complete poll after the last sighting.
				first := t.now
				for _, p := range t.complete {
					if p > e.lastSeen {
						first = p
						break
					}
				}
				leave, gone = mid(e.lastSeen, first), true
			}
			if gone {
				if t.events && e.exact && e.state != TimeWait && e.state != FinWait2 {
					t.cur.Corrections[CorrectionVanished]++
				}
				if !e.unknown && e.state != Closed {
					t.stay(e.state, time.Duration(leave-e.entered))
				}
				if e.state != Closed {
					t.transitions[e.state][Closed]++
				}
				delete(t.sockets, c)
				continue
			}
			t.sockets[c] = e
			t.cur.Missing++
			t.cur.Sockets[e.family][e.state]++
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
	live := t.Live()
	for f := range t.untracked {
		for st := range t.untracked[f] {
			t.untracked[f][st] = t.cur.Sockets[f][st] - live[f][st]
		}
	}
	t.untrackedN = t.cur.Untracked
	t.started = true
	t.saturated = t.cur.Untracked > 0
	t.complete = append(t.complete, t.now)
	return t.cur
}

func (t *mapTracker) Abort() PollResult {
	t.saturated = t.saturated || t.cur.Untracked > 0
	return t.cur
}

func (t *mapTracker) Apply(tr Transition) {
	t.events = true
	at := t.rel(tr.At)
	e, ok := t.sockets[tr.Cookie]
	if ok && e.state == tr.To && tr.To != Closed {
		if tr.From != Closed && !e.exact {
			e.entered, e.exact = at, true
			t.sockets[tr.Cookie] = e
		}
		return
	}
	t.transitions[tr.From][tr.To]++
	if ok {
		if e.state == tr.From && !e.unknown {
			t.stay(e.state, time.Duration(at-e.entered))
		}
		if tr.To == Closed {
			delete(t.sockets, tr.Cookie)
			return
		}
		t.sockets[tr.Cookie] = mapEntry{entered: at, lastSeen: max(e.lastSeen, at), state: tr.To, family: tr.Family, exact: true}
		return
	}
	if tr.To == Closed || len(t.sockets) >= t.max {
		return
	}
	t.sockets[tr.Cookie] = mapEntry{entered: at, lastSeen: at, state: tr.To, family: tr.Family, exact: true}
}

func (t *mapTracker) Transitions() [NumStates][NumStates]uint64 { return t.transitions }

func (t *mapTracker) Len() int { return len(t.sockets) }

func (t *mapTracker) Refresh(now int64) PollResult {
	n := t.rel(now)
	res := PollResult{}
	var have [NumStates]bool
	var oldest [NumStates]int64
	for c, e := range t.sockets {
		if end := e.entered + int64(TimeWaitLifetime); e.state == TimeWait && e.exact && end <= n {
			if !e.unknown {
				t.stay(TimeWait, TimeWaitLifetime)
			}
			t.transitions[TimeWait][Closed]++
			delete(t.sockets, c)
			continue
		}
		if !have[e.state] || e.entered < oldest[e.state] {
			oldest[e.state], have[e.state] = e.entered, true
		}
	}
	for s := range oldest {
		if have[s] {
			res.Oldest[s] = time.Duration(max(n-oldest[s], 0))
		}
	}
	res.Sockets, res.Tracked, res.Untracked = t.Live(), len(t.sockets), t.untrackedN
	for f := range res.Sockets {
		for st := range res.Sockets[f] {
			res.Sockets[f][st] += t.untracked[f][st]
		}
	}
	return res
}

func (t *mapTracker) Live() Counts {
	var c Counts
	for _, e := range t.sockets {
		c[e.family][e.state]++
	}
	return c
}

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
	// Every 2^53 ns (104 days) the tracker moves its epoch: four jumps of
	// half that between polls cross it twice, and would overflow a slot's
	// times without the move.
	t.Run("epoch-move", func(t *testing.T) {
		compareWithReference(t, 6, 1<<20, 500, time.Duration(maxTime/2))
	})
	// Precise mode: events, and a Refresh after each second of them,
	// many times between dumps, so that Refresh works from its index.
	for _, tc := range []struct {
		seed uint64
		max  int
		pop  int
		jump time.Duration
	}{
		{7, 1 << 20, 40, 0},
		{8, 1 << 20, 700, 0},
		{9, 500, 700, 0},
		{10, 1 << 20, 500, time.Duration(maxTime / 2)},
	} {
		t.Run(fmt.Sprintf("events/seed=%d/max=%d/pop=%d", tc.seed, tc.max, tc.pop), func(t *testing.T) {
			compareWithReferenceOpts(t, tc.seed, tc.max, tc.pop, tc.jump, 12)
		})
	}
}

type stayRec struct {
	State State
	D     time.Duration
}

func compareWithReference(t *testing.T, seed uint64, max, pop int, jump time.Duration) {
	compareWithReferenceOpts(t, seed, max, pop, jump, 0)
}

// compareWithReferenceOpts is compareWithReference with, when seconds is
// not 0, up to that many seconds of events between dumps, each followed by
// a Refresh.
func compareWithReferenceOpts(t *testing.T, seed uint64, max, pop int, jump time.Duration, seconds int) {
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
	now := int64(1_700_000_000) * int64(time.Second)
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
		// The kernel's dumps skip sockets and repeat others when its
		// tables change mid-walk: so do these.
		var dump []netlinkdiag.Socket
		for _, s := range socks {
			switch r := rng.IntN(100); {
			case r < 3:
				continue
			case r < 5:
				dump = append(dump, s)
			}
			dump = append(dump, s)
		}
		rng.Shuffle(len(dump), func(i, j int) { dump[i], dump[j] = dump[j], dump[i] })

		// Between polls, some transitions arrive as events.
		for range rng.IntN(5) {
			now += int64(rng.IntN(100)) * int64(time.Millisecond)
			ev := Transition{Family: Family(rng.IntN(2)), From: State(rng.IntN(NumStates)), To: State(rng.IntN(NumStates)), At: now}
			if len(socks) > 0 && rng.IntN(4) > 0 {
				ev.Cookie = socks[rng.IntN(len(socks))].Cookie
			} else {
				ev.Cookie = rng.Uint64()
			}
			tr.Apply(ev)
			ref.Apply(ev)
			if d := cmp.Diff(ref.Live(), tr.Live()); d != "" {
				t.Fatalf("poll %d: live counts after %+v (-map +table)\n%s", poll, ev, d)
			}
		}
		if rng.IntN(3) == 0 {
			at := now + int64(rng.IntN(100))*int64(time.Millisecond)
			if d := cmp.Diff(ref.Refresh(at), tr.Refresh(at)); d != "" {
				t.Fatalf("poll %d: Refresh (-map +table)\n%s", poll, d)
			}
		}
		for sec := range rng.IntN(seconds + 1) {
			for range rng.IntN(40) {
				now += int64(rng.IntN(50)) * int64(time.Millisecond)
				ev := Transition{Family: Family(rng.IntN(2)), From: State(rng.IntN(NumStates)), To: State(rng.IntN(NumStates)), At: now}
				switch r := rng.IntN(10); {
				case r < 3:
					ev.To = TimeWait
				case r < 5:
					ev.To = Closed
				}
				if len(socks) > 0 && rng.IntN(4) > 0 {
					ev.Cookie = socks[rng.IntN(len(socks))].Cookie
				} else {
					ev.Cookie = rng.Uint64()
				}
				tr.Apply(ev)
				ref.Apply(ev)
			}
			now += int64(rng.IntN(1000)) * int64(time.Millisecond)
			if d := cmp.Diff(ref.Refresh(now), tr.Refresh(now)); d != "" {
				t.Fatalf("poll %d, second %d: Refresh (-map +table)\n%s", poll, sec, d)
			}
			if d := cmp.Diff(ref.Transitions(), tr.Transitions()); d != "" {
				t.Fatalf("poll %d, second %d: transitions (-map +table)\n%s", poll, sec, d)
			}
		}

		now += int64(500+rng.IntN(1500)) * int64(time.Millisecond)
		if poll == 150 || poll == 200 || poll == 250 || poll == 280 {
			now += int64(jump)
		}
		abort := rng.IntN(10) == 0
		if abort {
			dump = dump[:rng.IntN(len(dump)+1)]
		}
		tr.Begin(now)
		ref.Begin(now)
		for i := 0; i < len(dump); {
			n := min(len(dump)-i, 1+rng.IntN(BatchLen))
			obs := make([]Observation, n)
			for k := range obs {
				obs[k] = observation(&dump[i+k], now)
			}
			dup := make([]bool, n)
			tr.ObserveBatch(obs, dup)
			for k := range obs {
				if want := ref.Observe(obs[k]); dup[k] != want {
					t.Fatalf("poll %d: observation %+v repeat %v, map says %v", poll, obs[k], dup[k], want)
				}
			}
			i += n
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
		if d := cmp.Diff(ref.Live(), tr.Live()); d != "" {
			t.Fatalf("poll %d: live counts (-map +table)\n%s", poll, d)
		}
		if !abort {
			want := res.Sockets
			if res.Untracked == 0 && want != tr.Live() {
				t.Fatalf("poll %d: live counts %v after a complete dump with nothing untracked, dump counted %v", poll, tr.Live(), want)
			}
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
