package main

import (
	"bytes"
	"fmt"
	"math"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/internal/statezoo"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

var stateNames = []string{"CLOSED", "LISTEN", "SYN_RCVD", "SYN_SEND", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSING", "CLOSE_WAIT", "LAST_ACK"}

func socketCounts(m exportertest.Metrics) map[string]map[string]int {
	got := map[string]map[string]int{}
	for _, fam := range []string{"ipv4", "ipv6"} {
		got[fam] = map[string]int{}
		for _, st := range stateNames {
			got[fam][st] = int(m.Value("tcpstate_sockets", "family="+fam, "state="+st))
		}
	}
	return got
}

// eventually scrapes until ok accepts the scrape or the deadline passes,
// and returns the last scrape.
func eventually(t *testing.T, url string, d time.Duration, ok func(exportertest.Metrics) bool) (exportertest.Metrics, bool) {
	t.Helper()
	return eventuallyWith(t, http.DefaultClient, url, d, ok)
}

// eventuallyWith is eventually through client.
func eventuallyWith(t *testing.T, client *http.Client, url string, d time.Duration, ok func(exportertest.Metrics) bool) (exportertest.Metrics, bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		m := exportertest.ScrapeWith(t, client, url)
		if ok(m) {
			return m, true
		}
		if time.Now().After(deadline) {
			return m, false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestIntegrationEveryStateCounted(t *testing.T) {
	name, path := netnstest.New(t)
	zoo, err := statezoo.Build(path, statezoo.Options{PerState: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer zoo.Close()
	want := zoo.Expected()
	for fam, states := range want {
		for _, st := range stateNames {
			if states[st] == 0 {
				t.Fatalf("the zoo has no %s socket in %s; the test would prove nothing for it", fam, st)
			}
		}
	}

	p := exportertest.Start(t, "--netns="+name, "--poll.interval=200ms")
	m, ok := eventually(t, p.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return cmp.Equal(want, socketCounts(m))
	})
	if !ok {
		t.Fatalf("tcpstate_sockets (-want +got)\n%s", cmp.Diff(want, socketCounts(m)))
	}
	for _, n := range []string{"tcpstate_polls_total", "tcpstate_tracked_sockets", "tcpstate_last_poll_timestamp_seconds"} {
		if m.Value(n) <= 0 {
			t.Errorf("%s = %v, want > 0", n, m.Value(n))
		}
	}
	if v := m.Value("tcpstate_build_info"); v != 1 {
		t.Errorf("tcpstate_build_info = %v, want 1", v)
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = bytes.NewReader(exportertest.Fetch(t, p.URL+"/metrics"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics on the live exposition: %v\n%s", err, out)
	}
}

// pair opens a connection on loopback inside the namespace and returns the
// client and the accepted server socket.
func pair(t *testing.T, path string) (client, server int) {
	t.Helper()
	err := netlinkdiag.Do(path, func() error {
		lfd, port, err := statezoo.Listen(unix.AF_INET, 8)
		if err != nil {
			return err
		}
		defer unix.Close(lfd)
		if client, err = statezoo.Connect(unix.AF_INET, port); err != nil {
			return err
		}
		server, err = statezoo.Accept(lfd)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(client); unix.Close(server) })
	return client, server
}

func TestIntegrationTimeInState(t *testing.T) {
	const interval = 200 * time.Millisecond
	name, path := netnstest.New(t)
	p := exportertest.Start(t, "--netns="+name, "--mode=poll", fmt.Sprintf("--poll.interval=%v", interval))
	// Let the exporter poll the empty namespace, so what follows is new
	// and has a known start.
	if _, ok := eventually(t, p.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_polls_total") >= 2
	}); !ok {
		t.Fatal("exporter never polled")
	}

	client, _ := pair(t, path)
	opened := time.Now()
	if _, ok := eventually(t, p.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_sockets", "family=ipv4", "state=ESTABLISHED") == 2
	}); !ok {
		t.Fatal("the connection never showed as two ESTABLISHED sockets")
	}
	time.Sleep(2*time.Second - time.Since(opened))
	if err := unix.Shutdown(client, unix.SHUT_WR); err != nil {
		t.Fatal(err)
	}
	held := time.Since(opened)

	m, ok := eventually(t, p.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_transitions_total", "from=ESTABLISHED", "to=CLOSE_WAIT") == 1 &&
			m.Value("tcpstate_sockets", "family=ipv4", "state=FIN_WAIT_2") == 1
	})
	if !ok {
		t.Fatalf("no ESTABLISHED->CLOSE_WAIT transition: got %v", m.Value("tcpstate_transitions_total", "from=ESTABLISHED", "to=CLOSE_WAIT"))
	}
	// Both ends left ESTABLISHED: the server for CLOSE_WAIT, the client for
	// FIN_WAIT_2 (FIN_WAIT_1 lasts far less than a poll).
	count, sum, buckets := m.Histogram("tcpstate_state_duration_seconds", "state=ESTABLISHED")
	if count != 2 {
		t.Fatalf("ESTABLISHED stays = %d, want 2 (client and server)", count)
	}
	each := sum / 2
	if tol := interval.Seconds() + 0.05; math.Abs(each-held.Seconds()) > tol {
		t.Errorf("ESTABLISHED stay = %.3f s each, want %.3f s within one poll interval (%v)", each, held.Seconds(), interval)
	}
	if buckets[1] != 0 || buckets[2.5] != 2 {
		t.Errorf("ESTABLISHED buckets le=1: %d, le=2.5: %d; want 0 and 2", buckets[1], buckets[2.5])
	}
	if n := m.Value("tcpstate_transitions_total", "from=CLOSED", "to=ESTABLISHED"); n != 2 {
		t.Errorf("CLOSED->ESTABLISHED = %v, want 2", n)
	}

	// The CLOSE_WAIT socket's age grows while it is held.
	first := m.Value("tcpstate_oldest_in_state_seconds", "state=CLOSE_WAIT")
	time.Sleep(time.Second)
	later := exportertest.Scrape(t, p.URL+"/metrics").Value("tcpstate_oldest_in_state_seconds", "state=CLOSE_WAIT")
	if grew := later - first; grew < 1-interval.Seconds()-0.05 || grew > 1+interval.Seconds()+0.05 {
		t.Errorf("oldest CLOSE_WAIT went from %.3f to %.3f s over 1 s", first, later)
	}
}

func TestBadInvocations(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--poll.interval=-1s"}, 2, "--poll.interval"},
		{[]string{"--poll.interval=soon"}, 2, "poll.interval"},
		{[]string{"--max-tracked-sockets=-5"}, 2, "--max-tracked-sockets"},
		{[]string{"--no-such-flag"}, 2, "no-such-flag"},
		{[]string{"--web.telemetry-path=metrics"}, 2, "telemetry-path"},
		{[]string{"--log.level=loud"}, 2, "log level loud"},
		{[]string{"--netns=/nonexistent/netns"}, 1, "/nonexistent/netns"},
		{[]string{"--netns=tcpstate-no-such-namespace"}, 1, "tcpstate-no-such-namespace"},
		{[]string{"--web.listen-address=127.0.0.1:0", "--web.config.file=/nonexistent/web.yml"}, 1, "/nonexistent/web.yml"},
		{[]string{"--web.listen-address=bogus"}, 2, "--web.listen-address=bogus"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, stderr := exportertest.Run(t, c.args...)
			if code != c.code {
				t.Errorf("exit code %d, want %d\n%s", code, c.code, stderr)
			}
			last := lastLine(stderr)
			if !strings.Contains(last, c.want) || !strings.HasPrefix(last, "tcpstate_exporter: ") {
				t.Errorf("last line of stderr %q does not give the reason (%q)", last, c.want)
			}
			if before := strings.TrimSuffix(strings.TrimRight(stderr, "\n"), last); strings.Contains(before, c.want) {
				t.Errorf("the reason (%q) is written more than once:\n%s", c.want, stderr)
			}
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return lines[len(lines)-1]
}

// TestHelp: --help gives the flags' limits and defaults where a newcomer
// looks for them.
func TestHelp(t *testing.T) {
	code, out := exportertest.Run(t, "--help")
	if code != 0 {
		t.Fatalf("--help: exit %d\n%s", code, out)
	}
	help := strings.Join(strings.Fields(out), " ")
	for _, want := range []string{"at least 10ms", "--web.max-requests=40", "0 means no limit", "web.systemd-socket"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help does not say %q:\n%s", want, out)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out := exportertest.Run(t, "--version")
	if code != 0 || !strings.Contains(out, "tcpstate_exporter") {
		t.Errorf("--version: exit %d, output %q", code, out)
	}
}

func TestIntegrationSIGTERM(t *testing.T) {
	netnstest.RequireRoot(t)
	p := exportertest.Start(t, "--poll.interval=50ms")
	exportertest.Scrape(t, p.URL+"/metrics")
	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	exited, err := p.Wait(5 * time.Second)
	if !exited {
		t.Fatalf("exporter still running after %v", 5*time.Second)
	}
	if err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
	t.Logf("exited %v after SIGTERM", time.Since(start))
	if !strings.Contains(p.Log(), "shutting down") {
		t.Errorf("no shutdown logged:\n%s", p.Log())
	}
}
