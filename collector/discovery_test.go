package collector

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// nsDumper is a namespace's fake dumper: it serves the sockets its
// namespace holds now.
type nsDumper struct {
	world  *world
	id     uint64
	path   string
	closed bool
}

func (d *nsDumper) DumpTCP(ctx context.Context, req netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	if d.closed {
		return errors.New("dump on a closed dumper")
	}
	if d.world.dumps != nil {
		d.world.dumps[d.id]++
	}
	if err := d.world.fails[d.id]; err != nil {
		return err
	}
	socks, ok := d.world.sockets[d.id]
	if !ok {
		return fmt.Errorf("network namespace %s vanished: %w", d.path, netlinkdiag.ErrNamespaceGone)
	}
	for i := range socks {
		if err := fn(&socks[i]); err != nil {
			return err
		}
	}
	return nil
}

func (d *nsDumper) Close() error { d.closed = true; return nil }

// world is a host's namespaces and their sockets.
type world struct {
	names   map[uint64]string
	paths   map[uint64]string
	sockets map[uint64][]netlinkdiag.Socket
	fails   map[uint64]error // a namespace's dumps fail so
	dialed  []*nsDumper
	dumps   map[uint64]int // dumps by namespace, if not nil
	listed  int            // calls of Discover
}

func (w *world) discovery() Discovery {
	return Discovery{
		Discover: func() ([]Namespace, error) {
			w.listed++
			var out []Namespace
			for id, name := range w.names {
				out = append(out, Namespace{ID: id, Name: name, Path: w.paths[id]})
			}
			return out, nil
		},
		Dial: func(ns Namespace) (DumpCloser, error) {
			d := &nsDumper{world: w, id: ns.ID, path: ns.Path}
			w.dialed = append(w.dialed, d)
			return d, nil
		},
	}
}

func sockAt(cookie uint64, kstate uint8, port uint16) netlinkdiag.Socket {
	return netlinkdiag.Socket{Family: syscall.AF_INET, State: kstate, Cookie: cookie,
		Src: netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), port), Inode: uint32(cookie)}
}

func byName(s *Snapshot) map[string]Counts {
	out := map[string]Counts{}
	for _, ns := range s.Namespaces {
		out[ns.Name] = ns.Sockets
	}
	return out
}

func TestDiscoveringPoller(t *testing.T) {
	w := &world{
		names: map[uint64]string{1: "host", 2: "web"},
		paths: map[uint64]string{1: "/proc/1/ns/net", 2: "/run/netns/web"},
		sockets: map[uint64][]netlinkdiag.Socket{
			1: {sockAt(10, netlinkdiag.StateListen, 22)},
			2: {sockAt(20, netlinkdiag.StateListen, 80), sockAt(21, netlinkdiag.StateCloseWait, 80)},
		},
	}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	p := NewDiscoveringPoller(w.discovery(), Config{MaxTracked: 100, PortTop: 10, Now: clock.Now,
		AttributionStates: []State{CloseWait}})
	poll := func() *Snapshot {
		t.Helper()
		clock.now = clock.now.Add(time.Second)
		if err := p.Poll(context.Background()); err != nil {
			t.Fatal(err)
		}
		return p.Snapshot()
	}
	s := poll()
	var host, web Counts
	host[IPv4][Listen] = 1
	web[IPv4][Listen] = 1
	web[IPv4][CloseWait] = 1
	if d := cmp.Diff(map[string]Counts{"host": host, "web": web}, byName(s)); d != "" {
		t.Errorf("per namespace (-want +got)\n%s", d)
	}
	if s.Sockets[IPv4][Listen] != 2 || s.Tracked != 3 {
		t.Errorf("totals: %d LISTEN, %d tracked; want 2 and 3", s.Sockets[IPv4][Listen], s.Tracked)
	}
	if got := p.AttributionInodes(nil); !cmp.Equal(got, []InodeState{{21, CloseWait}}) {
		t.Errorf("attribution inodes = %v", got)
	}

	// A namespace appears, one vanishes: no error, its dumper is closed,
	// its series go.
	w.names[3], w.paths[3] = "db", "/proc/77/ns/net"
	w.sockets[3] = []netlinkdiag.Socket{sockAt(30, netlinkdiag.StateEstablished, 5432)}
	delete(w.names, 2)
	delete(w.sockets, 2)
	s = poll()
	if _, ok := byName(s)["web"]; ok {
		t.Error("the vanished namespace is still published")
	}
	if _, ok := byName(s)["db"]; !ok {
		t.Error("the new namespace is not published")
	}
	if s.Errors != [NumReasons]uint64{} {
		t.Errorf("errors %v, want none", s.Errors)
	}
	for _, d := range w.dialed {
		if d.id == 2 && !d.closed {
			t.Error("the vanished namespace's dumper was not closed")
		}
	}

	// Vanishing between discovery and dump is no error either.
	w.sockets[1] = nil
	delete(w.sockets, 1)
	s = poll()
	if s.Errors != [NumReasons]uint64{} {
		t.Errorf("errors %v after a namespace vanished mid-poll, want none", s.Errors)
	}
	if _, ok := byName(s)["host"]; ok {
		t.Error("a namespace that vanished mid-poll is still published")
	}
	p.Close()
	for _, d := range w.dialed {
		if !d.closed {
			t.Errorf("dumper of namespace %d left open after Close", d.id)
		}
	}
}

func TestDiscoveringPollerFollowsNewPath(t *testing.T) {
	w := &world{
		names:   map[uint64]string{7: "app"},
		paths:   map[uint64]string{7: "/proc/100/ns/net"},
		sockets: map[uint64][]netlinkdiag.Socket{7: {sockAt(1, netlinkdiag.StateEstablished, 4000)}},
	}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	p := NewDiscoveringPoller(w.discovery(), Config{MaxTracked: 100, Now: clock.Now})
	for i, path := range []string{"/proc/100/ns/net", "/proc/100/ns/net", "/proc/200/ns/net", "/proc/200/ns/net"} {
		w.paths[7] = path
		clock.now = clock.now.Add(time.Second)
		if err := p.Poll(context.Background()); err != nil {
			t.Fatalf("poll %d: %v", i, err)
		}
	}
	// The process we entered by went; the namespace stayed. The tracker
	// must have carried on: the socket is 3 s old, not new.
	s := p.Snapshot()
	if got := s.Namespaces[0].Oldest[Established]; got != 3*time.Second {
		t.Errorf("oldest ESTABLISHED = %v, want 3s (tracking kept across the reopen)", got)
	}
	if len(w.dialed) != 2 || !w.dialed[0].closed || w.dialed[1].path != "/proc/200/ns/net" {
		t.Errorf("dialed %d times; want the old path closed and the new one open", len(w.dialed))
	}
}

func TestDiscoveringPollerSharesTheTrackingBudget(t *testing.T) {
	w := &world{
		names: map[uint64]string{1: "a", 2: "b"},
		paths: map[uint64]string{1: "/a", 2: "/b"},
		sockets: map[uint64][]netlinkdiag.Socket{
			1: {sockAt(1, netlinkdiag.StateEstablished, 1), sockAt(2, netlinkdiag.StateEstablished, 1)},
			2: {sockAt(3, netlinkdiag.StateEstablished, 1), sockAt(4, netlinkdiag.StateEstablished, 1)},
		},
	}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	p := NewDiscoveringPoller(w.discovery(), Config{MaxTracked: 3, Now: clock.Now})
	for range 2 {
		clock.now = clock.now.Add(time.Second)
		if err := p.Poll(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	s := p.Snapshot()
	if s.Tracked != 3 || s.Untracked != 1 {
		t.Errorf("tracked %d untracked %d over two namespaces with a bound of 3; want 3 and 1", s.Tracked, s.Untracked)
	}
}

func TestPortBreakdown(t *testing.T) {
	listener := func(cookie uint64, port uint16, queue, limit uint32) netlinkdiag.Socket {
		s := sockAt(cookie, netlinkdiag.StateListen, port)
		s.RQueue, s.WQueue = queue, limit
		return s
	}
	socks := []netlinkdiag.Socket{
		// Connections may come before their listener in a dump.
		sockAt(1, netlinkdiag.StateCloseWait, 8080),
		sockAt(2, netlinkdiag.StateCloseWait, 8080),
		listener(3, 8080, 2, 128),
		listener(4, 8080, 1, 128), // a second listener on the port (IPv6 or SO_REUSEPORT)
		listener(5, 22, 0, 64),
		sockAt(6, netlinkdiag.StateEstablished, 22),
		listener(7, 9000, 0, 16),
		sockAt(8, netlinkdiag.StateFinWait2, 40001), // a client: no listener on its port
		sockAt(9, netlinkdiag.StateEstablished, 40002),
	}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	p := NewPoller(&fakeDumper{clock: clock, steps: []step{{socks: socks}}}, Config{MaxTracked: 100, PortTop: 2, Now: clock.Now})
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := p.Snapshot().Ports
	row := func(k PortKind, port uint16, q, l int, st map[State]int) PortCount {
		r := PortCount{Kind: k, Port: port, Queue: q, Limit: l}
		for s, n := range st {
			r.Sockets[s] = n
		}
		return r
	}
	want := PortBreakdown{Folded: 1, Rows: []PortCount{
		row(PortListening, 8080, 3, 256, map[State]int{Listen: 2, CloseWait: 2}),
		row(PortListening, 22, 0, 64, map[State]int{Listen: 1, Established: 1}),
		row(PortNone, 0, 0, 0, map[State]int{FinWait2: 1, Established: 1}),
		row(PortOther, 0, 0, 16, map[State]int{Listen: 1}),
	}}
	sortRows := cmp.Transformer("byKind", func(rows []PortCount) map[string]PortCount {
		m := map[string]PortCount{}
		for _, r := range rows {
			m[fmt.Sprint(r.Kind, r.Port)] = r
		}
		return m
	})
	if d := cmp.Diff(want, got, sortRows); d != "" {
		t.Errorf("port breakdown (-want +got)\n%s", d)
	}
	if got.Rows[0].Port != 8080 || got.Rows[1].Port != 22 {
		t.Errorf("listening rows not ranked by socket count: %v", got.Rows[:2])
	}
}

// TestDiscoveringPollerKeepsUnsupportedNamespace: a namespace whose kernel
// answers ENOENT has no TCP diag handler; it has not vanished. It is kept,
// and every failed poll of it is counted and returned, not dropped in
// silence.
func TestDiscoveringPollerKeepsUnsupportedNamespace(t *testing.T) {
	w := &world{
		names: map[uint64]string{1: "a", 2: "b"},
		paths: map[uint64]string{1: "/a", 2: "/b"},
		sockets: map[uint64][]netlinkdiag.Socket{
			1: {sockAt(1, netlinkdiag.StateEstablished, 1)},
			2: {sockAt(2, netlinkdiag.StateEstablished, 1)},
		},
		fails: map[uint64]error{2: fmt.Errorf("netlinkdiag: kernel answered the dump with NLMSG_ERROR ENOENT: %w", netlinkdiag.ErrUnsupported)},
	}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	p := NewDiscoveringPoller(w.discovery(), Config{MaxTracked: 10, Now: clock.Now})
	for i := range 3 {
		clock.now = clock.now.Add(time.Second)
		if err := p.Poll(context.Background()); !errors.Is(err, netlinkdiag.ErrUnsupported) {
			t.Fatalf("poll %d: err = %v, want the namespace's ErrUnsupported", i, err)
		}
	}
	s := p.Snapshot()
	if s.Errors[ReasonUnsupported] != 3 || s.Errors[ReasonNamespace] != 0 {
		t.Errorf("errors %v, want 3 unsupported and no namespace errors", s.Errors)
	}
	for _, d := range w.dialed {
		if d.closed {
			t.Errorf("namespace %d was dropped", d.id)
		}
	}
	if len(w.dialed) != 2 {
		t.Errorf("%d namespaces opened, want 2, each once", len(w.dialed))
	}
	delete(w.fails, 2) // the module is loaded
	clock.now = clock.now.Add(time.Second)
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s := p.Snapshot(); len(s.Namespaces) != 2 || s.Sockets[IPv4][Established] != 2 {
		t.Errorf("after the handler appeared: %d namespaces, %d ESTABLISHED; want 2 and 2", len(s.Namespaces), s.Sockets[IPv4][Established])
	}
}

// TestReconcileSpreadsDumps: in precise mode with every namespace
// observed, each namespace is dumped once per interval, a share at each
// tick rather than all at once; a new namespace is dumped as soon as it
// is found, a vanished one dropped; namespaces are listed once per
// interval, or sooner when events come from one not observed.
func TestReconcileSpreadsDumps(t *testing.T) {
	w := &world{names: map[uint64]string{}, paths: map[uint64]string{}, sockets: map[uint64][]netlinkdiag.Socket{}, dumps: map[uint64]int{}}
	for id := uint64(1); id <= 6; id++ {
		w.names[id], w.paths[id], w.sockets[id] = fmt.Sprint("ns", id), fmt.Sprint("/ns", id), []netlinkdiag.Socket{sockAt(id, netlinkdiag.StateEstablished, 80)}
	}
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	const tick = time.Second
	p := NewDiscoveringPoller(w.discovery(), Config{Interval: 3 * time.Second, MaxTracked: 100, Now: clock.Now})
	ctx := context.Background()
	if err := p.Poll(ctx); err != nil { // start-up: every namespace at once
		t.Fatal(err)
	}
	step := func() map[uint64]int {
		clear(w.dumps)
		clock.now = clock.now.Add(tick)
		if err := p.Reconcile(ctx, tick); err != nil {
			t.Fatal(err)
		}
		return maps.Clone(w.dumps)
	}
	ticks := map[uint64][]int{} // the ticks each namespace was dumped at
	for i := 1; i <= 9; i++ {
		got := step()
		n := 0
		for id, c := range got {
			ticks[id] = append(ticks[id], i)
			n += c
		}
		// None is due before the third tick; then two at each.
		if want := map[bool]int{true: 0, false: 2}[i < 3]; n != want {
			t.Errorf("tick %d: %d dumps %v, want %d", i, n, got, want)
		}
	}
	for id := uint64(1); id <= 6; id++ {
		got := ticks[id]
		if len(got) < 2 {
			t.Errorf("namespace %d dumped at ticks %v, want every 3", id, got)
		}
		for i := 1; i < len(got); i++ {
			if got[i]-got[i-1] != 3 {
				t.Errorf("namespace %d dumped at ticks %v, want every 3", id, got)
			}
		}
	}
	if w.listed != 4 {
		t.Errorf("namespaces listed %d times, want 4 (start-up, then every 3 s)", w.listed)
	}
	if got := byName(p.Snapshot()); len(got) != 6 || got["ns1"][IPv4][Established] != 1 {
		t.Errorf("per-namespace counts %v", got)
	}

	// A namespace appears, and events from it come before it is found:
	// at most rediscoverAfter later it is listed, and dumped at once.
	w.names[7], w.paths[7], w.sockets[7] = "ns7", "/ns7", []netlinkdiag.Socket{sockAt(70, netlinkdiag.StateListen, 80)}
	delete(w.names, 3)
	delete(w.sockets, 3)
	p.ApplyEvents([]KernelTransition{{At: clock.now.UnixNano(), Cookie: 71, Netns: 7, Family: syscall.AF_INET, Old: netlinkdiag.StateClose, New: netlinkdiag.StateSynSent}})
	listed := w.listed
	var found int
	for i := range 6 {
		if step()[7] > 0 {
			found = i + 1
			break
		}
	}
	if found == 0 || w.listed != listed+1 {
		t.Fatalf("namespace 7 not dumped within 6 s of its first event (listed %d more times)", w.listed-listed)
	}
	got := byName(p.Snapshot())
	if _, ok := got["ns3"]; ok || got["ns7"][IPv4][Listen] != 1 {
		t.Errorf("after ns3 vanished and ns7 appeared: %v", got)
	}
}
