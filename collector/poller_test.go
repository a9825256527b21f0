package collector

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// fakeDumper replays scripted dumps: each call takes the next step.
type fakeDumper struct {
	steps []step
	calls int
	clock *fakeClock
}

type step struct {
	socks []netlinkdiag.Socket
	err   error         // returned after the sockets
	took  time.Duration // clock advance during the dump
}

func (f *fakeDumper) DumpTCP(ctx context.Context, req netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	if f.calls >= len(f.steps) {
		return fmt.Errorf("script exhausted after %d dumps", f.calls)
	}
	s := f.steps[f.calls]
	f.calls++
	for i := range s.socks {
		if err := fn(&s.socks[i]); err != nil {
			return err
		}
	}
	f.clock.now = f.clock.now.Add(s.took)
	return s.err
}

type fakeClock struct{ now time.Time }

func (c *fakeClock) Now() time.Time { return c.now }

func est(cookie uint64) netlinkdiag.Socket {
	return netlinkdiag.Socket{Family: syscall.AF_INET, State: netlinkdiag.StateEstablished, Cookie: cookie}
}

func TestPollerKeepsLastGoodSnapshotOnFailure(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	d := &fakeDumper{clock: clock, steps: []step{
		{socks: []netlinkdiag.Socket{est(1), est(2)}},
		// A receive error after one socket: must not be published.
		{socks: []netlinkdiag.Socket{est(1)}, err: fmt.Errorf("receive: %w", syscall.ENOBUFS)},
		{socks: []netlinkdiag.Socket{est(1), est(2), est(3)}},
	}}
	var polls []time.Duration
	p := NewPoller(d, Config{Interval: time.Second, MaxTracked: 10, Now: clock.Now,
		ObservePoll: func(d time.Duration) { polls = append(polls, d) }})
	ctx := context.Background()

	if err := p.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	first := p.Snapshot()
	if first.Sockets[IPv4][Established] != 2 {
		t.Fatalf("first poll counted %d ESTABLISHED, want 2", first.Sockets[IPv4][Established])
	}
	clock.now = clock.now.Add(time.Second)
	if err := p.Poll(ctx); !errors.Is(err, syscall.ENOBUFS) {
		t.Fatalf("second poll err = %v, want ENOBUFS", err)
	}
	s := p.Snapshot()
	if s.Sockets != first.Sockets || !s.Time.Equal(first.Time) {
		t.Errorf("a failed poll replaced the gauges: %v at %v", s.Sockets[IPv4], s.Time)
	}
	if s.Errors[ReasonNoBuffer] != 1 || s.Polls != 2 {
		t.Errorf("errors %v polls %d, want one enobufs in two polls", s.Errors, s.Polls)
	}
	if first.Polls != 1 {
		t.Errorf("published snapshot changed after publication: polls %d", first.Polls)
	}
	clock.now = clock.now.Add(time.Second)
	if err := p.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	s = p.Snapshot()
	if s.Sockets[IPv4][Established] != 3 || s.Tracked != 3 {
		t.Errorf("recovered poll: %d ESTABLISHED, %d tracked; want 3 and 3", s.Sockets[IPv4][Established], s.Tracked)
	}
	// The socket appeared after the first poll: one transition, no more
	// (the failed poll must not have closed socket 2).
	if got := s.Transitions[Closed][Established]; got != 1 {
		t.Errorf("CLOSED->ESTABLISHED = %d, want 1", got)
	}
	if got := s.Transitions[Established][Closed]; got != 0 {
		t.Errorf("ESTABLISHED->CLOSED = %d, want 0", got)
	}
	if len(polls) != 3 {
		t.Errorf("poll durations observed %d times, want 3", len(polls))
	}
}

// TestPollerUsesFlaggedDump: a dump the kernel flags NLM_F_DUMP_INTR is
// whole; it is used like any other (every TCP dump may be inconsistent,
// flagged or not), not retried, and the flag is counted.
func TestPollerUsesFlaggedDump(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	d := &fakeDumper{clock: clock, steps: []step{
		{socks: []netlinkdiag.Socket{est(1), est(2)}},
		{socks: []netlinkdiag.Socket{est(1), est(2), est(3)}, err: netlinkdiag.ErrDumpInterrupted},
	}}
	p := NewPoller(d, Config{MaxTracked: 10, Now: clock.Now})
	for range 2 {
		clock.now = clock.now.Add(time.Second)
		if err := p.Poll(context.Background()); err != nil {
			t.Fatalf("a flagged dump is no failure: %v", err)
		}
	}
	s := p.Snapshot()
	if s.Sockets[IPv4][Established] != 3 || s.Inconsistencies[InconsistencyInterrupted] != 1 || d.calls != 2 || s.Errors != [NumReasons]uint64{} {
		t.Errorf("got %d ESTABLISHED, %d flagged, %d dumps, errors %v; want 3, 1, 2, none",
			s.Sockets[IPv4][Established], s.Inconsistencies[InconsistencyInterrupted], d.calls, s.Errors)
	}
}

func TestPollerCountsOverrunsAndUnknownStates(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	odd := netlinkdiag.Socket{Family: syscall.AF_INET, State: 77, Cookie: 9}
	d := &fakeDumper{clock: clock, steps: []step{
		{socks: []netlinkdiag.Socket{est(1), odd}, took: 300 * time.Millisecond},
		{socks: []netlinkdiag.Socket{est(1), odd}, took: 1500 * time.Millisecond},
	}}
	p := NewPoller(d, Config{Interval: time.Second, MaxTracked: 10, Now: clock.Now})
	for range 2 {
		if err := p.Poll(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	s := p.Snapshot()
	if s.Overruns != 1 {
		t.Errorf("overruns = %d, want 1", s.Overruns)
	}
	// A socket in a state with no documented name is no failed poll.
	if s.Unknown != 1 || s.Errors != [NumReasons]uint64{} || s.Tracked != 1 {
		t.Errorf("unknown in last poll %d (want 1), errors %v (want none), tracked %d (want 1)", s.Unknown, s.Errors, s.Tracked)
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want Reason
	}{
		{fmt.Errorf("x: %w", netlinkdiag.ErrMalformed), ReasonMalformed},
		{fmt.Errorf("x: %w", syscall.EPERM), ReasonPermission},
		{fmt.Errorf("x: %w", syscall.EACCES), ReasonPermission},
		{fmt.Errorf("x: %w", netlinkdiag.ErrNamespaceGone), ReasonNamespace},
		{fmt.Errorf("x: %w", netlinkdiag.ErrUnsupported), ReasonUnsupported},
		// A bare ENOENT is not taken for a vanished namespace.
		{fmt.Errorf("x: %w", syscall.ENOENT), ReasonDump},
		{fmt.Errorf("x: %w", os.ErrNotExist), ReasonDump},
		{fmt.Errorf("x: %w", syscall.ENOBUFS), ReasonNoBuffer},
		{errors.New("other"), ReasonDump},
	} {
		if got := Classify(c.err); got != c.want {
			t.Errorf("Classify(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

func TestPollerRunStopsOnCancel(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	d := &fakeDumper{clock: clock}
	p := NewPoller(d, Config{Interval: time.Millisecond, Now: clock.Now})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

// blockingDumper reports its sockets, then holds the dump until released.
type blockingDumper struct {
	socks    []netlinkdiag.Socket
	inDump   chan struct{}
	release  chan struct{}
	released bool
}

func (b *blockingDumper) DumpTCP(ctx context.Context, _ netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	for i := range b.socks {
		if err := fn(&b.socks[i]); err != nil {
			return err
		}
	}
	if !b.released {
		b.inDump <- struct{}{}
		<-b.release
		b.released = true
	}
	return nil
}

// TestPollerDumpHoldsNoLock: what readers need from the poller (the
// snapshot, the attribution inodes) comes from the published snapshot, so
// a dump that takes long keeps no reader waiting.
func TestPollerDumpHoldsNoLock(t *testing.T) {
	cw := netlinkdiag.Socket{Family: syscall.AF_INET, State: netlinkdiag.StateCloseWait, Cookie: 5, Inode: 77}
	d := &blockingDumper{socks: []netlinkdiag.Socket{cw}, inDump: make(chan struct{}), release: make(chan struct{}), released: true}
	p := NewPoller(d, Config{MaxTracked: 10, AttributionStates: []State{CloseWait}})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.released = false
	done := make(chan error)
	go func() { done <- p.Poll(context.Background()) }()
	<-d.inDump
	read := make(chan []InodeState)
	go func() {
		_ = p.Snapshot()
		read <- p.AttributionInodes(nil)
	}()
	select {
	case got := <-read:
		if len(got) != 1 || got[0] != (InodeState{77, CloseWait}) {
			t.Errorf("attribution inodes during a dump = %v, want the last complete poll's [{77 CLOSE_WAIT}]", got)
		}
	case <-time.After(5 * time.Second):
		t.Error("reading the poller waited for a dump")
	}
	close(d.release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestPollerEventsBetweenDumps: kernel events move the counts, ages and
// transitions a Publish shows between two dumps; events of other
// namespaces are left out; the next dump agrees.
func TestPollerEventsBetweenDumps(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	d := &fakeDumper{clock: clock, steps: []step{
		{socks: []netlinkdiag.Socket{est(1)}},
		{socks: []netlinkdiag.Socket{est(1), {Family: syscall.AF_INET, State: netlinkdiag.StateCloseWait, Cookie: 2}}},
	}}
	const ino = 4026532000
	p := NewPoller(d, Config{MaxTracked: 10, Now: clock.Now, NetnsInode: ino})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	at := func(d time.Duration) int64 { return clock.now.Add(d).UnixNano() }
	ev := func(d time.Duration, cookie uint64, netns uint32, old, new uint8) KernelTransition {
		return KernelTransition{At: at(d), Cookie: cookie, Netns: netns, Family: syscall.AF_INET, Old: old, New: new}
	}
	p.ApplyEvents([]KernelTransition{
		ev(100*time.Millisecond, 2, ino, netlinkdiag.StateListen, netlinkdiag.StateSynRecv),
		ev(101*time.Millisecond, 2, ino, netlinkdiag.StateSynRecv, netlinkdiag.StateEstablished),
		ev(200*time.Millisecond, 2, ino, netlinkdiag.StateEstablished, netlinkdiag.StateCloseWait),
		ev(200*time.Millisecond, 3, ino+1, netlinkdiag.StateClose, netlinkdiag.StateSynSent), // another namespace's
	})
	clock.now = clock.now.Add(500 * time.Millisecond)
	p.Publish()
	s := p.Snapshot()
	if s.Sockets[IPv4][CloseWait] != 1 || s.Sockets[IPv4][Established] != 1 || s.Sockets[IPv4][SynSend] != 0 || s.Events != 3 {
		t.Errorf("after events: sockets %v, events %d; want ESTABLISHED 1, CLOSE_WAIT 1, 3 events", s.Sockets[IPv4], s.Events)
	}
	if got := s.Oldest[CloseWait]; got != 300*time.Millisecond {
		t.Errorf("oldest CLOSE_WAIT = %v, want 300ms (entered at the event)", got)
	}
	if s.Transitions[Closed][SynRcvd] != 1 || s.Transitions[SynRcvd][Established] != 1 || s.Transitions[Established][CloseWait] != 1 {
		t.Errorf("transitions %v", s.Transitions)
	}
	if !s.Time.Equal(clock.now) {
		t.Errorf("snapshot time %v, want the Publish's %v", s.Time, clock.now)
	}
	// The next dump sees what the events said: nothing changes.
	clock.now = clock.now.Add(500 * time.Millisecond)
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	s2 := p.Snapshot()
	if s2.Sockets != s.Sockets || s2.Transitions != s.Transitions || s2.Oldest[CloseWait] != 800*time.Millisecond {
		t.Errorf("after the dump: sockets %v, transitions changed %v, oldest CLOSE_WAIT %v", s2.Sockets[IPv4], s2.Transitions != s.Transitions, s2.Oldest[CloseWait])
	}
}

// TestDiscoveringPollerRoutesEvents: with every namespace observed, each
// event goes to the tracker of the namespace whose inode it carries.
func TestDiscoveringPollerRoutesEvents(t *testing.T) {
	w := &world{
		names:   map[uint64]string{11: "a", 12: "b"},
		paths:   map[uint64]string{11: "/a", 12: "/b"},
		sockets: map[uint64][]netlinkdiag.Socket{11: nil, 12: nil},
	}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	p := NewDiscoveringPoller(w.discovery(), Config{MaxTracked: 10, Now: clock.Now})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	at := clock.now.Add(10 * time.Millisecond).UnixNano()
	p.ApplyEvents([]KernelTransition{
		{At: at, Cookie: 1, Netns: 11, Family: syscall.AF_INET, Old: netlinkdiag.StateClose, New: netlinkdiag.StateSynSent},
		{At: at, Cookie: 2, Netns: 12, Family: syscall.AF_INET6, Old: netlinkdiag.StateClose, New: netlinkdiag.StateListen},
		{At: at, Cookie: 3, Netns: 13, Family: syscall.AF_INET, Old: netlinkdiag.StateClose, New: netlinkdiag.StateListen},
	})
	p.Publish()
	got := map[string]Counts{}
	for _, ns := range p.Snapshot().Namespaces {
		got[ns.Name] = ns.Sockets
	}
	var a, b Counts
	a[IPv4][SynSend] = 1
	b[IPv6][Listen] = 1
	if got["a"] != a || got["b"] != b || len(got) != 2 {
		t.Errorf("per-namespace counts %v; want a: one SYN_SEND, b: one LISTEN (IPv6)", got)
	}
}

// TestPollerRemnantInFinWait2: an orphan's hand-over in FIN_WAIT2 leaves
// the connection in FIN_WAIT_2; the peer's close, when the peer is
// observed too, takes the remnant to TIME_WAIT at once, and its abort
// ends it; a remnant whose peer is not observed waits for a dump, which
// finds it in TIME_WAIT with no correction counted.
func TestPollerRemnantInFinWait2(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	tw := netlinkdiag.Socket{Family: syscall.AF_INET, State: netlinkdiag.StateTimeWait, Cookie: 5}
	d := &fakeDumper{clock: clock, steps: []step{{}, {socks: []netlinkdiag.Socket{tw}}}}
	const ino = 4026532000
	p := NewPoller(d, Config{MaxTracked: 10, Now: clock.Now, NetnsInode: ino})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	at := func(d time.Duration) int64 { return clock.now.Add(d).UnixNano() }
	client := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port) }
	server := netip.MustParseAddrPort("127.0.0.1:80")
	ev := func(d time.Duration, cookie uint64, old, new uint8, local, remote netip.AddrPort) KernelTransition {
		return KernelTransition{At: at(d), Cookie: cookie, Netns: ino, Family: syscall.AF_INET, Old: old, New: new, Src: local, Dst: remote}
	}
	var batch []KernelTransition
	// Three clients close first; each peer sits in CLOSE_WAIT.
	for i, cookie := range []uint64{1, 3, 5} {
		c := client(uint16(40000 + i))
		off := time.Duration(i) * 10 * time.Millisecond
		batch = append(batch,
			ev(off, cookie, netlinkdiag.StateClose, netlinkdiag.StateSynSent, c, server),
			ev(off+time.Millisecond, cookie, netlinkdiag.StateSynSent, netlinkdiag.StateEstablished, c, server),
			ev(off+time.Millisecond, cookie+1, netlinkdiag.StateListen, netlinkdiag.StateSynRecv, server, c),
			ev(off+time.Millisecond, cookie+1, netlinkdiag.StateSynRecv, netlinkdiag.StateEstablished, server, c),
			ev(off+2*time.Millisecond, cookie, netlinkdiag.StateEstablished, netlinkdiag.StateFinWait1, c, server),
			ev(off+2*time.Millisecond, cookie+1, netlinkdiag.StateEstablished, netlinkdiag.StateCloseWait, server, c),
			ev(off+3*time.Millisecond, cookie, netlinkdiag.StateFinWait1, netlinkdiag.StateFinWait2, c, server),
		)
		orphan := ev(off+3*time.Millisecond, cookie, netlinkdiag.StateFinWait2, netlinkdiag.StateClose, c, server)
		orphan.Orphan = true
		batch = append(batch, orphan)
	}
	p.ApplyEvents(batch)
	p.Publish()
	if got := p.Snapshot().Sockets[IPv4]; got[FinWait2] != 3 || got[CloseWait] != 3 || got[TimeWait] != 0 {
		t.Fatalf("after the clients' hand-overs: %v; want 3 FIN_WAIT_2, 3 CLOSE_WAIT", got)
	}
	// Peer 2 closes: remnant 1 gets its FIN. Peer 4 aborts: remnant 3
	// is reset. Peer 6 is elsewhere: nothing says what remnant 5 does.
	p.ApplyEvents([]KernelTransition{
		ev(100*time.Millisecond, 2, netlinkdiag.StateCloseWait, netlinkdiag.StateLastAck, server, client(40000)),
		ev(100*time.Millisecond, 2, netlinkdiag.StateLastAck, netlinkdiag.StateClose, server, client(40000)),
		ev(110*time.Millisecond, 4, netlinkdiag.StateCloseWait, netlinkdiag.StateClose, server, client(40001)),
	})
	clock.now = clock.now.Add(200 * time.Millisecond)
	p.Publish()
	s := p.Snapshot()
	if got := s.Sockets[IPv4]; got[FinWait2] != 1 || got[TimeWait] != 1 || got[CloseWait] != 1 {
		t.Errorf("after the peers' changes: %v; want 1 FIN_WAIT_2, 1 TIME_WAIT, 1 CLOSE_WAIT", got)
	}
	if s.Transitions[FinWait2][TimeWait] != 1 || s.Transitions[FinWait2][Closed] != 1 {
		t.Errorf("FIN_WAIT_2 -> TIME_WAIT %d, -> CLOSED %d; want 1 and 1", s.Transitions[FinWait2][TimeWait], s.Transitions[FinWait2][Closed])
	}
	// The dump finds remnant 5 in TIME_WAIT (and peer 6 gone, as it
	// was never in this namespace's dump): no correction for the remnant.
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	s = p.Snapshot()
	if s.Corrections[CorrectionState] != 0 || s.Transitions[FinWait2][TimeWait] != 2 {
		t.Errorf("after the dump: corrections %v, FIN_WAIT_2 -> TIME_WAIT %d; want none, 2", s.Corrections, s.Transitions[FinWait2][TimeWait])
	}
	if n := len(p.targets[0].remnants); n != 0 {
		t.Errorf("%d remnants still remembered after the dump", n)
	}
}

// TestPollerPeerShowsUnannouncedHandOver: an orphan whose FIN_WAIT1 ->
// FIN_WAIT2 and hand-over the kernel did not announce is moved to
// TIME_WAIT by its peer's graceful close, through FIN_WAIT_2, and counted
// as a correction of kind peer; one whose events came is not moved twice,
// and one whose peer's close failed is left to a dump.
func TestPollerPeerShowsUnannouncedHandOver(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	fw2 := netlinkdiag.Socket{Family: syscall.AF_INET, State: netlinkdiag.StateFinWait2, Cookie: 7}
	d := &fakeDumper{clock: clock, steps: []step{{}, {socks: []netlinkdiag.Socket{fw2}}}}
	const ino = 4026532000
	var stays []time.Duration
	p := NewPoller(d, Config{MaxTracked: 10, Now: clock.Now, NetnsInode: ino, ObserveStay: func(s State, d time.Duration) {
		if s == FinWait1 {
			stays = append(stays, d)
		}
	}})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	at := func(d time.Duration) int64 { return clock.now.Add(d).UnixNano() }
	client := func(port uint16) netip.AddrPort { return netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port) }
	server := netip.MustParseAddrPort("127.0.0.1:80")
	ev := func(d time.Duration, cookie uint64, old, new uint8, local, remote netip.AddrPort) KernelTransition {
		return KernelTransition{At: at(d), Cookie: cookie, Netns: ino, Family: syscall.AF_INET, Old: old, New: new, Src: local, Dst: remote}
	}
	var batch []KernelTransition
	// Clients 1, 3 and 5 close first; their peers 2, 4 and 6 go to
	// CLOSE_WAIT at 3 ms, then close at 50 ms.
	for i, cookie := range []uint64{1, 3, 5} {
		c := client(uint16(40000 + i))
		batch = append(batch,
			ev(0, cookie, netlinkdiag.StateClose, netlinkdiag.StateSynSent, c, server),
			ev(time.Millisecond, cookie, netlinkdiag.StateSynSent, netlinkdiag.StateEstablished, c, server),
			ev(time.Millisecond, cookie+1, netlinkdiag.StateListen, netlinkdiag.StateSynRecv, server, c),
			ev(time.Millisecond, cookie+1, netlinkdiag.StateSynRecv, netlinkdiag.StateEstablished, server, c),
			ev(2*time.Millisecond, cookie, netlinkdiag.StateEstablished, netlinkdiag.StateFinWait1, c, server),
			ev(3*time.Millisecond, cookie+1, netlinkdiag.StateEstablished, netlinkdiag.StateCloseWait, server, c),
		)
	}
	// Client 7's peer is not observed.
	remote := netip.MustParseAddrPort("192.0.2.1:443")
	batch = append(batch,
		ev(0, 7, netlinkdiag.StateClose, netlinkdiag.StateSynSent, client(40007), remote),
		ev(time.Millisecond, 7, netlinkdiag.StateSynSent, netlinkdiag.StateEstablished, client(40007), remote),
		ev(2*time.Millisecond, 7, netlinkdiag.StateEstablished, netlinkdiag.StateFinWait1, client(40007), remote))
	// Only client 1's ACK and hand-over are announced.
	orphan := ev(8*time.Millisecond, 1, netlinkdiag.StateFinWait2, netlinkdiag.StateClose, client(40000), server)
	orphan.Orphan = true
	batch = append(batch, ev(8*time.Millisecond, 1, netlinkdiag.StateFinWait1, netlinkdiag.StateFinWait2, client(40000), server), orphan)
	for i, cookie := range []uint64{2, 4, 6} {
		c := client(uint16(40000 + i))
		end := ev(51*time.Millisecond, cookie, netlinkdiag.StateLastAck, netlinkdiag.StateClose, server, c)
		if cookie == 6 {
			end.Err = 104 // reset: says nothing of the client
		}
		batch = append(batch, ev(50*time.Millisecond, cookie, netlinkdiag.StateCloseWait, netlinkdiag.StateLastAck, server, c), end)
	}
	p.ApplyEvents(batch)
	clock.now = clock.now.Add(100 * time.Millisecond)
	p.Publish()
	s := p.Snapshot()
	var want Counts
	want[IPv4][TimeWait], want[IPv4][FinWait1] = 2, 2
	if s.Sockets != want {
		t.Errorf("sockets %v; want 2 TIME_WAIT, 2 FIN_WAIT_1", s.Sockets[IPv4])
	}
	if s.Transitions[FinWait1][FinWait2] != 2 || s.Transitions[FinWait2][TimeWait] != 2 || s.Transitions[FinWait1][TimeWait] != 0 {
		t.Errorf("FIN_WAIT_1 -> FIN_WAIT_2 %d, FIN_WAIT_2 -> TIME_WAIT %d, FIN_WAIT_1 -> TIME_WAIT %d; want 2, 2, 0",
			s.Transitions[FinWait1][FinWait2], s.Transitions[FinWait2][TimeWait], s.Transitions[FinWait1][TimeWait])
	}
	if s.Corrections[CorrectionPeer] != 1 {
		t.Errorf("corrections %v; want one of kind peer", s.Corrections)
	}
	// Client 1's stay as announced, client 3's until its peer got the FIN.
	if want := []time.Duration{6 * time.Millisecond, time.Millisecond}; !slices.Equal(stays, want) {
		t.Errorf("FIN_WAIT_1 stays %v, want %v", stays, want)
	}
	if n := len(p.targets[0].closing); n != 1 {
		t.Errorf("%d sockets in FIN_WAIT1 remembered, want 1 (client 7; client 5's peer is gone)", n)
	}
	// The dump finds client 7 in FIN_WAIT_2: it is forgotten.
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(p.targets[0].closing); n != 0 {
		t.Errorf("%d sockets in FIN_WAIT1 still remembered after the dump", n)
	}
}

// TestPollerUnannouncedFinWait2BeforeItsEnd: a half-closed socket whose
// FIN_WAIT1 -> FIN_WAIT2 the kernel did not announce, and whose hand-over
// to TIME_WAIT it did, goes through FIN_WAIT_2 first, when its peer got
// its FIN, counted as a correction of kind peer.
func TestPollerUnannouncedFinWait2BeforeItsEnd(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	d := &fakeDumper{clock: clock, steps: []step{{}}}
	const ino = 4026532000
	var stays []time.Duration
	p := NewPoller(d, Config{MaxTracked: 10, Now: clock.Now, NetnsInode: ino, ObserveStay: func(s State, d time.Duration) {
		if s == FinWait1 {
			stays = append(stays, d)
		}
	}})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	at := func(d time.Duration) int64 { return clock.now.Add(d).UnixNano() }
	c, s := netip.MustParseAddrPort("127.0.0.1:40000"), netip.MustParseAddrPort("127.0.0.1:80")
	ev := func(d time.Duration, cookie uint64, old, new uint8, local, remote netip.AddrPort) KernelTransition {
		return KernelTransition{At: at(d), Cookie: cookie, Netns: ino, Family: syscall.AF_INET, Old: old, New: new, Src: local, Dst: remote}
	}
	end := ev(9*time.Millisecond, 1, netlinkdiag.StateFinWait2, netlinkdiag.StateClose, c, s)
	end.FinReceived = true
	p.ApplyEvents([]KernelTransition{
		ev(0, 1, netlinkdiag.StateClose, netlinkdiag.StateSynSent, c, s),
		ev(time.Millisecond, 1, netlinkdiag.StateSynSent, netlinkdiag.StateEstablished, c, s),
		ev(2*time.Millisecond, 1, netlinkdiag.StateEstablished, netlinkdiag.StateFinWait1, c, s),
		ev(3*time.Millisecond, 2, netlinkdiag.StateEstablished, netlinkdiag.StateCloseWait, s, c),
		ev(8*time.Millisecond, 2, netlinkdiag.StateCloseWait, netlinkdiag.StateLastAck, s, c),
		end,
	})
	p.Publish()
	snap := p.Snapshot()
	if snap.Transitions[FinWait1][FinWait2] != 1 || snap.Transitions[FinWait2][TimeWait] != 1 || snap.Corrections[CorrectionPeer] != 1 {
		t.Errorf("FIN_WAIT_1 -> FIN_WAIT_2 %d, FIN_WAIT_2 -> TIME_WAIT %d, peer corrections %d; want 1, 1, 1",
			snap.Transitions[FinWait1][FinWait2], snap.Transitions[FinWait2][TimeWait], snap.Corrections[CorrectionPeer])
	}
	if want := []time.Duration{time.Millisecond}; !slices.Equal(stays, want) {
		t.Errorf("FIN_WAIT_1 stays %v, want %v (until the peer got the FIN)", stays, want)
	}
}
