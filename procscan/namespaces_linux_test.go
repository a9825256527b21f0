//go:build linux

package procscan

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// fakeHost is a fake /proc and /run/netns whose namespaces are plain files
// under nsfs/: a process's ns/net and a /run/netns entry link to one.
type fakeHost struct {
	*tree
	proc, run string
}

func newFakeHost(t *testing.T) *fakeHost {
	tr := newTree(t)
	tr.dir("proc")
	tr.dir("run")
	return &fakeHost{tree: tr, proc: tr.path("proc"), run: tr.path("run")}
}

// namespace creates the namespace file ns and returns its inode.
func (h *fakeHost) namespace(ns string) uint64 {
	h.t.Helper()
	h.file("nsfs/"+ns, "")
	return h.ino("nsfs/" + ns)
}

// process adds a process in namespace ns with the given command name and
// start time.
func (h *fakeHost) process(pid int, ns, comm string, start uint64) {
	h.t.Helper()
	p := "proc/" + strconv.Itoa(pid)
	h.link(p+"/ns/net", h.path("nsfs", ns))
	h.file(p+"/stat", statLine(pid, comm, start))
}

// name gives namespace ns the /run/netns name.
func (h *fakeHost) name(name, ns string) {
	h.t.Helper()
	h.link("run/"+name, h.path("nsfs", ns))
}

func (h *fakeHost) procPath(pid int) string {
	return filepath.Join(h.proc, strconv.Itoa(pid), "ns", "net")
}

func (h *fakeHost) discover(t *testing.T, d *Discoverer) []Namespace {
	t.Helper()
	got, err := d.Discover()
	if err != nil {
		t.Fatal(err)
	}
	return got
}

func TestDiscoverFake(t *testing.T) {
	h := newFakeHost(t)
	a, b, c, e := h.namespace("A"), h.namespace("B"), h.namespace("C"), h.namespace("E")
	dns := h.namespace("D")
	h.namespace("H")
	dev := mustStat(t, h.path("nsfs/A")).dev

	// A: a tie on start time goes to the lower PID.
	h.process(1, "A", "systemd", 10)
	h.process(2, "A", "kthreadd", 10)
	h.process(300, "A", "bash", 500)
	// B: the oldest process has a name that fools a naive parser.
	h.process(100, "B", "worker", 900)
	h.process(150, "B", "tricky) 1 (x", 800)
	// C: a /run/netns name wins over its process.
	h.process(200, "C", "sleep", 1)
	h.name("blue", "C")
	// D: named, no process in it.
	h.name("green", "D")
	// E: bind-mounted twice: the first name wins.
	h.name("zeta", "E")
	h.name("beta", "E")
	// Not namespaces: a file on another device, a dangling link.
	h.link("run/stale", "/dev/null")
	h.link("run/dangling", h.path("nsfs/gone"))
	// Processes that exited: no ns/ at all; ns/ but no stat (H cannot be
	// named, so it is left out).
	h.file("proc/400/stat", statLine(400, "zombie", 3))
	h.link("proc/500/ns/net", h.path("nsfs/H"))
	// Not processes.
	h.link("proc/self/ns/net", h.path("nsfs/A"))
	h.file("proc/uptime", "1.0 1.0\n")

	d := NewDiscoverer(h.proc, h.run)
	got := h.discover(t, d)
	want := []Namespace{
		{Inode: e, Dev: dev, Name: "beta", Path: filepath.Join(h.run, "beta")},
		{Inode: c, Dev: dev, Name: "blue", Path: filepath.Join(h.run, "blue")},
		{Inode: dns, Dev: dev, Name: "green", Path: filepath.Join(h.run, "green")},
		{Inode: a, Dev: dev, Name: fmt.Sprintf("systemd:%d", a), Path: h.procPath(1)},
		{Inode: b, Dev: dev, Name: fmt.Sprintf("tricky) 1 (x:%d", b), Path: h.procPath(100)},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("first Discover (-want +got)\n%s", d)
	}
	// Every process in A, B and H; none in C, which has a name.
	if d := cmp.Diff(DiscoverStats{Processes: 8, StatReads: 6}, d.Stats()); d != "" {
		t.Errorf("first stats (-want +got)\n%s", d)
	}

	// Names hold while their namespaces live, whoever exits.
	h.remove("proc/1")   // A's oldest
	h.remove("proc/100") // B's lowest PID, through which it was opened
	h.remove("run/blue") // C loses its name: it gets one from its process
	h.remove("proc/500") // H is gone
	h.process(1000, "B", "ancient", 0)
	got = h.discover(t, d)
	want = []Namespace{
		{Inode: e, Dev: dev, Name: "beta", Path: filepath.Join(h.run, "beta")},
		{Inode: dns, Dev: dev, Name: "green", Path: filepath.Join(h.run, "green")},
		{Inode: c, Dev: dev, Name: fmt.Sprintf("sleep:%d", c), Path: h.procPath(200)},
		{Inode: a, Dev: dev, Name: fmt.Sprintf("systemd:%d", a), Path: h.procPath(2)},
		{Inode: b, Dev: dev, Name: fmt.Sprintf("tricky) 1 (x:%d", b), Path: h.procPath(150)},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("second Discover (-want +got)\n%s", d)
	}
	if d := cmp.Diff(DiscoverStats{Processes: 6, StatReads: 1}, d.Stats()); d != "" {
		t.Errorf("second stats (-want +got)\n%s", d)
	}

	// A namespace no longer discovered is forgotten: when seen again, it is
	// named afresh.
	h.remove("proc/150")
	h.remove("proc/1000")
	got = h.discover(t, d)
	if len(got) != 4 {
		t.Fatalf("third Discover found %d namespaces, want 4 (B gone):\n%+v", len(got), got)
	}
	h.process(160, "B", "reborn", 5000)
	got = h.discover(t, d)
	wantB := Namespace{Inode: b, Dev: dev, Name: fmt.Sprintf("reborn:%d", b), Path: h.procPath(160)}
	if len(got) != 5 || cmp.Diff(wantB, got[2]) != "" {
		t.Fatalf("fourth Discover = %+v, want B back as %+v", got, wantB)
	}
}

func mustStat(t *testing.T, p string) fileID {
	t.Helper()
	id, err := statPath(p)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestDiscoverNoRunNetns(t *testing.T) {
	h := newFakeHost(t)
	a := h.namespace("A")
	h.process(7, "A", "init", 1)
	got := h.discover(t, NewDiscoverer(h.proc, filepath.Join(h.root, "missing")))
	want := []Namespace{{Inode: a, Dev: mustStat(t, h.path("nsfs/A")).dev, Name: fmt.Sprintf("init:%d", a), Path: h.procPath(7)}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
}

func TestDiscoverMissingProcRoot(t *testing.T) {
	h := newFakeHost(t)
	_, err := NewDiscoverer(filepath.Join(h.root, "missing"), h.run).Discover()
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Discover(missing procRoot) = %v, want an error wrapping os.ErrNotExist", err)
	}
}

// TestDiscoverAllocs pins the allocations of a Discover that finds nothing
// new to a constant: none per process.
func TestDiscoverAllocs(t *testing.T) {
	h := newFakeHost(t)
	h.namespace("A")
	h.namespace("B")
	h.name("named", "B")
	for pid := 1; pid <= 500; pid++ {
		h.process(pid, []string{"A", "B"}[pid%2], "p", uint64(pid))
	}
	d := NewDiscoverer(h.proc, h.run)
	h.discover(t, d)
	allocs := testing.AllocsPerRun(10, func() {
		if _, err := d.Discover(); err != nil {
			t.Fatal(err)
		}
	})
	if st := d.Stats(); st.Processes != 500 || st.StatReads != 0 {
		t.Fatalf("stats %+v, want 500 processes and no stat read", st)
	}
	t.Logf("%v allocations per call", allocs)
	// Opening the two roots, the result slice.
	if allocs > 5 {
		t.Errorf("Discover over 500 processes made %v allocations, want at most 5", allocs)
	}
}
