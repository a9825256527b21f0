//go:build linux

package procscan

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
)

// startInNewNetns runs `unshare -n sleep 30`: unshare execs sleep in a
// network namespace of its own, which has no /run/netns name. It returns
// the process once it is sleep, and its namespace's inode.
func startInNewNetns(t *testing.T) (*exec.Cmd, uint64) {
	t.Helper()
	self := mustStat(t, "/proc/self/ns/net")
	cmd := exec.Command("unshare", "-n", "sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatalf("unshare -n sleep: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	dir := filepath.Join("/proc", strconv.Itoa(cmd.Process.Pid))
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		id, err := statPath(filepath.Join(dir, "ns", "net"))
		if err == nil && id != self && string(comm) == "sleep\n" {
			return cmd, id.ino
		}
	}
	t.Fatal("unshare -n sleep did not become sleep in a namespace of its own")
	return nil, 0
}

// byInode indexes namespaces by inode.
func byInode(nss []Namespace) map[uint64]Namespace {
	m := map[uint64]Namespace{}
	for _, ns := range nss {
		m[ns.Inode] = ns
	}
	return m
}

func TestIntegrationDiscover(t *testing.T) {
	netnstest.RequireRoot(t)
	name1, path1 := netnstest.New(t)
	name2, path2 := netnstest.New(t)
	name3, path3 := netnstest.New(t)
	ino1, ino2, ino3 := mustStat(t, path1).ino, mustStat(t, path2).ino, mustStat(t, path3).ino
	self := mustStat(t, "/proc/self/ns/net")

	// A process in name1: found both ways, listed once, by its name.
	inNS1 := exec.Command("ip", "netns", "exec", name1, "sleep", "30")
	if err := inNS1.Start(); err != nil {
		t.Fatalf("ip netns exec: %v", err)
	}
	t.Cleanup(func() {
		inNS1.Process.Kill()
		inNS1.Wait()
	})
	unnamed, ino4 := startInNewNetns(t)

	d := NewDiscoverer("/proc", "/run/netns")
	nss, err := d.Discover()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats %+v; %d namespaces", d.Stats(), len(nss))
	got := byInode(nss)
	if len(got) != len(nss) {
		t.Errorf("a namespace is listed twice: %+v", nss)
	}
	want := map[uint64]Namespace{
		ino1: {Inode: ino1, Dev: self.dev, Name: name1, Path: path1},
		ino2: {Inode: ino2, Dev: self.dev, Name: name2, Path: path2},
		ino3: {Inode: ino3, Dev: self.dev, Name: name3, Path: path3},
		ino4: {Inode: ino4, Dev: self.dev, Name: fmt.Sprintf("sleep:%d", ino4),
			Path: fmt.Sprintf("/proc/%d/ns/net", unnamed.Process.Pid)},
	}
	for ino, w := range want {
		if d := cmp.Diff(w, got[ino]); d != "" {
			t.Errorf("namespace %d (-want +got)\n%s", ino, d)
		}
	}
	mine, ok := got[self.ino]
	if !ok || !strings.HasSuffix(mine.Name, fmt.Sprintf(":%d", self.ino)) {
		t.Errorf("our own namespace %d: got %+v, want it named <comm>:%d", self.ino, mine, self.ino)
	}
	for i := 1; i < len(nss); i++ {
		if nss[i-1].Name >= nss[i].Name {
			t.Errorf("not sorted by name: %q before %q", nss[i-1].Name, nss[i].Name)
		}
	}

	// A deleted name with nothing in it is gone; the rest keep their names.
	if err := netnstest.Delete(name3); err != nil {
		t.Fatal(err)
	}
	nss2, err := d.Discover()
	if err != nil {
		t.Fatal(err)
	}
	got2 := byInode(nss2)
	if ns, ok := got2[ino3]; ok {
		t.Errorf("namespace %s still discovered after its deletion: %+v", name3, ns)
	}
	delete(want, ino3)
	want[self.ino] = mine
	for ino, w := range want {
		if d := cmp.Diff(w, got2[ino]); d != "" {
			t.Errorf("second Discover, namespace %d (-want +got)\n%s", ino, d)
		}
	}
	if st := d.Stats(); st.StatReads != 0 {
		t.Logf("second Discover read %d stat files (namespaces new since the first)", st.StatReads)
	}

	// When its only process exits, the unnamed namespace goes too.
	unnamed.Process.Kill()
	unnamed.Wait()
	nss3, err := d.Discover()
	if err != nil {
		t.Fatal(err)
	}
	if ns, ok := byInode(nss3)[ino4]; ok {
		t.Errorf("namespace of an exited process still discovered: %+v", ns)
	}
}

// unprivilegedEnv marks the copy of the test binary that runs as nobody.
const unprivilegedEnv = "PROCSCAN_TEST_UNPRIVILEGED"

// TestIntegrationUnprivileged runs TestUnprivilegedChild as nobody: what it
// may not see must be counted as denied, not fail the walk.
func TestIntegrationUnprivileged(t *testing.T) {
	netnstest.RequireRoot(t)
	// nobody cannot reach the test binary where go test builds it.
	dir, err := os.MkdirTemp("", "procscan-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "procscan.test")
	if err := copyFile(exe, "/proc/self/exe"); err != nil {
		t.Fatal(err)
	}
	// Something nobody may not look into, whatever else runs here.
	root := exec.Command("sleep", "30")
	if err := root.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		root.Process.Kill()
		root.Wait()
	})

	cmd := exec.Command(exe, "-test.run=^TestUnprivilegedChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), unprivilegedEnv+"=1")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	t.Logf("as nobody:\n%s", out)
	if err != nil {
		t.Fatalf("TestUnprivilegedChild as nobody: %v", err)
	}
	if !strings.Contains(string(out), "--- PASS: TestUnprivilegedChild") {
		t.Fatal("TestUnprivilegedChild did not run")
	}
}

func TestUnprivilegedChild(t *testing.T) {
	if os.Getenv(unprivilegedEnv) == "" {
		t.Skip("run by TestIntegrationUnprivileged")
	}
	if os.Geteuid() == 0 {
		t.Fatal("running as root")
	}
	_, inodes := openSockets(t, 2)
	into := map[uint32]Owner{}
	st, err := Owners("/proc", wantSet(inodes...), into)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Owners: %+v", st)
	for _, ino := range inodes {
		if into[ino].PID != os.Getpid() {
			t.Errorf("socket %d: owner %+v, want us (%d)", ino, into[ino], os.Getpid())
		}
	}
	if st.Denied == 0 {
		t.Error("Owners denied nothing, want root's processes denied")
	}

	d := NewDiscoverer("/proc", "/run/netns")
	nss, err := d.Discover()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Discover: %+v; %d namespaces", d.Stats(), len(nss))
	self := mustStat(t, "/proc/self/ns/net")
	if _, ok := byInode(nss)[self.ino]; !ok {
		t.Errorf("our own namespace %d is not among %+v", self.ino, nss)
	}
	if d.Stats().Denied == 0 {
		t.Error("Discover denied nothing, want root's processes denied")
	}
}

func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
