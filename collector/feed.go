package collector

import (
	"context"
	"net/netip"
	"time"

	"github.com/tcpstate/tcpstate_exporter/bpfsource"
)

// Feed carries kernel state changes from an event source's goroutine to
// the goroutine that owns a Poller, through a fixed set of buffers: no
// allocation per batch, and a source that outruns the Poller waits for a
// buffer (its ring buffer then fills, and counts what it could not hold)
// rather than growing the exporter's memory.
type Feed struct {
	full chan []KernelTransition
	free chan []KernelTransition
}

// NewFeed returns a Feed of buffers buffers holding size changes each.
func NewFeed(buffers, size int) *Feed {
	buffers, size = max(buffers, 1), max(size, 1)
	f := &Feed{full: make(chan []KernelTransition, buffers), free: make(chan []KernelTransition, buffers)}
	for range buffers {
		f.free <- make([]KernelTransition, 0, size)
	}
	return f
}

// Push hands events over to the Poller, in as many buffers as they take.
// It waits for free buffers, and returns ctx's error if ctx ends first.
func (f *Feed) Push(ctx context.Context, events []bpfsource.Event) error {
	for len(events) > 0 {
		var b []KernelTransition
		select {
		case b = <-f.free:
		case <-ctx.Done():
			return ctx.Err()
		}
		n := min(len(events), cap(b))
		b = b[:n]
		for i := range b {
			e := &events[i]
			b[i] = KernelTransition{
				At: e.Time, Cookie: e.Cookie, Netns: e.Netns, Family: e.Family, Old: e.OldState, New: e.NewState, Err: e.Err,
				FinReceived: e.FinReceived, Orphan: e.Orphan,
				Src: netip.AddrPortFrom(e.Src, e.SrcPort), Dst: netip.AddrPortFrom(e.Dst, e.DstPort),
			}
		}
		f.full <- b // never blocks: there are as many places as buffers
		events = events[n:]
	}
	return nil
}

// LossCounter reports what an event source could not deliver so far;
// *bpfsource.Source is one.
type LossCounter interface {
	Losses() (bpfsource.Losses, error)
}

// syncer is an event source that says when it has handed over every event
// recorded so far; *bpfsource.Source is one.
type syncer interface {
	Sync() <-chan struct{}
}

// syncWait bounds how long a dump waits for the events before it.
const syncWait = time.Second

// catchUp applies every event the source recorded before now, so that a
// dump that follows counts nothing twice: a change the dump sees would
// otherwise be counted again when its late event came. Without a syncer it
// applies what the feed holds.
func (p *Poller) catchUp(ctx context.Context, feed *Feed, src LossCounter) {
	if s, ok := src.(syncer); ok {
		done := s.Sync()
		timeout := time.NewTimer(syncWait)
		defer timeout.Stop()
	wait:
		for {
			select {
			case b := <-feed.full:
				p.applyFeed(feed, b)
			case <-done:
				break wait
			case <-timeout.C:
				p.cfg.Logger.Debug("events not caught up before a dump", "waited", syncWait)
				break wait
			case <-ctx.Done():
				return
			}
		}
	}
	for {
		select {
		case b := <-feed.full:
			p.applyFeed(feed, b)
		default:
			return
		}
	}
}

// applyFeed applies a buffer of the feed and gives it back.
func (p *Poller) applyFeed(feed *Feed, b []KernelTransition) {
	p.ApplyEvents(b)
	feed.free <- b[:0]
}

// RunFeed is Run for precise mode: it applies the changes the feed brings
// as they come, publishes what they changed every publish, and still
// polls every Interval to reconcile the trackers with the kernel's tables
// (with every namespace observed, a share of the namespaces at each
// publish: see Reconcile).
// Before each publish it applies every event the source recorded until
// then (see catchUp), and reads losses, if not nil: events the source lost
// are counted, and a loss polls at once, so that a dump repairs what the
// lost events would have changed. Polls that overrun the interval drop
// the ticks they missed, as in Run.
func (p *Poller) RunFeed(ctx context.Context, feed *Feed, publish time.Duration, losses LossCounter) {
	if publish <= 0 {
		publish = time.Second
	}
	interval := p.cfg.Interval
	if interval <= 0 {
		interval = time.Minute
	}
	polls, pubs := time.NewTicker(interval), time.NewTicker(publish)
	defer polls.Stop()
	defer pubs.Stop()
	p.beforeDump = func() { p.catchUp(ctx, feed, losses) }
	defer func() { p.beforeDump = nil }()
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-feed.full:
			p.applyFeed(feed, b)
		case <-pubs.C:
			// Every event recorded so far goes into the publish: with the
			// source's Sync, the publish is what makes it read, so that it
			// may sleep long between reads on its own.
			p.catchUp(ctx, feed, losses)
			switch {
			case p.countLosses(losses):
				_ = p.Poll(ctx) // publishes too
				polls.Reset(interval)
			case p.discovery != nil:
				_ = p.Reconcile(ctx, publish) // counted and logged by Reconcile
			default:
				p.Publish()
			}
		case <-polls.C:
			if p.discovery == nil {
				_ = p.Poll(ctx) // counted and logged by Poll
			}
		}
	}
}

// countLosses reads what the source lost and reports whether it lost
// anything since the last time.
func (p *Poller) countLosses(losses LossCounter) bool {
	if losses == nil {
		return false
	}
	l, err := losses.Losses()
	if err != nil {
		p.cfg.Logger.Debug("reading the event source's losses", "err", err)
		return false
	}
	now := [NumLosses]uint64{LossRingFull: l.RingFull, LossRecursion: l.RecursionMisses, LossMalformed: l.Malformed}
	lost := now != p.next.EventsLost
	p.next.EventsLost = now
	return lost
}

// Loss is a way an event source loses events.
type Loss uint8

// The ways events are lost.
const (
	// LossRingFull: the ring buffer had no room for an event.
	LossRingFull Loss = iota
	// LossRecursion: the kernel skipped the program because it was
	// already running on the CPU (its recursion misses).
	LossRecursion
	// LossMalformed: a record that did not decode.
	LossMalformed

	// NumLosses is the number of ways.
	NumLosses = 3
)

var lossNames = [NumLosses]string{"ring_full", "recursion", "malformed"}

// String returns the way's label value.
func (l Loss) String() string { return label(lossNames[:], l) }
