package collector

import (
	"cmp"
	"context"
	"log/slog"
	"maps"
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
	Took   time.Duration  // how long the pass took, its /proc walk included
	Walked bool           // the pass walked /proc: it had sockets to resolve that no earlier pass had
	Rows   []ProcessCount // the top names by socket count, then the summed rows
	Folded int            // names summed into the ProcessOther row; 0 means not truncated
	Denied int            // processes whose fds could not be read, as of the latest walk
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
// /proc/PID/fd. It never runs on the scrape path.
//
// Walking every process's fds is the expensive part (about a second of CPU
// at 200,000 fds), and a pass seldom has new sockets to resolve: a socket
// stuck in CLOSE_WAIT stays there, with the same owner, for pass after
// pass. So the Attributor keeps what it resolved between passes, while
// the socket stays in the attribution states. Each pass rechecks every
// kept owner cheaply (procscan.Recheck: one fd link per socket, one comm
// per process), which notices a process that exited, exec'd or closed
// the fd, and walks /proc only for sockets neither kept nor looked for in
// vain before. Sockets a walk did not find (an owner we may not read, or
// one gone since the dump) are looked for again at a walk that runs
// anyway, or after missRetry passes at the latest. What a recheck cannot
// see is a lower PID coming to hold a kept socket (fd passing): the owner
// stays the process found first while it holds the socket.
type Attributor struct {
	p   *Poller
	cfg AttributionConfig

	inodes []InodeState
	want   map[uint32]struct{}       // inodes of this pass
	find   map[uint32]struct{}       // of those, to walk for
	found  map[uint32]procscan.Owner // what the walk found
	owners map[uint32]procscan.Owner // resolved, kept between passes
	missed map[uint32]struct{}       // walked for and not found
	// sinceMissed counts passes since the missed inodes were last
	// walked for.
	sinceMissed int
	denied      int // the last walk's

	snap atomic.Pointer[Attribution]
}

// missRetry is how many passes sockets a walk did not find wait before
// they are walked for again, when no other socket needs a walk sooner.
const missRetry = 8

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
	a := &Attributor{
		p: p, cfg: cfg,
		want: map[uint32]struct{}{}, find: map[uint32]struct{}{}, found: map[uint32]procscan.Owner{},
		owners: map[uint32]procscan.Owner{}, missed: map[uint32]struct{}{},
	}
	a.snap.Store(&Attribution{})
	return a
}

// Snapshot returns the latest pass.
func (a *Attributor) Snapshot() *Attribution { return a.snap.Load() }

// Attribute runs one pass and publishes it.
func (a *Attributor) Attribute() *Attribution {
	start := a.cfg.Now()
	a.inodes = a.p.AttributionInodes(a.inodes[:0])
	res := &Attribution{Time: start}
	res.Walked = a.resolve()
	res.Denied = a.denied
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

// resolve brings a.owners up to date for a.inodes, and reports whether it
// walked /proc to do so.
func (a *Attributor) resolve() bool {
	clear(a.want)
	for _, in := range a.inodes {
		if in.Inode != 0 {
			a.want[in.Inode] = struct{}{}
		}
	}
	// Forget sockets that left the attribution states, then owners that
	// no longer hold theirs.
	maps.DeleteFunc(a.owners, func(ino uint32, _ procscan.Owner) bool { _, ok := a.want[ino]; return !ok })
	maps.DeleteFunc(a.missed, func(ino uint32, _ struct{}) bool { _, ok := a.want[ino]; return !ok })
	if _, err := procscan.Recheck(a.cfg.ProcRoot, a.owners); err != nil {
		a.cfg.Logger.Warn("attributing sockets to processes", "err", err)
		clear(a.owners)
	}
	a.sinceMissed++
	clear(a.find)
	for ino := range a.want {
		if _, ok := a.owners[ino]; ok {
			continue
		}
		if _, ok := a.missed[ino]; !ok {
			a.find[ino] = struct{}{}
		}
	}
	if len(a.find) == 0 && (len(a.missed) == 0 || a.sinceMissed < missRetry) {
		return false
	}
	// Walking anyway: look for the missed ones too.
	for ino := range a.missed {
		a.find[ino] = struct{}{}
	}
	clear(a.missed)
	a.sinceMissed = 0
	stats, err := procscan.Owners(a.cfg.ProcRoot, a.find, a.found)
	if err != nil {
		a.cfg.Logger.Warn("attributing sockets to processes", "err", err)
	}
	a.denied = stats.Denied
	for ino := range a.find {
		if o, ok := a.found[ino]; ok {
			a.owners[ino] = o
		} else {
			a.missed[ino] = struct{}{}
		}
	}
	return true
}

// Run attributes every Interval until ctx is done.
func (a *Attributor) Run(ctx context.Context) {
	every(ctx, a.cfg.Interval, 15*time.Second, func() { a.Attribute() })
}
