package collector

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// Dumper streams every TCP socket of one network namespace to fn.
// *netlinkdiag.Conn is the real one; tests inject others.
type Dumper interface {
	DumpTCP(ctx context.Context, req netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error
}

// Reason says why a poll, or part of one, went wrong.
type Reason uint8

// The reasons a poll error is counted under.
const (
	ReasonInterrupted  Reason = iota // the kernel flagged the dump as interrupted (NLM_F_DUMP_INTR)
	ReasonMalformed                  // the kernel's reply could not be decoded
	ReasonPermission                 // the kernel refused the dump
	ReasonNamespace                  // the observed network namespace is gone
	ReasonNoBuffer                   // the receive buffer overflowed (ENOBUFS)
	ReasonDump                       // any other failure to dump
	ReasonUnknownState               // a socket in a kernel state with no documented name (counted per socket)

	// NumReasons is the number of reasons.
	NumReasons = 7
)

var reasonNames = [NumReasons]string{"interrupted", "malformed", "permission", "namespace", "enobufs", "dump", "unknown_state"}

// String returns the reason's label value.
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Classify returns the reason a dump error is counted under.
func Classify(err error) Reason {
	switch {
	case errors.Is(err, netlinkdiag.ErrDumpInterrupted):
		return ReasonInterrupted
	case errors.Is(err, netlinkdiag.ErrMalformed):
		return ReasonMalformed
	case errors.Is(err, os.ErrPermission):
		return ReasonPermission
	case errors.Is(err, os.ErrNotExist):
		return ReasonNamespace
	case errors.Is(err, syscall.ENOBUFS):
		return ReasonNoBuffer
	}
	return ReasonDump
}

// Snapshot is what scrapes read: the gauges of the last complete poll and
// the cumulative counters as of the latest poll. It is never modified after
// it is published.
type Snapshot struct {
	// Time is when the last complete poll started; zero until one has.
	Time time.Time
	// PollResult holds that poll's gauges.
	PollResult

	Polls       uint64                       // polls attempted
	Errors      [NumReasons]uint64           // poll errors by reason
	Overruns    uint64                       // polls that took longer than the interval
	Transitions [NumStates][NumStates]uint64 // transitions seen, [from][to]
}

// Config configures a Poller.
type Config struct {
	// Interval between polls; a poll that overruns it delays the next one
	// rather than piling up.
	Interval time.Duration
	// MaxTracked bounds the sockets whose time in state is tracked.
	MaxTracked int
	// ObserveStay, if set, receives every completed stay in a state.
	ObserveStay func(State, time.Duration)
	// ObservePoll, if set, receives the duration of every poll.
	ObservePoll func(time.Duration)
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Logger receives poll failures and recoveries; nil discards them.
	Logger *slog.Logger
}

// Poller polls a Dumper into a Tracker and publishes a Snapshot after each
// poll.
type Poller struct {
	dumper  Dumper
	cfg     Config
	tracker *Tracker
	observe func(*netlinkdiag.Socket) error

	mu      sync.Mutex // serialises polls; guards the fields below
	next    Snapshot
	lastErr string

	snap atomic.Pointer[Snapshot]
}

// NewPoller returns a Poller reading d.
func NewPoller(d Dumper, cfg Config) *Poller {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Poller{dumper: d, cfg: cfg, tracker: NewTracker(cfg.MaxTracked, cfg.ObserveStay)}
	p.observe = func(s *netlinkdiag.Socket) error {
		p.tracker.Observe(s)
		return nil
	}
	p.snap.Store(&Snapshot{})
	return p
}

// Snapshot returns the latest published snapshot; it never blocks on a poll.
func (p *Poller) Snapshot() *Snapshot { return p.snap.Load() }

// Poll dumps every socket once, applies the dump to the tracker and
// publishes a snapshot. An interrupted dump is retried once at once. A dump
// that fails or stays interrupted publishes no gauges: the last complete
// poll's stand, and the error is counted and returned.
func (p *Poller) Poll(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()

	start := p.cfg.Now()
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		begun := start
		if attempt > 0 {
			begun = p.cfg.Now()
		}
		p.tracker.Begin(begun)
		err = p.dumper.DumpTCP(ctx, netlinkdiag.Request{}, p.observe)
		if err == nil {
			res := p.tracker.Commit()
			p.next.Time, p.next.PollResult = begun, res
			p.next.Errors[ReasonUnknownState] += uint64(res.Unknown)
			break
		}
		p.next.Errors[ReasonUnknownState] += uint64(p.tracker.Abort().Unknown)
		p.next.Errors[Classify(err)]++
		if !errors.Is(err, netlinkdiag.ErrDumpInterrupted) || ctx.Err() != nil {
			break
		}
	}
	took := p.cfg.Now().Sub(start)
	p.next.Polls++
	if p.cfg.Interval > 0 && took > p.cfg.Interval {
		p.next.Overruns++
	}
	p.next.Transitions = p.tracker.Transitions()
	snap := p.next
	p.snap.Store(&snap)
	if p.cfg.ObservePoll != nil {
		p.cfg.ObservePoll(took)
	}
	p.logTransition(err)
	return err
}

// logTransition logs a failure when it starts or changes and the recovery,
// not every failing poll.
func (p *Poller) logTransition(err error) {
	switch {
	case err == nil && p.lastErr != "":
		p.cfg.Logger.Info("polls recovered", "after", p.lastErr)
		p.lastErr = ""
	case err != nil && err.Error() != p.lastErr:
		p.lastErr = err.Error()
		p.cfg.Logger.Warn("poll failed; serving the last complete poll", "reason", Classify(err).String(), "err", err)
	}
}

// Run polls every Interval until ctx is done. A poll that takes longer than
// the interval is counted as an overrun and the ticks it missed are
// dropped, so polls never pile up.
func (p *Poller) Run(ctx context.Context) {
	interval := p.cfg.Interval
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = p.Poll(ctx) // counted and logged by Poll
		}
	}
}
