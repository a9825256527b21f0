package main

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/internal/eventlock"
	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/loadtest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/internal/statezoo"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// The tests of this file script TCP connections in a namespace of their
// own, keep the script's own CLOCK_MONOTONIC times of every call, and hold
// precise mode's counts and stays to them.

// timelineSeed seeds the stays of the scripted timelines; a failure names
// it, so a run can be repeated.
const timelineSeed = 20261204

// TestIntegrationPreciseTimeline: with dumps 5 s apart, 200 connections,
// ten at a time, each ESTABLISHED and then CLOSE_WAIT for 5 to 60 ms
// (seeded), all between two dumps. The events alone must count every
// transition exactly, every stay, each within 1 ms of the script's clock,
// connect latency above zero and a few milliseconds at most, and every
// client's TIME_WAIT remnant at once; the next dump must find nothing to
// correct.
func TestIntegrationPreciseTimeline(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTool(t, "ip")
	t.Parallel()
	eventlock.Exact(t)
	testPreciseTimeline(t, unix.AF_INET, 200, 10)
}

// preciseRun is an exporter in precise mode that watches a namespace of the
// test's, run and scraped from another.
type preciseRun struct {
	p      *exportertest.Process
	path   string // the watched namespace
	client *http.Client
	url    string
}

// startPrecise starts the exporter in precise mode on the namespace name
// (at path), dumping every interval.
func startPrecise(t *testing.T, name, path string, interval time.Duration, args ...string) *preciseRun {
	t.Helper()
	view, viewPath := netnstest.New(t)
	args = append([]string{"--netns=" + name, "--mode=precise", "--precise.dump-interval=" + interval.String()}, args...)
	p := exportertest.StartWith(t, exportertest.Options{Wrapper: netnstest.Exec(view)}, args...)
	r := &preciseRun{p: p, path: path, client: clientIn(viewPath), url: p.URL + "/metrics"}
	if m := r.scrape(t); m.Value("tcpstate_mode", "mode=precise") != 1 {
		t.Fatalf("tcpstate_mode{mode=\"precise\"} = %v, want 1", m.Value("tcpstate_mode", "mode=precise"))
	}
	return r
}

func (r *preciseRun) scrape(t *testing.T) exportertest.Metrics {
	t.Helper()
	return exportertest.ScrapeWith(t, r.client, r.url)
}

// until scrapes until ok accepts a scrape, and returns it; after d it
// fails the test, saying what it waited for.
func (r *preciseRun) until(t *testing.T, d time.Duration, what string, ok func(exportertest.Metrics) bool) exportertest.Metrics {
	t.Helper()
	m, done := eventuallyWith(t, r.client, r.url, d, ok)
	if !done {
		t.Fatalf("after %v: still waiting for %s (%v dumps, %v events)", d, what, m.Value("tcpstate_polls_total"), m.Value("tcpstate_events_total"))
	}
	return m
}

// nextDump waits for the dump after the one m last counted and returns the
// first scrape that shows it. Acting right after it leaves a whole dump
// interval before the one after.
func (r *preciseRun) nextDump(t *testing.T, m exportertest.Metrics, d time.Duration) exportertest.Metrics {
	t.Helper()
	polls := m.Value("tcpstate_polls_total")
	return r.until(t, d, fmt.Sprintf("dump %v", polls+1), func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_polls_total") > polls
	})
}

// checkNextDump waits for the next dump, checks that it counts what the
// kernel holds and that nothing was lost or corrected, and returns the
// scrape.
func (r *preciseRun) checkNextDump(t *testing.T, m exportertest.Metrics, d time.Duration) exportertest.Metrics {
	t.Helper()
	m = r.nextDump(t, m, d)
	if d := cmp.Diff(kernelCounts(t, r.path), socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets after the next dump (-kernel +exporter)\n%s", d)
	}
	checkNoLoss(t, m)
	return m
}

// monotonic reads CLOCK_MONOTONIC, the clock the kernel stamps its events
// with, in nanoseconds.
func monotonic() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // the vDSO; cannot fail
	return ts.Nano()
}

// stay is one stay in a state as a script knows it: est is its length by
// the script's clock, the calls that bracket its start and end; the
// kernel's own lies within [lo, hi].
type stay struct{ est, lo, hi int64 }

// stays are a script's stays by documented state.
type stays map[string][]stay

func (s stays) add(state string, est, lo, hi int64) {
	s[state] = append(s[state], stay{est, lo, hi})
}

// tcpState reads fd's kernel state (netlinkdiag.State*).
func tcpState(fd int) (uint8, error) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, fmt.Errorf("read TCP_INFO: %w", err)
	}
	return info.State, nil
}

// awaitState waits up to a second for fd to reach kernel state want and
// returns when it saw it there.
func awaitState(fd int, want uint8) (int64, error) {
	for deadline := time.Now().Add(time.Second); ; time.Sleep(20 * time.Microsecond) {
		st, err := tcpState(fd)
		if err != nil {
			return 0, err
		}
		if st == want {
			return monotonic(), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("fd %d in kernel state %d after 1 s, want %d", fd, st, want)
		}
	}
}

// loopbackAddr is port on the loopback address of fam.
func loopbackAddr(fam int, port uint16) unix.Sockaddr {
	if fam == unix.AF_INET6 {
		return &unix.SockaddrInet6{Addr: [16]byte{15: 1}, Port: int(port)}
	}
	return loopback4(port)
}

// familyLabel is fam's family label value.
func familyLabel(fam int) string {
	if fam == unix.AF_INET6 {
		return "ipv6"
	}
	return "ipv4"
}

// timelineWorker runs conns connections one after the other on a listener
// of its own: connect and accept, ESTABLISHED for 5 to 60 ms, the client
// closes, the server is in CLOSE_WAIT for 5 to 60 ms, the server closes.
// It runs inside the namespace and records what its clock saw in st.
func timelineWorker(fam, conns int, rng *rand.Rand, st stays) error {
	ln, port, err := statezoo.Listen(fam, 4)
	if err != nil {
		return err
	}
	defer unix.Close(ln)
	addr := loopbackAddr(fam, port)
	between := func() time.Duration {
		return 5*time.Millisecond + time.Duration(rng.Int64N(int64(55*time.Millisecond)+1))
	}
	for range conns {
		established, closeWait := between(), between()
		t0 := monotonic()
		c, err := dial(fam, addr)
		t1 := monotonic()
		if err != nil {
			return err
		}
		s, err := statezoo.Accept(ln)
		t2 := monotonic()
		if err != nil {
			unix.Close(c)
			return err
		}
		time.Sleep(established)
		t3 := monotonic()
		unix.Close(c) // ESTABLISHED -> FIN_WAIT_1, and its FIN
		t4 := monotonic()
		t5, err := awaitState(s, netlinkdiag.StateCloseWait)
		if err != nil {
			unix.Close(s)
			return err
		}
		time.Sleep(closeWait)
		t6 := monotonic()
		unix.Close(s) // CLOSE_WAIT -> LAST_ACK
		t7 := monotonic()
		// SYN_SEND ends within connect(); the client's ESTABLISHED starts
		// there and ends in its close(); the server's starts before accept()
		// returns and ends when the client's FIN arrives (t5 at the
		// latest), which starts its CLOSE_WAIT, ended in its close().
		st.add("SYN_SEND", t1-t0, 0, t1-t0)
		st.add("ESTABLISHED", t3-t1, t3-t1, t4-t0)
		st.add("ESTABLISHED", t3-t1, t3-t2, t5-t0)
		st.add("CLOSE_WAIT", t6-t3, t6-t5, t7-t3)
	}
	return nil
}

// runTimeline runs workers timelineWorkers at once in the namespace at
// path, conns connections in all, and returns the stays they saw.
func runTimeline(path string, fam, conns, workers int, seed uint64) (stays, error) {
	var wg sync.WaitGroup
	errs := make([]error, workers)
	per := make([]stays, workers)
	for w := range workers {
		per[w] = stays{}
		n := conns / workers
		if w < conns%workers {
			n++
		}
		rng := rand.New(rand.NewPCG(seed, uint64(w)))
		wg.Go(func() {
			errs[w] = netlinkdiag.Do(path, func() error { return timelineWorker(fam, n, rng, per[w]) })
		})
	}
	wg.Wait()
	all := stays{}
	for w := range workers {
		if errs[w] != nil {
			return nil, fmt.Errorf("worker %d: %w", w, errs[w])
		}
		for state, ss := range per[w] {
			all[state] = append(all[state], ss...)
		}
	}
	return all, nil
}

// closeTransitions are the transitions of conns connections of which the
// client closed first and the server after (client: CLOSED SYN_SEND
// ESTABLISHED FIN_WAIT_1 FIN_WAIT_2 TIME_WAIT; server: CLOSED SYN_RCVD
// ESTABLISHED CLOSE_WAIT LAST_ACK CLOSED), and of listeners listeners
// opened and closed, by "FROM->TO".
func closeTransitions(conns, listeners int) map[string]float64 {
	n := float64(conns)
	return map[string]float64{
		"CLOSED->LISTEN": float64(listeners), "LISTEN->CLOSED": float64(listeners),
		"CLOSED->SYN_SEND": n, "SYN_SEND->ESTABLISHED": n, "ESTABLISHED->FIN_WAIT_1": n,
		"FIN_WAIT_1->FIN_WAIT_2": n, "FIN_WAIT_2->TIME_WAIT": n,
		"CLOSED->SYN_RCVD": n, "SYN_RCVD->ESTABLISHED": n, "ESTABLISHED->CLOSE_WAIT": n,
		"CLOSE_WAIT->LAST_ACK": n, "LAST_ACK->CLOSED": n,
	}
}

// transitions is every tcpstate_transitions_total series that is not 0,
// by "FROM->TO".
func transitions(m exportertest.Metrics) map[string]float64 {
	out := map[string]float64{}
	for _, x := range m.All("tcpstate_transitions_total") {
		var from, to string
		for _, l := range x.GetLabel() {
			switch l.GetName() {
			case "from":
				from = l.GetValue()
			case "to":
				to = l.GetValue()
			}
		}
		if v := x.GetCounter().GetValue(); v != 0 {
			out[from+"->"+to] = v
		}
	}
	return out
}

// stayCounts is tcpstate_state_duration_seconds_count by state, for the
// states with a stay.
func stayCounts(m exportertest.Metrics) map[string]uint64 {
	out := map[string]uint64{}
	for _, st := range stateNames {
		if n, _, _ := m.Histogram("tcpstate_state_duration_seconds", "state="+st); n != 0 {
			out[st] = n
		}
	}
	return out
}

// zeroCounts is socketCounts of an empty namespace.
func zeroCounts() map[string]map[string]int {
	out := map[string]map[string]int{}
	for _, fam := range []string{"ipv4", "ipv6"} {
		out[fam] = map[string]int{}
		for _, st := range stateNames {
			out[fam][st] = 0
		}
	}
	return out
}

// kernelCounts dumps the namespace at path with sock_diag, as `ss` does,
// and counts its sockets as socketCounts does.
func kernelCounts(t *testing.T, path string) map[string]map[string]int {
	t.Helper()
	c, err := netlinkdiag.Dial(netlinkdiag.Options{NetNS: path})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got := zeroCounts()
	err = c.DumpTCP(context.Background(), netlinkdiag.Request{}, func(s *netlinkdiag.Socket) error {
		st, ok := collector.FromKernel(s.State)
		if !ok {
			return fmt.Errorf("socket %v in kernel state %d, which has no documented name", s.Src, s.State)
		}
		got[familyLabel(int(s.Family))][st.String()]++
		return nil
	})
	if err != nil {
		t.Fatalf("dump %s: %v", path, err)
	}
	return got
}

// checkNoLoss fails the test for any event lost or any correction a dump
// made.
func checkNoLoss(t *testing.T, m exportertest.Metrics) {
	t.Helper()
	checkNoLossBut(t, m, "")
}

// checkNoLossBut is checkNoLoss, a loss for reason aside.
func checkNoLossBut(t *testing.T, m exportertest.Metrics, reason string) {
	t.Helper()
	for _, r := range []string{"ring_full", "recursion", "malformed"} {
		if r == reason {
			continue
		}
		if v := m.Value("tcpstate_events_lost_total", "reason="+r); v != 0 {
			t.Errorf("tcpstate_events_lost_total{reason=%q} = %v, want 0", r, v)
		}
	}
	for _, kind := range []string{"state", "handover", "unannounced", "vanished"} {
		if v := m.Value("tcpstate_reconcile_corrections_total", "kind="+kind); v != 0 {
			t.Errorf("tcpstate_reconcile_corrections_total{kind=%q} = %v, want 0", kind, v)
		}
	}
}

// checkStays holds the histogram of state's stays to the script's: as many,
// their sum within tol a stay of the script's (skipped when tol is 0), and
// every classic bucket between the stays that surely fit in it and those
// that may.
func checkStays(t *testing.T, m exportertest.Metrics, state string, want []stay, tol time.Duration) {
	t.Helper()
	count, sum, buckets := m.Histogram("tcpstate_state_duration_seconds", "state="+state)
	var est, lo, hi int64
	for _, s := range want {
		est, lo, hi = est+s.est, lo+s.lo, hi+s.hi
	}
	t.Logf("%s: %d stays, sum %.6fs; the script's %d, sum %.6fs (kernel's within [%.6f, %.6f])",
		state, count, sum, len(want), seconds(est), seconds(lo), seconds(hi))
	if count != uint64(len(want)) {
		t.Errorf("%s: %d stays, want %d", state, count, len(want))
		return
	}
	if tol > 0 {
		if d := math.Abs(sum - seconds(est)); d > float64(count)*tol.Seconds() {
			t.Errorf("%s: stays sum to %.6fs, the script's to %.6fs: %.3f ms apart, more than %v for each of %d",
				state, sum, seconds(est), d*1e3, tol, count)
		}
	}
	if sum < seconds(lo)-1e-6 || sum > seconds(hi)+1e-6 {
		t.Errorf("%s: stays sum to %.6fs, outside [%.6f, %.6f] that the script's calls bracket", state, sum, seconds(lo), seconds(hi))
	}
	bounds := make([]float64, 0, len(buckets))
	for b := range buckets {
		bounds = append(bounds, b)
	}
	slices.Sort(bounds)
	for _, b := range bounds {
		var surely, maybe uint64
		for _, s := range want {
			if seconds(s.hi) <= b {
				surely++
			}
			if seconds(s.lo) <= b {
				maybe++
			}
		}
		if got := buckets[b]; got < surely || got > maybe {
			t.Errorf("%s: %d stays of at most %gs, want between %d and %d", state, got, b, surely, maybe)
		}
	}
}

func seconds(ns int64) float64 { return float64(ns) / 1e9 }

func testPreciseTimeline(t *testing.T, fam, conns, workers int) {
	const interval = 5 * time.Second
	name, path := netnstest.New(t)
	r := startPrecise(t, name, path, interval)
	// Right after a dump, the whole timeline fits before the next.
	m := r.nextDump(t, r.scrape(t), interval+5*time.Second)
	polls := m.Value("tcpstate_polls_total")
	start := time.Now()
	st, err := runTimeline(path, fam, conns, workers, timelineSeed)
	if err != nil {
		t.Fatalf("timeline (seed %d): %v", timelineSeed, err)
	}
	ran := time.Since(start)
	m = r.until(t, 3*time.Second, fmt.Sprintf("%d LAST_ACK->CLOSED", conns), func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_transitions_total", "from=LAST_ACK", "to=CLOSED") >= float64(conns)
	})
	t.Logf("%d %s connections, %d at a time, in %v (seed %d); counted %v after the dump before it; %v events",
		conns, familyLabel(fam), workers, ran.Round(time.Millisecond), timelineSeed, time.Since(start).Round(time.Millisecond), m.Value("tcpstate_events_total"))
	if p := m.Value("tcpstate_polls_total"); p != polls {
		lost := m.Value("tcpstate_events_lost_total", "reason=recursion")
		if lost == 0 || lost > float64(conns)/10 {
			t.Fatalf("a dump came during the timeline (%v dumps, %v before it; it ran %v of the %v between dumps; %v events lost): the events alone are not tested",
				p, polls, ran, interval, lost)
		}
		// The kernel skipped the program while it ran on the same CPU
		// (README, precise mode): the loss was counted and a dump
		// repaired it at once.
		t.Logf("known issue: %v events lost to recursion, repaired by a dump", lost)
		if d := cmp.Diff(kernelCounts(t, path), socketCounts(r.nextDump(t, m, interval+5*time.Second))); d != "" {
			t.Errorf("tcpstate_sockets after a repairing dump (-kernel +exporter)\n%s", d)
		}
		return
	}

	// From the events alone. An orphaned client's FIN_WAIT1 -> FIN_WAIT2
	// and hand-over that the kernel did not announce (README, precise
	// mode) is repaired from its server's close, and counted.
	fl := familyLabel(fam)
	if peer := m.Value("tcpstate_reconcile_corrections_total", "kind=peer"); peer > 0 {
		t.Logf("known issue (README, precise mode): %v of %d clients' FIN_WAIT1 -> FIN_WAIT2 and hand-over unannounced, repaired from their peers' events", peer, conns)
	}
	wantSockets := zeroCounts()
	wantSockets[fl]["TIME_WAIT"] = conns
	if d := cmp.Diff(wantSockets, socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets before any dump, right after the timeline (-want +got)\n%s", d)
	}
	wantTr := closeTransitions(conns, workers)
	if d := cmp.Diff(wantTr, transitions(m)); d != "" {
		t.Errorf("tcpstate_transitions_total (-want +got)\n%s", d)
	}
	wantStays := map[string]uint64{
		"LISTEN": uint64(workers), "SYN_SEND": uint64(conns), "SYN_RCVD": uint64(conns), "ESTABLISHED": 2 * uint64(conns),
		"FIN_WAIT_1": uint64(conns), "FIN_WAIT_2": uint64(conns), "CLOSE_WAIT": uint64(conns), "LAST_ACK": uint64(conns),
	}
	if d := cmp.Diff(wantStays, stayCounts(m)); d != "" {
		t.Errorf("tcpstate_state_duration_seconds_count (-want +got)\n%s", d)
	}
	checkStays(t, m, "ESTABLISHED", st["ESTABLISHED"], time.Millisecond)
	checkStays(t, m, "CLOSE_WAIT", st["CLOSE_WAIT"], time.Millisecond)
	checkStays(t, m, "SYN_SEND", st["SYN_SEND"], 0)
	if count, sum, _ := m.Histogram("tcpstate_state_duration_seconds", "state=SYN_SEND"); sum <= 0 || sum/float64(max(count, 1)) > 0.003 {
		t.Errorf("SYN_SEND stays (loopback handshakes): %d, mean %.6fs; want each above zero, a few ms at most", count, sum/float64(max(count, 1)))
	}
	checkNoLoss(t, m)

	// The next dump finds what the kernel holds, and corrects nothing.
	m = r.nextDump(t, m, interval+5*time.Second)
	if d := cmp.Diff(kernelCounts(t, r.path), socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets after the next dump (-kernel +exporter)\n%s", d)
	}
	if d := cmp.Diff(wantSockets, socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets after the next dump (-want +got)\n%s", d)
	}
	checkNoLoss(t, m)
	if d := cmp.Diff(wantTr, transitions(m)); d != "" {
		t.Errorf("tcpstate_transitions_total after the next dump (-want +got)\n%s", d)
	}
}

// TestIntegrationPreciseEdgeCases: what the plain timeline does not pass
// through, each case in a namespace and an exporter of its own.
func TestIntegrationPreciseEdgeCases(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTool(t, "ip")
	t.Parallel()
	eventlock.Exact(t)
	t.Run("preexisting", func(t *testing.T) { t.Parallel(); testPreciseRestart(t) })
	t.Run("closing", func(t *testing.T) { t.Parallel(); testPreciseClosing(t) })
	t.Run("reset", func(t *testing.T) { t.Parallel(); testPreciseReset(t) })
	t.Run("ipv6", func(t *testing.T) { t.Parallel(); testPreciseTimeline(t, unix.AF_INET6, 100, 5) })
	t.Run("time_wait_expiry", func(t *testing.T) { t.Parallel(); testPreciseTimeWaitExpiry(t) })
}

// fdSet closes the fds it holds when the test ends, but for those closed
// before.
type fdSet map[int]bool

func holdFDs(t *testing.T) fdSet {
	s := fdSet{}
	t.Cleanup(func() {
		for fd := range s {
			unix.Close(fd)
		}
	})
	return s
}

func (s fdSet) close(fd int) {
	delete(s, fd)
	unix.Close(fd)
}

// smallBuffers is the socket buffer size, in bytes, that lets a client
// fill its server's receive window quickly. The kernel doubles it.
const smallBuffers = 4096

// pairs opens a listener for IPv4 in the namespace at path and n connected
// pairs to it, all held in fds. With small, the clients' send buffers and
// the servers' receive buffers are smallBuffers, set before connecting.
func pairs(t *testing.T, path string, fds fdSet, n int, small bool) (ln int, clients, servers []int) {
	t.Helper()
	err := netlinkdiag.Do(path, func() error {
		var port uint16
		var err error
		if ln, port, err = statezoo.Listen(unix.AF_INET, n); err != nil {
			return err
		}
		fds[ln] = true
		if small {
			if err := unix.SetsockoptInt(ln, unix.SOL_SOCKET, unix.SO_RCVBUF, smallBuffers); err != nil {
				return fmt.Errorf("set SO_RCVBUF: %w", err)
			}
		}
		for range n {
			c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			if err != nil {
				return fmt.Errorf("socket: %w", err)
			}
			fds[c] = true
			if small {
				if err := unix.SetsockoptInt(c, unix.SOL_SOCKET, unix.SO_SNDBUF, smallBuffers); err != nil {
					return fmt.Errorf("set SO_SNDBUF: %w", err)
				}
			}
			if err := unix.Connect(c, loopback4(port)); err != nil {
				return fmt.Errorf("connect: %w", err)
			}
			s, err := statezoo.Accept(ln)
			if err != nil {
				return err
			}
			fds[s] = true
			clients, servers = append(clients, c), append(servers, s)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ln, clients, servers
}

// halfClose half-closes client and waits until its server is in
// CLOSE_WAIT and it is in FIN_WAIT_2.
func halfClose(client, server int) error {
	if err := statezoo.HalfClose(client); err != nil {
		return err
	}
	if _, err := awaitState(server, netlinkdiag.StateCloseWait); err != nil {
		return err
	}
	_, err := awaitState(client, netlinkdiag.StateFinWait2)
	return err
}

// closeOpenly ends a connection with no orphan on either side: the client
// half-closes, the server closes once in CLOSE_WAIT, and the client's fd
// is closed once its TIME_WAIT remnant has taken over. It returns when the
// client entered TIME_WAIT, within [lo, hi].
func closeOpenly(fds fdSet, client, server int) (lo, hi int64, err error) {
	if err := halfClose(client, server); err != nil {
		return 0, 0, err
	}
	lo = monotonic()
	fds.close(server) // its FIN puts the client in TIME_WAIT
	if hi, err = awaitState(client, netlinkdiag.StateClose); err != nil {
		return 0, 0, err
	}
	fds.close(client)
	return lo, hi, nil
}

// testPreciseRestart: sockets older than the exporter (ESTABLISHED pairs, a
// half-closed pair in FIN_WAIT_2 and CLOSE_WAIT) are counted from the first
// dump with unknown age; when they end, their transitions are counted but
// not their stays, while the stays their events begin are.
func testPreciseRestart(t *testing.T) {
	const n = 3
	name, path := netnstest.New(t)
	fds := holdFDs(t)
	ln, clients, servers := pairs(t, path, fds, n+1, false)
	if err := halfClose(clients[n], servers[n]); err != nil {
		t.Fatal(err)
	}
	want := zeroCounts()
	want["ipv4"]["LISTEN"], want["ipv4"]["ESTABLISHED"], want["ipv4"]["FIN_WAIT_2"], want["ipv4"]["CLOSE_WAIT"] = 1, 2*n, 1, 1
	if d := cmp.Diff(want, kernelCounts(t, path)); d != "" {
		t.Fatalf("the namespace before the exporter starts (-want +kernel)\n%s", d)
	}

	r := startPrecise(t, name, path, time.Second)
	m := r.until(t, 5*time.Second, "the first dump", func(m exportertest.Metrics) bool { return m.Value("tcpstate_polls_total") >= 1 })
	if d := cmp.Diff(want, socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets after the first dump (-want +got)\n%s", d)
	}
	if tr := transitions(m); len(tr) != 0 {
		t.Errorf("transitions counted for sockets older than the exporter: %v", tr)
	}

	// End them all.
	for i := range n + 1 {
		if i == n {
			// Already half-closed: the server's close ends it.
			fds.close(servers[i])
			if _, err := awaitState(clients[i], netlinkdiag.StateClose); err != nil {
				t.Fatal(err)
			}
			fds.close(clients[i])
			continue
		}
		if _, _, err := closeOpenly(fds, clients[i], servers[i]); err != nil {
			t.Fatal(err)
		}
	}
	fds.close(ln)
	m = r.until(t, 3*time.Second, "the closes' events", func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_transitions_total", "from=LAST_ACK", "to=CLOSED") >= n+1
	})
	wantTr := map[string]float64{
		"ESTABLISHED->FIN_WAIT_1": n, "FIN_WAIT_1->FIN_WAIT_2": n, "FIN_WAIT_2->TIME_WAIT": n + 1,
		"ESTABLISHED->CLOSE_WAIT": n, "CLOSE_WAIT->LAST_ACK": n + 1, "LAST_ACK->CLOSED": n + 1,
		"LISTEN->CLOSED": 1,
	}
	if d := cmp.Diff(wantTr, transitions(m)); d != "" {
		t.Errorf("tcpstate_transitions_total (-want +got)\n%s", d)
	}
	// Not the stays begun before the exporter: ESTABLISHED, LISTEN, and the
	// half-closed pair's FIN_WAIT_2 and CLOSE_WAIT.
	wantStays := map[string]uint64{"FIN_WAIT_1": n, "FIN_WAIT_2": n, "CLOSE_WAIT": n, "LAST_ACK": n + 1}
	if d := cmp.Diff(wantStays, stayCounts(m)); d != "" {
		t.Errorf("tcpstate_state_duration_seconds_count (-want +got)\n%s", d)
	}
	wantEnd := zeroCounts()
	wantEnd["ipv4"]["TIME_WAIT"] = n + 1
	if d := cmp.Diff(wantEnd, socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets after the closes (-want +got)\n%s", d)
	}
	r.checkNextDump(t, m, 5*time.Second)
}

// TestIntegrationPreciseChurnWhileLoading: connections open and close, 3000
// a second, while the exporter starts, so sockets change between the BPF
// program's attachment and the first dump. Whatever was corrected, once the
// churn stops the counts after the next dumps are the kernel's exactly.
//
// It does not run in parallel: every exporter's program runs for every
// TCP state change of the host, and under this churn the others' would
// lose events to recursion (one program interrupted on its CPU by a
// change it must then miss), which the other tests rightly count as
// failures.
func TestIntegrationPreciseChurnWhileLoading(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTool(t, "ip")
	eventlock.Churn(t)
	name, path := netnstest.New(t)
	holdCloseWait(t, path, 4)
	churn, err := loadtest.StartChurn(path, loadtest.ChurnOptions{Workers: 2, GracefulEvery: 3, Rate: 3000})
	if err != nil {
		t.Fatal(err)
	}
	defer churn.Stop()
	r := startPrecise(t, name, path, time.Second)
	m := r.until(t, 5*time.Second, "the first dump", func(m exportertest.Metrics) bool { return m.Value("tcpstate_polls_total") >= 1 })
	first := corrections(m)
	time.Sleep(3 * time.Second)
	during := corrections(r.scrape(t))
	cs := churn.Stop()
	if cs.Errors != 0 {
		t.Errorf("%d connections of the churn failed; first: %v", cs.Errors, cs.FirstError)
	}
	// Two dumps confirm what one missed.
	for range collector.MissesToClose + 1 {
		m = r.nextDump(t, m, 5*time.Second)
	}
	truth := kernelCounts(t, path)
	if d := cmp.Diff(truth, socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets after the churn stopped and %d dumps (-kernel +exporter)\n%s", collector.MissesToClose+1, d)
	}
	for _, reason := range []string{"ring_full", "recursion", "malformed"} {
		if v := m.Value("tcpstate_events_lost_total", "reason="+reason); v != 0 {
			t.Errorf("tcpstate_events_lost_total{reason=%q} = %v, want 0", reason, v)
		}
	}
	t.Logf("transitions: %v", transitions(m))
	t.Logf("churned %d connections (%d closed gracefully) at %.0f/s, %v events; the kernel then held %d TIME_WAIT, %d CLOSE_WAIT; corrections at the first dump %v, after 3 s of churn %v, at the end %v",
		cs.Connections, cs.Graceful, cs.Rate(), m.Value("tcpstate_events_total"),
		truth["ipv4"]["TIME_WAIT"]+truth["ipv6"]["TIME_WAIT"], truth["ipv4"]["CLOSE_WAIT"]+truth["ipv6"]["CLOSE_WAIT"], first, during, corrections(m))
}

// corrections is tcpstate_reconcile_corrections_total by kind.
func corrections(m exportertest.Metrics) map[string]float64 {
	out := map[string]float64{}
	for _, kind := range []string{"state", "handover", "unannounced", "vanished"} {
		out[kind] = m.Value("tcpstate_reconcile_corrections_total", "kind="+kind)
	}
	return out
}

// testPreciseClosing: simultaneous close, made deterministic. Each client
// fills its server's small receive window (the server does not read) and
// half-closes, so its FIN waits behind unsent data (FIN_WAIT_1); then the
// server half-closes, and the client, getting the server's FIN before its
// own has left, is in CLOSING (the server, its FIN acknowledged, in
// FIN_WAIT_2). When the server reads, the client's FIN follows the data
// and both sides end in TIME_WAIT.
func testPreciseClosing(t *testing.T) {
	const n = 3
	name, path := netnstest.New(t)
	r := startPrecise(t, name, path, time.Second)
	fds := holdFDs(t)
	ln, clients, servers := pairs(t, path, fds, n, true)
	if err := statezoo.FillAndHalfClose(clients, time.Now().Add(5*time.Second)); err != nil {
		t.Fatal(err)
	}
	entered := make([][2]int64, n) // when each client entered CLOSING, within
	for i, s := range servers {
		entered[i][0] = monotonic()
		if err := statezoo.HalfClose(s); err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		var err error
		if entered[i][1], err = awaitState(clients[i], netlinkdiag.StateClosing); err != nil {
			t.Fatal(err)
		}
		if _, err := awaitState(servers[i], netlinkdiag.StateFinWait2); err != nil {
			t.Fatal(err)
		}
	}
	m := r.until(t, 3*time.Second, fmt.Sprintf("%d CLOSING", n), func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_sockets", "family=ipv4", "state=CLOSING") == n
	})
	if v := m.Value("tcpstate_sockets", "family=ipv4", "state=FIN_WAIT_2"); v != n {
		t.Errorf("FIN_WAIT_2 = %v while the clients are CLOSING, want %d (the servers)", v, n)
	}

	// The servers read: the data, then each client's FIN.
	var closing []stay
	buf := make([]byte, 64<<10)
	for i, s := range servers {
		left := monotonic()
		if err := drain(s, buf); err != nil {
			t.Fatal(err)
		}
		end, err := awaitState(clients[i], netlinkdiag.StateClose)
		if err != nil {
			t.Fatal(err)
		}
		closing = append(closing, stay{est: left - entered[i][0], lo: left - entered[i][1], hi: end - entered[i][0]})
		fds.close(s)
		fds.close(clients[i])
	}
	fds.close(ln)
	m = r.until(t, 3*time.Second, "the CLOSING sockets' end", func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_transitions_total", "from=CLOSING", "to=TIME_WAIT") >= n
	})
	wantTr := map[string]float64{
		"CLOSED->LISTEN": 1, "LISTEN->CLOSED": 1,
		"CLOSED->SYN_SEND": n, "SYN_SEND->ESTABLISHED": n, "CLOSED->SYN_RCVD": n, "SYN_RCVD->ESTABLISHED": n,
		"ESTABLISHED->FIN_WAIT_1": 2 * n, "FIN_WAIT_1->CLOSING": n, "CLOSING->TIME_WAIT": n,
		"FIN_WAIT_1->FIN_WAIT_2": n, "FIN_WAIT_2->TIME_WAIT": n,
	}
	if d := cmp.Diff(wantTr, transitions(m)); d != "" {
		t.Errorf("tcpstate_transitions_total (-want +got)\n%s", d)
	}
	want := zeroCounts()
	want["ipv4"]["TIME_WAIT"] = 2 * n
	if d := cmp.Diff(want, socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets after the simultaneous closes (-want +got)\n%s", d)
	}
	checkStays(t, m, "CLOSING", closing, 0)
	r.checkNextDump(t, m, 5*time.Second)
}

// drain reads the non-blocking fd until its peer's FIN, waiting at most 5 s.
func drain(fd int, buf []byte) error {
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		k, err := unix.Read(fd, buf)
		switch {
		case k == 0 && err == nil:
			return nil
		case err == unix.EAGAIN:
			if _, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 100); err != nil && err != unix.EINTR {
				return fmt.Errorf("poll: %w", err)
			}
		case err != nil && err != unix.EINTR:
			return fmt.Errorf("read: %w", err)
		}
	}
	return fmt.Errorf("fd %d: no FIN within 5 s", fd)
}

// testPreciseReset: connections reset rather than closed. A client that
// closes with SO_LINGER 0 goes from ESTABLISHED straight to CLOSED, and so
// does its server on the reset; a half-closed client in FIN_WAIT_2 whose
// server resets from CLOSE_WAIT goes to CLOSED too, not to TIME_WAIT. No
// socket is left.
func testPreciseReset(t *testing.T) {
	const n = 3
	name, path := netnstest.New(t)
	r := startPrecise(t, name, path, time.Second)
	fds := holdFDs(t)
	ln, clients, servers := pairs(t, path, fds, 2*n, false)
	reset := func(fd int) {
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
			t.Fatal(err)
		}
		fds.close(fd)
	}
	for i := range n {
		reset(clients[i])
		if _, err := awaitState(servers[i], netlinkdiag.StateClose); err != nil {
			t.Fatal(err)
		}
		fds.close(servers[i])
	}
	for i := n; i < 2*n; i++ {
		if err := halfClose(clients[i], servers[i]); err != nil {
			t.Fatal(err)
		}
		reset(servers[i])
		if _, err := awaitState(clients[i], netlinkdiag.StateClose); err != nil {
			t.Fatal(err)
		}
		fds.close(clients[i])
	}
	fds.close(ln)
	m := r.until(t, 3*time.Second, "the resets' events", func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_transitions_total", "from=LISTEN", "to=CLOSED") >= 1
	})
	wantTr := map[string]float64{
		"CLOSED->LISTEN": 1, "LISTEN->CLOSED": 1,
		"CLOSED->SYN_SEND": 2 * n, "SYN_SEND->ESTABLISHED": 2 * n, "CLOSED->SYN_RCVD": 2 * n, "SYN_RCVD->ESTABLISHED": 2 * n,
		"ESTABLISHED->CLOSED":     2 * n,
		"ESTABLISHED->FIN_WAIT_1": n, "FIN_WAIT_1->FIN_WAIT_2": n, "FIN_WAIT_2->CLOSED": n,
		"ESTABLISHED->CLOSE_WAIT": n, "CLOSE_WAIT->CLOSED": n,
	}
	if d := cmp.Diff(wantTr, transitions(m)); d != "" {
		t.Errorf("tcpstate_transitions_total (-want +got)\n%s", d)
	}
	wantStays := map[string]uint64{
		"LISTEN": 1, "SYN_SEND": 2 * n, "SYN_RCVD": 2 * n, "ESTABLISHED": 4 * n,
		"FIN_WAIT_1": n, "FIN_WAIT_2": n, "CLOSE_WAIT": n,
	}
	if d := cmp.Diff(wantStays, stayCounts(m)); d != "" {
		t.Errorf("tcpstate_state_duration_seconds_count (-want +got)\n%s", d)
	}
	if d := cmp.Diff(zeroCounts(), socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets after the resets (-want +got)\n%s", d)
	}
	r.checkNextDump(t, m, 5*time.Second)
}

// testPreciseTimeWaitExpiry: TIME_WAIT remnants are counted the moment they
// exist and, as their end emits no event, are gone when their 60 s are up,
// by the tracker's timer. The kernel gives no way to shorten TIME_WAIT
// (TCP_TIMEWAIT_LEN is a constant; tcp_fin_timeout sets the orphaned
// FIN_WAIT_2 remnant's life, not TIME_WAIT's), so this takes a minute, in
// parallel with the other tests. The kernel's timer wheel fires a 60 s
// timer up to a couple of seconds late; dumps every second while it has
// not must neither count the remnants again nor correct anything.
func testPreciseTimeWaitExpiry(t *testing.T) {
	const n = 3
	name, path := netnstest.New(t)
	r := startPrecise(t, name, path, time.Second)
	fds := holdFDs(t)
	ln, clients, servers := pairs(t, path, fds, n, false)
	var first, last int64 = math.MaxInt64, 0 // TIME_WAIT entered between
	for i := range n {
		lo, hi, err := closeOpenly(fds, clients[i], servers[i])
		if err != nil {
			t.Fatal(err)
		}
		first, last = min(first, lo), max(last, hi)
	}
	fds.close(ln)
	m := r.until(t, 2*time.Second, fmt.Sprintf("%d TIME_WAIT", n), func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_sockets", "family=ipv4", "state=TIME_WAIT") == n
	})
	t.Logf("%d TIME_WAIT counted %v after the last entered it", n, time.Duration(monotonic()-last).Round(time.Millisecond))

	life := int64(collector.TimeWaitLifetime)
	var gone, kernelGone int64 // when the exporter, the kernel, first showed none
	var early, again []string
	for {
		time.Sleep(250 * time.Millisecond)
		m = r.scrape(t)
		now := monotonic()
		at := fmt.Sprintf("%.2fs", seconds(now-first))
		tw := m.Value("tcpstate_sockets", "family=ipv4", "state=TIME_WAIT")
		switch {
		case tw != n && now < first+life && gone == 0:
			early = append(early, fmt.Sprintf("%v at %s", tw, at))
		case tw == 0 && gone == 0:
			gone = now
		case tw != 0 && gone != 0:
			again = append(again, fmt.Sprintf("%v at %s", tw, at))
		}
		if kernelGone == 0 && kernelCounts(t, path)["ipv4"]["TIME_WAIT"] == 0 {
			kernelGone = now
		}
		if kernelGone != 0 && now > kernelGone+int64(2500*time.Millisecond) || now > first+life+int64(10*time.Second) {
			break
		}
	}
	t.Logf("TIME_WAIT entered within %.6fs; the exporter showed none from %.2fs, the kernel from %.2fs (seconds after the first entered)",
		seconds(last-first), seconds(gone-first), seconds(kernelGone-first))
	if len(early) > 0 {
		t.Errorf("TIME_WAIT count not %d before 60 s were up: %v", n, early)
	}
	switch {
	case gone == 0:
		t.Errorf("TIME_WAIT still counted %.1fs after the first entered it", seconds(monotonic()-first))
	case gone < first+life || gone > last+life+int64(1500*time.Millisecond):
		t.Errorf("TIME_WAIT gone from the count %.2fs after the first entered it, want between 60 s after the first and 61.5 s after the last (%.3fs later)",
			seconds(gone-first), seconds(last-first))
	}
	if len(again) > 0 {
		t.Errorf("TIME_WAIT counted again after it had gone: %v", again)
	}
	if v := m.Value("tcpstate_transitions_total", "from=TIME_WAIT", "to=CLOSED"); v != n {
		t.Errorf("TIME_WAIT->CLOSED = %v, want %d", v, n)
	}
	if v := m.Value("tcpstate_transitions_total", "from=CLOSED", "to=TIME_WAIT"); v > 0 {
		t.Errorf("CLOSED->TIME_WAIT = %v, want none: every remnant came from FIN_WAIT_2", v)
	}
	if count, sum, _ := m.Histogram("tcpstate_state_duration_seconds", "state=TIME_WAIT"); count != n || math.Abs(sum-n*collector.TimeWaitLifetime.Seconds()) > 1e-6 {
		t.Errorf("TIME_WAIT stays: %d, sum %.6fs; want %d of %v", count, sum, n, collector.TimeWaitLifetime)
	}
	if d := cmp.Diff(kernelCounts(t, path), socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets at the end (-kernel +exporter)\n%s", d)
	}
	// Over its 65 s the program runs for every TCP change on the host,
	// other packages' tests included, and may now and then be skipped on
	// a CPU where it already runs: counted, and repaired by a dump, which
	// must then correct nothing here.
	if v := m.Value("tcpstate_events_lost_total", "reason=recursion"); v > 0 {
		t.Logf("%v events of the host lost to recursion, each followed by a dump", v)
	}
	checkNoLossBut(t, m, "recursion")
}

// TestIntegrationPreciseOrphanFinWait2: a client closes while its server
// never does (CLOSE_WAIT). The orphaned client hands over to a timewait
// remnant that waits for the server's FIN in the FIN_WAIT2 substate, and
// sock_diag shows it in FIN_WAIT_2: the exporter must count it there, not
// in TIME_WAIT, both from the events and after a dump, and no dump may
// correct it. When the server closes, the remnant turns into TIME_WAIT
// (no event; the next dump sees it, its timer pinning the moment), and the
// client's FIN_WAIT_2 stay ends then.
func TestIntegrationPreciseOrphanFinWait2(t *testing.T) {
	netnstest.RequireRoot(t)
	requireTool(t, "ip")
	t.Parallel()
	eventlock.Exact(t)
	// Now and then the kernel does not announce the orphan's FIN_WAIT1 ->
	// FIN_WAIT2 and hand-over (README, precise mode): that is another
	// test's; this one runs again, in a new namespace.
	for attempt := 1; !testPreciseOrphanFinWait2(t); attempt++ {
		if attempt == 3 {
			t.Fatalf("the orphan's FIN_WAIT1 -> FIN_WAIT2 was not announced %d times in a row", attempt)
		}
	}
}

// testPreciseOrphanFinWait2 is TestIntegrationPreciseOrphanFinWait2 in a
// namespace of its own. It reports false, having checked nothing, when the
// kernel did not announce the orphan's change.
func testPreciseOrphanFinWait2(t *testing.T) bool {
	const interval = 2 * time.Second
	name, path := netnstest.New(t)
	r := startPrecise(t, name, path, interval)
	fds := holdFDs(t)
	m := r.nextDump(t, r.scrape(t), interval+3*time.Second)
	polls := m.Value("tcpstate_polls_total")

	ln, clients, servers := pairs(t, path, fds, 1, false)
	closed := monotonic()
	fds.close(clients[0]) // orphaned: no fd holds it
	if _, err := awaitState(servers[0], netlinkdiag.StateCloseWait); err != nil {
		t.Fatal(err)
	}
	held := zeroCounts()
	held["ipv4"]["LISTEN"], held["ipv4"]["FIN_WAIT_2"], held["ipv4"]["CLOSE_WAIT"] = 1, 1, 1
	// The server's ACK of the client's FIN may still be on its way.
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		d := cmp.Diff(held, kernelCounts(t, path))
		if d == "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the namespace a second after the client's close (-want +kernel)\n%s", d)
		}
	}
	heldTr := map[string]float64{
		"CLOSED->LISTEN": 1, "CLOSED->SYN_SEND": 1, "SYN_SEND->ESTABLISHED": 1, "CLOSED->SYN_RCVD": 1, "SYN_RCVD->ESTABLISHED": 1,
		"ESTABLISHED->FIN_WAIT_1": 1, "FIN_WAIT_1->FIN_WAIT_2": 1, "ESTABLISHED->CLOSE_WAIT": 1,
	}
	m = r.until(t, 1500*time.Millisecond, "the close's events", func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_transitions_total", "from=ESTABLISHED", "to=CLOSE_WAIT") >= 1
	})
	if p := m.Value("tcpstate_polls_total"); p != polls {
		t.Fatalf("a dump came before the events were counted (%v dumps, %v before): the events alone are not tested", p, polls)
	}
	if m.Value("tcpstate_sockets", "family=ipv4", "state=FIN_WAIT_1") == 1 {
		// The kernel has shown the client in FIN_WAIT2 (above), and every
		// publish applies the events recorded before it: a second later,
		// if the client is still in FIN_WAIT_1, its change never came.
		time.Sleep(1500 * time.Millisecond)
		again := r.scrape(t)
		if again.Value("tcpstate_sockets", "family=ipv4", "state=FIN_WAIT_1") == 1 || again.Value("tcpstate_polls_total") != polls {
			t.Logf("known kernel gap: the orphan's FIN_WAIT1 -> FIN_WAIT2 was not announced; again in a new namespace")
			return false
		}
		m = again
	}
	if d := cmp.Diff(held, socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets from the events, before a dump (-want +got)\n%s", d)
	}
	if d := cmp.Diff(heldTr, transitions(m)); d != "" {
		t.Errorf("tcpstate_transitions_total from the events, before a dump (-want +got)\n%s", d)
	}

	m = r.nextDump(t, m, interval+3*time.Second)
	if d := cmp.Diff(held, socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets after a dump (-want +got)\n%s", d)
	}
	if d := cmp.Diff(heldTr, transitions(m)); d != "" {
		t.Errorf("tcpstate_transitions_total after a dump (-want +got)\n%s", d)
	}
	checkNoLoss(t, m)

	// The server closes: the remnant gets its FIN and turns into TIME_WAIT.
	ends := monotonic()
	fds.close(servers[0])
	fds.close(ln)
	m = r.nextDump(t, m, interval+3*time.Second)
	m = r.until(t, 2*time.Second, "the server's close", func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_transitions_total", "from=LAST_ACK", "to=CLOSED") >= 1
	})
	want := zeroCounts()
	want["ipv4"]["TIME_WAIT"] = 1
	if d := cmp.Diff(want, socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets after the server's close and a dump (-want +got)\n%s", d)
	}
	if d := cmp.Diff(closeTransitions(1, 1), transitions(m)); d != "" {
		t.Errorf("tcpstate_transitions_total after the server's close and a dump (-want +got)\n%s", d)
	}
	// The dump finds the remnant's TIME_WAIT timer, which pins the moment
	// to a jiffy (4 ms at HZ=250), and sock_diag's milliseconds.
	count, sum, _ := m.Histogram("tcpstate_state_duration_seconds", "state=FIN_WAIT_2")
	if fw2 := seconds(ends - closed); count != 1 || math.Abs(sum-fw2) > 0.010 {
		t.Errorf("FIN_WAIT_2 stays: %d, sum %.6fs; want 1 of %.6fs (the client's close to the server's) within 10 ms", count, sum, fw2)
	}
	checkNoLoss(t, m)
	return true
}
