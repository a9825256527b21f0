package collector

import (
	"cmp"
	"context"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/tcpstate/tcpstate_exporter/procscan"
)

// ProcessKind says what a row of the process breakdown stands for.
type ProcessKind uint8

// The kinds of rows in an Attribution.
const (
	ProcessNamed   ProcessKind = iota // one executable name (comm), all its processes summed
	ProcessOther                      // names past the limit, summed
	ProcessNone                       // sockets with no owner (inode 0: orphaned, TIME_WAIT, request sockets)
	ProcessUnknown                    // an owner exists but was not found: it exited, or its fds may not be read
)

// ProcessCount is one row of the process breakdown.
type ProcessCount struct {
	Kind    ProcessKind
	Process string // for ProcessNamed
	Sockets [NumStates]int
}

// Attribution is one pass of resolving sockets in the attribution states
// to the processes holding them. It is never modified after it is
// published.
type Attribution struct {
	Time   time.Time      // when the pass ran; zero before the first
	Took   time.Duration  // how long the /proc walk took
	Rows   []ProcessCount // the top names by socket count, then the summed rows
	Folded int            // names summed into the ProcessOther row; 0 means not truncated
	Denied int            // processes whose fds could not be read
}

// AttributionConfig configures an Attributor.
type AttributionConfig struct {
	Interval time.Duration // between passes
	Top      int           // names kept; the rest are summed
	ProcRoot string        // "/proc" unless testing
	Now      func() time.Time
	Logger   *slog.Logger
}

// Attributor resolves, on its own cadence, the sockets the Poller saw in
// the attribution states to the processes holding them, by walking
// /proc/PID/fd. It never runs on the scrape path and skips the walk when
// there is nothing to resolve.
type Attributor struct {
	p   *Poller
	cfg AttributionConfig

	inodes []InodeState
	want   map[uint32]struct{}
	owners map[uint32]procscan.Owner

	snap atomic.Pointer[Attribution]
}

// NewAttributor returns an Attributor of p's sockets.
func NewAttributor(p *Poller, cfg AttributionConfig) *Attributor {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	a := &Attributor{p: p, cfg: cfg, want: map[uint32]struct{}{}, owners: map[uint32]procscan.Owner{}}
	a.snap.Store(&Attribution{})
	return a
}

// Snapshot returns the latest pass.
func (a *Attributor) Snapshot() *Attribution { return a.snap.Load() }

// Attribute runs one pass and publishes it.
func (a *Attributor) Attribute() *Attribution {
	start := a.cfg.Now()
	a.inodes = a.p.AttributionInodes(a.inodes[:0])
	clear(a.want)
	clear(a.owners)
	for _, in := range a.inodes {
		if in.Inode != 0 {
			a.want[in.Inode] = struct{}{}
		}
	}
	res := &Attribution{Time: start}
	if len(a.want) > 0 {
		stats, err := procscan.Owners(a.cfg.ProcRoot, a.want, a.owners)
		if err != nil {
			a.cfg.Logger.Warn("attributing sockets to processes", "err", err)
		}
		res.Denied = stats.Denied
	}
	byName := map[string]*ProcessCount{}
	var none, unknown ProcessCount
	none.Kind, unknown.Kind = ProcessNone, ProcessUnknown
	for _, in := range a.inodes {
		switch o, ok := a.owners[in.Inode]; {
		case in.Inode == 0:
			none.Sockets[in.State]++
		case !ok:
			unknown.Sockets[in.State]++
		default:
			r := byName[o.Comm]
			if r == nil {
				r = &ProcessCount{Kind: ProcessNamed, Process: o.Comm}
				byName[o.Comm] = r
			}
			r.Sockets[in.State]++
		}
	}
	named := make([]ProcessCount, 0, len(byName))
	for _, r := range byName {
		named = append(named, *r)
	}
	slices.SortFunc(named, func(x, y ProcessCount) int {
		if c := cmp.Compare(total(y.Sockets), total(x.Sockets)); c != 0 {
			return c
		}
		return cmp.Compare(x.Process, y.Process)
	})
	top := max(a.cfg.Top, 0)
	if len(named) > top {
		other := ProcessCount{Kind: ProcessOther}
		for _, r := range named[top:] {
			for s, n := range r.Sockets {
				other.Sockets[s] += n
			}
		}
		res.Folded = len(named) - top
		named = append(named[:top], other)
	}
	for _, r := range []ProcessCount{none, unknown} {
		if total(r.Sockets) > 0 {
			named = append(named, r)
		}
	}
	res.Rows = named
	res.Took = a.cfg.Now().Sub(start)
	a.snap.Store(res)
	return res
}

// Run attributes every Interval until ctx is done.
func (a *Attributor) Run(ctx context.Context) {
	every(ctx, a.cfg.Interval, 15*time.Second, func() { a.Attribute() })
}
