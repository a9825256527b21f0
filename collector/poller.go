package collector

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
	ReasonMalformed   Reason = iota // the kernel's reply could not be decoded
	ReasonPermission                // the kernel refused the dump
	ReasonNamespace                 // the observed network namespace is gone
	ReasonUnsupported               // the kernel has no TCP sock_diag handler (ENOENT, EOPNOTSUPP)
	ReasonNoBuffer                  // the receive buffer overflowed (ENOBUFS)
	ReasonDump                      // any other failure to dump

	// NumReasons is the number of reasons.
	NumReasons = 6
)

var reasonNames = [NumReasons]string{"malformed", "permission", "namespace", "unsupported", "enobufs", "dump"}

// String returns the reason's label value.
func (r Reason) String() string { return label(reasonNames[:], r) }

// Classify returns the reason a dump error is counted under.
func Classify(err error) Reason {
	switch {
	case errors.Is(err, netlinkdiag.ErrNamespaceGone):
		return ReasonNamespace
	case errors.Is(err, netlinkdiag.ErrUnsupported):
		return ReasonUnsupported
	case errors.Is(err, netlinkdiag.ErrMalformed):
		return ReasonMalformed
	case errors.Is(err, os.ErrPermission):
		return ReasonPermission
	case errors.Is(err, syscall.ENOBUFS):
		return ReasonNoBuffer
	}
	return ReasonDump
}

// Inconsistency is a kind of inconsistency in the kernel's dumps that the
// tracker corrected.
type Inconsistency uint8

// The kinds of dump inconsistency.
const (
	// InconsistencyDuplicate: a dump reported a socket more than once; it
	// was counted once.
	InconsistencyDuplicate Inconsistency = iota
	// InconsistencySkipped: a complete dump left out a socket that was
	// still open (a later dump reported it again); it was not taken for
	// closed.
	InconsistencySkipped
	// InconsistencyInterrupted: the kernel flagged a dump with
	// NLM_F_DUMP_INTR. Linux does not do so for TCP dumps; should a kernel
	// start to, the dump is used like any other.
	InconsistencyInterrupted

	// NumInconsistencies is the number of kinds.
	NumInconsistencies = 3
)

var inconsistencyNames = [NumInconsistencies]string{"duplicate", "skipped", "interrupted"}

// String returns the kind's label value.
func (k Inconsistency) String() string { return label(inconsistencyNames[:], k) }

// Snapshot is what scrapes read: the gauges of the last complete poll and
// the cumulative counters as of the latest poll. It is never modified after
// it is published.
type Snapshot struct {
	// Time is when the last complete poll started; zero until one has.
	// When observing every namespace it is the oldest of their times.
	Time time.Time
	// PollResult holds that poll's gauges, summed over namespaces (Oldest:
	// the oldest of any).
	PollResult
	// Namespaces holds each namespace's own gauges when observing every
	// namespace; nil otherwise.
	Namespaces []NamespaceResult
	// Ports is the per-service-port breakdown.
	Ports PortBreakdown
	// Remotes is the client side by remote endpoint.
	Remotes RemoteBreakdown

	// Inodes holds the socket inodes (0 for sockets with no owner) of the
	// sockets in the attribution states, as of the same dumps.
	Inodes []InodeState

	Events          uint64                       // kernel state changes applied (precise mode)
	EventsLost      [NumLosses]uint64            // kernel state changes the event source lost, by way
	Polls           uint64                       // polls attempted
	Errors          [NumReasons]uint64           // poll errors by reason
	Overruns        uint64                       // polls that took longer than the interval
	Transitions     [NumStates][NumStates]uint64 // transitions seen, [from][to]
	Inconsistencies [NumInconsistencies]uint64   // dump inconsistencies corrected, by kind
	Corrections     [NumCorrections]uint64       // what dumps corrected of the events' picture, by kind (precise mode)
	Stays           Stays                        // completed stays since start, by state
}

// NamespaceResult is one network namespace's part of a poll.
type NamespaceResult struct {
	Name  string
	Inode uint64 // the namespace's nsfs inode
	// Time is when this namespace's last complete dump started.
	Time time.Time
	PollResult
	// Took is how long its latest dump and tracking took.
	Took time.Duration
}

// Namespace names a network namespace to observe.
type Namespace struct {
	ID   uint64 // identity, stable for the namespace's life (nsfs inode)
	Name string // label value
	Path string // what Dial opens
}

// DumpCloser is a Dumper holding a resource, such as a netlink socket.
type DumpCloser interface {
	Dumper
	Close() error
}

// Discovery finds the namespaces to observe and opens dumpers into them.
type Discovery struct {
	// Discover lists the namespaces present now.
	Discover func() ([]Namespace, error)
	// Dial opens a dumper into a namespace Discover listed.
	Dial func(Namespace) (DumpCloser, error)
	// Still, if set, reports cheaply whether a namespace is still where
	// Discover found it (its path names it). Between discoveries in
	// precise mode (see Reconcile), one that is not makes the Poller
	// discover again at once.
	Still func(Namespace) bool
}

// Config configures a Poller.
type Config struct {
	// Interval between polls; a poll that overruns it delays the next one
	// rather than piling up.
	Interval time.Duration
	// MaxTracked bounds the sockets whose time in state is tracked, over
	// all namespaces together.
	MaxTracked int
	// PortTop is how many listening ports the port breakdown names; the
	// rest are summed.
	PortTop int
	// RemoteTop is how many remote endpoints the remote breakdown names;
	// the rest are summed.
	RemoteTop int
	// AttributionStates are the states whose sockets' inodes are kept for
	// process attribution.
	AttributionStates []State
	// ObserveStay, if set, receives every completed stay in a state.
	ObserveStay func(State, time.Duration)
	// ObservePoll, if set, receives the duration of every poll.
	ObservePoll func(time.Duration)
	// Now is the wall clock, for the times snapshots carry; nil means
	// time.Now.
	Now func() time.Time
	// Mono is the clock the trackers run on, in nanoseconds: nil means
	// CLOCK_MONOTONIC (the clock of kernel event timestamps) when Now is
	// nil too, and Now's reading otherwise.
	Mono func() int64
	// NetnsInode is the inode of the namespace a single-namespace Poller
	// observes, to pick its kernel events from every namespace's; 0 takes
	// them all.
	NetnsInode uint64
	// Logger receives poll failures and recoveries; nil discards them.
	Logger *slog.Logger
}

// InodeState is a socket inode in one of the attribution states.
type InodeState struct {
	Inode uint32
	State State
}

// target is one namespace being polled.
type target struct {
	ns      Namespace
	dumper  Dumper
	closer  DumpCloser // nil for a dumper the caller owns
	tracker *Tracker
	seen    [NumStates][NumStates]uint64 // tracker transitions already counted
	last    NamespaceResult              // last complete dump
	ports   portTally
	rows    []PortCount  // last complete dump's port rows
	inodes  []InodeState // last complete dump's attribution inodes
	pending []InodeState // being gathered by the current dump
	unknown int          // sockets in undocumented kernel states in the current dump
	lastErr string
	observe func(*netlinkdiag.Socket) error

	remote  remoteTally
	remotes []RemoteCount // last complete dump's remote rows
	// settings are the namespace's port sysctls as read before the
	// current dump; nil when they could not be read.
	settings   *netlinkdiag.PortSettings
	settingsAt netlinkdiag.PortSettings

	// remnants holds the cookies of connections whose socket handed over
	// to a timewait remnant in FIN_WAIT2, by their ends, until the peer's
	// change or a dump shows what became of them.
	remnants map[connection]uint64
	// closing holds the connections whose socket an event put in
	// FIN_WAIT1, by their ends, until an event takes it out, the peer's
	// close shows where it went, or a dump does.
	closing map[connection]closingEnd

	// The current dump's sockets wait here until a batch is full.
	begun  int64 // the dump's clock reading
	dumped bool  // a dump has begun since the target was opened
	batch  [BatchLen]Observation
	extra  [BatchLen]socketExtra
	dup    [BatchLen]bool
	n      int
}

// connection is a TCP connection's local and remote ends.
type connection struct{ local, remote netip.AddrPort }

// closingEnd is a socket in FIN_WAIT1 and what its peer's events said of
// its close: when the peer received its FIN (the earliest its ACK could
// leave), and when the peer sent its own.
type closingEnd struct {
	cookie        uint64
	finAt, peerAt int64 // CLOCK_MONOTONIC; 0 until seen
}

// socketExtra is what the poller keeps of a socket besides the tracker's
// observation: what the port and remote breakdowns and attribution need.
type socketExtra struct {
	src, dst netip.AddrPort
	rq       uint32
	wq       uint32
	inode    uint32
	tw       uint32 // milliseconds left in TIME_WAIT
}

// Poller polls one namespace, or every namespace a Discovery finds, into
// per-namespace Trackers and publishes a Snapshot after each poll.
type Poller struct {
	cfg       Config
	discovery *Discovery
	attrState [NumStates]bool

	// The targets, their trackers and next are owned by the goroutine
	// that polls; no lock is held across a dump.
	targets []*target
	byInode map[uint64]*target // targets by namespace inode, for events
	next    Snapshot

	// In precise mode with discovery (see Reconcile): when namespaces were
	// last discovered, and whether events came from one not observed.
	discovered   int64
	unknownNetns bool
	// beforeDump, while RunFeed runs, applies the events recorded before
	// a dump begins.
	beforeDump func()
	due        []*target // Reconcile's, kept to reuse

	snap atomic.Pointer[Snapshot]
}

func newPoller(cfg Config) *Poller {
	if cfg.Mono == nil {
		if cfg.Now == nil {
			cfg.Mono = monotonic
		} else {
			now := cfg.Now
			cfg.Mono = func() int64 { return now().UnixNano() }
		}
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	p := &Poller{cfg: cfg}
	// Every completed stay goes into the snapshot too; the trackers call
	// this on the goroutine that owns p.next.
	hook := cfg.ObserveStay
	p.cfg.ObserveStay = func(s State, d time.Duration) {
		p.next.Stays.Observe(s, d)
		if hook != nil {
			hook(s, d)
		}
	}
	for _, s := range cfg.AttributionStates {
		if s < NumStates {
			p.attrState[s] = true
		}
	}
	p.snap.Store(&Snapshot{})
	return p
}

// NewPoller returns a Poller reading the one namespace d dumps.
func NewPoller(d Dumper, cfg Config) *Poller {
	p := newPoller(cfg)
	p.targets = []*target{p.newTarget(Namespace{ID: cfg.NetnsInode}, d, nil)}
	return p
}

// namespaced is a Dumper that says which namespace its last dump read;
// *netlinkdiag.Conn is one.
type namespaced interface{ NetnsInode() uint64 }

// NewDiscoveringPoller returns a Poller that, at every poll, observes each
// namespace disc finds, labelled by its name. Namespaces that appear are
// opened; those that vanish are closed and dropped, without an error.
func NewDiscoveringPoller(disc Discovery, cfg Config) *Poller {
	p := newPoller(cfg)
	p.discovery = &disc
	return p
}

func (p *Poller) newTarget(ns Namespace, d Dumper, c DumpCloser) *target {
	t := &target{ns: ns, dumper: d, closer: c, tracker: NewTracker(p.cfg.MaxTracked, p.cfg.ObserveStay)}
	t.last.Name, t.last.Inode = ns.Name, ns.ID
	t.observe = func(s *netlinkdiag.Socket) error {
		if !fromSocket(&t.batch[t.n], s, t.begun) {
			t.unknown++
			return nil
		}
		x := &t.extra[t.n]
		x.src, x.dst, x.rq, x.wq, x.inode, x.tw = s.Src, s.Dst, s.RQueue, s.WQueue, s.Inode, 0
		if s.Timer == netlinkdiag.TimerTimeWait {
			x.tw = s.Expires
		}
		t.n++
		if t.n == len(t.batch) {
			p.flush(t)
		}
		return nil
	}
	return t
}

// fromSocket fills o from a socket of a dump begun at begun (a
// CLOCK_MONOTONIC reading), and reports false for a socket in a kernel
// state with no documented name.
func fromSocket(o *Observation, s *netlinkdiag.Socket, begun int64) bool {
	st, ok := FromKernel(s.State)
	if !ok {
		return false
	}
	o.Cookie, o.State, o.Family, o.TimeWaitEnd = s.Cookie, st, IPv4, 0
	if s.Family == syscall.AF_INET6 {
		o.Family = IPv6
	}
	if st == TimeWait && s.Timer == netlinkdiag.TimerTimeWait {
		o.TimeWaitEnd = begun + int64(s.Expires)*int64(time.Millisecond)
	}
	return true
}

// flush applies the batched sockets of t's dump, and counts those that
// are not repeats into the port breakdown and attribution.
func (p *Poller) flush(t *target) {
	n := t.n
	t.n = 0
	t.tracker.ObserveBatch(t.batch[:n], t.dup[:n])
	for i := range n {
		if t.dup[i] {
			continue
		}
		st, x := t.batch[i].State, &t.extra[i]
		port := x.src.Port()
		t.ports.add(port, st, x.rq, x.wq)
		switch {
		case st == Listen:
			t.remote.listen(port)
		case !has(&t.ports.listen, port):
			held := PortHeld(st, x.src.Addr(), x.dst.Addr(), time.Duration(x.tw)*time.Millisecond, t.settings)
			t.remote.add(x.src, x.dst, st, held)
		}
		if p.attrState[st] {
			t.pending = append(t.pending, InodeState{x.inode, st})
		}
	}
}

// Snapshot returns the latest published snapshot; it never blocks on a poll.
func (p *Poller) Snapshot() *Snapshot { return p.snap.Load() }

// AttributionInodes appends to dst the inodes (0 for sockets with no
// owner) of sockets in the attribution states as of the latest complete
// dumps, and returns it. It reads the latest snapshot and never waits for
// a poll.
func (p *Poller) AttributionInodes(dst []InodeState) []InodeState {
	return append(dst, p.Snapshot().Inodes...)
}

// Close closes the dumpers the Poller opened itself. It must not run
// while a poll does.
func (p *Poller) Close() {
	for _, t := range p.targets {
		if t.closer != nil {
			t.closer.Close()
		}
		t.tracker.release()
	}
	p.targets = nil
}

// Poll dumps every socket once, applies the dump to the tracker and
// publishes a snapshot. A dump that fails publishes no gauges: the last
// complete poll's stand, and the error is counted and returned. Polls
// must not run concurrently: one goroutine (Run's) owns the trackers.
func (p *Poller) Poll(ctx context.Context) error {
	start := p.cfg.Now()
	var errs []error
	if p.discovery != nil {
		if err := p.discover(); err != nil {
			errs = append(errs, err)
		}
	}
	if p.beforeDump != nil {
		p.beforeDump()
	}
	for _, t := range p.targets {
		if err := p.pollTarget(ctx, t); err != nil {
			errs = append(errs, err)
		}
	}
	if p.discovery != nil {
		p.dropVanished()
	}
	p.polled(start)
	return errors.Join(errs...)
}

// polled counts a poll that began at start, and publishes it.
func (p *Poller) polled(start time.Time) {
	took := p.cfg.Now().Sub(start)
	p.next.Polls++
	if p.cfg.Interval > 0 && took > p.cfg.Interval {
		p.next.Overruns++
	}
	p.publish()
	if p.cfg.ObservePoll != nil {
		p.cfg.ObservePoll(took)
	}
}

// discover opens the namespaces that appeared and marks those that
// vanished, counting a failure.
func (p *Poller) discover() error {
	p.discovered, p.unknownNetns = p.cfg.Mono(), false
	err := p.rediscover()
	if err != nil {
		p.next.Errors[ReasonNamespace]++
	}
	return err
}

// moved reports whether a namespace is no longer where it was found.
func (p *Poller) moved() bool {
	if p.discovery.Still == nil {
		return false
	}
	for _, t := range p.targets {
		if !p.discovery.Still(t.ns) {
			return true
		}
	}
	return false
}

// rediscoverAfter is how soon after the last discovery events from a
// namespace the Poller does not observe make it look again.
const rediscoverAfter = 5 * time.Second

// Reconcile is Poll for precise mode with every namespace observed, where
// events keep the counts and dumps only reconcile: called every tick, it
// dumps each namespace once per Interval, a share of them at each tick
// rather than all at once, and a namespace it has not dumped yet at once.
// It discovers namespaces once per Interval, at once when one is no longer
// where it was found (Discovery.Still), and sooner (at most every
// rediscoverAfter) when events come from one it does not observe. It
// publishes what the events changed in the others, as Publish does. Like
// Poll, it must run on the goroutine that owns the Poller.
func (p *Poller) Reconcile(ctx context.Context, tick time.Duration) error {
	if p.discovery == nil {
		return errors.New("collector: Reconcile needs a discovering Poller")
	}
	interval := p.cfg.Interval
	if interval <= 0 {
		interval = time.Minute
	}
	start, now := p.cfg.Now(), p.cfg.Mono()
	var errs []error
	if since := time.Duration(now - p.discovered); since >= interval || p.unknownNetns && since >= rediscoverAfter || p.moved() {
		if err := p.discover(); err != nil {
			errs = append(errs, err)
		}
	}
	// Due: never dumped, or dumped an interval ago; the longest waiting
	// first, as many as spread the namespaces evenly over the interval.
	share := int((int64(len(p.targets))*int64(tick) + int64(interval) - 1) / int64(interval))
	due := p.due[:0]
	for _, t := range p.targets {
		switch {
		case t.ns.ID == 0:
		case !t.dumped:
			due = append(due, t)
			share++
		case time.Duration(now-t.begun) >= interval-tick/2:
			due = append(due, t)
		}
	}
	slices.SortFunc(due, func(a, b *target) int { return cmp.Compare(a.begun, b.begun) })
	if len(due) > 0 && p.beforeDump != nil {
		p.beforeDump()
		now = p.cfg.Mono() // the results refreshed below are as of after it
	}
	var dumped bool
	for _, t := range due[:min(share, len(due))] {
		if err := p.pollTarget(ctx, t); err != nil {
			errs = append(errs, err)
		}
		dumped = true
	}
	clear(due)
	p.due = due[:0]
	p.dropVanished()
	if dumped {
		// The others' results, as the events moved them since.
		p.refresh(func(t *target) bool { return t.begun < now })
		p.polled(start)
	} else {
		p.Publish()
	}
	return errors.Join(errs...)
}

// pollTarget dumps one namespace into its tracker.
func (p *Poller) pollTarget(ctx context.Context, t *target) error {
	wall := p.cfg.Now()
	t.begun, t.dumped = p.cfg.Mono(), true
	t.pending = t.pending[:0]
	t.unknown, t.n = 0, 0
	t.ports.reset()
	t.remote.reset()
	p.readSettings(t)
	t.tracker.SetMax(p.budget(t))
	t.tracker.Begin(t.begun)
	err := t.dumper.DumpTCP(ctx, netlinkdiag.Request{}, t.observe)
	p.flush(t)
	if errors.Is(err, netlinkdiag.ErrDumpInterrupted) {
		// The dump is whole; the kernel says it may be inconsistent, which
		// every TCP dump may be, flagged or not (see MissesToClose).
		p.next.Inconsistencies[InconsistencyInterrupted]++
		err = nil
	}
	var res PollResult
	if n, ok := t.dumper.(namespaced); ok && p.discovery == nil && t.ns.ID != 0 {
		// A namespace path may come to name a new namespace, which the
		// dumper follows: so do events.
		t.ns.ID = n.NetnsInode()
	}
	if err == nil {
		res = t.tracker.Commit()
		res.Unknown = t.unknown
		t.last.Time, t.last.PollResult = wall, res
		t.last.Took = p.cfg.Now().Sub(wall)
		t.rows = t.ports.rows(t.ns.Name)
		ports := 0
		if t.settings != nil {
			ports = t.settings.Ports()
		}
		t.remotes = t.remote.rows(t.ns.Name, &t.ports.listen, ports)
		t.inodes, t.pending = t.pending, t.inodes
		t.pruneRemnants()
	} else {
		res = t.tracker.Abort()
	}
	p.next.Inconsistencies[InconsistencyDuplicate] += uint64(res.Duplicates)
	p.next.Inconsistencies[InconsistencySkipped] += uint64(res.Skipped)
	for k, n := range res.Corrections {
		p.next.Corrections[k] += uint64(n)
	}
	p.countTransitions(t)
	switch {
	case err == nil:
	case ctx.Err() != nil:
		// Cut short by shutdown: not a failure of the poll.
		return ctx.Err()
	case p.discovery != nil && errors.Is(err, netlinkdiag.ErrNamespaceGone):
		// Gone between discovery and dump: dropped, not an error.
		t.ns.ID = 0
		return nil
	default:
		p.next.Errors[Classify(err)]++
	}
	p.logTransition(t, err)
	return err
}

// portConfigured is a Dumper that can read its namespace's port sysctls;
// *netlinkdiag.Conn is one.
type portConfigured interface {
	PortSettings() (netlinkdiag.PortSettings, error)
}

// readSettings reads t's namespace's port sysctls for the dump about to
// start. Failing to is not a failure of the poll: the remote breakdown
// goes without the size of the range, and counts every TIME_WAIT socket
// as holding its port.
func (p *Poller) readSettings(t *target) {
	t.settings = nil
	c, ok := t.dumper.(portConfigured)
	if !ok {
		return
	}
	ps, err := c.PortSettings()
	if err != nil {
		p.cfg.Logger.Debug("cannot read the local port sysctls", "netns", t.ns.Name, "err", err)
		return
	}
	t.settingsAt = ps
	t.settings = &t.settingsAt
}

// budget is how many sockets t's tracker may hold: the global bound less
// what the other namespaces' trackers hold.
func (p *Poller) budget(t *target) int {
	n := p.cfg.MaxTracked
	for _, o := range p.targets {
		if o != t {
			n -= o.tracker.Len()
		}
	}
	return max(n, 0)
}

// rediscover opens namespaces that appeared. Those that vanished are
// marked (ID 0) and dropped after the poll.
func (p *Poller) rediscover() error {
	found, err := p.discovery.Discover()
	if err != nil {
		return fmt.Errorf("discover network namespaces: %w", err)
	}
	byID := make(map[uint64]Namespace, len(found))
	for _, ns := range found {
		byID[ns.ID] = ns
	}
	for _, t := range p.targets {
		ns, ok := byID[t.ns.ID]
		if !ok {
			t.ns.ID = 0
			continue
		}
		delete(byID, t.ns.ID)
		if ns.Path != t.ns.Path && t.closer != nil {
			// The path we entered by is going (its process is exiting):
			// reopen by the new one, keeping what the tracker knows.
			if d, err := p.discovery.Dial(ns); err == nil {
				t.closer.Close()
				t.dumper, t.closer, t.ns.Path = d, d, ns.Path
			}
		}
	}
	for _, ns := range found {
		if _, ok := byID[ns.ID]; !ok {
			continue
		}
		d, err := p.discovery.Dial(ns)
		if err != nil {
			// Vanished since it was listed, or not ours to enter: skip it
			// this round, say why once.
			p.cfg.Logger.Debug("cannot open network namespace", "netns", ns.Name, "path", ns.Path, "err", err)
			continue
		}
		p.targets = append(p.targets, p.newTarget(ns, d, d))
		p.byInode = nil
	}
	return nil
}

func (p *Poller) dropVanished() {
	kept := p.targets[:0]
	for _, t := range p.targets {
		if t.ns.ID == 0 {
			if t.closer != nil {
				t.closer.Close()
			}
			t.tracker.release()
			continue
		}
		kept = append(kept, t)
	}
	clear(p.targets[len(kept):])
	if len(kept) != len(p.targets) {
		p.byInode = nil
	}
	p.targets = kept
}

// assemble fills p.next's gauges from every target's last complete dump.
func (p *Poller) assemble() {
	var sum PollResult
	var oldest time.Time
	var rows []PortCount
	var remotes []RemoteCount
	var nss []NamespaceResult
	var inodes []InodeState
	for _, t := range p.targets {
		if t.last.Time.IsZero() {
			continue // never dumped whole: nothing to show yet
		}
		r := t.last.PollResult
		for f := range sum.Sockets {
			for s := range sum.Sockets[f] {
				sum.Sockets[f][s] += r.Sockets[f][s]
			}
		}
		for s, d := range r.Oldest {
			sum.Oldest[s] = max(sum.Oldest[s], d)
		}
		sum.Tracked += r.Tracked
		sum.Untracked += r.Untracked
		sum.Unknown += r.Unknown
		sum.Missing += r.Missing
		sum.Duplicates += r.Duplicates
		sum.Skipped += r.Skipped
		if oldest.IsZero() || t.last.Time.Before(oldest) {
			oldest = t.last.Time
		}
		rows = append(rows, t.rows...)
		remotes = append(remotes, t.remotes...)
		inodes = append(inodes, t.inodes...)
		if p.discovery != nil {
			nss = append(nss, t.last)
		}
	}
	p.next.PollResult, p.next.Time, p.next.Namespaces, p.next.Inodes = sum, oldest, nss, inodes
	p.next.Ports = topPorts(rows, p.cfg.PortTop)
	p.next.Remotes = topRemotes(remotes, p.cfg.RemoteTop)
}

// logTransition logs a namespace's failure when it starts or changes and
// its recovery, not every failing poll.
func (p *Poller) logTransition(t *target, err error) {
	switch {
	case err == nil && t.lastErr != "":
		p.cfg.Logger.Info("polls recovered", "netns", t.ns.Name, "after", t.lastErr)
		t.lastErr = ""
	case err != nil && err.Error() != t.lastErr:
		t.lastErr = err.Error()
		p.cfg.Logger.Warn("poll failed; serving the last complete poll", "netns", t.ns.Name, "reason", Classify(err).String(), "err", err)
	}
}

// ApplyEvents applies kernel state changes, each to the tracker of the
// namespace it happened in; changes in namespaces the Poller does not
// observe, and changes it cannot map, are left out. Like Poll, it must run
// on the goroutine that owns the Poller. What it changes is published by
// the next Publish or Poll.
func (p *Poller) ApplyEvents(batch []KernelTransition) {
	for i := range batch {
		k := &batch[i]
		t := p.eventTarget(uint64(k.Netns))
		if t == nil {
			p.unknownNetns = p.discovery != nil
			continue
		}
		if k.RemnantInFinWait2() {
			// Still in FIN_WAIT2; remember the connection for the peer's
			// change that ends the wait.
			p.next.Events++
			if k.Src.Port() != 0 && len(t.remnants) < maxRemnants {
				if t.remnants == nil {
					t.remnants = make(map[connection]uint64)
				}
				t.remnants[connection{k.Src, k.Dst}] = k.Cookie
			}
			continue
		}
		tr, ok := k.Transition()
		if !ok {
			continue
		}
		if tr.From == FinWait2 && len(t.closing) > 0 {
			p.unannouncedFinWait2(t, k, tr)
		}
		t.tracker.Apply(tr)
		p.next.Events++
		p.followClose(t, k, tr)
		if to, ok := k.PeerClosing(); ok && len(t.remnants) > 0 {
			c := connection{k.Dst, k.Src}
			if cookie, ok := t.remnants[c]; ok {
				delete(t.remnants, c)
				t.tracker.Apply(Transition{Cookie: cookie, Netns: k.Netns, Family: tr.Family, From: FinWait2, To: to, At: k.At})
			}
		}
	}
}

// maxRemnants bounds each namespace's table of remnants in FIN_WAIT2, and
// of sockets in FIN_WAIT1; past it, their changes wait for a dump.
const maxRemnants = 1 << 16

// unannouncedFinWait2 applies, before a socket's own change out of
// FIN_WAIT2, the FIN_WAIT1 -> FIN_WAIT2 the kernel did not announce (the
// gap followClose describes; a half-closed socket, not orphaned, shows it
// too): at the moment its peer received its FIN if the peer was seen, else
// at this change. It is counted as a correction of kind peer.
func (p *Poller) unannouncedFinWait2(t *target, k *KernelTransition, tr Transition) {
	c := connection{k.Src, k.Dst}
	e, ok := t.closing[c]
	if !ok || e.cookie != k.Cookie {
		return
	}
	delete(t.closing, c)
	if st, ok := t.tracker.State(k.Cookie); !ok || st != FinWait1 {
		return
	}
	t.tracker.Apply(Transition{Cookie: k.Cookie, Netns: k.Netns, Family: tr.Family, From: FinWait1, To: FinWait2, At: min(cmp.Or(e.finAt, k.At), k.At)})
	p.next.Corrections[CorrectionPeer]++
}

// followClose follows an active close through the events of both ends
// where both are observed, to repair one the kernel did not announce.
//
// An orphaned socket in FIN_WAIT1 that gets the ACK of its FIN moves to
// FIN_WAIT2 and hands over to a timewait remnant at once. On Linux 6.18
// both changes, now and then (about one such close in 200 on loopback),
// happen without the tracepoint firing for them: no program attached to
// it runs, so nothing counts them lost. The peer's events still show it:
// its LAST_ACK -> CLOSE without an error means it got the ACK of its own
// FIN, which only a socket past FIN_WAIT1 sends. A socket still in
// FIN_WAIT1 then is moved through FIN_WAIT2 to TIME_WAIT: to FIN_WAIT2
// when the peer received its FIN (the ACK left then, or a delayed-ACK
// timeout later), to TIME_WAIT when the peer sent its own. It is counted
// as a correction of kind peer.
func (p *Poller) followClose(t *target, k *KernelTransition, tr Transition) {
	switch {
	case tr.To == FinWait1:
		if k.Src.Port() != 0 && len(t.closing) < maxRemnants {
			if t.closing == nil {
				t.closing = make(map[connection]closingEnd)
			}
			t.closing[connection{k.Src, k.Dst}] = closingEnd{cookie: k.Cookie}
		}
		return
	case tr.From == FinWait1:
		if len(t.closing) > 0 {
			delete(t.closing, connection{k.Src, k.Dst})
		}
		return
	case len(t.closing) == 0:
		return
	}
	c := connection{k.Dst, k.Src} // the peer's ends, seen from this one
	e, ok := t.closing[c]
	if !ok {
		return
	}
	switch {
	case k.Old == netlinkdiag.StateEstablished && k.New == netlinkdiag.StateCloseWait:
		e.finAt = k.At
		t.closing[c] = e
	case k.Old == netlinkdiag.StateCloseWait && k.New == netlinkdiag.StateLastAck:
		e.peerAt = k.At
		t.closing[c] = e
	case k.Old == netlinkdiag.StateLastAck && k.New == netlinkdiag.StateClose:
		delete(t.closing, c)
		if st, ok := t.tracker.State(e.cookie); k.Err != 0 || !ok || st != FinWait1 {
			return
		}
		fin, peer := cmp.Or(e.finAt, e.peerAt, k.At), cmp.Or(e.peerAt, k.At)
		t.tracker.Apply(Transition{Cookie: e.cookie, Netns: k.Netns, Family: tr.Family, From: FinWait1, To: FinWait2, At: fin})
		t.tracker.Apply(Transition{Cookie: e.cookie, Netns: k.Netns, Family: tr.Family, From: FinWait2, To: TimeWait, At: max(fin, peer)})
		p.next.Corrections[CorrectionPeer]++
	}
}

// pruneRemnants forgets the remnants that a dump found gone from
// FIN_WAIT2: turned into TIME_WAIT, or gone, with no change of an observed
// peer to say so.
func (t *target) pruneRemnants() {
	for c, cookie := range t.remnants {
		if st, ok := t.tracker.State(cookie); !ok || st != FinWait2 {
			delete(t.remnants, c)
		}
	}
	for c, e := range t.closing {
		if st, ok := t.tracker.State(e.cookie); !ok || st != FinWait1 {
			delete(t.closing, c)
		}
	}
}

// eventTarget is the target that observes the namespace with inode ino.
func (p *Poller) eventTarget(ino uint64) *target {
	if p.discovery == nil {
		if len(p.targets) == 1 && (p.targets[0].ns.ID == 0 || p.targets[0].ns.ID == ino) {
			return p.targets[0]
		}
		return nil
	}
	if p.byInode == nil {
		p.byInode = make(map[uint64]*target, len(p.targets))
		for _, t := range p.targets {
			p.byInode[t.ns.ID] = t
		}
	}
	return p.byInode[ino]
}

// Publish publishes what events have changed since the last poll or
// Publish, as of now: counts and ages as the trackers hold them (TIME_WAIT
// remnants whose timer ran out gone), transitions as counted. The port
// and remote breakdowns and attribution stay those of the last complete
// dump. Like Poll, it must run on the goroutine that owns the Poller.
func (p *Poller) Publish() {
	p.refresh(func(*target) bool { return true })
	p.publish()
}

// refresh brings the results of the targets for which which is true up to
// now, from what their trackers hold.
func (p *Poller) refresh(which func(*target) bool) {
	wall, now := p.cfg.Now(), p.cfg.Mono()
	for _, t := range p.targets {
		if t.last.Time.IsZero() || !which(t) {
			continue // nothing to start from until a complete dump
		}
		res := t.tracker.Refresh(now)
		res.Unknown = t.last.Unknown
		t.last.PollResult, t.last.Time = res, wall
		p.countTransitions(t)
	}
}

// publish assembles the targets' latest results into a new snapshot and
// makes it the one scrapes read.
func (p *Poller) publish() {
	p.assemble()
	snap := p.next
	p.snap.Store(&snap)
}

// countTransitions adds what t's tracker counted since the last time to
// the snapshot's transitions.
func (p *Poller) countTransitions(t *target) {
	tr := t.tracker.Transitions()
	for from := range tr {
		for to := range tr[from] {
			p.next.Transitions[from][to] += tr[from][to] - t.seen[from][to]
		}
	}
	t.seen = tr
}

// Run polls every Interval until ctx is done. A poll that takes longer than
// the interval is counted as an overrun and the ticks it missed are
// dropped, so polls never pile up.
func (p *Poller) Run(ctx context.Context) {
	every(ctx, p.cfg.Interval, time.Second, func() {
		_ = p.Poll(ctx) // counted and logged by Poll
	})
}

// every calls fn every interval (or fallback, if interval is not positive)
// until ctx is done. Ticks missed while fn runs are dropped, not queued.
func every(ctx context.Context, interval, fallback time.Duration, fn func()) {
	if interval <= 0 {
		interval = fallback
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			fn()
		}
	}
}

// monotonic reads CLOCK_MONOTONIC, the clock of bpf_ktime_get_ns.
func monotonic() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return time.Now().UnixNano() // cannot fail on Linux
	}
	return ts.Nano()
}
