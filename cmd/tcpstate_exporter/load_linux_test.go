package main

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/internal/eventlock"
	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/loadtest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
)

// loadDuration is how long TestIntegrationLoad churns: 30 s, or
// TCPSTATE_LOAD_DURATION (a Go duration such as 10m) for a soak run, which
// then also waits for the TIME_WAIT remnants to expire (give go test a
// -timeout to match).
func loadDuration(t *testing.T) time.Duration {
	s := os.Getenv("TCPSTATE_LOAD_DURATION")
	if s == "" {
		return 30 * time.Second
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 10*time.Second {
		t.Fatalf("TCPSTATE_LOAD_DURATION=%q: want a duration of at least 10s", s)
	}
	return d
}

// loadSample is one second of the load test, seen from outside the
// exporter (/proc) and from its own metrics.
type loadSample struct {
	at         time.Duration
	proc       loadtest.ProcSample
	goroutines float64
	polls      float64
	tracked    float64
}

func (s loadSample) String() string {
	u := s.fds()
	return fmt.Sprintf("%5.1fs: %3d fds (%2d TCP, %2d transient), %2d threads, %3.0f goroutines, RSS %5.1f MiB, %4.0f polls, %5.0f tracked",
		s.at.Seconds(), s.proc.FDs, u.tcp, u.transient, s.proc.Threads, s.goroutines, float64(s.proc.RSS)/(1<<20), s.polls, s.tracked)
}

// fdUse sorts the exporter's descriptors by what holds them.
type fdUse struct {
	// tcp is the listener and the HTTP connections: one per client, the
	// test's own included.
	tcp int
	// transient is what one operation opens and closes again before it
	// ends: the process collector reads /proc/self/{stat,fd,limits,...}
	// one file at a time in every scrape in flight; an attribution pass
	// holds /proc, /proc/PID/fd and /proc/PID/comm; reopening the
	// sock_diag socket holds two network namespace handles, the target's
	// and the thread's own.
	transient int
	// fixed is everything else, open for the exporter's whole life: the
	// standard streams and whatever else it inherited, the runtime's epoll
	// and eventfd, the cgroup files GOMAXPROCS follows, the sock_diag
	// socket.
	fixed int
}

// Transient descriptors in flight at once, besides one per scrape: an
// attribution pass (3) and a sock_diag reopen (2).
const maxTransientBesidesScrapes = 3 + 2

func (s loadSample) fds() fdUse {
	var u fdUse
	for kind, n := range s.proc.FDKinds {
		switch kind {
		case "socket:TCP", "socket:TCPv6", "socket:MPTCP", "socket:MPTCPv6":
			u.tcp += n
		case "/proc", "net":
			u.transient += n
		default:
			u.fixed += n
		}
	}
	return u
}

// TestIntegrationLoad churns thousands of loopback connections a second
// in the observed namespace while eight clients scrape continuously, and
// watches the exporter from the outside. Every scrape must succeed; its
// descriptors must stay those it had idle, plus one connection per client
// and what the operations in flight hold for a moment; after warm-up its
// goroutines and threads must not grow and its resident memory must stay
// flat; once the load stops its descriptors and goroutines must be back to
// where they were; and once the churn stops, the tracker must hold only
// what is left: the TIME_WAIT remnants of the connections closed
// gracefully (every 50th; the rest are reset and leave nothing).
func TestIntegrationLoad(t *testing.T) {
	eventlock.Churn(t)
	const (
		interval   = 100 * time.Millisecond
		churnRate  = 5000 // connections per second, at most
		scrapers   = 8
		graceEvery = 50
	)
	duration := loadDuration(t)
	warmup := duration / 6
	name, path := netnstest.New(t)
	p := exportertest.Start(t, "--netns="+name, "--mode=poll", "--poll.interval="+interval.String())
	url := p.URL + "/metrics"
	if _, ok := eventually(t, url, 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_polls_total") >= 2
	}); !ok {
		t.Fatal("no polls")
	}
	before := exportertest.Scrape(t, url)
	baseline := before.Value("tcpstate_tracked_sockets")
	idle := loadSample{proc: sample(t, p), goroutines: before.Value("go_goroutines")}

	churn, err := loadtest.StartChurn(path, loadtest.ChurnOptions{Rate: churnRate, Workers: 4, GracefulEvery: graceEvery})
	if err != nil {
		t.Fatal(err)
	}
	defer churn.Stop()
	scrape := loadtest.StartScrapers(url, scrapers, 20*time.Millisecond, nil)
	defer scrape.Stop()

	start := time.Now()
	var samples []loadSample
	var warm loadSample
	// Churn for duration, and on until the exporter has done 1000 polls and
	// scrapes under it if a busy machine slowed it down, up to twice as long.
	enough := func(polls float64) bool {
		return time.Since(start) >= duration && polls+float64(scrape.Stats().OK) >= 1000*duration.Seconds()/30
	}
	for tick := time.NewTicker(time.Second); time.Since(start) < 2*duration; <-tick.C {
		m := exportertest.Scrape(t, url)
		s := loadSample{
			at: time.Since(start), proc: sample(t, p), goroutines: m.Value("go_goroutines"),
			polls: m.Value("tcpstate_polls_total"), tracked: m.Value("tcpstate_tracked_sockets"),
		}
		samples = append(samples, s)
		if warm.at == 0 && s.at >= warmup {
			warm = s
		}
		if enough(s.polls) {
			break
		}
	}
	end := samples[len(samples)-1]
	cs := churn.Stop()
	ss := scrape.Stop()
	var log strings.Builder
	for _, s := range samples {
		fmt.Fprintln(&log, s)
	}
	overruns := exportertest.Scrape(t, url).Value("tcpstate_poll_overruns_total")
	t.Logf("churn: %d connections (%d graceful) in %v, %.0f/s, %d failed; scrapes: %d ok, %d failed; %v polls, %v overran\n%s",
		cs.Connections, cs.Graceful, cs.Elapsed.Round(time.Millisecond), cs.Rate(), cs.Errors, ss.OK, ss.Failed, end.polls, overruns, log.String())

	if ss.Failed != 0 {
		t.Errorf("%d of %d scrapes failed; first: %v", ss.Failed, ss.Failed+ss.OK, ss.FirstError)
	}
	if cs.Errors != 0 {
		t.Errorf("%d connections of the churn failed; first: %v", cs.Errors, cs.FirstError)
	}
	if cs.Rate() < 1000 {
		t.Errorf("churned only %.0f connections/s, want thousands", cs.Rate())
	}
	if polls, ticks := end.polls-warm.polls, (end.at-warm.at).Seconds()/interval.Seconds(); polls < ticks/4 {
		t.Errorf("%v polls in %.0f intervals after warm-up: the poll loop starved", polls, ticks)
	}
	if total, want := float64(ss.OK)+end.polls, 1000*duration.Seconds()/30; total < want {
		t.Errorf("%v polls and scrapes in all, want at least %.0f", total, want)
	}
	// Under load, descriptors and goroutines move with the scrapes in
	// flight, but within bounds: one connection per client (the test's
	// own is already open idle), one transient file per scrape, a few
	// goroutines per request. How many scrapes are in flight at the moment
	// of a sample is up to the scheduler, the more the busier the machine:
	// what must not move at all is every descriptor of the other kinds.
	idleFDs := idle.fds()
	var peak int64
	for _, s := range samples {
		u := s.fds()
		if u.fixed != idleFDs.fixed {
			t.Errorf("%s: %d descriptors besides connections and transient files, %d before the load: %v, before %v", s, u.fixed, idleFDs.fixed, s.proc.FDKinds, idle.proc.FDKinds)
		}
		if u.tcp > idleFDs.tcp+scrapers {
			t.Errorf("%s: more connections than clients (%d TCP sockets before the load): %v", s, idleFDs.tcp, s.proc.FDKinds)
		}
		if u.transient > idleFDs.transient+scrapers+1+maxTransientBesidesScrapes {
			t.Errorf("%s: more transient descriptors than the scrapes in flight explain: %v", s, s.proc.FDKinds)
		}
		if s.goroutines > idle.goroutines+8*(scrapers+1) {
			t.Errorf("%s: goroutines far past what the scrapes in flight explain (%v before the load)", s, idle.goroutines)
		}
		if s.at >= warmup {
			peak = max(peak, s.proc.RSS)
		}
	}
	if end.proc.Threads > warm.proc.Threads+4 {
		t.Errorf("threads grew from %d after warm-up to %d", warm.proc.Threads, end.proc.Threads)
	}
	if limit := warm.proc.RSS*13/10 + 8<<20; peak > limit {
		t.Errorf("RSS rose from %.1f MiB after warm-up to a peak of %.1f MiB", float64(warm.proc.RSS)/(1<<20), float64(peak)/(1<<20))
	}

	// The churn is over: only TIME_WAIT remnants stay tracked, and they
	// are counted as such.
	var m exportertest.Metrics
	settled := false
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(interval) {
		m = exportertest.Scrape(t, url)
		tw := m.Value("tcpstate_sockets", "family=ipv4", "state=TIME_WAIT") + m.Value("tcpstate_sockets", "family=ipv6", "state=TIME_WAIT")
		if m.Value("tcpstate_tracked_sockets")-tw == baseline && m.Value("tcpstate_untracked_sockets") == 0 {
			settled = true
			t.Logf("after the churn: %v tracked, of which %v TIME_WAIT (%d graceful closes)", m.Value("tcpstate_tracked_sockets"), tw, cs.Graceful)
			break
		}
	}
	if !settled {
		t.Errorf("tracker did not return to its baseline of %v besides TIME_WAIT: %v tracked\n%s", baseline, m.Value("tcpstate_tracked_sockets"), p.Log())
	}
	if duration > 30*time.Second {
		// A soak run can afford to wait out TIME_WAIT (60 s): then the
		// tracker must be back to exactly its baseline.
		if _, ok := eventually(t, url, 70*time.Second, func(m exportertest.Metrics) bool {
			return m.Value("tcpstate_tracked_sockets") == baseline
		}); !ok {
			t.Errorf("tracker did not return to its baseline of %v once TIME_WAIT expired", baseline)
		}
	}
	if f := m["tcpstate_poll_errors_total"]; f != nil {
		for _, x := range f.GetMetric() {
			if v := x.GetCounter().GetValue(); v != 0 {
				t.Errorf("poll errors under load: %v = %v", x.GetLabel(), v)
			}
		}
	}
	// The scrapers are gone and their connections closed: the exporter is
	// back to the descriptors and goroutines it had before the load. The
	// test's own connection, which fetches go_goroutines, was open then
	// too.
	var after loadSample
	back := func() bool {
		u := after.fds()
		return u.fixed == idleFDs.fixed && u.tcp <= idleFDs.tcp && u.transient <= idleFDs.transient && after.goroutines <= idle.goroutines+2
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		after = loadSample{proc: sample(t, p), goroutines: exportertest.Scrape(t, url).Value("go_goroutines")}
		if back() || time.Now().After(deadline) {
			break
		}
	}
	if !back() {
		t.Errorf("after the load: %d descriptors %v and %v goroutines, before it %d %v and %v", after.proc.FDs, after.proc.FDKinds, after.goroutines, idle.proc.FDs, idle.proc.FDKinds, idle.goroutines)
	}
}

// sample reads the exporter's descriptors, threads and memory from /proc.
func sample(t testing.TB, p *exportertest.Process) loadtest.ProcSample {
	t.Helper()
	s, err := loadtest.SampleProc(p.PID())
	if err != nil {
		t.Fatal(err)
	}
	return s
}
