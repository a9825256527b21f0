//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// config is what every size is measured with.
type config struct {
	runs            int
	v6              float64
	exporter        string   // tcpstate_exporter binary
	exporterFlags   []string // more flags for it
	nodeExporter    string   // prometheus-node-exporter binary, "" if not installed
	interval        time.Duration
	cpuWindow       time.Duration
	overrunInterval time.Duration
	overrunWindow   time.Duration
	self            string // this binary, re-run as holders
	cpuProfile      string // where to write a CPU profile of our dumps and polls
	logf            func(string, ...any)

	// Poll mode against precise mode; none if modeWindow is 0.
	modeWindow       time.Duration
	modeRuns         int
	churn            int // new connections a second while the modes are measured
	churnWarmup      time.Duration
	throughput       int // transitions a second to drive at precise mode; 0 for none
	throughputWindow time.Duration

	namespaces int // empty namespaces to measure --netns=all over; 0 for none
	// preciseSettle is how long precise mode runs before it is measured.
	preciseSettle time.Duration
}

// result is everything measured at one size.
type result struct {
	size    int
	sockets []int // per run, as our dump counted them

	ss, ssCPU, cat, catCPU []time.Duration
	dump, poll             []time.Duration
	pollAllocs             []uint64

	// The tcpstate_exporter process, polling every interval.
	base          memUse // in a namespace with no sockets
	mem           memUse
	tracked       int
	expPoll       time.Duration // mean poll time
	expScrape     []time.Duration
	cpu           time.Duration // over cfg.cpuWindow
	cpuPerPoll    time.Duration
	pollsMeasured uint64

	// node_exporter's tcpstat collector, if installed.
	node            bool
	nodeBase        memUse
	nodeScrape      []time.Duration
	nodeMem         memUse
	nodeSockets     int
	overrun         bool
	overrunPolls    uint64
	overrunOverruns uint64
	overrunPollMean time.Duration
	overrunScrape   []time.Duration
	overrunMem      memUse

	// The two modes, under churn.
	basePrecise memUse // precise mode in a namespace with no sockets
	churnRate   float64
	pollMode    []modeRun
	precise     []modeRun
	throughput  []throughputRun // at growing rings, until one loses nothing
}

// Ports the exporters listen on inside the benchmark's private namespace.
const (
	exporterURL = "http://127.0.0.1:9965/metrics"
	nodeURL     = "http://127.0.0.1:9100/metrics"
)

// benchSize builds a population of about size sockets in a namespace of its
// own, measures it, and tears everything down, whatever happens.
func benchSize(ctx context.Context, size int, cfg config) (res *result, err error) {
	res = &result{size: size}
	cfg.logf("load average %s", loadAverage())
	defer func() { cfg.logf("load average %s", loadAverage()) }()
	name := fmt.Sprintf("tcpstate-bench-%d-%d", os.Getpid(), size)
	ns, err := newNamespace(name)
	if err != nil {
		return nil, err
	}
	defer func() {
		if derr := ns.delete(); derr != nil {
			err = errors.Join(err, derr)
		}
		cfg.logf("network namespace %s deleted", name)
	}()

	// The exporters' footprints with no sockets to report, for the share
	// of their RSS that the sockets cost.
	if res.base, res.nodeBase, err = baseline(ctx, ns, cfg); err != nil {
		return nil, err
	}
	if cfg.modeWindow > 0 {
		if res.basePrecise, err = basePrecise(ctx, ns, cfg); err != nil {
			return nil, err
		}
	}

	p := newPlan(size, cfg.v6)
	cfg.logf("building %d sockets in %s: %d holder processes", size, name, len(p.holders))
	start := time.Now()
	pop, err := build(ctx, ns, p, cfg.self, cfg.logf)
	defer func() {
		if serr := pop.stop(); serr != nil {
			err = errors.Join(err, serr)
		}
		cfg.logf("population stopped")
	}()
	if err != nil {
		return nil, fmt.Errorf("build the population: %w", err)
	}
	cfg.logf("population built in %v", time.Since(start).Round(time.Millisecond))

	if err := measureTools(ctx, ns, cfg, res); err != nil {
		return nil, err
	}
	if err := measureExporter(ctx, ns, cfg, res); err != nil {
		return nil, err
	}
	if cfg.overrunWindow > 0 {
		if err := measureOverrun(ctx, ns, cfg, res); err != nil {
			return nil, err
		}
	}
	if cfg.modeWindow > 0 {
		if err := measureModes(ctx, ns, cfg, res); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// exporterArgs is the command line of tcpstate_exporter polling every
// interval.
func (cfg config) exporterArgs(interval time.Duration) []string {
	return cfg.exporterArgsIn("poll", interval)
}

// exporterArgsIn is the command line of tcpstate_exporter in mode.
func (cfg config) exporterArgsIn(mode string, interval time.Duration) []string {
	args := []string{cfg.exporter, "--web.listen-address=127.0.0.1:9965", "--mode=" + mode, "--poll.interval=" + interval.String(), "--log.level=warn"}
	return append(args, cfg.exporterFlags...)
}

func baseline(ctx context.Context, ns *namespace, cfg config) (ours, node memUse, err error) {
	s, err := startServer(ctx, ns, "tcpstate_exporter", exporterURL, cfg.exporterArgs(50*time.Millisecond)...)
	if err != nil {
		return memUse{}, memUse{}, err
	}
	defer s.stop()
	if _, err := waitPolls(ctx, s, 3); err != nil {
		return memUse{}, memUse{}, err
	}
	if ours, err = memory(s.pid()); err != nil {
		return memUse{}, memUse{}, err
	}
	if cfg.nodeExporter == "" {
		return ours, memUse{}, nil
	}
	n, err := startNode(ctx, ns, cfg)
	if err != nil {
		return memUse{}, memUse{}, err
	}
	defer n.stop()
	if _, _, err := n.scrape(ctx); err != nil {
		return memUse{}, memUse{}, fmt.Errorf("scrape node_exporter: %w", err)
	}
	node, err = memory(n.pid())
	return ours, node, err
}

// basePrecise is precise mode's footprint with no sockets to report.
func basePrecise(ctx context.Context, ns *namespace, cfg config) (memUse, error) {
	s, _, err := startMode(ctx, ns, cfg, true, 0)
	if err != nil {
		return memUse{}, err
	}
	defer s.stop()
	return memory(s.pid())
}

func startNode(ctx context.Context, ns *namespace, cfg config) (*server, error) {
	return startServer(ctx, ns, "node_exporter", nodeURL, cfg.nodeExporter,
		"--collector.disable-defaults", "--collector.tcpstat", "--web.listen-address=127.0.0.1:9100", "--log.level=warn")
}

// waitPolls scrapes s until it reports at least n polls.
func waitPolls(ctx context.Context, s *server, n float64) (metrics, error) {
	for {
		_, body, err := s.scrape(ctx)
		if err != nil {
			return nil, err
		}
		m, err := parseMetrics(body)
		if err != nil {
			return nil, err
		}
		if m.sum("tcpstate_polls_total") >= n {
			return m, nil
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

// measureTools times, run after run on the same population: ss, cat of
// /proc/net/tcp*, our dump and poll in this process, and node_exporter's
// tcpstat scrape.
func measureTools(ctx context.Context, ns *namespace, cfg config, res *result) error {
	conn, err := netlinkdiag.Dial(netlinkdiag.Options{NetNS: ns.name})
	if err != nil {
		return err
	}
	defer conn.Close()
	pollConn, err := netlinkdiag.Dial(netlinkdiag.Options{NetNS: ns.name})
	if err != nil {
		return err
	}
	defer pollConn.Close()
	poller := collector.NewPoller(pollConn, collector.Config{MaxTracked: 1 << 22})
	for range 2 { // the first poll fills the tracker; steady state from the second
		if err := poller.Poll(ctx); err != nil {
			return fmt.Errorf("poll: %w", err)
		}
	}

	var node *server
	if cfg.nodeExporter != "" {
		node, err = startNode(ctx, ns, cfg)
		if err != nil {
			return err
		}
		defer node.stop()
		res.node = true
	}

	if cfg.cpuProfile != "" {
		f, err := os.Create(cfg.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	count := 0
	counter := func(*netlinkdiag.Socket) error { count++; return nil }
	var ms runtime.MemStats
	for run := range cfg.runs {
		ss, err := timeCommand(ctx, ns, "ss", "-tan")
		if err != nil {
			return err
		}
		res.ss, res.ssCPU = append(res.ss, ss.wall), append(res.ssCPU, ss.cpu)

		cat, err := timeCommand(ctx, ns, "cat", "/proc/net/tcp", "/proc/net/tcp6")
		if err != nil {
			return err
		}
		res.cat, res.catCPU = append(res.cat, cat.wall), append(res.catCPU, cat.cpu)

		// Dump and poll, in turns first, so that neither always finds the
		// caches as the other left them. Labelled, so that
		// -tagfocus=measure=poll picks the polls out of a profile.
		dump := func() error {
			count = 0
			var err error
			pprof.Do(ctx, pprof.Labels("measure", "dump"), func(ctx context.Context) {
				start := time.Now()
				err = conn.DumpTCP(ctx, netlinkdiag.Request{}, counter)
				res.dump = append(res.dump, time.Since(start))
			})
			if err != nil {
				return fmt.Errorf("dump: %w", err)
			}
			res.sockets = append(res.sockets, count)
			return nil
		}
		poll := func() error {
			var err error
			runtime.ReadMemStats(&ms)
			mallocs := ms.Mallocs
			pprof.Do(ctx, pprof.Labels("measure", "poll"), func(ctx context.Context) {
				start := time.Now()
				err = poller.Poll(ctx)
				res.poll = append(res.poll, time.Since(start))
			})
			runtime.ReadMemStats(&ms)
			res.pollAllocs = append(res.pollAllocs, ms.Mallocs-mallocs)
			if err != nil {
				return fmt.Errorf("poll: %w", err)
			}
			return nil
		}
		steps := []func() error{dump, poll}
		if run%2 == 1 {
			steps[0], steps[1] = poll, dump
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return err
			}
		}

		line := fmt.Sprintf("run %d/%d: %d sockets; ss -tan %v, cat %v, dump %v, poll %v (%d allocations)",
			run+1, cfg.runs, count, ms3(ss.wall), ms3(cat.wall), ms3(res.dump[run]), ms3(res.poll[run]), res.pollAllocs[run])
		if node != nil {
			took, body, err := node.scrape(ctx)
			if err != nil {
				return fmt.Errorf("scrape node_exporter: %w", err)
			}
			res.nodeScrape = append(res.nodeScrape, took)
			if m, err := parseMetrics(body); err == nil {
				res.nodeSockets = nodeSockets(m)
			}
			line += fmt.Sprintf(", node_exporter scrape %v (%d sockets)", ms3(took), res.nodeSockets)
		}
		cfg.logf("%s", line)
	}
	if node != nil {
		if res.nodeMem, err = memory(node.pid()); err != nil {
			return err
		}
	}
	return nil
}

// nodeSockets sums node_exporter's per-state socket counts, leaving out
// the queue sizes it reports under the same metric.
func nodeSockets(m metrics) int {
	n := 0.0
	for _, x := range m["node_tcp_connection_states"].GetMetric() {
		queue := false
		for _, l := range x.GetLabel() {
			queue = queue || (l.GetName() == "state" && strings.HasSuffix(l.GetValue(), "_queued_bytes"))
		}
		if !queue {
			n += x.GetGauge().GetValue()
		}
	}
	return int(n)
}

type timing struct{ wall, cpu time.Duration }

// timeCommand runs argv in ns with its output to /dev/null and returns its
// wall and CPU time.
func timeCommand(ctx context.Context, ns *namespace, argv ...string) (timing, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := ns.start(cmd); err != nil {
		return timing{}, fmt.Errorf("%s: %w", strings.Join(argv, " "), err)
	}
	err := cmd.Wait()
	wall := time.Since(start)
	if err != nil {
		return timing{}, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return timing{wall, cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()}, nil
}

// measureExporter runs tcpstate_exporter at its default interval on the
// population: first untouched for cfg.cpuWindow, for the CPU time and mean
// duration of its polls, then scraped runs times, between polls.
func measureExporter(ctx context.Context, ns *namespace, cfg config, res *result) error {
	s, err := startServer(ctx, ns, "tcpstate_exporter", exporterURL, cfg.exporterArgs(cfg.interval)...)
	if err != nil {
		return err
	}
	defer s.stop()
	// The first poll ran before it served; wait for a steady-state one.
	m0, err := waitPolls(ctx, s, 2)
	if err != nil {
		return err
	}
	cpu0, err := cpuTime(s.pid())
	if err != nil {
		return err
	}
	if err := sleep(ctx, cfg.cpuWindow); err != nil {
		return err
	}
	cpu1, err := cpuTime(s.pid())
	if err != nil {
		return err
	}
	_, body, err := s.scrape(ctx)
	if err != nil {
		return fmt.Errorf("scrape tcpstate_exporter: %w", err)
	}
	m1, err := parseMetrics(body)
	if err != nil {
		return err
	}
	polls := m1.sum("tcpstate_polls_total") - m0.sum("tcpstate_polls_total")
	res.pollsMeasured = uint64(polls)
	res.cpu = cpu1 - cpu0
	if polls > 0 {
		res.cpuPerPoll = res.cpu / time.Duration(polls)
	}
	c0, s0 := m0.histogram("tcpstate_poll_duration_seconds")
	c1, s1 := m1.histogram("tcpstate_poll_duration_seconds")
	if c1 > c0 {
		res.expPoll = seconds((s1 - s0) / float64(c1-c0))
	}
	res.tracked = int(m1.sum("tcpstate_tracked_sockets"))
	overruns := m1.sum("tcpstate_poll_overruns_total") - m0.sum("tcpstate_poll_overruns_total")

	for range cfg.runs {
		if err := sleep(ctx, cfg.interval/4); err != nil {
			return err
		}
		took, _, err := s.scrape(ctx)
		if err != nil {
			return fmt.Errorf("scrape tcpstate_exporter: %w", err)
		}
		res.expScrape = append(res.expScrape, took)
	}
	if res.mem, err = memory(s.pid()); err != nil {
		return err
	}
	if d := m1.sum("tcpstate_attribution_duration_seconds"); d > 0 {
		cfg.logf("tcpstate_exporter: its latest process attribution walk took %v", ms3(seconds(d)))
	}
	cfg.logf("tcpstate_exporter: %d polls in %v, mean poll %v, CPU %v (%v per poll), %v overruns; scrapes %v; RSS %s (peak %s, %s with no sockets), %d tracked; Go heap %s in use, %s allocated, next GC at %s",
		res.pollsMeasured, cfg.cpuWindow, ms3(res.expPoll), ms3(res.cpu), ms3(res.cpuPerPoll), overruns,
		msList(res.expScrape), mb(res.mem.rss), mb(res.mem.peak), mb(res.base.rss), res.tracked,
		mb(int64(m1.sum("go_memstats_heap_inuse_bytes"))), mb(int64(m1.sum("go_memstats_heap_alloc_bytes"))), mb(int64(m1.sum("go_memstats_next_gc_bytes"))))
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// measureOverrun runs tcpstate_exporter with an interval shorter than a
// poll, to show that polls do not pile up and that overruns are counted.
func measureOverrun(ctx context.Context, ns *namespace, cfg config, res *result) error {
	s, err := startServer(ctx, ns, "tcpstate_exporter", exporterURL, cfg.exporterArgs(cfg.overrunInterval)...)
	if err != nil {
		return err
	}
	defer s.stop()
	m0, err := waitPolls(ctx, s, 2)
	if err != nil {
		return err
	}
	end := time.Now().Add(cfg.overrunWindow)
	var m metrics
	for time.Now().Before(end) {
		if err := sleep(ctx, cfg.overrunWindow/10); err != nil {
			return err
		}
		took, body, err := s.scrape(ctx)
		if err != nil {
			return fmt.Errorf("scrape tcpstate_exporter: %w", err)
		}
		if m, err = parseMetrics(body); err != nil {
			return err
		}
		res.overrunScrape = append(res.overrunScrape, took)
	}
	res.overrun = true
	res.overrunPolls = uint64(m.sum("tcpstate_polls_total") - m0.sum("tcpstate_polls_total"))
	res.overrunOverruns = uint64(m.sum("tcpstate_poll_overruns_total") - m0.sum("tcpstate_poll_overruns_total"))
	c0, s0 := m0.histogram("tcpstate_poll_duration_seconds")
	c1, s1 := m.histogram("tcpstate_poll_duration_seconds")
	if c1 > c0 {
		res.overrunPollMean = seconds((s1 - s0) / float64(c1-c0))
	}
	if res.overrunMem, err = memory(s.pid()); err != nil {
		return err
	}
	cfg.logf("overrun check at --poll.interval=%v for %v: %d polls (mean %v), %d overruns, scrapes %v, RSS %s",
		cfg.overrunInterval, cfg.overrunWindow, res.overrunPolls, ms3(res.overrunPollMean), res.overrunOverruns, msList(res.overrunScrape), mb(res.overrunMem.rss))
	return nil
}

// loadAverage returns the 1, 5 and 15 minute load averages: the benchmark
// is only as good as the machine is quiet.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// median returns the median of xs, 0 for none.
func median[T int | uint64 | float64 | time.Duration](xs []T) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
