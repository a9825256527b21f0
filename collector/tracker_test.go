package collector

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// sock is one socket of a scripted dump.
type sock struct {
	cookie  uint64
	kstate  uint8
	v6      bool
	timer   uint8
	expires uint32
}

type stay struct {
	State State
	D     time.Duration
}

// script drives a Tracker through scripted dumps on a fake clock.
type script struct {
	t     *testing.T
	tr    *Tracker
	epoch int64 // the monotonic clock's reading at offset 0
	stays []stay
	dups  int // observations the tracker called repeats
}

func newScript(t *testing.T, max int) *script {
	sc := &script{t: t, epoch: 5_000_000_000_000}
	sc.tr = NewTracker(max, func(s State, d time.Duration) { sc.stays = append(sc.stays, stay{s, d}) })
	return sc
}

// observation turns a socket as a dump reports it, in a dump begun at
// now, into what the tracker takes, as the poller does.
func observation(s *netlinkdiag.Socket, now int64) Observation {
	var o Observation
	setObservation(&o, s, now)
	return o
}

// setObservation is the poller's fromSocket, except that a socket in an
// undocumented state goes to the tracker too, which counts it as unknown.
func setObservation(o *Observation, s *netlinkdiag.Socket, now int64) {
	if !fromSocket(o, s, now) {
		*o = Observation{Cookie: s.Cookie, State: NumStates}
	}
}

func (sc *script) feed(at time.Duration, socks ...sock) {
	now := sc.epoch + int64(at)
	sc.tr.Begin(now)
	for _, k := range socks {
		s := netlinkdiag.Socket{Family: unix.AF_INET, State: k.kstate, Cookie: k.cookie, Timer: k.timer, Expires: k.expires}
		if k.v6 {
			s.Family = unix.AF_INET6
		}
		o := []Observation{observation(&s, now)}
		var dup [1]bool
		sc.tr.ObserveBatch(o, dup[:])
		if dup[0] {
			sc.dups++
		}
	}
}

// apply applies a transition at the given offset from the epoch.
func (sc *script) apply(at time.Duration, cookie uint64, from, to State) {
	sc.tr.Apply(Transition{Cookie: cookie, From: from, To: to, At: sc.epoch + int64(at)})
}

// poll applies a complete dump taken at the given offset from the epoch.
func (sc *script) poll(at time.Duration, socks ...sock) PollResult {
	sc.feed(at, socks...)
	return sc.tr.Commit()
}

// takeStays returns and forgets the stays reported so far.
func (sc *script) takeStays() []stay {
	s := sc.stays
	sc.stays = nil
	return s
}

func (sc *script) wantTransitions(want map[[2]State]uint64) {
	sc.t.Helper()
	got := map[[2]State]uint64{}
	tr := sc.tr.Transitions()
	for from := range tr {
		for to, n := range tr[from] {
			if n > 0 {
				got[[2]State{State(from), State(to)}] = n
			}
		}
	}
	if d := cmp.Diff(want, got); d != "" {
		sc.t.Errorf("transitions (-want +got)\n%s", d)
	}
}

const (
	kEstablished = netlinkdiag.StateEstablished
	kSynSent     = netlinkdiag.StateSynSent
	kFinWait2    = netlinkdiag.StateFinWait2
	kTimeWait    = netlinkdiag.StateTimeWait
	kCloseWait   = netlinkdiag.StateCloseWait
	kNewSynRecv  = netlinkdiag.StateNewSynRecv
)

func TestTrackerMidpoints(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	// Appears between 0 s and 1 s: entered SYN_SEND at 0.5 s.
	sc.poll(1*time.Second, sock{cookie: 7, kstate: kSynSent})
	// Established between 1 s and 2 s: the SYN_SEND stay is 1.5-0.5 = 1 s.
	sc.poll(2*time.Second, sock{cookie: 7, kstate: kEstablished})
	if d := cmp.Diff([]stay{{SynSend, time.Second}}, sc.takeStays()); d != "" {
		t.Errorf("stays after handshake (-want +got)\n%s", d)
	}
	res := sc.poll(4*time.Second, sock{cookie: 7, kstate: kEstablished})
	if got, want := res.Oldest[Established], 2500*time.Millisecond; got != want {
		t.Errorf("oldest ESTABLISHED = %v, want %v (entered at 1.5 s, now 4 s)", got, want)
	}
	// Missing at 6 s: not yet taken for closed, still counted and aging.
	res = sc.poll(6 * time.Second)
	if res.Missing != 1 || res.Sockets[IPv4][Established] != 1 || res.Oldest[Established] != 4500*time.Millisecond {
		t.Errorf("after one miss: missing %d, ESTABLISHED %d, oldest %v; want 1, 1, 4.5s", res.Missing, res.Sockets[IPv4][Established], res.Oldest[Established])
	}
	if s := sc.takeStays(); len(s) != 0 {
		t.Errorf("stays after one miss = %v, want none", s)
	}
	// Missing again at 8 s: gone, and it left between 4 s and 6 s, at
	// 5 s: a stay of 3.5 s.
	res = sc.poll(8 * time.Second)
	if d := cmp.Diff([]stay{{Established, 3500 * time.Millisecond}}, sc.takeStays()); d != "" {
		t.Errorf("stays after vanishing (-want +got)\n%s", d)
	}
	if res.Tracked != 0 || res.Oldest != [NumStates]time.Duration{} {
		t.Errorf("after vanishing: tracked %d, oldest %v; want nothing", res.Tracked, res.Oldest)
	}
	sc.wantTransitions(map[[2]State]uint64{
		{Closed, SynSend}:      1,
		{SynSend, Established}: 1,
		{Established, Closed}:  1,
	})
}

func TestTrackerUnknownStart(t *testing.T) {
	sc := newScript(t, 100)
	res := sc.poll(10*time.Second, sock{cookie: 1, kstate: kEstablished})
	if res.Oldest[Established] != 0 {
		t.Errorf("oldest at the first poll = %v, want 0 (ages from the first poll)", res.Oldest[Established])
	}
	res = sc.poll(11*time.Second, sock{cookie: 1, kstate: kEstablished})
	if got, want := res.Oldest[Established], time.Second; got != want {
		t.Errorf("oldest ESTABLISHED = %v, want %v (a lower bound from the first poll)", got, want)
	}
	res = sc.poll(13*time.Second, sock{cookie: 1, kstate: kCloseWait})
	if s := sc.takeStays(); len(s) != 0 {
		t.Errorf("stays = %v, want none: the first stay's start is unknown", s)
	}
	if got, want := res.Oldest[CloseWait], time.Second; got != want {
		t.Errorf("oldest CLOSE_WAIT = %v, want %v (entered at 12 s)", got, want)
	}
	sc.poll(15 * time.Second)
	sc.poll(17 * time.Second)
	if d := cmp.Diff([]stay{{CloseWait, 2 * time.Second}}, sc.takeStays()); d != "" {
		t.Errorf("second stay (-want +got)\n%s", d)
	}
	// Present at the first poll is no transition; what it did after is.
	sc.wantTransitions(map[[2]State]uint64{
		{Established, CloseWait}: 1,
		{CloseWait, Closed}:      1,
	})
}

func TestTrackerCookieContinuity(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	sc.poll(time.Second, sock{cookie: 42, kstate: kNewSynRecv})
	sc.poll(2*time.Second, sock{cookie: 42, kstate: kEstablished})
	sc.poll(3*time.Second, sock{cookie: 42, kstate: kFinWait2})
	res := sc.poll(4*time.Second, sock{cookie: 42, kstate: kTimeWait, timer: netlinkdiag.TimerTimeWait, expires: 59_800})
	// The TIME_WAIT timer pins entry at 4 s - 0.2 s; the FIN_WAIT_2 stay
	// ends there too.
	if got, want := res.Oldest[TimeWait], 200*time.Millisecond; got != want {
		t.Errorf("oldest TIME_WAIT = %v, want %v (pinned by the kernel timer)", got, want)
	}
	want := []stay{
		{SynRcvd, time.Second},
		{Established, time.Second},
		{FinWait2, 1300 * time.Millisecond},
	}
	if d := cmp.Diff(want, sc.takeStays()); d != "" {
		t.Errorf("stays (-want +got)\n%s", d)
	}
	sc.wantTransitions(map[[2]State]uint64{
		{Closed, SynRcvd}:       1,
		{SynRcvd, Established}:  1,
		{Established, FinWait2}: 1,
		{FinWait2, TimeWait}:    1,
	})
}

func TestTrackerTimeWaitPinnedAtFirstPoll(t *testing.T) {
	sc := newScript(t, 100)
	res := sc.poll(0, sock{cookie: 3, kstate: kTimeWait, timer: netlinkdiag.TimerTimeWait, expires: 45_000})
	if got, want := res.Oldest[TimeWait], 15*time.Second; got != want {
		t.Errorf("oldest TIME_WAIT = %v, want %v", got, want)
	}
	sc.poll(time.Second, sock{cookie: 3, kstate: kTimeWait, timer: netlinkdiag.TimerTimeWait, expires: 44_000})
	sc.poll(2 * time.Second)
	sc.poll(4 * time.Second)
	// A pinned start is a known start: the stay counts.
	if d := cmp.Diff([]stay{{TimeWait, 16500 * time.Millisecond}}, sc.takeStays()); d != "" {
		t.Errorf("stays (-want +got)\n%s", d)
	}
}

func TestTrackerTimerOutsideWindowIgnored(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	sc.poll(10*time.Second, sock{cookie: 3, kstate: kFinWait2})
	// The timer claims entry at 11 s - 30 s, before the socket was last
	// seen elsewhere: it is not believed, the midpoint is used.
	res := sc.poll(11*time.Second, sock{cookie: 3, kstate: kTimeWait, timer: netlinkdiag.TimerTimeWait, expires: 30_000})
	if got, want := res.Oldest[TimeWait], 500*time.Millisecond; got != want {
		t.Errorf("oldest TIME_WAIT = %v, want %v", got, want)
	}
}

func TestTrackerCountsAndFamilies(t *testing.T) {
	sc := newScript(t, 100)
	res := sc.poll(0,
		sock{cookie: 1, kstate: kEstablished},
		sock{cookie: 2, kstate: kEstablished, v6: true},
		sock{cookie: 3, kstate: netlinkdiag.StateBoundInactive},
		sock{cookie: 4, kstate: netlinkdiag.StateClose, v6: true},
		sock{cookie: 5, kstate: 99},
	)
	var want Counts
	want[IPv4][Established] = 1
	want[IPv6][Established] = 1
	want[IPv4][Closed] = 1
	want[IPv6][Closed] = 1
	if d := cmp.Diff(want, res.Sockets); d != "" {
		t.Errorf("counts (-want +got)\n%s", d)
	}
	if res.Unknown != 1 || res.Tracked != 4 {
		t.Errorf("unknown %d tracked %d, want 1 and 4", res.Unknown, res.Tracked)
	}
}

func TestTrackerMemoryBound(t *testing.T) {
	sc := newScript(t, 2)
	sc.poll(0)
	res := sc.poll(time.Second,
		sock{cookie: 1, kstate: kEstablished},
		sock{cookie: 2, kstate: kEstablished},
		sock{cookie: 3, kstate: kCloseWait},
	)
	if res.Tracked != 2 || res.Untracked != 1 {
		t.Errorf("tracked %d untracked %d, want 2 and 1", res.Tracked, res.Untracked)
	}
	if res.Sockets[IPv4][Established]+res.Sockets[IPv4][CloseWait] != 3 {
		t.Errorf("untracked sockets must still be counted: %v", res.Sockets[IPv4])
	}
	// Room frees up only when complete dumps show sockets gone: two
	// misses, so the sockets missed once still hold their places.
	res = sc.poll(2*time.Second, sock{cookie: 3, kstate: kCloseWait}, sock{cookie: 4, kstate: kCloseWait})
	if res.Tracked != 2 || res.Untracked != 2 || res.Missing != 2 {
		t.Errorf("while full: tracked %d untracked %d missing %d, want 2, 2 and 2", res.Tracked, res.Untracked, res.Missing)
	}
	res = sc.poll(2500*time.Millisecond, sock{cookie: 3, kstate: kCloseWait}, sock{cookie: 4, kstate: kCloseWait})
	if res.Tracked != 0 || res.Untracked != 2 {
		t.Errorf("while full: tracked %d untracked %d, want 0 and 2", res.Tracked, res.Untracked)
	}
	res = sc.poll(3*time.Second, sock{cookie: 3, kstate: kCloseWait}, sock{cookie: 4, kstate: kCloseWait})
	if res.Tracked != 2 || res.Untracked != 0 {
		t.Errorf("after room freed: tracked %d untracked %d, want 2 and 0", res.Tracked, res.Untracked)
	}
	// They were there, untracked, before: their start is unknown, they
	// age from now and their arrival is no transition.
	if res.Oldest[CloseWait] != 0 {
		t.Errorf("oldest CLOSE_WAIT = %v, want 0 (start unknown)", res.Oldest[CloseWait])
	}
	sc.wantTransitions(map[[2]State]uint64{
		{Closed, Established}: 2,
		{Established, Closed}: 2,
	})
	// With room to spare again (socket 3 missing twice), new sockets are
	// new.
	sc.poll(4*time.Second, sock{cookie: 4, kstate: kCloseWait})
	sc.poll(5*time.Second, sock{cookie: 4, kstate: kCloseWait})
	sc.poll(6*time.Second, sock{cookie: 4, kstate: kCloseWait}, sock{cookie: 5, kstate: kSynSent})
	if got := sc.tr.Transitions()[Closed][SynSend]; got != 1 {
		t.Errorf("CLOSED->SYN_SEND = %d once no longer full, want 1", got)
	}
}

func TestTrackerAbortInfersNothing(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	sc.poll(time.Second, sock{cookie: 1, kstate: kEstablished}, sock{cookie: 2, kstate: kEstablished})
	// A partial dump that saw only socket 1 must not close socket 2.
	sc.feed(2*time.Second, sock{cookie: 1, kstate: kCloseWait})
	sc.tr.Abort()
	if sc.tr.Len() != 2 {
		t.Fatalf("tracked %d after an aborted dump, want 2", sc.tr.Len())
	}
	res := sc.poll(3*time.Second, sock{cookie: 1, kstate: kCloseWait}, sock{cookie: 2, kstate: kEstablished})
	if res.Tracked != 2 {
		t.Errorf("tracked %d, want 2", res.Tracked)
	}
	// What the partial dump saw stands: socket 1 entered CLOSE_WAIT at 1.5 s.
	if got, want := res.Oldest[CloseWait], 1500*time.Millisecond; got != want {
		t.Errorf("oldest CLOSE_WAIT = %v, want %v", got, want)
	}
	sc.wantTransitions(map[[2]State]uint64{
		{Closed, Established}:    2,
		{Established, CloseWait}: 1,
	})
}

func TestTrackerAbortedFirstPollKeepsStartsUnknown(t *testing.T) {
	sc := newScript(t, 100)
	sc.feed(0, sock{cookie: 1, kstate: kEstablished})
	sc.tr.Abort()
	// Socket 2 was there all along but the first dump broke off early.
	sc.poll(time.Second, sock{cookie: 1, kstate: kEstablished}, sock{cookie: 2, kstate: kEstablished})
	sc.wantTransitions(map[[2]State]uint64{})
}

func TestStateMapping(t *testing.T) {
	want := map[uint8]State{
		1: Established, 2: SynSend, 3: SynRcvd, 4: FinWait1, 5: FinWait2, 6: TimeWait,
		7: Closed, 8: CloseWait, 9: LastAck, 10: Listen, 11: Closing, 12: SynRcvd, 13: Closed,
	}
	for k := 0; k < 256; k++ {
		got, ok := FromKernel(uint8(k))
		w, wok := want[uint8(k)]
		if ok != wok || got != w {
			t.Errorf("FromKernel(%d) = %v, %v; want %v, %v", k, got, ok, w, wok)
		}
	}
	names := []string{"CLOSED", "LISTEN", "SYN_RCVD", "SYN_SEND", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSING", "CLOSE_WAIT", "LAST_ACK"}
	for i, s := range States() {
		if s.String() != names[i] {
			t.Errorf("state %d is %q, want %q", i, s, names[i])
		}
		if p, err := ParseState(names[i]); err != nil || p != s {
			t.Errorf("ParseState(%q) = %v, %v", names[i], p, err)
		}
	}
	for alias, want := range map[string]State{
		"SYN_SENT": SynSend, "syn-recv": SynRcvd, "NEW_SYN_RECV": SynRcvd, "FIN_WAIT1": FinWait1,
		"FIN_WAIT2": FinWait2, "CLOSE": Closed, "BOUND_INACTIVE": Closed, "close-wait": CloseWait,
	} {
		if got, err := ParseState(alias); err != nil || got != want {
			t.Errorf("ParseState(%q) = %v, %v; want %v", alias, got, err, want)
		}
	}
	if _, err := ParseState("ESTABLISHED2"); err == nil {
		t.Error("ParseState accepted an unknown name")
	}
}

// TestTrackerDuplicateCountedOnce: the kernel repeats a socket when one is
// inserted ahead of it in its hash bucket between two batches of a dump.
// The repeat is neither counted nor tracked again, whatever state it
// reports.
func TestTrackerDuplicateCountedOnce(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	res := sc.poll(time.Second,
		sock{cookie: 1, kstate: kCloseWait},
		sock{cookie: 2, kstate: kEstablished},
		sock{cookie: 1, kstate: kCloseWait},
		sock{cookie: 2, kstate: kFinWait2, v6: true},
	)
	var want Counts
	want[IPv4][CloseWait] = 1
	want[IPv4][Established] = 1
	if d := cmp.Diff(want, res.Sockets); d != "" {
		t.Errorf("counts (-want +got)\n%s", d)
	}
	if res.Duplicates != 2 || sc.dups != 2 || res.Tracked != 2 {
		t.Errorf("duplicates %d (reported %d), tracked %d; want 2, 2, 2", res.Duplicates, sc.dups, res.Tracked)
	}
	sc.wantTransitions(map[[2]State]uint64{{Closed, CloseWait}: 1, {Closed, Established}: 1})
	// The state change the repeat showed is picked up by the next dump.
	sc.poll(2*time.Second, sock{cookie: 1, kstate: kCloseWait}, sock{cookie: 2, kstate: kFinWait2})
	sc.wantTransitions(map[[2]State]uint64{{Closed, CloseWait}: 1, {Closed, Established}: 1, {Established, FinWait2}: 1})
}

// TestTrackerSkippedSocketIsNotClosed: a socket one complete dump leaves
// out, and the next reports again, never closed: it stays counted in its
// state, keeps its entry time, and no transition or stay is recorded.
func TestTrackerSkippedSocketIsNotClosed(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	sc.poll(time.Second, sock{cookie: 1, kstate: kCloseWait}, sock{cookie: 2, kstate: kCloseWait})
	res := sc.poll(2*time.Second, sock{cookie: 2, kstate: kCloseWait})
	if res.Sockets[IPv4][CloseWait] != 2 || res.Missing != 1 || res.Oldest[CloseWait] != 1500*time.Millisecond {
		t.Errorf("after a skip: CLOSE_WAIT %d, missing %d, oldest %v; want 2, 1, 1.5s", res.Sockets[IPv4][CloseWait], res.Missing, res.Oldest[CloseWait])
	}
	res = sc.poll(3*time.Second, sock{cookie: 1, kstate: kCloseWait}, sock{cookie: 2, kstate: kCloseWait})
	if res.Sockets[IPv4][CloseWait] != 2 || res.Missing != 0 || res.Skipped != 1 || res.Oldest[CloseWait] != 2500*time.Millisecond {
		t.Errorf("after it came back: CLOSE_WAIT %d, missing %d, skipped %d, oldest %v; want 2, 0, 1, 2.5s",
			res.Sockets[IPv4][CloseWait], res.Missing, res.Skipped, res.Oldest[CloseWait])
	}
	if s := sc.takeStays(); len(s) != 0 {
		t.Errorf("stays = %v, want none", s)
	}
	sc.wantTransitions(map[[2]State]uint64{{Closed, CloseWait}: 2})
	// A socket skipped and then seen in another state changed state
	// between the dumps on either side of the skip.
	sc.poll(4*time.Second, sock{cookie: 2, kstate: kCloseWait})
	sc.poll(5*time.Second, sock{cookie: 1, kstate: netlinkdiag.StateLastAck}, sock{cookie: 2, kstate: kCloseWait})
	if d := cmp.Diff([]stay{{CloseWait, 3500 * time.Millisecond}}, sc.takeStays()); d != "" {
		t.Errorf("stays (-want +got)\n%s", d)
	}
}

// TestTrackerTimeWaitEndsWithItsTimer: a TIME_WAIT socket whose kernel
// timer has run out is gone at once, at the time the timer ran out; one
// missing before its time waits for a second miss like any other.
func TestTrackerTimeWaitEndsWithItsTimer(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	tw := func(cookie uint64, expiresMS uint32) sock {
		return sock{cookie: cookie, kstate: kTimeWait, timer: netlinkdiag.TimerTimeWait, expires: expiresMS}
	}
	// Entered TIME_WAIT at 0.5 s (59.5 s left at 1 s).
	sc.poll(time.Second, tw(1, 59_500))
	sc.poll(60*time.Second, tw(1, 500))
	// At 61 s its timer has run out (at 60.5 s): gone at once, then.
	res := sc.poll(61 * time.Second)
	if d := cmp.Diff([]stay{{TimeWait, TimeWaitLifetime}}, sc.takeStays()); d != "" {
		t.Errorf("stays at 61 s (-want +got)\n%s", d)
	}
	if res.Missing != 0 || res.Tracked != 0 || res.Sockets[IPv4][TimeWait] != 0 {
		t.Errorf("after its timer ran out: missing %d, tracked %d, counted %d; want none", res.Missing, res.Tracked, res.Sockets[IPv4][TimeWait])
	}
	// One missing before its timer ran out (killed early by reuse or a
	// reset, or skipped) waits for a second miss like any other.
	sc2 := newScript(t, 100)
	sc2.poll(0)
	sc2.poll(time.Second, tw(1, 59_500))
	res = sc2.poll(2 * time.Second)
	if res.Missing != 1 || res.Sockets[IPv4][TimeWait] != 1 {
		t.Errorf("TIME_WAIT missing before its timer ran out: missing %d, counted %d; want 1 and 1", res.Missing, res.Sockets[IPv4][TimeWait])
	}
	sc2.poll(3 * time.Second)
	if d := cmp.Diff([]stay{{TimeWait, time.Second}}, sc2.takeStays()); d != "" {
		t.Errorf("stays (-want +got)\n%s", d)
	}
}

// TestTrackerAbortDoesNotMovePrevPoll: a socket first seen after an
// aborted dump entered its state after the last complete dump, not after
// the aborted one, which did not see the whole table.
func TestTrackerAbortDoesNotMovePrevPoll(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	sc.feed(10 * time.Second)
	sc.tr.Abort()
	res := sc.poll(12*time.Second, sock{cookie: 1, kstate: kEstablished})
	if got, want := res.Oldest[Established], 6*time.Second; got != want {
		t.Errorf("oldest ESTABLISHED = %v, want %v (entered between 0 s and 12 s)", got, want)
	}
}

// TestTrackerApplyExact: transitions the kernel reports are applied at
// their own times: stays are exact, entry times are marked exact, and a
// transition to CLOSED forgets the socket.
func TestTrackerApplyExact(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	sc.apply(100*time.Millisecond, 9, Closed, SynSend)
	sc.apply(100*time.Millisecond+1234*time.Microsecond, 9, SynSend, Established)
	if exact, tracked := sc.tr.Exact(9); !exact || !tracked {
		t.Errorf("Exact(9) = %v, %v; want true, true", exact, tracked)
	}
	res := sc.poll(time.Second, sock{cookie: 9, kstate: kEstablished})
	if got, want := res.Oldest[Established], time.Second-101234*time.Microsecond; got != want {
		t.Errorf("oldest ESTABLISHED = %v, want %v (the event's time)", got, want)
	}
	sc.apply(1500*time.Millisecond, 9, Established, CloseWait)
	sc.apply(1500*time.Millisecond+250*time.Microsecond, 9, CloseWait, Closed)
	want := []stay{
		{SynSend, 1234 * time.Microsecond},
		{Established, 1500*time.Millisecond - 101234*time.Microsecond},
		{CloseWait, 250 * time.Microsecond},
	}
	if d := cmp.Diff(want, sc.takeStays()); d != "" {
		t.Errorf("stays (-want +got)\n%s", d)
	}
	if _, tracked := sc.tr.Exact(9); tracked {
		t.Error("socket still tracked after a transition to CLOSED")
	}
	sc.wantTransitions(map[[2]State]uint64{
		{Closed, SynSend}: 1, {SynSend, Established}: 1, {Established, CloseWait}: 1, {CloseWait, Closed}: 1,
	})
	// A dump's midpoint is no exact entry.
	sc.poll(2*time.Second, sock{cookie: 10, kstate: kEstablished})
	if exact, tracked := sc.tr.Exact(10); exact || !tracked {
		t.Errorf("Exact(10) = %v, %v; want false, true", exact, tracked)
	}
}

func TestKernelTransition(t *testing.T) {
	k := func(old, new uint8, err uint16) KernelTransition {
		return KernelTransition{At: 7, Cookie: 9, Netns: 4026531840, Family: unix.AF_INET6, Old: old, New: new, Err: err}
	}
	fin := func(k KernelTransition) KernelTransition { k.FinReceived = true; return k }
	orphan := func(k KernelTransition) KernelTransition { k.Orphan = true; return k }
	const remnant = NumStates // no change: a remnant in FIN_WAIT2
	for _, c := range []struct {
		name     string
		in       KernelTransition
		from, to State
		ok       bool
	}{
		{"connect", k(netlinkdiag.StateClose, kSynSent, 0), Closed, SynSend, true},
		{"handshake done", k(kSynSent, kEstablished, 0), SynSend, Established, true},
		{"child of a listener", k(netlinkdiag.StateListen, netlinkdiag.StateSynRecv, 0), Closed, SynRcvd, true},
		{"hand-over to TIME_WAIT", fin(k(kFinWait2, netlinkdiag.StateClose, 0)), FinWait2, TimeWait, true},
		{"an orphan's hand-over to TIME_WAIT", orphan(fin(k(kFinWait2, netlinkdiag.StateClose, 0))), FinWait2, TimeWait, true},
		{"hand-over after simultaneous close", fin(k(netlinkdiag.StateClosing, netlinkdiag.StateClose, 0)), Closing, TimeWait, true},
		{"an orphan's hand-over in FIN_WAIT2", orphan(k(kFinWait2, netlinkdiag.StateClose, 0)), FinWait2, remnant, false},
		{"abort in FIN_WAIT2", k(kFinWait2, netlinkdiag.StateClose, 0), FinWait2, Closed, true},
		{"reset in FIN_WAIT2", orphan(k(kFinWait2, netlinkdiag.StateClose, 104)), FinWait2, Closed, true},
		{"reset after the FIN", fin(k(kFinWait2, netlinkdiag.StateClose, 104)), FinWait2, Closed, true},
		{"passive close done", fin(k(netlinkdiag.StateLastAck, netlinkdiag.StateClose, 0)), LastAck, Closed, true},
		{"reset while established", k(kEstablished, netlinkdiag.StateClose, 104), Established, Closed, true},
		{"undocumented state", k(kEstablished, 99, 0), 0, 0, false},
	} {
		tr, ok := c.in.Transition()
		if ok != c.ok || ok && (tr.From != c.from || tr.To != c.to || tr.Cookie != 9 || tr.At != 7 || tr.Family != IPv6 || tr.Netns != 4026531840) {
			t.Errorf("%s: %+v, %v; want %v -> %v, %v", c.name, tr, ok, c.from, c.to, c.ok)
		}
		if got := c.in.RemnantInFinWait2(); got != (c.to == remnant) {
			t.Errorf("%s: RemnantInFinWait2() = %v", c.name, got)
		}
	}
	if _, ok := (KernelTransition{Family: 99, Old: kEstablished, New: kCloseWait}).Transition(); ok {
		t.Error("a transition of an unknown family was mapped")
	}
	for _, c := range []struct {
		in KernelTransition
		to State
		ok bool
	}{
		{k(kCloseWait, netlinkdiag.StateLastAck, 0), TimeWait, true},
		{k(kCloseWait, netlinkdiag.StateClose, 32), Closed, true},
		{k(kEstablished, netlinkdiag.StateFinWait1, 0), 0, false},
		{k(netlinkdiag.StateLastAck, netlinkdiag.StateClose, 0), 0, false},
	} {
		if to, ok := c.in.PeerClosing(); to != c.to || ok != c.ok {
			t.Errorf("%d->%d: PeerClosing() = %v, %v; want %v, %v", c.in.Old, c.in.New, to, ok, c.to, c.ok)
		}
	}
}

// TestTrackerRefreshFollowsEvents: between dumps, counts and ages follow
// the events, and a TIME_WAIT remnant, whose end emits nothing, is gone
// when its timer runs out.
func TestTrackerRefreshFollowsEvents(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0, sock{cookie: 1, kstate: kEstablished})
	sc.apply(time.Second, 2, Closed, SynSend)
	sc.apply(time.Second+time.Millisecond, 2, SynSend, Established)
	sc.apply(2*time.Second, 2, Established, FinWait1)
	sc.apply(2*time.Second+time.Millisecond, 2, FinWait1, FinWait2)
	tr, _ := KernelTransition{At: sc.epoch + int64(3*time.Second), Cookie: 2, Family: unix.AF_INET, Old: kFinWait2, New: netlinkdiag.StateClose,
		FinReceived: true}.Transition()
	sc.tr.Apply(tr)
	res := sc.tr.Refresh(sc.epoch + int64(10*time.Second))
	var want Counts
	want[IPv4][Established] = 1
	want[IPv4][TimeWait] = 1
	if res.Sockets != want || res.Tracked != 2 || res.Oldest[TimeWait] != 7*time.Second || res.Oldest[Established] != 10*time.Second {
		t.Errorf("at 10 s: %+v; want ESTABLISHED and TIME_WAIT, TIME_WAIT 7 s old", res)
	}
	res = sc.tr.Refresh(sc.epoch + int64(63*time.Second))
	want[IPv4][TimeWait] = 0
	if res.Sockets != want || res.Tracked != 1 || res.Oldest[TimeWait] != 0 {
		t.Errorf("at 63 s, after the TIME_WAIT timer ran out: %+v", res)
	}
	if got := sc.takeStays(); got[len(got)-1] != (stay{TimeWait, TimeWaitLifetime}) {
		t.Errorf("stays %v, want the last a full TIME_WAIT", got)
	}
	sc.wantTransitions(map[[2]State]uint64{
		{Closed, SynSend}: 1, {SynSend, Established}: 1, {Established, FinWait1}: 1, {FinWait1, FinWait2}: 1,
		{FinWait2, TimeWait}: 1, {TimeWait, Closed}: 1,
	})
}

// TestTrackerRequestSocketJoinsItsChild: a dump sees a request socket in
// SYN_RCVD; its child, announced by LISTEN->SYN_RECV, has the same cookie
// (pinned in bpfsource's tests). The arrival is counted once, and the
// SYN_RCVD stay runs from the request socket's arrival, the SYN.
func TestTrackerRequestSocketJoinsItsChild(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	sc.poll(time.Second, sock{cookie: 5, kstate: netlinkdiag.StateSynRecv})
	child, ok := KernelTransition{At: sc.epoch + int64(1500*time.Millisecond), Cookie: 5, Family: unix.AF_INET,
		Old: netlinkdiag.StateListen, New: netlinkdiag.StateSynRecv}.Transition()
	if !ok {
		t.Fatal("LISTEN->SYN_RECV not mapped")
	}
	sc.tr.Apply(child)
	sc.apply(1600*time.Millisecond, 5, SynRcvd, Established)
	if d := cmp.Diff([]stay{{SynRcvd, 1100 * time.Millisecond}}, sc.takeStays()); d != "" {
		t.Errorf("stays (-want +got)\n%s", d)
	}
	sc.wantTransitions(map[[2]State]uint64{{Closed, SynRcvd}: 1, {SynRcvd, Established}: 1})
	// A change a dump caught before its event: counted once, and the
	// event pins when it happened.
	sc.poll(3*time.Second, sock{cookie: 5, kstate: kCloseWait})
	sc.apply(2200*time.Millisecond, 5, Established, CloseWait)
	sc.wantTransitions(map[[2]State]uint64{{Closed, SynRcvd}: 1, {SynRcvd, Established}: 1, {Established, CloseWait}: 1})
	res := sc.poll(4*time.Second, sock{cookie: 5, kstate: kCloseWait})
	if got := res.Oldest[CloseWait]; got != 1800*time.Millisecond {
		t.Errorf("oldest CLOSE_WAIT = %v, want 1.8s (entered at the event's 2.2 s)", got)
	}
}

// TestTrackerCorrectionsOfEvents: once events drive the tracker, what a
// dump finds that they had not said is counted by kind; what events
// cannot say (request sockets, remnants' ends) is not.
func TestTrackerCorrectionsOfEvents(t *testing.T) {
	sc := newScript(t, 100)
	res := sc.poll(0, sock{cookie: 1, kstate: kEstablished})
	if res.Corrections != ([NumCorrections]int{}) {
		t.Fatalf("corrections before any event: %v", res.Corrections)
	}
	sc.apply(100*time.Millisecond, 2, Closed, SynSend)
	sc.apply(101*time.Millisecond, 2, SynSend, Established) // then its close event is lost
	sc.apply(200*time.Millisecond, 3, Closed, SynSend)
	sc.apply(201*time.Millisecond, 3, SynSend, Established) // then its FIN_WAIT_1 event is lost
	sc.apply(300*time.Millisecond, 4, Established, FinWait1)
	sc.apply(301*time.Millisecond, 4, FinWait1, FinWait2)
	tw, _ := KernelTransition{At: sc.epoch + int64(302*time.Millisecond), Cookie: 4, Family: unix.AF_INET, Old: kFinWait2, New: netlinkdiag.StateClose,
		FinReceived: true}.Transition()
	sc.tr.Apply(tw) // read as TIME_WAIT, but a dump finds it in FIN_WAIT2
	sc.apply(400*time.Millisecond, 6, Closed, SynSend)
	sc.apply(401*time.Millisecond, 6, SynSend, Established)
	sc.apply(402*time.Millisecond, 6, Established, FinWait1)
	sc.apply(403*time.Millisecond, 6, FinWait1, FinWait2)
	tw6, _ := KernelTransition{At: sc.epoch + int64(404*time.Millisecond), Cookie: 6, Family: unix.AF_INET, Old: kFinWait2, New: netlinkdiag.StateClose,
		FinReceived: true}.Transition()
	sc.tr.Apply(tw6) // a remnant killed before its time
	sc.apply(500*time.Millisecond, 8, Established, FinWait1)
	sc.apply(501*time.Millisecond, 8, FinWait1, FinWait2) // then a remnant in FIN_WAIT2, which gets its FIN silently
	sc.apply(600*time.Millisecond, 9, Established, FinWait1)
	sc.apply(601*time.Millisecond, 9, FinWait1, FinWait2) // then a remnant in FIN_WAIT2 whose timer runs out

	res = sc.poll(time.Second,
		sock{cookie: 1, kstate: kEstablished},
		sock{cookie: 3, kstate: netlinkdiag.StateFinWait1},
		sock{cookie: 4, kstate: kFinWait2},
		sock{cookie: 5, kstate: netlinkdiag.StateSynRecv}, // a request socket: no event expected
		sock{cookie: 7, kstate: kEstablished},             // its events were lost
		sock{cookie: 8, kstate: netlinkdiag.StateTimeWait},
		sock{cookie: 9, kstate: kFinWait2},
	)
	want := [NumCorrections]int{CorrectionState: 1, CorrectionHandover: 1, CorrectionUnannounced: 1}
	if res.Corrections != want {
		t.Errorf("first dump's corrections %v, want %v", res.Corrections, want)
	}
	res = sc.poll(2*time.Second,
		sock{cookie: 1, kstate: kEstablished},
		sock{cookie: 3, kstate: netlinkdiag.StateFinWait1},
		sock{cookie: 4, kstate: kFinWait2},
		sock{cookie: 5, kstate: netlinkdiag.StateSynRecv},
		sock{cookie: 7, kstate: kEstablished},
		sock{cookie: 8, kstate: netlinkdiag.StateTimeWait},
	)
	// Socket 2 missed twice: its close was lost. Remnant 6's and 9's ends
	// are no loss.
	want = [NumCorrections]int{CorrectionVanished: 1}
	if res.Corrections != want {
		t.Errorf("second dump's corrections %v, want %v", res.Corrections, want)
	}
}

// TestTrackerLateEventsAfterADump: events that happened before a dump
// that saw their socket, but come after it, are not counted again.
func TestTrackerLateEventsAfterADump(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	sc.apply(100*time.Millisecond, 1, Closed, SynSend)
	sc.apply(101*time.Millisecond, 1, SynSend, Established)
	// The dump at 1 s sees socket 1 in TIME_WAIT, and socket 2 (its
	// peer) gone; their changes at 0.5 s come after it.
	res := sc.poll(time.Second, sock{cookie: 1, kstate: netlinkdiag.StateTimeWait})
	sc.apply(500*time.Millisecond, 1, Established, FinWait1)
	sc.apply(501*time.Millisecond, 1, FinWait1, FinWait2)
	sc.apply(502*time.Millisecond, 1, FinWait2, TimeWait)
	sc.wantTransitions(map[[2]State]uint64{{Closed, SynSend}: 1, {SynSend, Established}: 1, {Established, TimeWait}: 1})
	if res.Corrections[CorrectionState] != 1 {
		t.Errorf("corrections %v, want the dump's one state correction", res.Corrections)
	}
	// A change after the dump counts.
	sc.apply(61*time.Second, 1, TimeWait, Closed)
	sc.wantTransitions(map[[2]State]uint64{{Closed, SynSend}: 1, {SynSend, Established}: 1, {Established, TimeWait}: 1, {TimeWait, Closed}: 1})
}

// TestTrackerRefreshIndexIsKeptAndShrinks: Refresh works from its index
// between dumps, without a sweep while each state's earliest entry stays,
// and the heap of TIME_WAIT timers gives back what a peak of remnants took.
func TestTrackerRefreshIndexIsKeptAndShrinks(t *testing.T) {
	const epoch = int64(1_700_000) * int64(time.Second)
	tr := NewTracker(1<<20, nil)
	tr.Begin(epoch)
	tr.Commit()
	tr.Refresh(epoch + 1)
	if !tr.indexed {
		t.Fatal("no index after a Refresh")
	}
	// A burst of 50,000 connections, each leaving a remnant, one a ms.
	for c := range uint64(50_000) {
		at := epoch + int64(time.Second) + int64(c)*int64(time.Millisecond)
		tr.Apply(Transition{Cookie: 1000 + c, Family: IPv4, From: Closed, To: Established, At: at})
		tr.Apply(Transition{Cookie: 1000 + c, Family: IPv4, From: Established, To: TimeWait, At: at + 1})
	}
	if !tr.indexed || len(tr.ends) != 50_000 {
		t.Fatalf("indexed %t with %d timers, want kept with 50,000", tr.indexed, len(tr.ends))
	}
	peak := cap(tr.ends)
	res := tr.Refresh(epoch + int64(time.Second) + int64(TimeWaitLifetime) + int64(25*time.Second))
	if res.Sockets[IPv4][TimeWait] != 25_000 || res.Oldest[TimeWait] != TimeWaitLifetime-1 {
		t.Errorf("TIME_WAIT %d, oldest %v; want 25,000 left, the oldest a ns short of its end", res.Sockets[IPv4][TimeWait], res.Oldest[TimeWait])
	}
	// The rest run out; a dump drops the index and the next Refresh
	// builds it small again.
	later := epoch + int64(2*time.Minute) + int64(TimeWaitLifetime)
	tr.Begin(later)
	tr.Commit()
	if res := tr.Refresh(later + 1); res.Tracked != 0 || cap(tr.ends) >= peak/4 {
		t.Errorf("tracked %d, timer heap capacity %d after the remnants ended (peak %d)", res.Tracked, cap(tr.ends), peak)
	}
}

// TestTrackerOverdueRemnantAfterItsEvents: in precise mode the tracker ends
// a TIME_WAIT remnant when its 60 s timer runs out; the kernel reaps it a
// few seconds late at times, and a dump in between, reporting it with its
// timer at 0, must neither bring it back nor count a correction.
func TestTrackerOverdueRemnantAfterItsEvents(t *testing.T) {
	sc := newScript(t, 100)
	sc.poll(0)
	tr, _ := KernelTransition{At: sc.epoch + int64(time.Second), Cookie: 7, Family: unix.AF_INET, Old: kFinWait2, New: netlinkdiag.StateClose,
		FinReceived: true}.Transition()
	sc.tr.Apply(tr)
	if res := sc.tr.Refresh(sc.epoch + int64(62*time.Second)); res.Sockets[IPv4][TimeWait] != 0 {
		t.Fatalf("TIME_WAIT at 62 s, its timer out at 61 s: %v", res.Sockets[IPv4])
	}
	res := sc.poll(63*time.Second, sock{cookie: 7, kstate: kTimeWait, timer: netlinkdiag.TimerTimeWait, expires: 0})
	if res.Sockets[IPv4][TimeWait] != 0 || res.Corrections != [NumCorrections]int{} || res.Tracked != 0 {
		t.Errorf("a dump with the overdue remnant: sockets %v, corrections %v, tracked %d; want none", res.Sockets[IPv4], res.Corrections, res.Tracked)
	}
	sc.wantTransitions(map[[2]State]uint64{{FinWait2, TimeWait}: 1, {TimeWait, Closed}: 1})
}
