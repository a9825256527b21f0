//go:build linux

package procscan

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/sys/unix"
)

// fakeOwnersProc builds a /proc with processes whose PIDs sort differently
// as text and as numbers.
func fakeOwnersProc(t *testing.T) *tree {
	tr := newTree(t)
	tr.file("9/comm", "\xffbad\n")
	tr.link("9/fd/0", "socket:[900]")

	tr.file("10/comm", "init\n")
	tr.link("10/fd/0", "socket:[100]")
	tr.link("10/fd/1", "/dev/null")
	tr.link("10/fd/2", "pipe:[5]")

	tr.file("20/comm", "web server\n")
	tr.link("20/fd/3", "socket:[200]")
	tr.link("20/fd/4", "socket:[300]")
	tr.link("20/fd/5", "socket:[300]") // dup'ed

	tr.file("30/comm", "child\n")
	tr.link("30/fd/3", "socket:[300]") // inherited from 20: 20 owns it
	tr.link("30/fd/5", "socket:[400]")
	tr.link("30/fd/6", "socket:[4294967296]")
	tr.file("30/fd/7", "not a link")

	tr.file("40/comm", "no fds\n") // no fd/: counted, nothing read

	tr.link("50/fd/0", "socket:[500]") // no comm: it exited under us

	tr.file("100/comm", "late\n")
	tr.link("100/fd/0", "socket:[300]") // "100" < "20" as text, not as a PID

	tr.file("self/comm", "self\n") // not a PID directory
	tr.link("self/fd/0", "socket:[999]")
	tr.file("uptime", "1.0 1.0\n")
	return tr
}

func wantSet(inodes ...uint32) map[uint32]struct{} {
	m := map[uint32]struct{}{}
	for _, i := range inodes {
		m[i] = struct{}{}
	}
	return m
}

func TestOwnersFakeProc(t *testing.T) {
	tr := fakeOwnersProc(t)
	into := map[uint32]Owner{12345: {PID: 1, Comm: "stale"}}
	st, err := Owners(tr.root, wantSet(100, 200, 300, 400, 500, 900, 999), into)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32]Owner{
		100: {PID: 10, Comm: "init"},
		200: {PID: 20, Comm: "web server"},
		300: {PID: 20, Comm: "web server"},
		400: {PID: 30, Comm: "child"},
		900: {PID: 9, Comm: "\uFFFDbad"},
	}
	// 300 is at two of 20's fds: which is found first is the directory's
	// order. TestRecheck checks the fds.
	if d := cmp.Diff(want, into, ignoreFD); d != "" {
		t.Errorf("owners (-want +got)\n%s", d)
	}
	// 999 is held by nobody, so the walk goes through every process.
	wantStats := ScanStats{Processes: 7, FDs: 1 + 3 + 3 + 4 + 0 + 1 + 1}
	if d := cmp.Diff(wantStats, st); d != "" {
		t.Errorf("stats (-want +got)\n%s", d)
	}
}

func TestOwnersStopsEarly(t *testing.T) {
	tr := fakeOwnersProc(t)
	into := map[uint32]Owner{}
	st, err := Owners(tr.root, wantSet(100), into)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[uint32]Owner{100: {PID: 10, Comm: "init", FD: 0}}, into); d != "" {
		t.Errorf("owners (-want +got)\n%s", d)
	}
	// PIDs 9 and 10, in numeric order, and not 10's fds after the one.
	if st.Processes != 2 || st.FDs < 2 || st.FDs > 4 {
		t.Errorf("stats %+v, want 2 processes and 2 to 4 fds", st)
	}
}

// ignoreFD compares owners by process alone.
var ignoreFD = cmpopts.IgnoreFields(Owner{}, "FD")

func TestRecheck(t *testing.T) {
	tr := fakeOwnersProc(t)
	owners := map[uint32]Owner{}
	if _, err := Owners(tr.root, wantSet(100, 200, 300, 400, 900), owners); err != nil {
		t.Fatal(err)
	}
	// What a walk found still holds: nothing is dropped.
	kept := maps.Clone(owners)
	if n, err := Recheck(tr.root, kept); err != nil || n != 0 {
		t.Fatalf("Recheck right after the walk = %d, %v; want 0, nil", n, err)
	}
	if d := cmp.Diff(owners, kept); d != "" {
		t.Errorf("owners (-want +got)\n%s", d)
	}

	// 10 exits; 20 reuses the fd 200 was at for another socket; 30
	// exec's something else; 9 is as it was.
	if err := os.RemoveAll(tr.path("10")); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(tr.path("20/fd/3")); err != nil {
		t.Fatal(err)
	}
	tr.link("20/fd/3", "socket:[201]")
	tr.file("30/comm", "other\n")
	n, err := Recheck(tr.root, kept)
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint32]Owner{300: owners[300], 900: owners[900]}
	if d := cmp.Diff(want, kept); d != "" || n != 3 {
		t.Errorf("Recheck dropped %d, want 3; owners (-want +got)\n%s", n, d)
	}

	if n, err := Recheck(filepath.Join(t.TempDir(), "missing"), map[uint32]Owner{1: {PID: 1}}); !errors.Is(err, os.ErrNotExist) || n != 0 {
		t.Errorf("Recheck(missing root) = %d, %v; want 0 and an error wrapping os.ErrNotExist", n, err)
	}
}

func TestOwnersNothingWanted(t *testing.T) {
	into := map[uint32]Owner{1: {PID: 1}}
	st, err := Owners(filepath.Join(t.TempDir(), "missing"), nil, into)
	if err != nil || st != (ScanStats{}) || len(into) != 0 {
		t.Errorf("Owners with nothing wanted = %+v, %v and into %v; want no walk, no error, into cleared", st, err, into)
	}
}

func TestOwnersMissingProcRoot(t *testing.T) {
	_, err := Owners(filepath.Join(t.TempDir(), "missing"), wantSet(1), map[uint32]Owner{})
	if !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Owners(missing root) = %v, want an error wrapping os.ErrNotExist", err)
	}
}

// TestOwnersAllocs pins allocations to a constant: none per process and
// none per fd.
func TestOwnersAllocs(t *testing.T) {
	tr := newTree(t)
	for pid := 1; pid <= 200; pid++ {
		tr.file(fmt.Sprintf("%d/comm", pid), "p\n")
		for fd := range 20 {
			tr.link(fmt.Sprintf("%d/fd/%d", pid, fd), fmt.Sprintf("socket:[%d]", pid*100+fd))
		}
	}
	want := wantSet(200*100+19, 1) // the last fd of the last process, and one nobody holds
	into := map[uint32]Owner{}
	var st ScanStats
	allocs := testing.AllocsPerRun(10, func() {
		var err error
		if st, err = Owners(tr.root, want, into); err != nil {
			t.Fatal(err)
		}
	})
	if st.Processes != 200 || st.FDs != 4000 || len(into) != 1 {
		t.Fatalf("walk saw %+v and found %v; want 200 processes, 4000 fds, 1 owner", st, into)
	}
	t.Logf("%v allocations per walk", allocs)
	// The walk's buffers, the PID list's growth, one comm string.
	if allocs > 20 {
		t.Errorf("Owners over 200 processes and 4000 fds made %v allocations, want at most 20", allocs)
	}
}

// openSockets opens n TCP sockets and returns their fds and inodes.
func openSockets(t testing.TB, n int) (fds []int, inodes []uint32) {
	t.Helper()
	t.Cleanup(func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	})
	for range n {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("socket: %v", err)
		}
		fds = append(fds, fd)
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		inodes = append(inodes, uint32(st.Ino))
	}
	return fds, inodes
}

func selfComm(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(string(b), "\n")
}

func TestOwnersSelf(t *testing.T) {
	_, inodes := openSockets(t, 3)
	var pair [2]int
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(pair[0]); unix.Close(pair[1]) })
	for _, fd := range pair {
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			t.Fatal(err)
		}
		inodes = append(inodes, uint32(st.Ino))
	}

	into := map[uint32]Owner{}
	st, err := Owners("/proc", wantSet(inodes...), into)
	if err != nil {
		t.Fatal(err)
	}
	me := Owner{PID: os.Getpid(), Comm: selfComm(t)}
	want := map[uint32]Owner{}
	for _, ino := range inodes {
		want[ino] = me
	}
	if d := cmp.Diff(want, into, ignoreFD); d != "" {
		t.Errorf("owners (-want +got)\n%s", d)
	}
	t.Logf("%+v", st)
}

func TestOwnersChild(t *testing.T) {
	fds, inodes := openSockets(t, 1)
	f := os.NewFile(uintptr(fds[0]), "socket")
	cmd := exec.Command("sleep", "30")
	cmd.ExtraFiles = []*os.File{f} // fd 3 in the child
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot run sleep: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	// Only the child holds it now.
	f.Close()
	fds[0] = -1

	// The child is sleep once it has exec'd; until then it is a copy of us.
	want := map[uint32]Owner{inodes[0]: {PID: cmd.Process.Pid, Comm: "sleep", FD: 3}}
	into := map[uint32]Owner{}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := Owners("/proc", wantSet(inodes...), into); err != nil {
			t.Fatal(err)
		}
		d := cmp.Diff(want, into)
		if d == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("owners (-want +got)\n%s", d)
		}
	}
}
