package collector

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// fakeProc builds a /proc-like tree: each process holds the socket inodes
// given for it.
func fakeProc(t *testing.T, procs map[int]struct {
	comm   string
	inodes []uint32
}) string {
	t.Helper()
	root := t.TempDir()
	for pid, p := range procs {
		dir := filepath.Join(root, fmt.Sprint(pid))
		if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "comm"), []byte(p.comm+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		for i, ino := range p.inodes {
			if err := os.Symlink(fmt.Sprintf("socket:[%d]", ino), filepath.Join(dir, "fd", fmt.Sprint(i+3))); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func TestAttribution(t *testing.T) {
	root := fakeProc(t, map[int]struct {
		comm   string
		inodes []uint32
	}{
		100: {"leaky", []uint32{21, 25}},
		200: {"web", []uint32{22, 24}},
		300: {"idle", nil},
	})
	cw := func(cookie uint64, inode uint32) netlinkdiag.Socket {
		s := sockAt(cookie, netlinkdiag.StateCloseWait, 8080)
		s.Inode = inode
		return s
	}
	est := sockAt(24, netlinkdiag.StateEstablished, 8080)
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	d := &fakeDumper{clock: clock, steps: []step{
		{socks: []netlinkdiag.Socket{cw(1, 21), cw(2, 25), cw(3, 22), cw(4, 0), cw(5, 23), est}},
		{socks: []netlinkdiag.Socket{est}},
	}}
	p := NewPoller(d, Config{MaxTracked: 100, AttributionStates: []State{CloseWait}, Now: clock.Now})
	a := NewAttributor(p, AttributionConfig{Top: 1, ProcRoot: root, Now: clock.Now})

	if got := a.Attribute(); len(got.Rows) != 0 {
		t.Errorf("before any poll: rows %v, want none", got.Rows)
	}
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := a.Attribute()
	row := func(k ProcessKind, name string, n int) ProcessCount {
		r := ProcessCount{Kind: k, Process: name}
		r.Sockets[CloseWait] = n
		return r
	}
	want := []ProcessCount{
		row(ProcessNamed, "leaky", 2),
		row(ProcessOther, "", 1),   // web, past the limit of one name
		row(ProcessNone, "", 1),    // inode 0
		row(ProcessUnknown, "", 1), // inode 23: nobody holds it
	}
	if d := cmp.Diff(want, got.Rows); d != "" {
		t.Errorf("rows (-want +got)\n%s", d)
	}
	if got.Folded != 1 {
		t.Errorf("folded %d, want 1", got.Folded)
	}
	if a.Snapshot() != got {
		t.Error("Attribute did not publish its result")
	}

	// The CLOSE_WAIT sockets are gone: nothing to attribute, nothing shown.
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := a.Attribute(); len(got.Rows) != 0 || got.Folded != 0 {
		t.Errorf("after the leak ended: rows %v folded %d, want none", got.Rows, got.Folded)
	}
}

// TestAttributionKeepsOwners checks that a pass walks /proc only when it
// has sockets no earlier pass resolved, and that what it keeps between
// passes follows owners that exit or sockets that leave the states.
func TestAttributionKeepsOwners(t *testing.T) {
	root := fakeProc(t, map[int]struct {
		comm   string
		inodes []uint32
	}{
		100: {"leaky", []uint32{21}},
		200: {"web", []uint32{22}},
		300: {"fork", []uint32{22}}, // shares 22 with web
	})
	cw := func(cookie uint64) netlinkdiag.Socket { return sockAt(cookie, netlinkdiag.StateCloseWait, 8080) }
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	d := &fakeDumper{clock: clock, steps: []step{
		{socks: []netlinkdiag.Socket{cw(21), cw(22), cw(23)}},
		{socks: []netlinkdiag.Socket{cw(21), cw(22), cw(23), cw(24)}},
		{socks: []netlinkdiag.Socket{cw(22), cw(23), cw(24)}},
	}}
	p := NewPoller(d, Config{MaxTracked: 100, AttributionStates: []State{CloseWait}, Now: clock.Now})
	a := NewAttributor(p, AttributionConfig{Top: 10, ProcRoot: root, Now: clock.Now})
	row := func(k ProcessKind, name string, n int) ProcessCount {
		r := ProcessCount{Kind: k, Process: name}
		r.Sockets[CloseWait] = n
		return r
	}
	pass := func(wantWalked bool, want ...ProcessCount) {
		t.Helper()
		got := a.Attribute()
		if got.Walked != wantWalked {
			t.Errorf("walked %t, want %t", got.Walked, wantWalked)
		}
		if d := cmp.Diff(want, got.Rows); d != "" {
			t.Errorf("rows (-want +got)\n%s", d)
		}
	}
	poll := func() {
		t.Helper()
		if err := p.Poll(context.Background()); err != nil {
			t.Fatal(err)
		}
	}

	poll()
	pass(true, row(ProcessNamed, "leaky", 1), row(ProcessNamed, "web", 1), row(ProcessUnknown, "", 1))
	// Nothing new: no walk, the same rows; 23, which nobody holds, is not
	// looked for at every pass.
	pass(false, row(ProcessNamed, "leaky", 1), row(ProcessNamed, "web", 1), row(ProcessUnknown, "", 1))

	// A new socket in CLOSE_WAIT, held by a new process: walked for and
	// found.
	if err := os.MkdirAll(filepath.Join(root, "400", "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "400", "comm"), []byte("worker\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("socket:[24]", filepath.Join(root, "400", "fd", "7")); err != nil {
		t.Fatal(err)
	}
	poll()
	pass(true, row(ProcessNamed, "leaky", 1), row(ProcessNamed, "web", 1), row(ProcessNamed, "worker", 1), row(ProcessUnknown, "", 1))
	pass(false, row(ProcessNamed, "leaky", 1), row(ProcessNamed, "web", 1), row(ProcessNamed, "worker", 1), row(ProcessUnknown, "", 1))

	// 21 left CLOSE_WAIT and web exited, leaving 22 to the process it
	// shared it with: the recheck drops web, a walk finds fork.
	if err := os.RemoveAll(filepath.Join(root, "200")); err != nil {
		t.Fatal(err)
	}
	poll()
	pass(true, row(ProcessNamed, "fork", 1), row(ProcessNamed, "worker", 1), row(ProcessUnknown, "", 1))

	// Someone comes to hold 23: found when the missed sockets are looked
	// for again, missRetry passes after the last walk for them.
	if err := os.Symlink("socket:[23]", filepath.Join(root, "100", "fd", "9")); err != nil {
		t.Fatal(err)
	}
	for range missRetry - 1 {
		pass(false, row(ProcessNamed, "fork", 1), row(ProcessNamed, "worker", 1), row(ProcessUnknown, "", 1))
	}
	pass(true, row(ProcessNamed, "fork", 1), row(ProcessNamed, "leaky", 1), row(ProcessNamed, "worker", 1))
	pass(false, row(ProcessNamed, "fork", 1), row(ProcessNamed, "leaky", 1), row(ProcessNamed, "worker", 1))
}
