package collector

import (
	"context"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/bpfsource"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// TestRunFeedAppliesAndPublishes: changes pushed into the feed reach the
// snapshot within a publish interval, while the poller keeps polling.
func TestRunFeedAppliesAndPublishes(t *testing.T) {
	const ino = 4026532001
	d := &replayDumper{socks: []netlinkdiag.Socket{est(1)}}
	p := NewPoller(d, Config{Interval: time.Hour, MaxTracked: 100, NetnsInode: ino})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	feed := NewFeed(2, 3)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.RunFeed(ctx, feed, 10*time.Millisecond, nil); close(done) }()
	defer func() { cancel(); <-done }()

	now := monotonic()
	var evs []bpfsource.Event
	for c := uint64(10); c < 17; c++ { // seven sockets: three buffers' worth
		evs = append(evs,
			bpfsource.Event{Time: now, Cookie: c, Netns: ino, Family: syscall.AF_INET, OldState: netlinkdiag.StateClose, NewState: netlinkdiag.StateSynSent},
			bpfsource.Event{Time: now + 1000, Cookie: c, Netns: ino, Family: syscall.AF_INET, OldState: netlinkdiag.StateSynSent, NewState: netlinkdiag.StateEstablished})
	}
	evs = append(evs, bpfsource.Event{Time: now, Cookie: 99, Netns: ino + 1, Family: syscall.AF_INET, OldState: netlinkdiag.StateClose, NewState: netlinkdiag.StateListen})
	if err := feed.Push(ctx, evs); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := p.Snapshot()
		if s.Events == 14 && s.Sockets[IPv4][Established] == 8 {
			if s.Transitions[SynSend][Established] != 7 || s.Sockets[IPv4][Listen] != 0 {
				t.Errorf("transitions %v, LISTEN %d; want 7 handshakes and no other namespace's listener", s.Transitions[SynSend], s.Sockets[IPv4][Listen])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("snapshot after 5 s: %d events, %d ESTABLISHED; want 14 and 8", s.Events, s.Sockets[IPv4][Established])
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFeedPushAllocatesNothing: handing a batch over costs no allocation.
func TestFeedPushAllocatesNothing(t *testing.T) {
	feed := NewFeed(4, 1024)
	evs := make([]bpfsource.Event, 1000)
	ctx := context.Background()
	allocs := testing.AllocsPerRun(100, func() {
		if err := feed.Push(ctx, evs); err != nil {
			t.Fatal(err)
		}
		b := <-feed.full
		feed.free <- b[:0]
	})
	if allocs != 0 {
		t.Errorf("Push allocates %v times a batch, want 0", allocs)
	}
}

// TestFeedPushWaitsForBuffers: a source that outruns the poller waits,
// and gives up when its context ends.
func TestFeedPushWaitsForBuffers(t *testing.T) {
	feed := NewFeed(1, 2)
	evs := make([]bpfsource.Event, 3) // two buffers' worth, one buffer
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := feed.Push(ctx, evs); err != context.DeadlineExceeded {
		t.Errorf("Push with no free buffer = %v, want the context's deadline", err)
	}
}

// lossy is a LossCounter whose losses the test sets.
type lossy struct {
	mu sync.Mutex
	l  bpfsource.Losses
}

func (l *lossy) Losses() (bpfsource.Losses, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.l, nil
}

func (l *lossy) set(ring uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.l.RingFull = ring
}

// TestRunFeedPollsAtOnceOnLoss: a loss of events is counted and repaired
// by a dump at once, not at the next reconciliation an hour later.
func TestRunFeedPollsAtOnceOnLoss(t *testing.T) {
	d := &countingDumper{}
	p := NewPoller(d, Config{Interval: time.Hour, MaxTracked: 100})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	src := &lossy{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.RunFeed(ctx, NewFeed(1, 1), 5*time.Millisecond, src); close(done) }()
	defer func() { cancel(); <-done }()
	time.Sleep(50 * time.Millisecond)
	if n := d.dumps(); n != 1 {
		t.Fatalf("%d dumps with nothing lost, want only the first", n)
	}
	src.set(7)
	deadline := time.Now().Add(5 * time.Second)
	for d.dumps() < 2 || p.Snapshot().EventsLost[LossRingFull] != 7 {
		if time.Now().After(deadline) {
			t.Fatalf("after a loss: %d dumps, %d counted lost; want a second dump and 7", d.dumps(), p.Snapshot().EventsLost[LossRingFull])
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	if n := d.dumps(); n != 2 {
		t.Errorf("%d dumps after one loss, want 2: a loss is repaired once", n)
	}
}

// countingDumper reports no sockets and counts its dumps.
type countingDumper struct {
	mu sync.Mutex
	n  int
}

func (c *countingDumper) DumpTCP(context.Context, netlinkdiag.Request, func(*netlinkdiag.Socket) error) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return nil
}

func (c *countingDumper) dumps() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// heldBack is an event source whose events wait in the kernel until a Sync
// asks for them, as events do between two reads of the ring buffer.
type heldBack struct {
	feed   *Feed
	events []bpfsource.Event
}

func (h *heldBack) Losses() (bpfsource.Losses, error) { return bpfsource.Losses{}, nil }

func (h *heldBack) Sync() <-chan struct{} {
	done := make(chan struct{})
	evs := h.events
	h.events = nil
	go func() {
		_ = h.feed.Push(context.Background(), evs)
		close(done)
	}()
	return done
}

// TestRunFeedCatchesUpBeforeADump: the events recorded before a dump are
// applied before it, so that the dump finds what they said and counts no
// change twice, nor any correction.
func TestRunFeedCatchesUpBeforeADump(t *testing.T) {
	const ino = 4026532001
	socks := []netlinkdiag.Socket{est(1)}
	var mu sync.Mutex
	d := dumperFunc(func(fn func(*netlinkdiag.Socket) error) error {
		mu.Lock()
		defer mu.Unlock()
		for i := range socks {
			if err := fn(&socks[i]); err != nil {
				return err
			}
		}
		return nil
	})
	p := NewPoller(d, Config{Interval: 20 * time.Millisecond, MaxTracked: 100, NetnsInode: ino})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Socket 1 closes; the kernel holds the events back, and its table
	// now shows the TIME_WAIT remnant.
	now := monotonic()
	ev := func(dt int64, old, new uint8) bpfsource.Event {
		return bpfsource.Event{Time: now + dt, Cookie: 1, Netns: ino, Family: syscall.AF_INET, OldState: old, NewState: new, FinReceived: true}
	}
	feed := NewFeed(2, 2)
	src := &heldBack{feed: feed, events: []bpfsource.Event{
		ev(1000, netlinkdiag.StateEstablished, netlinkdiag.StateFinWait1),
		ev(2000, netlinkdiag.StateFinWait1, netlinkdiag.StateFinWait2),
		ev(3000, netlinkdiag.StateFinWait2, netlinkdiag.StateClose),
	}}
	mu.Lock()
	socks = []netlinkdiag.Socket{{Family: syscall.AF_INET, State: netlinkdiag.StateTimeWait, Cookie: 1}}
	mu.Unlock()

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.RunFeed(ctx, feed, time.Hour, src); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for p.Snapshot().Polls < 3 {
		if time.Now().After(deadline) {
			t.Fatal("fewer than 3 polls in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	s := p.Snapshot()
	if s.Transitions[Established][FinWait1] != 1 || s.Transitions[FinWait1][FinWait2] != 1 || s.Transitions[FinWait2][TimeWait] != 1 || s.Transitions[Established][TimeWait] != 0 {
		t.Errorf("transitions from ESTABLISHED %v, FIN_WAIT_1 %v, FIN_WAIT_2 %v; want each change once", s.Transitions[Established], s.Transitions[FinWait1], s.Transitions[FinWait2])
	}
	if s.Corrections != ([NumCorrections]uint64{}) || s.Sockets[IPv4][TimeWait] != 1 {
		t.Errorf("corrections %v, TIME_WAIT %d; want none and 1", s.Corrections, s.Sockets[IPv4][TimeWait])
	}
}

// dumperFunc is a Dumper made of a function.
type dumperFunc func(fn func(*netlinkdiag.Socket) error) error

func (f dumperFunc) DumpTCP(_ context.Context, _ netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	return f(fn)
}

// TestRunFeedPublishSyncs: a publish first has the source hand over what
// it recorded, so that a source that reads only when asked (or when its
// ring fills) is published every publish.
func TestRunFeedPublishSyncs(t *testing.T) {
	const ino = 4026532001
	p := NewPoller(dumperFunc(func(fn func(*netlinkdiag.Socket) error) error { return nil }),
		Config{Interval: time.Hour, MaxTracked: 100, NetnsInode: ino})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	feed := NewFeed(2, 2)
	now := monotonic()
	src := &heldBack{feed: feed, events: []bpfsource.Event{
		{Time: now + 1000, Cookie: 1, Netns: ino, Family: syscall.AF_INET, OldState: netlinkdiag.StateClose, NewState: netlinkdiag.StateSynSent},
		{Time: now + 2000, Cookie: 1, Netns: ino, Family: syscall.AF_INET, OldState: netlinkdiag.StateSynSent, NewState: netlinkdiag.StateEstablished},
		{Time: now + 3000, Cookie: 2, Netns: ino, Family: syscall.AF_INET, OldState: netlinkdiag.StateClose, NewState: netlinkdiag.StateSynSent},
	}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.RunFeed(ctx, feed, 10*time.Millisecond, src); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(5 * time.Second)
	for p.Snapshot().Events < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("published %d events in 5 s, want the 3 held back", p.Snapshot().Events)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s := p.Snapshot(); s.Sockets[IPv4][Established] != 1 || s.Sockets[IPv4][SynSend] != 1 || s.Polls != 1 {
		t.Errorf("ESTABLISHED %d, SYN_SEND %d, polls %d; want 1, 1 and no dump", s.Sockets[IPv4][Established], s.Sockets[IPv4][SynSend], s.Polls)
	}
}
