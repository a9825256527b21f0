package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/internal/eventlock"
	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/internal/statezoo"
)

// holderNamed returns a copy of the sockholder program named name, so the
// processes it runs have that comm.
func holderNamed(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(exportertest.Build(t, "sockholder", nil, "build", "./internal/sockholder"))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

// holder runs a sockholder copy named name inside the namespace.
func holder(t *testing.T, ns, name string, args ...string) *child {
	t.Helper()
	return startChild(t, name, nil, netnstest.Exec(ns, append([]string{holderNamed(t, name)}, args...)...)...)
}

// serveLeak starts a server named name that accepts n connections and never
// closes them, and a client that connects n times and closes at once: the
// server is left with n CLOSE_WAIT sockets. It returns the server's port.
func serveLeak(t *testing.T, ns, name string, n int) string {
	t.Helper()
	srv := holder(t, ns, name, "serve", "-accept", fmt.Sprint(n))
	port := srv.await(t, "ready ")
	holder(t, ns, "tidy-client", "dial", "-port", port, "-n", fmt.Sprint(n), "-close").await(t, "ready ")
	srv.await(t, "accepted ")
	return port
}

// series returns the label value of label for every series of metric name
// whose labels include all of match, with its value.
func series(m exportertest.Metrics, name, label string, match ...string) map[string]float64 {
	out := map[string]float64{}
	f := m[name]
	if f == nil {
		return out
	}
	for _, x := range f.GetMetric() {
		var key string
		matched := 0
		for _, lp := range x.GetLabel() {
			if lp.GetName() == label {
				key = lp.GetValue()
			}
			for _, want := range match {
				if want == lp.GetName()+"="+lp.GetValue() {
					matched++
				}
			}
		}
		if matched == len(match) {
			out[key] = x.GetGauge().GetValue()
		}
	}
	return out
}

func TestIntegrationAttributionNamesTheLeaker(t *testing.T) {
	const leaks = 5
	name, _ := netnstest.New(t)
	port := serveLeak(t, name, "leaky-svc", leaks)

	p := exportertest.Start(t, "--netns="+name, "--poll.interval=200ms",
		"--attribution.states=CLOSE_WAIT,FIN_WAIT_2", "--attribution.interval=200ms")
	want := map[string]float64{"leaky-svc": leaks}
	m, ok := eventually(t, p.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return cmp.Equal(want, series(m, "tcpstate_process_sockets", "process", "state=CLOSE_WAIT"))
	})
	if !ok {
		t.Fatalf("CLOSE_WAIT by process (-want +got)\n%s", cmp.Diff(want, series(m, "tcpstate_process_sockets", "process", "state=CLOSE_WAIT")))
	}
	// The client closed its ends: orphans with no owner.
	if d := cmp.Diff(map[string]float64{"none": leaks}, series(m, "tcpstate_process_sockets", "process", "state=FIN_WAIT_2")); d != "" {
		t.Errorf("FIN_WAIT_2 by process (-want +got)\n%s", d)
	}
	for _, x := range m["tcpstate_process_sockets"].GetMetric() {
		for _, lp := range x.GetLabel() {
			if lp.GetValue() == "tidy-client" {
				t.Errorf("the well-behaved process appears: %v", x)
			}
		}
	}
	if d := cmp.Diff(map[string]float64{port: leaks}, series(m, "tcpstate_port_sockets", "port", "state=CLOSE_WAIT")); d != "" {
		t.Errorf("CLOSE_WAIT by port (-want +got)\n%s", d)
	}
	if d := cmp.Diff(map[string]float64{"none": leaks}, series(m, "tcpstate_port_sockets", "port", "state=FIN_WAIT_2")); d != "" {
		t.Errorf("FIN_WAIT_2 by port (-want +got)\n%s", d)
	}
	if v := m.Value("tcpstate_listen_queue_length", "port="+port); v != 0 {
		t.Errorf("accept queue of %s = %v, want 0 (all accepted)", port, v)
	}
	if v := m.Value("tcpstate_listen_queue_limit", "port="+port); v <= 0 {
		t.Errorf("accept queue limit of %s = %v, want > 0", port, v)
	}
	if v := m.Value("tcpstate_attribution_duration_seconds"); v <= 0 {
		t.Errorf("tcpstate_attribution_duration_seconds = %v, want > 0", v)
	}
}

func TestIntegrationBreakdownCardinality(t *testing.T) {
	name, _ := netnstest.New(t)
	leaks := map[string]int{"svc-a": 1, "svc-b": 2, "svc-c": 3, "svc-d": 4}
	ports := map[string]string{}
	for svc, n := range leaks {
		ports[svc] = serveLeak(t, name, svc, n)
	}
	p := exportertest.Start(t, "--netns="+name, "--poll.interval=200ms",
		"--attribution.interval=200ms", "--attribution.top=2", "--port.top=2")

	wantProc := map[string]float64{"svc-d": 4, "svc-c": 3, "other": 3}
	m, ok := eventually(t, p.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return cmp.Equal(wantProc, series(m, "tcpstate_process_sockets", "process", "state=CLOSE_WAIT"))
	})
	if !ok {
		t.Fatalf("CLOSE_WAIT by process (-want +got)\n%s", cmp.Diff(wantProc, series(m, "tcpstate_process_sockets", "process", "state=CLOSE_WAIT")))
	}
	// Ports rank by all their sockets: svc-d's port has 1 LISTEN + 4.
	wantPort := map[string]float64{ports["svc-d"]: 4, ports["svc-c"]: 3, "other": 3}
	if d := cmp.Diff(wantPort, series(m, "tcpstate_port_sockets", "port", "state=CLOSE_WAIT")); d != "" {
		t.Errorf("CLOSE_WAIT by port (-want +got)\n%s", d)
	}
	for _, b := range []string{"process", "port"} {
		if v := m.Value("tcpstate_breakdown_truncated_values", "breakdown="+b); v != 2 {
			t.Errorf("tcpstate_breakdown_truncated_values{breakdown=%q} = %v, want 2", b, v)
		}
	}
	// Whatever the limits, the breakdowns add up to the totals.
	for _, st := range stateNames {
		total := m.Value("tcpstate_sockets", "family=ipv4", "state="+st) + m.Value("tcpstate_sockets", "family=ipv6", "state="+st)
		var byPort float64
		for _, v := range series(m, "tcpstate_port_sockets", "port", "state="+st) {
			byPort += v
		}
		if byPort != total {
			t.Errorf("%s: port breakdown sums to %v, tcpstate_sockets to %v", st, byPort, total)
		}
	}
	if n := len(series(m, "tcpstate_listen_queue_length", "port")); n != 3 {
		t.Errorf("tcpstate_listen_queue_length has %d series, want 3 (two ports and other)", n)
	}
}

// TestIntegrationAllNamespaces: with --netns=all, each namespace's counts
// are exact, and a deleted namespace's series go. In precise mode the
// namespaces are dumped once at start-up and then not for an hour: the
// counts follow the events of each namespace alone.
func TestIntegrationAllNamespaces(t *testing.T) {
	t.Run("poll", func(t *testing.T) {
		testAllNamespaces(t, "--mode=poll", "--poll.interval=200ms")
	})
	t.Run("precise", func(t *testing.T) {
		eventlock.Exact(t)
		testAllNamespaces(t, "--mode=precise", "--precise.dump-interval=1h")
	})
}

func testAllNamespaces(t *testing.T, mode ...string) {
	type space struct {
		name  string
		zoo   *statezoo.Zoo
		inode uint64
		path  string
	}
	var spaces []space
	for i := 1; i <= 3; i++ {
		name, path := netnstest.New(t)
		zoo, err := statezoo.Build(path, statezoo.Options{Families: []int{unix.AF_INET}, PerState: i})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { zoo.Close() })
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		spaces = append(spaces, space{name, zoo, st.Ino, path})
	}
	p := exportertest.Start(t, append(mode, "--netns=all", "--attribution.states=")...)

	counts := func(m exportertest.Metrics, ns string) map[string]int {
		got := map[string]int{}
		for _, st := range stateNames {
			got[st] = int(m.Value("tcpstate_sockets", "family=ipv4", "state="+st, "netns="+ns))
		}
		return got
	}
	m, ok := eventually(t, p.URL+"/metrics", 10*time.Second, func(m exportertest.Metrics) bool {
		for _, s := range spaces {
			if !cmp.Equal(s.zoo.Expected()["ipv4"], counts(m, s.name)) {
				return false
			}
		}
		return true
	})
	if !ok {
		for _, s := range spaces {
			t.Errorf("namespace %s (-want +got)\n%s", s.name, cmp.Diff(s.zoo.Expected()["ipv4"], counts(m, s.name)))
		}
		t.FailNow()
	}
	for _, s := range spaces {
		if v := m.Value("tcpstate_namespace_poll_duration_seconds", "netns="+s.name); v <= 0 {
			t.Errorf("no poll cost for %s: %v", s.name, v)
		}
	}
	if n := netlinkSocketsIn(t, p, spaces[1].inode); n != 1 {
		t.Fatalf("%d netlink sockets of the exporter in namespace %s, want 1", n, spaces[1].name)
	}

	// Four connections closed by their clients in the first namespace:
	// its counts follow (two of them IPv4), the others' do not move.
	first := spaces[0]
	holdCloseWait(t, first.path, 4)
	want := kernelCounts(t, first.path)["ipv4"]
	if before := first.zoo.Expected()["ipv4"]["CLOSE_WAIT"]; want["CLOSE_WAIT"] != before+2 {
		t.Fatalf("the kernel shows %v in %s, want 2 IPv4 CLOSE_WAIT sockets more than the zoo's %d", want, first.name, before)
	}
	m, ok = eventually(t, p.URL+"/metrics", 10*time.Second, func(m exportertest.Metrics) bool {
		want = kernelCounts(t, first.path)["ipv4"] // the zoo's timers move some sockets on
		return cmp.Equal(want, counts(m, first.name))
	})
	if !ok {
		t.Fatalf("namespace %s after new connections (-kernel +exporter)\n%s", first.name, cmp.Diff(want, counts(m, first.name)))
	}
	for _, s := range spaces[1:] {
		if d := cmp.Diff(s.zoo.Expected()["ipv4"], counts(m, s.name)); d != "" {
			t.Errorf("namespace %s moved with another's connections (-want +got)\n%s", s.name, d)
		}
	}

	// Delete the middle namespace: its series go, the others stay exact,
	// no error is counted and its netlink socket is closed.
	gone := spaces[1]
	gone.zoo.Close()
	if err := netnstest.Delete(gone.name); err != nil {
		t.Fatal(err)
	}
	m, ok = eventually(t, p.URL+"/metrics", 10*time.Second, func(m exportertest.Metrics) bool {
		return m.Find("tcpstate_sockets", "netns="+gone.name) == nil
	})
	if !ok {
		t.Fatalf("series of the deleted namespace %s remain", gone.name)
	}
	for ns, w := range map[string]map[string]int{first.name: want, spaces[2].name: spaces[2].zoo.Expected()["ipv4"]} {
		if d := cmp.Diff(w, counts(m, ns)); d != "" {
			t.Errorf("namespace %s after the deletion (-want +got)\n%s", ns, d)
		}
	}
	for _, reason := range []string{"namespace", "dump"} {
		if v := m.Value("tcpstate_poll_errors_total", "reason="+reason); v != 0 {
			t.Errorf("poll_errors_total{reason=%q} = %v after a namespace went, want 0", reason, v)
		}
	}
	// The zoo's processes may still be exiting, and a namespace with a
	// process in it is found again through /proc (under another name)
	// until the last one is gone.
	n := netlinkSocketsIn(t, p, gone.inode)
	for deadline := time.Now().Add(10 * time.Second); n != 0 && time.Now().Before(deadline); n = netlinkSocketsIn(t, p, gone.inode) {
		time.Sleep(100 * time.Millisecond)
	}
	if n != 0 {
		t.Errorf("%d netlink sockets of the exporter still in the deleted namespace %s 10 s after it went, want 0", n, gone.name)
	}
}

// netlinkSocketsIn counts the exporter's netlink sockets that live in the
// network namespace with inode ino, taking a copy of each of its sockets
// (pidfd_getfd) and asking the kernel which namespace it lives in
// (SIOCGSKNS). Counting all its descriptors would not do: with
// --netns=all it follows the namespaces other tests create and delete
// meanwhile.
func netlinkSocketsIn(t *testing.T, p *exportertest.Process, ino uint64) int {
	t.Helper()
	pidfd, err := unix.PidfdOpen(p.PID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pidfd)
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.PID()))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		target, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, target, 0)
		if err != nil {
			continue // closed meanwhile
		}
		if proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN); err == nil && proto == unix.AF_NETLINK {
			if nsfd, err := unix.IoctlRetInt(fd, unix.SIOCGSKNS); err == nil {
				var st unix.Stat_t
				if unix.Fstat(nsfd, &st) == nil && st.Ino == ino {
					n++
				}
				unix.Close(nsfd)
			}
		}
		unix.Close(fd)
	}
	return n
}
