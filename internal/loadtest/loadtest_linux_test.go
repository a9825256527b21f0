package loadtest

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/internal/eventlock"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// states dumps the namespace and counts its sockets by kernel state.
func states(t *testing.T, path string) map[uint8]int {
	t.Helper()
	c, err := netlinkdiag.Dial(netlinkdiag.Options{NetNS: path})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := map[uint8]int{}
	if err := c.DumpTCP(context.Background(), netlinkdiag.Request{}, func(s *netlinkdiag.Socket) error {
		got[s.State]++
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestIntegrationChurnLeavesOnlyTimeWait(t *testing.T) {
	eventlock.Churn(t)
	_, path := netnstest.New(t)
	c, err := StartChurn(path, ChurnOptions{Rate: 4000, Workers: 4, GracefulEvery: 10})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	mid := c.Stats()
	st := c.Stop()
	t.Logf("churn: %+v, %.0f connections/s", st, st.Rate())
	if st.Errors != 0 {
		t.Errorf("%d connections failed, first: %v", st.Errors, st.FirstError)
	}
	if st.Connections < mid.Connections || st.Connections == 0 {
		t.Fatalf("connections went from %d to %d", mid.Connections, st.Connections)
	}
	if r := st.Rate(); r > 4000*1.1 {
		t.Errorf("churned %.0f connections/s, above the 4000/s cap", r)
	}
	if want := st.Connections / 10; st.Graceful < want-4 || st.Graceful > want+4 {
		t.Errorf("%d graceful closes in %d connections, want every 10th", st.Graceful, st.Connections)
	}
	got := states(t, path)
	tw := got[netlinkdiag.StateTimeWait]
	delete(got, netlinkdiag.StateTimeWait)
	if len(got) != 0 {
		t.Errorf("after Stop the namespace still holds %v besides %d TIME_WAIT", got, tw)
	}
	if uint64(tw) != st.Graceful {
		t.Errorf("%d TIME_WAIT sockets, want one per graceful close (%d)", tw, st.Graceful)
	}
}

func TestIntegrationPopulation(t *testing.T) {
	_, path := netnstest.New(t)
	p, err := NewPopulation(path, 300)
	if err != nil {
		t.Fatal(err)
	}
	got := states(t, path)
	if got[netlinkdiag.StateEstablished] != 600 || got[netlinkdiag.StateListen] != 2 || p.Sockets() != 602 {
		t.Errorf("population of 300: %v, %d sockets held; want 600 ESTABLISHED and 2 LISTEN", got, p.Sockets())
	}
	p.Close()
	if got := states(t, path); len(got) != 0 {
		t.Errorf("after Close: %v", got)
	}
}

func TestSampleProc(t *testing.T) {
	s, err := SampleProc(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if s.FDs < 3 || s.Threads < 1 || s.RSS < 1<<20 {
		t.Errorf("implausible sample of ourselves: %+v", s)
	}
	tids, err := Threads(os.Getpid())
	if err != nil || len(tids) == 0 {
		t.Fatalf("Threads: %v, %v", tids, err)
	}
	st, err := Status(os.Getpid(), tids[0])
	if err != nil || st["CapEff"] == "" {
		t.Fatalf("Status of thread %d: %v, %v", tids[0], st, err)
	}
}

func TestFDKinds(t *testing.T) {
	// The runtime opens its poller with the first pollable file: before
	// the count, not during it.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	w.Close()
	before, err := FDKinds(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range [][3]int{
		{unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_TCP},
		{unix.AF_INET6, unix.SOCK_STREAM, unix.IPPROTO_TCP},
		{unix.AF_NETLINK, unix.SOCK_RAW, unix.NETLINK_SOCK_DIAG},
	} {
		fd, err := unix.Socket(s[0], s[1]|unix.SOCK_CLOEXEC, s[2])
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
	}
	for _, path := range []string{"/proc/self/stat", "/proc/self/ns/net", "/dev/null"} {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
	}
	r, w, err = os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	after, err := FDKinds(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for k, n := range after {
		if d := n - before[k]; d != 0 {
			got[k] = d
		}
	}
	want := map[string]int{"socket:TCP": 1, "socket:TCPv6": 1, "socket:NETLINK": 1, "/proc": 1, "net": 1, "/dev/null": 1, "pipe": 2}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("descriptors opened, by kind (-want +got)\n%s", d)
	}
}
