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
