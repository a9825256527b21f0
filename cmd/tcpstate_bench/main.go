//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const name = "tcpstate_bench"

func main() {
	if len(os.Args) > 1 && os.Args[1] == holdCommand {
		os.Exit(hold(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// maxNamespaces bounds --namespaces.
const maxNamespaces = 1000

// maxSockets bounds --sockets: a million sockets need over a hundred holder
// processes and several GB of kernel memory.
const maxSockets = 1_000_000

type options struct {
	sizes []int
	cfg   config
	// timeout bounds the whole run, teardown excepted.
	timeout time.Duration
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s [flags]\n\nMeasures ss, /proc/net/tcp, tcpstate_exporter and node_exporter on one TCP socket population in a network namespace it creates. Needs root.\n\n", name)
		fs.PrintDefaults()
	}
	sockets := fs.String("sockets", "10000", "socket population sizes, comma-separated, each measured in a namespace of its own (at most 1000000); 0 for none, to measure only --namespaces")
	o := &options{}
	fs.IntVar(&o.cfg.runs, "runs", 7, "measurements per tool and size; the table shows medians")
	fs.Float64Var(&o.cfg.v6, "ipv6-share", 0.25, "share of the population that is IPv6")
	fs.StringVar(&o.cfg.exporter, "exporter", "", "tcpstate_exporter binary (default: the one beside this binary, else from PATH)")
	extra := fs.String("exporter-flags", "", "more flags for tcpstate_exporter, space-separated, such as --attribution.states=")
	fs.StringVar(&o.cfg.nodeExporter, "node-exporter", "prometheus-node-exporter", "node_exporter binary; skipped if not installed")
	fs.DurationVar(&o.cfg.interval, "interval", time.Second, "tcpstate_exporter's --poll.interval while its poll time, CPU and RSS are measured")
	fs.DurationVar(&o.cfg.cpuWindow, "cpu-window", 15*time.Second, "how long tcpstate_exporter's CPU time is measured at --interval; long enough to take in its periodic work, such as the 15 s process attribution walk")
	fs.DurationVar(&o.cfg.overrunInterval, "overrun-interval", 10*time.Millisecond, "a --poll.interval shorter than a poll, to check that overrunning polls do not pile up")
	fs.DurationVar(&o.cfg.overrunWindow, "overrun-window", 3*time.Second, "how long to run at --overrun-interval; 0 skips the check")
	fs.StringVar(&o.cfg.cpuProfile, "cpuprofile", "", "write a CPU profile of this process's dumps and polls (the last size's) to this file")
	fs.DurationVar(&o.cfg.modeWindow, "mode-window", 30*time.Second, "how long tcpstate_exporter's CPU is measured in each mode, polling every --interval and precise, under --churn; 30s takes in one of precise mode's reconciling dumps and two process attribution walks in either mode; 0 skips the modes and the throughput check")
	fs.IntVar(&o.cfg.modeRuns, "mode-runs", 3, "measurements per mode, the modes in turns; the table shows medians")
	fs.IntVar(&o.cfg.churn, "churn", 1000, fmt.Sprintf("new loopback connections a second, each held %v and closed client-first, while the modes are measured (at most %d)", churnHold, maxChurnRate))
	fs.DurationVar(&o.cfg.churnWarmup, "churn-warmup", timeWaitLifetime, "how long --churn runs before the modes are measured, for its TIME_WAIT remnants to level off")
	fs.IntVar(&o.cfg.throughput, "throughput", 100_000, fmt.Sprintf("state changes a second to drive at precise mode, %d per connection, after the modes are measured; 0 skips the check", transitionsPerConn))
	fs.DurationVar(&o.cfg.throughputWindow, "throughput-window", 5*time.Second, "how long the throughput check drives its changes (1s to 30s)")
	fs.IntVar(&o.cfg.namespaces, "namespaces", 0, fmt.Sprintf("after the sizes, create this many empty network namespaces and measure tcpstate_exporter with --netns=all in both modes, --mode-runs times for --mode-window each (at most %d); 0 skips it", maxNamespaces))
	fs.DurationVar(&o.timeout, "timeout", 15*time.Minute, "give up, and clean up, after this long")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	o.cfg.exporterFlags = strings.Fields(*extra)
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	for _, s := range strings.Split(*sockets, ",") {
		if strings.TrimSpace(*sockets) == "0" {
			break
		}
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 100 || n > maxSockets {
			return nil, fmt.Errorf("--sockets: %q is not a count between 100 and %d", s, maxSockets)
		}
		o.sizes = append(o.sizes, n)
	}
	switch {
	case o.cfg.runs < 1:
		return nil, fmt.Errorf("--runs=%d: must be at least 1", o.cfg.runs)
	case o.cfg.v6 < 0 || o.cfg.v6 > 1:
		return nil, fmt.Errorf("--ipv6-share=%v: must be between 0 and 1", o.cfg.v6)
	case o.cfg.interval < 10*time.Millisecond:
		return nil, fmt.Errorf("--interval=%v: must be at least 10ms", o.cfg.interval)
	case o.cfg.cpuWindow < o.cfg.interval:
		return nil, fmt.Errorf("--cpu-window=%v: must be at least --interval", o.cfg.cpuWindow)
	case o.cfg.overrunInterval < 10*time.Millisecond:
		return nil, fmt.Errorf("--overrun-interval=%v: must be at least 10ms", o.cfg.overrunInterval)
	case o.cfg.overrunWindow < 0:
		return nil, fmt.Errorf("--overrun-window=%v: must not be negative", o.cfg.overrunWindow)
	case o.cfg.modeWindow != 0 && o.cfg.modeWindow < time.Second:
		return nil, fmt.Errorf("--mode-window=%v: must be 0 or at least 1s", o.cfg.modeWindow)
	case o.cfg.modeRuns < 1:
		return nil, fmt.Errorf("--mode-runs=%d: must be at least 1", o.cfg.modeRuns)
	case o.cfg.churn < 0 || o.cfg.churn > maxChurnRate:
		return nil, fmt.Errorf("--churn=%d: must be between 0 and %d", o.cfg.churn, maxChurnRate)
	case o.cfg.churnWarmup < 0:
		return nil, fmt.Errorf("--churn-warmup=%v: must not be negative", o.cfg.churnWarmup)
	case o.cfg.throughput < 0 || o.cfg.throughput > maxChurnRate*transitionsPerConn:
		return nil, fmt.Errorf("--throughput=%d: must be between 0 and %d", o.cfg.throughput, maxChurnRate*transitionsPerConn)
	case o.cfg.throughput > 0 && o.cfg.throughput < transitionsPerConn*throughputWorkers:
		return nil, fmt.Errorf("--throughput=%d: must be 0 or at least %d, a connection a second for each of %d threads", o.cfg.throughput, transitionsPerConn*throughputWorkers, throughputWorkers)
	case o.cfg.throughputWindow < time.Second || o.cfg.throughputWindow > 30*time.Second:
		return nil, fmt.Errorf("--throughput-window=%v: must be between 1s and 30s", o.cfg.throughputWindow)
	case o.cfg.namespaces < 0 || o.cfg.namespaces > maxNamespaces:
		return nil, fmt.Errorf("--namespaces=%d: must be between 0 and %d", o.cfg.namespaces, maxNamespaces)
	case o.cfg.namespaces > 0 && o.cfg.modeWindow == 0:
		return nil, fmt.Errorf("--namespaces=%d needs a --mode-window", o.cfg.namespaces)
	case len(o.sizes) == 0 && o.cfg.namespaces == 0:
		return nil, errors.New("--sockets=0: nothing to measure without --namespaces")
	case o.timeout <= 0:
		return nil, fmt.Errorf("--timeout=%v: must be positive", o.timeout)
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) (code int) {
	o, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	start := time.Now()
	o.cfg.logf = func(format string, args ...any) {
		fmt.Fprintf(stderr, "%7.1fs %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	if err := prepare(&o.cfg); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if o.cfg.modeWindow > 0 {
		// Precise mode's cost is partly its BPF program's, which the
		// kernel counts only while asked to. Put back as found on every
		// way out: the signals above end ctx, not the process.
		restore, err := enableBPFStats()
		if err != nil {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
			return 1
		}
		defer func() {
			if err := restore(); err != nil {
				fmt.Fprintf(stderr, "%s: %v\n", name, err)
				code = 1
			}
		}()
	}

	var results []*result
	for _, size := range o.sizes {
		res, err := benchSize(ctx, size, o.cfg)
		if err != nil {
			if ctx.Err() != nil {
				err = fmt.Errorf("%w (%v)", err, context.Cause(ctx))
			}
			fmt.Fprintf(stderr, "%s: %d sockets: %v\n", name, size, err)
			return 1
		}
		results = append(results, res)
	}
	if len(results) > 0 {
		fmt.Fprint(stdout, table(results, o.cfg, environment(o.cfg)))
	}
	if o.cfg.namespaces > 0 {
		res, err := measureNamespaces(ctx, o.cfg)
		if err != nil {
			fmt.Fprintf(stderr, "%s: %d namespaces: %v\n", name, o.cfg.namespaces, err)
			return 1
		}
		fmt.Fprint(stdout, namespacesTable(res, o.cfg))
	}
	return 0
}

// prepare checks what the run needs and finds the binaries.
func prepare(cfg *config) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root, to create network namespaces")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find this binary: %w", err)
	}
	cfg.self = self
	if cfg.exporter == "" {
		cfg.exporter = filepath.Join(filepath.Dir(self), "tcpstate_exporter")
		if _, err := os.Stat(cfg.exporter); err != nil {
			if cfg.exporter, err = exec.LookPath("tcpstate_exporter"); err != nil {
				return errors.New("tcpstate_exporter not found beside this binary or in PATH: go build -o <dir>/ ./cmd/... builds both, or pass --exporter")
			}
		}
	}
	if _, err := os.Stat(cfg.exporter); err != nil {
		return fmt.Errorf("--exporter: %w", err)
	}
	for _, tool := range []string{"ss", "cat"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s not found (apt-get install -y iproute2 coreutils)", tool)
		}
	}
	if cfg.nodeExporter != "" {
		path, err := exec.LookPath(cfg.nodeExporter)
		if err != nil {
			cfg.logf("%s not installed: node_exporter is not measured", cfg.nodeExporter)
			cfg.nodeExporter = ""
		} else {
			cfg.nodeExporter = path
		}
	}
	return nil
}

// environment describes the machine and versions for the table's caption.
func environment(cfg config) string {
	var uts syscall.Utsname
	syscall.Uname(&uts)
	kernel := charsToString(uts.Release[:])
	parts := []string{fmt.Sprintf("Linux %s", kernel), fmt.Sprintf("%d CPUs", runtime.NumCPU()), runtime.Version()}
	if v := versionOf(cfg.exporter, "--version"); v != "" {
		parts = append(parts, "tcpstate_exporter "+v)
	}
	if v := versionOf("ss", "-V"); v != "" {
		parts = append(parts, "ss "+v)
	}
	if cfg.nodeExporter != "" {
		if v := versionOf(cfg.nodeExporter, "--version"); v != "" {
			parts = append(parts, "node_exporter "+v)
		}
	}
	return strings.Join(parts, ", ")
}

func charsToString(ca []int8) string {
	b := make([]byte, 0, len(ca))
	for _, c := range ca {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

// versionOf returns the word after "version" in what argv prints.
func versionOf(argv ...string) string {
	out, _ := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	f := strings.Fields(string(out))
	for i, w := range f {
		if w == "version" && i+1 < len(f) && !strings.HasPrefix(f[i+1], "(") {
			return strings.TrimSuffix(f[i+1], ",")
		}
	}
	return ""
}

// ms3 formats a duration in milliseconds to three significant digits.
func ms3(d time.Duration) string {
	ms := float64(d) / 1e6
	switch {
	case ms >= 100:
		return fmt.Sprintf("%.0f ms", ms)
	case ms >= 10:
		return fmt.Sprintf("%.1f ms", ms)
	case ms >= 1:
		return fmt.Sprintf("%.2f ms", ms)
	}
	return fmt.Sprintf("%.3f ms", ms)
}

func msList(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = strings.TrimSuffix(ms3(d), " ms")
	}
	return "[" + strings.Join(s, " ") + "] ms"
}

// minPerSocket is the fewest tracked sockets whose memory is told apart
// from the runtime's own growth.
const minPerSocket = 50_000

// perSocket is what each of tracked sockets adds to a process's memory
// use, against its use with none.
func perSocket(use, none int64, tracked int) float64 {
	return float64(use-none) / float64(max(1, tracked))
}

func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

// ratio returns the median of a[i]/b[i]: on a busy machine the runs' own
// ratios drift less than their times.
func ratio(a, b []time.Duration) string {
	m, ok := medianRatio(a, b)
	if !ok {
		return "–"
	}
	return fmt.Sprintf("%.2fx", m)
}

// medianRatio returns the median of a[i]/b[i] over the pairs with b[i]
// above zero, and false if there are none.
func medianRatio[T float64 | time.Duration](a, b []T) (float64, bool) {
	var r []float64
	for i := range min(len(a), len(b)) {
		if b[i] > 0 {
			r = append(r, float64(a[i])/float64(b[i]))
		}
	}
	if len(r) == 0 {
		return 0, false
	}
	return median(r), true
}

// thousands formats n with thin separators: 200,123.
func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// table renders the results: a row per measure, a column per size.
func table(results []*result, cfg config, env string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s; medians of %d runs (ratios: medians of each run's ratio).\n\n", env, cfg.runs)
	row := func(label string, cell func(r *result) string) {
		b.WriteString("| " + label)
		for _, r := range results {
			b.WriteString(" | " + cell(r))
		}
		b.WriteString(" |\n")
	}
	b.WriteString("| sockets (requested)")
	for _, r := range results {
		b.WriteString(" | " + thousands(r.size))
	}
	b.WriteString(" |\n|---")
	for range results {
		b.WriteString("|---:")
	}
	b.WriteString("|\n")
	row("sockets dumped (min–max over runs)", func(r *result) string {
		lo, hi := math.MaxInt, 0
		for _, n := range r.sockets {
			lo, hi = min(lo, n), max(hi, n)
		}
		return fmt.Sprintf("%s–%s", thousands(lo), thousands(hi))
	})
	row("`ss -tan` > /dev/null", func(r *result) string {
		return fmt.Sprintf("%s (CPU %s)", ms3(median(r.ss)), ms3(median(r.ssCPU)))
	})
	row("`cat /proc/net/tcp /proc/net/tcp6` > /dev/null", func(r *result) string {
		return fmt.Sprintf("%s (CPU %s)", ms3(median(r.cat)), ms3(median(r.catCPU)))
	})
	row("our dump alone", func(r *result) string {
		return fmt.Sprintf("%s (%s ss)", ms3(median(r.dump)), ratio(r.dump, r.ss))
	})
	row("**our poll: dump + tracking**", func(r *result) string {
		return fmt.Sprintf("**%s** (%s ss, %s dump)", ms3(median(r.poll)), ratio(r.poll, r.ss), ratio(r.poll, r.dump))
	})
	row("heap allocations per poll", func(r *result) string {
		return fmt.Sprintf("%d (%.4f per socket)", median(r.pollAllocs), float64(median(r.pollAllocs))/float64(max(1, median(r.sockets))))
	})
	row(fmt.Sprintf("tcpstate_exporter poll, every %v", cfg.interval), func(r *result) string {
		return ms3(r.expPoll)
	})
	row(fmt.Sprintf("tcpstate_exporter CPU per poll (all its work over %v)", cfg.cpuWindow), func(r *result) string {
		return fmt.Sprintf("%s (%.1f%% of a core)", ms3(r.cpuPerPoll), 100*float64(r.cpu)/float64(cfg.cpuWindow))
	})
	row("**tcpstate_exporter scrape** (GET /metrics)", func(r *result) string {
		return "**" + ms3(median(r.expScrape)) + "**"
	})
	row("**tcpstate_exporter RSS**: total, anonymous (with no sockets)", func(r *result) string {
		s := fmt.Sprintf("**%s**, %s (%s, %s)", mb(r.mem.rss), mb(r.mem.anon), mb(r.base.rss), mb(r.base.anon))
		if r.tracked >= minPerSocket {
			s += fmt.Sprintf("; %.0f B per tracked socket", perSocket(r.mem.rss, r.base.rss, r.tracked))
		}
		return s
	})
	node := func(f func(r *result) string) func(r *result) string {
		return func(r *result) string {
			if !r.node {
				return "not installed"
			}
			return f(r)
		}
	}
	row("node_exporter tcpstat scrape", node(func(r *result) string {
		return fmt.Sprintf("%s (our poll %s)", ms3(median(r.nodeScrape)), ratio(r.poll, r.nodeScrape))
	}))
	row("node_exporter RSS: total, anonymous (with no sockets)", node(func(r *result) string {
		return fmt.Sprintf("%s, %s (%s, %s); ours %.2fx, %.2fx", mb(r.nodeMem.rss), mb(r.nodeMem.anon), mb(r.nodeBase.rss), mb(r.nodeBase.anon),
			float64(r.mem.rss)/float64(max(1, r.nodeMem.rss)), float64(r.mem.anon)/float64(max(1, r.nodeMem.anon)))
	}))
	if cfg.overrunWindow > 0 {
		row(fmt.Sprintf("tcpstate_exporter at `--poll.interval=%v` for %v", cfg.overrunInterval, cfg.overrunWindow), func(r *result) string {
			return fmt.Sprintf("%d polls of %s, %d overruns counted; scrape %s", r.overrunPolls, ms3(r.overrunPollMean), r.overrunOverruns, ms3(median(r.overrunScrape)))
		})
	}
	if cfg.modeWindow > 0 {
		modeRows(row, cfg)
	}
	return b.String()
}
