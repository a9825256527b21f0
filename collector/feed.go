package collector

import (
	"context"
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
			b[i] = KernelTransition{At: e.Time, Cookie: e.Cookie, Netns: e.Netns, Family: e.Family, Old: e.OldState, New: e.NewState, Err: e.Err}
		}
		f.full <- b // never blocks: there are as many places as buffers
		events = events[n:]
	}
	return nil
}

// RunFeed is Run for precise mode: it applies the changes the feed brings
// as they come, publishes what they changed every publish, and still
// polls every Interval to reconcile the trackers with the kernel's tables.
// Polls that overrun the interval drop the ticks they missed, as in Run.
func (p *Poller) RunFeed(ctx context.Context, feed *Feed, publish time.Duration) {
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
	for {
		select {
		case <-ctx.Done():
			return
		case b := <-feed.full:
			p.ApplyEvents(b)
			feed.free <- b[:0]
		case <-pubs.C:
			p.Publish()
		case <-polls.C:
			_ = p.Poll(ctx) // counted and logged by Poll
		}
	}
}
