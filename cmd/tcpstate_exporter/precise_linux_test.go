package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/internal/eventlock"
	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/internal/statezoo"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// TestIntegrationPreciseModeSeesShortStays: with dumps 30 s apart, precise
// mode still sees every connection that opens and closes in between, and
// how long each stayed in each state, from the kernel's events.
func TestIntegrationPreciseModeSeesShortStays(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTool(t, "ip")
	eventlock.Exact(t)
	name, path := netnstest.New(t)
	view, viewPath := netnstest.New(t)
	p := exportertest.StartWith(t, exportertest.Options{Wrapper: netnstest.Exec(view)},
		"--netns="+name, "--mode=precise", "--precise.dump-interval=30s")
	client := clientIn(viewPath)
	url := p.URL + "/metrics"
	if m := exportertest.ScrapeWith(t, client, url); m.Value("tcpstate_mode", "mode=precise") != 1 {
		t.Fatalf("tcpstate_mode{mode=\"precise\"} = %v, want 1", m.Value("tcpstate_mode", "mode=precise"))
	}

	const conns = 20
	const hold = 20 * time.Millisecond
	err := netlinkdiag.Do(path, func() error {
		ln, port, err := statezoo.Listen(unix.AF_INET, conns)
		if err != nil {
			return err
		}
		defer unix.Close(ln)
		for range conns {
			c, s, err := connectPair(unix.AF_INET, ln, loopback4(port))
			if err != nil {
				return err
			}
			time.Sleep(hold)
			unix.Close(c)
			time.Sleep(time.Millisecond)
			unix.Close(s)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	m, ok := eventuallyWith(t, client, url, 10*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_transitions_total", "from=LAST_ACK", "to=CLOSED") >= conns
	})
	if !ok {
		t.Fatalf("after 10 s: %v LAST_ACK->CLOSED transitions, want %d", m.Value("tcpstate_transitions_total", "from=LAST_ACK", "to=CLOSED"), conns)
	}
	for _, tr := range [][2]string{
		{"CLOSED", "SYN_SEND"}, {"SYN_SEND", "ESTABLISHED"}, {"ESTABLISHED", "FIN_WAIT_1"}, {"FIN_WAIT_1", "FIN_WAIT_2"},
		{"FIN_WAIT_2", "TIME_WAIT"}, {"CLOSED", "SYN_RCVD"}, {"SYN_RCVD", "ESTABLISHED"}, {"ESTABLISHED", "CLOSE_WAIT"},
		{"CLOSE_WAIT", "LAST_ACK"}, {"LAST_ACK", "CLOSED"},
	} {
		if v := m.Value("tcpstate_transitions_total", "from="+tr[0], "to="+tr[1]); v != conns {
			t.Errorf("%s->%s: %v transitions, want %d", tr[0], tr[1], v, conns)
		}
	}
	count, sum, _ := m.Histogram("tcpstate_state_duration_seconds", "state=ESTABLISHED")
	if count != 2*conns || sum/float64(count) < hold.Seconds() || sum/float64(count) > 10*hold.Seconds() {
		t.Errorf("ESTABLISHED stays: %d, mean %.4fs; want %d of about %v", count, sum/float64(max(count, 1)), 2*conns, hold)
	}
	count, sum, _ = m.Histogram("tcpstate_state_duration_seconds", "state=SYN_SEND")
	if count != conns || sum <= 0 || sum/float64(count) > 0.005 {
		t.Errorf("SYN_SEND stays (connect latency): %d, mean %.6fs; want %d, each above zero and at most a few ms", count, sum/float64(max(count, 1)), conns)
	}
	if v := m.Value("tcpstate_events_total"); v < 9*conns {
		t.Errorf("tcpstate_events_total = %v, want at least %d", v, 9*conns)
	}
	for _, reason := range []string{"ring_full", "recursion", "malformed"} {
		if v := m.Value("tcpstate_events_lost_total", "reason="+reason); v != 0 {
			t.Errorf("tcpstate_events_lost_total{reason=%q} = %v, want 0", reason, v)
		}
	}
	t.Logf("ESTABLISHED and SYN_SEND stays seen with no dump in between; %v events", m.Value("tcpstate_events_total"))

	// Nothing of the BPF program outlives the exporter.
	objs := bpfObjects(t, p.PID())
	if len(objs["prog_id"]) != 1 || len(objs["link_id"]) != 1 || len(objs["map_id"]) < 2 {
		t.Fatalf("the exporter holds BPF objects %v; want its program, its link and its two maps", objs)
	}
	p.Stop(t)
	// The kernel frees them after an RCU grace period, not at once.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		left := loadedBPF(objs)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("BPF objects still loaded 5 s after the exporter stopped: %v", left)
		}
	}
}

// bpfObjects lists the BPF programs, links and maps the process holds
// descriptors of, by the id kind fdinfo gives them: prog_id, link_id,
// map_id.
func bpfObjects(t *testing.T, pid int) map[string][]uint32 {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	objs := map[string][]uint32{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		kind := ""
		for _, line := range strings.Split(string(b), "\n") {
			switch k, v, _ := strings.Cut(line, ":"); {
			case k == "link_type":
				kind = "link_id" // a link's fdinfo names its program too
			case k == "link_id" || (k == "prog_id" || k == "map_id") && kind == "":
				id, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
				if err == nil {
					objs[k] = append(objs[k], uint32(id))
				}
			}
		}
	}
	return objs
}

// loadedBPF returns those of the objects still loaded in the kernel.
func loadedBPF(objs map[string][]uint32) []string {
	var left []string
	for kind, ids := range objs {
		for _, id := range ids {
			var closer interface{ Close() error }
			var err error
			switch kind {
			case "prog_id":
				closer, err = ebpf.NewProgramFromID(ebpf.ProgramID(id))
			case "map_id":
				closer, err = ebpf.NewMapFromID(ebpf.MapID(id))
			case "link_id":
				closer, err = link.NewFromID(link.ID(id))
			}
			if err == nil {
				closer.Close()
				left = append(left, fmt.Sprintf("%s %d", kind, id))
			}
		}
	}
	return left
}

// loopback4 is 127.0.0.1:port.
func loopback4(port uint16) unix.Sockaddr {
	return &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}, Port: int(port)}
}

// TestIntegrationPreciseModeRefusedUnprivileged: without CAP_BPF and
// CAP_PERFMON, --mode=precise stops at start-up with status 1 and one
// line saying why, and --mode=auto polls, saying why once.
func TestIntegrationPreciseModeRefusedUnprivileged(t *testing.T) {
	requireTool(t, "setpriv")
	code, stderr := exportertest.RunWith(t, exportertest.Options{Wrapper: nobody()}, "--mode=precise", "--web.listen-address=127.0.0.1:0")
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	last := lines[len(lines)-1]
	if code != 1 || !strings.HasPrefix(last, "tcpstate_exporter: --mode=precise: ") || !strings.Contains(last, "CAP_BPF") {
		t.Errorf("--mode=precise as nobody: exit %d, last line %q; want 1 and one line naming CAP_BPF\n%s", code, last, stderr)
	}

	p := exportertest.StartWith(t, exportertest.Options{Wrapper: nobody()}, "--mode=auto", "--poll.interval=100ms")
	m := exportertest.Scrape(t, p.URL+"/metrics")
	if m.Value("tcpstate_mode", "mode=poll") != 1 || m.Value("tcpstate_mode", "mode=precise") != -1 {
		t.Errorf("--mode=auto as nobody: tcpstate_mode poll %v precise %v; want poll only", m.Value("tcpstate_mode", "mode=poll"), m.Value("tcpstate_mode", "mode=precise"))
	}
	if log := p.Log(); strings.Count(log, "precise mode unavailable; polling") != 1 {
		t.Errorf("--mode=auto as nobody logged the fallback %d times, want once:\n%s", strings.Count(log, "precise mode unavailable; polling"), log)
	}
}

// TestIntegrationPreciseModeRepairsLoss: a ring buffer made one page small
// loses events under a burst of connections; the loss is counted, a dump
// follows at once, and the counts are exact again.
func TestIntegrationPreciseModeRepairsLoss(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTool(t, "ip")
	eventlock.Churn(t)
	name, path := netnstest.New(t)
	view, viewPath := netnstest.New(t)
	p := exportertest.StartWith(t, exportertest.Options{Wrapper: netnstest.Exec(view)},
		"--netns="+name, "--mode=precise", "--precise.dump-interval=1h", "--precise.ring-bytes=4096")
	client := clientIn(viewPath)
	url := p.URL + "/metrics"

	const conns = 400
	var held []int
	t.Cleanup(func() {
		for _, fd := range held {
			unix.Close(fd)
		}
	})
	err := netlinkdiag.Do(path, func() error {
		ln, port, err := statezoo.Listen(unix.AF_INET, conns)
		if err != nil {
			return err
		}
		held = append(held, ln)
		for range conns {
			c, err := dial(unix.AF_INET, loopback4(port))
			if err != nil {
				return err
			}
			held = append(held, c)
		}
		for range conns {
			s, _, err := unix.Accept4(ln, unix.SOCK_CLOEXEC)
			if err != nil {
				return fmt.Errorf("accept: %w", err)
			}
			held = append(held, s)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m, ok := eventuallyWith(t, client, url, 10*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_events_lost_total", "reason=ring_full") > 0 && m.Value("tcpstate_polls_total") >= 2 &&
			churnSum(m, "tcpstate_sockets", "state=ESTABLISHED") == 2*conns
	})
	if !ok {
		t.Fatalf("after 10 s: %v events lost, %v polls, %v ESTABLISHED; want a loss, a repairing dump, and %d",
			m.Value("tcpstate_events_lost_total", "reason=ring_full"), m.Value("tcpstate_polls_total"), churnSum(m, "tcpstate_sockets", "state=ESTABLISHED"), 2*conns)
	}
	if n := churnSum(m, "tcpstate_sockets", "state=LISTEN"); n != 1 {
		t.Errorf("LISTEN = %v after the repair, want 1", n)
	}
	t.Logf("%v events lost to a full ring, repaired by dump %v; %v ESTABLISHED", m.Value("tcpstate_events_lost_total", "reason=ring_full"), m.Value("tcpstate_polls_total"), churnSum(m, "tcpstate_sockets", "state=ESTABLISHED"))
}
