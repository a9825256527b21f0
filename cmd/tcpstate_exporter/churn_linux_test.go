package main

import (
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/internal/eventlock"
	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/loadtest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// churnSeconds is how long each case of TestIntegrationChurnKeepsLeakExact
// churns: 12 s, or TCPSTATE_CHURN_SECONDS for a longer measurement run
// (give go test a -timeout to match: there are three cases).
func churnSeconds(t *testing.T) time.Duration {
	s := os.Getenv("TCPSTATE_CHURN_SECONDS")
	if s == "" {
		return 12 * time.Second
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 1 {
		t.Fatalf("TCPSTATE_CHURN_SECONDS=%q: want a number of seconds, at least 1", s)
	}
	return time.Duration(f * float64(time.Second))
}

// TestIntegrationChurnKeepsLeakExact holds a CLOSE_WAIT leak that never
// changes in a namespace where short connections churn as fast as four
// workers go, and watches it through the exporter. A sock_diag dump is no
// snapshot: it resumes by hash bucket and position in the bucket, after
// each receive buffer and every 16 sockets within a bucket, so a socket
// inserted or removed earlier in the bucket meanwhile makes the dump skip
// or repeat a socket that never moved. Whatever the dumps do, every scrape
// must count the leak exactly, its age must only grow, and none of it may
// be seen to close.
//
// The cases differ in the table the namespace's sockets live in: the
// host's (the default), or one of the namespace's own, sized by
// net.ipv4.tcp_child_ehash_entries. The smaller the table, the more
// sockets share a bucket with the churn; in 128 buckets the leak puts
// more than 16 sockets in most of them.
func TestIntegrationChurnKeepsLeakExact(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTool(t, "ip")
	eventlock.Churn(t)
	d := churnSeconds(t)
	for _, tc := range []struct {
		name    string
		buckets int // 0: the host's table
	}{
		{"shared_table", 0},
		{"private_table_4096", 4096},
		{"private_table_128", 128},
	} {
		t.Run(tc.name, func(t *testing.T) { testChurnKeepsLeakExact(t, tc.buckets, d) })
	}
}

// churnObservation is what one scrape said about the leak.
type churnObservation struct {
	at          time.Duration // since the churn started
	closeWait   float64       // tcpstate_sockets{state="CLOSE_WAIT"}, over families
	oldest      float64       // tcpstate_oldest_in_state_seconds{state="CLOSE_WAIT"}
	falseCloses float64       // tcpstate_transitions_total{from="CLOSE_WAIT",to="CLOSED"}
	falseOpens  float64       // tcpstate_transitions_total{from="CLOSED",to="CLOSE_WAIT"}
	polls       float64
	overruns    float64
	skipped     float64 // tcpstate_dump_inconsistencies_total{kind="skipped"}; -1 where the exporter has no such metric
	duplicates  float64 // likewise {kind="duplicate"}
}

func observeChurn(m exportertest.Metrics, at time.Duration) churnObservation {
	return churnObservation{
		at:          at,
		closeWait:   churnSum(m, "tcpstate_sockets", "state=CLOSE_WAIT"),
		oldest:      churnMax(m, "tcpstate_oldest_in_state_seconds", "state=CLOSE_WAIT"),
		falseCloses: churnSum(m, "tcpstate_transitions_total", "from=CLOSE_WAIT", "to=CLOSED"),
		falseOpens:  churnSum(m, "tcpstate_transitions_total", "from=CLOSED", "to=CLOSE_WAIT"),
		polls:       churnSum(m, "tcpstate_polls_total"),
		overruns:    churnSum(m, "tcpstate_poll_overruns_total"),
		skipped:     m.Value("tcpstate_dump_inconsistencies_total", "kind=skipped"),
		duplicates:  m.Value("tcpstate_dump_inconsistencies_total", "kind=duplicate"),
	}
}

func testChurnKeepsLeakExact(t *testing.T, buckets int, d time.Duration) {
	const (
		leak     = 2437 // 1219 IPv4, 1218 IPv6
		interval = 100 * time.Millisecond
		every    = 500 * time.Millisecond // between scrapes
		minRate  = 2000                   // connections per second below which the churn proves nothing
	)
	table := "the host's table"
	if buckets > 0 {
		table = fmt.Sprintf("a private table of %d buckets", buckets)
	}
	name, path := churnNamespace(t, buckets)
	holdCloseWait(t, path, leak)

	// The exporter runs, and is scraped, in a namespace of its own, so
	// that no test traffic crosses the host's loopback.
	view, viewPath := netnstest.New(t)
	p := exportertest.StartWith(t, exportertest.Options{Wrapper: netnstest.Exec(view)},
		"--netns="+name, "--mode=poll", "--poll.interval="+interval.String())
	client := clientIn(viewPath)
	url := p.URL + "/metrics"

	var before churnObservation
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(interval) {
		before = observeChurn(exportertest.ScrapeWith(t, client, url), 0)
		if before.polls >= 1 && before.closeWait == leak {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v polls the exporter counts %v CLOSE_WAIT sockets, want the %d held open", before.polls, before.closeWait, leak)
		}
	}

	// Every connection is reset, so no socket of the churn ever passes
	// through CLOSE_WAIT: the leak is all the CLOSE_WAIT there is. (A
	// graceful close leaves the server side in CLOSE_WAIT for a moment,
	// and a dump would be right to count it.)
	churn, err := loadtest.StartChurn(path, loadtest.ChurnOptions{Workers: 4, GracefulEvery: 0})
	if err != nil {
		t.Fatal(err)
	}
	defer churn.Stop()
	start := time.Now()
	var seen []churnObservation
	tick := time.NewTicker(every)
	defer tick.Stop()
	for time.Since(start) < d {
		<-tick.C
		seen = append(seen, observeChurn(exportertest.ScrapeWith(t, client, url), time.Since(start)))
	}
	cs := churn.Stop()
	last := seen[len(seen)-1]

	var wrong []churnObservation
	var younger []string
	prev := before
	for _, o := range seen {
		if o.closeWait != leak {
			wrong = append(wrong, o)
		}
		if o.oldest < prev.oldest {
			younger = append(younger, fmt.Sprintf("%.2fs -> %.2fs at %.1fs", prev.oldest, o.oldest, o.at.Seconds()))
		}
		prev = o
	}
	t.Logf("%s: churn %d connections in %v, %.0f/s, %d failed; %d scrapes, %v polls, %v overran; "+
		"CLOSE_WAIT count wrong at %d of %d scrapes; %v CLOSE_WAIT->CLOSED and %v CLOSED->CLOSE_WAIT transitions; oldest CLOSE_WAIT %.1fs -> %.1fs; "+
		"corrected: %v skipped, %v duplicate",
		table, cs.Connections, cs.Elapsed.Round(time.Millisecond), cs.Rate(), cs.Errors, len(seen), last.polls-before.polls, last.overruns-before.overruns,
		len(wrong), len(seen), last.falseCloses, last.falseOpens, before.oldest, last.oldest,
		last.skipped-before.skipped, last.duplicates-before.duplicates)

	if cs.Errors != 0 {
		t.Errorf("%d connections of the churn failed; first: %v", cs.Errors, cs.FirstError)
	}
	if cs.Rate() < minRate {
		t.Errorf("churned only %.0f connections/s, want at least %d: too little churn to test anything", cs.Rate(), minRate)
	}
	if polls := last.polls - before.polls; polls < d.Seconds() {
		t.Errorf("only %v polls in %v of churn: too few to test anything", polls, d)
	}
	// A socket taken for closed (below) is missing from the count until the
	// next dump finds it again, 100 ms later: a scrape in between may see
	// the count short by it, and by no more.
	short := 0
	for _, o := range wrong {
		if o.closeWait < float64(leak)-last.falseCloses || o.closeWait > float64(leak) {
			short = -1
			break
		}
		short++
	}
	if short < 0 || float64(short) > last.falseCloses {
		t.Errorf("CLOSE_WAIT count wrong at %d of %d scrapes (values seen: %s; want %d; %v sockets taken for closed)", len(wrong), len(seen), churnTally(wrong), leak, last.falseCloses)
	} else if short > 0 {
		t.Logf("CLOSE_WAIT count short at %d of %d scrapes, while a socket two dumps skipped was taken for closed", short, len(seen))
	}
	if len(younger) > 0 {
		t.Errorf("oldest CLOSE_WAIT age went down at %d of %d scrapes: %s", len(younger), len(seen), strings.Join(younger, ", "))
	}
	if grown, want := last.oldest-before.oldest, (last.at / 2).Seconds(); grown < want {
		t.Errorf("oldest CLOSE_WAIT age grew by %.2fs in %.1fs of churn, want at least %.1fs", grown, last.at.Seconds(), want)
	}
	// A socket that two dumps in a row both skip is taken for closed, and
	// counted as new when it shows again (README, "two dumps"): in a
	// 128-bucket table under 20,000-35,000 connections a second this
	// happens to one CLOSE_WAIT socket in some runs (the count above shows
	// each came back). More is a fault.
	if last.falseCloses > maxFalseCloses {
		t.Errorf("%v CLOSE_WAIT->CLOSED transitions (and %v CLOSED->CLOSE_WAIT), though none of the %d CLOSE_WAIT sockets closed; at most %d",
			last.falseCloses, last.falseOpens, leak, maxFalseCloses)
	} else if last.falseCloses > 0 {
		t.Logf("%v CLOSE_WAIT sockets skipped by two dumps in a row, taken for closed and found again", last.falseCloses)
	}
}

// maxFalseCloses bounds the sockets two dumps in a row skip in one run.
const maxFalseCloses = 2

// churnTally lists the CLOSE_WAIT counts of obs, each with how many
// scrapes saw it, such as "2436 x7, 2438 x2".
func churnTally(obs []churnObservation) string {
	n := map[float64]int{}
	for _, o := range obs {
		n[o.closeWait]++
	}
	var vals []float64
	for v := range n {
		vals = append(vals, v)
	}
	slices.Sort(vals)
	var parts []string
	for _, v := range vals {
		parts = append(parts, fmt.Sprintf("%v x%d", v, n[v]))
	}
	return strings.Join(parts, ", ")
}

// churnSum sums the matching series, 0 when there are none.
func churnSum(m exportertest.Metrics, name string, labels ...string) float64 {
	var sum float64
	for _, v := range m.Values(name, labels...) {
		sum += v
	}
	return sum
}

// churnMax is the largest matching value, 0 when there is none.
func churnMax(m exportertest.Metrics, name string, labels ...string) float64 {
	vals := m.Values(name, labels...)
	if len(vals) == 0 {
		return 0
	}
	return slices.Max(vals)
}

// churnNamespace creates a network namespace whose TCP sockets live in
// the host's hash table (buckets 0) or in one of their own with that many
// buckets, and checks which it got.
func churnNamespace(t *testing.T, buckets int) (name, path string) {
	t.Helper()
	if buckets == 0 {
		name, path = netnstest.New(t)
	} else {
		name, path = privateTableNamespace(t, buckets)
	}
	// tcp_ehash_entries reads the table's size, negated when the
	// namespace shares the host's table (Documentation/networking/ip-sysctl.rst).
	var got int
	err := netlinkdiag.Do(path, func() (err error) {
		got, err = readSysctl("net/ipv4/tcp_ehash_entries")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	switch {
	case buckets == 0 && got >= 0:
		t.Fatalf("namespace %s: tcp_ehash_entries is %d, want it negative (the host's table)", name, got)
	case buckets > 0 && got != buckets:
		t.Fatalf("namespace %s: tcp_ehash_entries is %d, want a private table of %d buckets (a negative value means the host's table)", name, got, buckets)
	}
	return name, path
}

// privateTableNamespace is netnstest.New for a namespace whose TCP sockets
// live in a hash table of buckets buckets of its own. A new namespace takes
// its table size from net.ipv4.tcp_child_ehash_entries of the namespace it
// is created from, so it is created from a throw-away namespace with that
// set: the host's own setting is never touched, and the throw-away
// namespace ends when the thread leaves it.
func privateTableNamespace(t *testing.T, buckets int) (name, path string) {
	t.Helper()
	runtime.LockOSThread()
	host, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("open own network namespace: %v", err)
	}
	defer host.Close()
	if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		t.Fatalf("unshare network namespace: %v", err)
	}
	defer func() {
		if err := netns.Set(host); err != nil {
			// The thread stays locked, so the runtime discards it when the
			// test's goroutine ends.
			t.Errorf("restore network namespace: %v", err)
			return
		}
		runtime.UnlockOSThread()
	}()
	// Sysctls under /proc/sys/net are the calling thread's namespace's.
	// A negative size says this is a namespace other than the host's.
	if n, err := readSysctl("net/ipv4/tcp_ehash_entries"); err != nil || n >= 0 {
		t.Fatalf("throw-away namespace: tcp_ehash_entries is %d (%v), want it negative: refusing to set tcp_child_ehash_entries", n, err)
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/tcp_child_ehash_entries", []byte(strconv.Itoa(buckets)), 0o644); err != nil {
		t.Fatalf("set tcp_child_ehash_entries in the throw-away namespace: %v", err)
	}
	return netnstest.New(t)
}

// readSysctl reads an integer sysctl of the calling thread's namespace;
// key is its path under /proc/sys.
func readSysctl(key string) (int, error) {
	b, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return n, nil
}

// holdCloseWait leaves n server-side sockets in CLOSE_WAIT in the
// namespace at path, alternately IPv4 and IPv6, until the test ends: each
// client connects and closes at once, and its accepted socket is kept open
// and never closed. The clients go on to FIN_WAIT_2 and vanish.
func holdCloseWait(t *testing.T, path string, n int) (held []int) {
	t.Helper()
	t.Cleanup(func() {
		for _, fd := range held {
			unix.Close(fd)
		}
	})
	fams := []int{unix.AF_INET, unix.AF_INET6}
	err := netlinkdiag.Do(path, func() error {
		var lns []int
		defer func() {
			for _, fd := range lns {
				unix.Close(fd)
			}
		}()
		var addrs []unix.Sockaddr
		for _, fam := range fams {
			fd, sa, err := churnListen(fam)
			if err != nil {
				return err
			}
			lns = append(lns, fd)
			addrs = append(addrs, sa)
		}
		for i := range n {
			c, s, err := connectPair(fams[i%2], lns[i%2], addrs[i%2])
			if err != nil {
				return err
			}
			held = append(held, s)
			unix.Close(c) // its FIN puts s in CLOSE_WAIT for good
		}
		return nil
	})
	if err != nil {
		t.Fatalf("hold %d CLOSE_WAIT sockets: %v", n, err)
	}
	return held
}

// dial connects a new TCP socket of family fam to addr.
func dial(fam int, addr unix.Sockaddr) (int, error) {
	c, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Connect(c, addr); err != nil {
		unix.Close(c)
		return -1, fmt.Errorf("connect: %w", err)
	}
	return c, nil
}

// connectPair connects to the listener ln at addr and accepts the connection:
// its client and server ends.
func connectPair(fam, ln int, addr unix.Sockaddr) (c, s int, err error) {
	if c, err = dial(fam, addr); err != nil {
		return -1, -1, err
	}
	if s, _, err = unix.Accept4(ln, unix.SOCK_CLOEXEC); err != nil {
		unix.Close(c)
		return -1, -1, fmt.Errorf("accept: %w", err)
	}
	return c, s, nil
}

// churnListen listens on the loopback address of fam, on an ephemeral
// port, and returns the address to connect to.
func churnListen(fam int) (int, unix.Sockaddr, error) {
	var sa unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if fam == unix.AF_INET6 {
		sa = &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
	}
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, nil, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("listen: %w", err)
	}
	sa, err = unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, nil, fmt.Errorf("getsockname: %w", err)
	}
	return fd, sa, nil
}

// TestIntegrationCloseReportedAtSecondMiss measures what the two-miss rule
// costs: a socket that closes is still counted (as missing) at the first
// poll after its close, and reported closed at the second, so the close
// shows between one and two poll intervals after it happened.
func TestIntegrationCloseReportedAtSecondMiss(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTool(t, "ip")
	const interval = 500 * time.Millisecond
	name, path := netnstest.New(t)
	held := holdCloseWait(t, path, 1)
	view, viewPath := netnstest.New(t)
	p := exportertest.StartWith(t, exportertest.Options{Wrapper: netnstest.Exec(view)},
		"--netns="+name, "--mode=poll", "--poll.interval="+interval.String())
	client := clientIn(viewPath)
	url := p.URL + "/metrics"
	closes := func(m exportertest.Metrics) float64 {
		return max(m.Value("tcpstate_transitions_total", "from=CLOSE_WAIT", "to=CLOSED"), 0)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		m := exportertest.ScrapeWith(t, client, url)
		if m.Value("tcpstate_polls_total") >= 2 && churnSum(m, "tcpstate_sockets", "state=CLOSE_WAIT") == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the exporter never counted the CLOSE_WAIT socket")
		}
	}

	closed := time.Now()
	unix.Close(held[0]) // LAST_ACK, then gone once the peer's ACK comes back
	sawMissing := false
	for {
		m := exportertest.ScrapeWith(t, client, url)
		after := time.Since(closed)
		if closes(m) == 1 {
			t.Logf("close reported %v after it happened (poll interval %v); counted as missing in between: %v", after.Round(time.Millisecond), interval, sawMissing)
			if after < interval*9/10 || after > 2*interval+400*time.Millisecond {
				t.Errorf("close reported %v after it happened, want between one and two poll intervals (%v)", after, interval)
			}
			if n := churnSum(m, "tcpstate_sockets", "state=CLOSE_WAIT"); n != 0 {
				t.Errorf("CLOSE_WAIT still counted %v after the close was reported", n)
			}
			break
		}
		if m.Value("tcpstate_missing_sockets") == 1 {
			sawMissing = true
			if n := churnSum(m, "tcpstate_sockets", "state=CLOSE_WAIT"); n != 1 {
				t.Errorf("a socket missed once is counted in its last state: CLOSE_WAIT = %v, want 1", n)
			}
		}
		if after > 5*interval {
			t.Fatalf("no CLOSE_WAIT->CLOSED transition %v after the close", after)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !sawMissing {
		t.Error("never saw the closed socket counted as missing before it was reported closed")
	}
}
