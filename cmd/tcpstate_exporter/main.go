// Command tcpstate_exporter polls Linux sock_diag for every TCP socket and
// serves per-state counts, time in state and transitions to Prometheus.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/common/promslog"
	"github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
	"github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/exporter-toolkit/web/kingpinflag"

	"github.com/tcpstate/tcpstate_exporter/bpfsource"
	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/exporter"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
	"github.com/tcpstate/tcpstate_exporter/procscan"
)

const name = "tcpstate_exporter"

// defaultListen is in the Prometheus exporter port range (9100-9999).
const defaultListen = ":9965"

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func init() {
	// Release builds set the version with -ldflags; anything else reports
	// the module's version ("(devel)" from a checkout) rather than nothing.
	if version.Version == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			version.Version = bi.Main.Version
		}
	}
}

type options struct {
	web           *web.FlagConfig
	telemetryPath string
	maxRequests   int
	interval      time.Duration
	netns         string
	maxTracked    int
	portTop       int
	remoteTop     int
	attrStates    []collector.State
	attrInterval  time.Duration
	attrTop       int
	mode          string
	dumpInterval  time.Duration
	ringBytes     int
	log           promslog.Config
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	app := kingpin.New(name, "Exports Linux TCP socket states, time in state and transitions, read from sock_diag, to Prometheus.")
	app.UsageWriter(stderr).ErrorWriter(stderr)
	app.HelpFlag.Short('h')
	app.Version(version.Print(name))
	o := &options{web: kingpinflag.AddFlags(app, defaultListen)}
	app.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").StringVar(&o.telemetryPath)
	app.Flag("web.max-requests", "Maximum number of concurrent scrapes; more are answered 503. 0 means no limit.").Default("40").IntVar(&o.maxRequests)
	interval := app.Flag("poll.interval", "How often to dump the socket table: at least 10ms, such as 1s or 500ms. Time-in-state precision is this interval.").Default("1s").String()
	app.Flag("netns", "Observe this network namespace instead of our own: a name under /run/netns or a path such as /proc/PID/ns/net; or \"all\" for every network namespace on the host, labelled netns. Needs CAP_SYS_ADMIN (and CAP_SYS_PTRACE for all).").Default("").StringVar(&o.netns)
	app.Flag("max-tracked-sockets", "Track time in state for at most this many sockets; sockets past it are still counted, and tcpstate_untracked_sockets says how many.").Default("1048576").IntVar(&o.maxTracked)
	app.Flag("port.top", "Listening ports named in tcpstate_port_sockets; the rest are summed as port=\"other\".").Default("20").IntVar(&o.portTop)
	app.Flag("remote.top", "Remote endpoints named in tcpstate_remote_sockets and tcpstate_remote_port_usage_ratio, the busiest by client-side sockets; the rest are summed as remote=\"other\".").Default("20").IntVar(&o.remoteTop)
	attrStates := app.Flag("attribution.states", "Comma-separated TCP states whose sockets are attributed to processes (tcpstate_process_sockets); empty turns attribution off.").Default("CLOSE_WAIT").String()
	attrInterval := app.Flag("attribution.interval", "How often to attribute sockets to processes by walking /proc/PID/fd.").Default("15s").String()
	app.Flag("attribution.top", "Process names named in tcpstate_process_sockets; the rest are summed as process=\"other\".").Default("10").IntVar(&o.attrTop)
	app.Flag("mode", "precise: follow every TCP state change through the kernel's inet_sock_set_state tracepoint (eBPF; needs CAP_BPF and CAP_PERFMON at start-up, Linux 5.12 or later), dumping only every --precise.dump-interval to reconcile. poll: dump the socket tables every --poll.interval. auto: precise where the kernel and privileges allow it, else poll.").Default("auto").EnumVar(&o.mode, "poll", "precise", "auto")
	app.Flag("precise.ring-bytes", "In precise mode, the size of the kernel's ring buffer of events: a power of two, at least the page size. Events that find it full are lost, counted in tcpstate_events_lost_total and repaired by a dump.").Default(strconv.Itoa(bpfsource.DefaultRingBytes)).IntVar(&o.ringBytes)
	dumpInterval := app.Flag("precise.dump-interval", "In precise mode, how often to dump the socket tables to reconcile what the events built.").Default("30s").String()
	o.log.Level = promslog.NewLevel()
	o.log.Format = promslog.NewFormat()
	flag.AddFlags(app, &o.log)
	if _, err := app.Parse(args); err != nil {
		return nil, err
	}
	for _, a := range *o.web.WebListenAddresses {
		if err := checkListenAddress(a); err != nil {
			return nil, fmt.Errorf("--web.listen-address=%s: %w", a, err)
		}
	}
	var err error
	if o.interval, err = time.ParseDuration(*interval); err != nil {
		return nil, fmt.Errorf("--poll.interval=%s: not a duration such as 1s or 500ms", *interval)
	}
	if o.dumpInterval, err = time.ParseDuration(*dumpInterval); err != nil || o.dumpInterval < time.Second {
		return nil, fmt.Errorf("--precise.dump-interval=%s: want a duration of at least 1s, such as 30s", *dumpInterval)
	}
	if o.ringBytes < os.Getpagesize() || o.ringBytes&(o.ringBytes-1) != 0 {
		return nil, fmt.Errorf("--precise.ring-bytes=%d: want a power of two of at least %d", o.ringBytes, os.Getpagesize())
	}
	if o.attrInterval, err = time.ParseDuration(*attrInterval); err != nil {
		return nil, fmt.Errorf("--attribution.interval=%s: not a duration such as 15s or 1m", *attrInterval)
	}
	for _, name := range strings.Split(*attrStates, ",") {
		if strings.TrimSpace(name) == "" {
			continue
		}
		st, err := collector.ParseState(name)
		if err != nil {
			return nil, fmt.Errorf("--attribution.states: %w", err)
		}
		if !slices.Contains(o.attrStates, st) {
			o.attrStates = append(o.attrStates, st)
		}
	}
	switch {
	case len(o.attrStates) > 0 && o.attrInterval < 100*time.Millisecond:
		return nil, fmt.Errorf("--attribution.interval=%v: must be at least 100ms", o.attrInterval)
	case o.attrTop < 0:
		return nil, fmt.Errorf("--attribution.top=%d: must not be negative", o.attrTop)
	case o.portTop < 0:
		return nil, fmt.Errorf("--port.top=%d: must not be negative", o.portTop)
	case o.remoteTop < 0:
		return nil, fmt.Errorf("--remote.top=%d: must not be negative", o.remoteTop)
	case o.interval < 10*time.Millisecond:
		return nil, fmt.Errorf("--poll.interval=%v: must be at least 10ms", o.interval)
	case o.maxTracked < 0:
		return nil, fmt.Errorf("--max-tracked-sockets=%d: must not be negative", o.maxTracked)
	case o.maxRequests < 0:
		return nil, fmt.Errorf("--web.max-requests=%d: must not be negative", o.maxRequests)
	case o.telemetryPath == "" || o.telemetryPath[0] != '/':
		return nil, fmt.Errorf("--web.telemetry-path=%q: must start with /", o.telemetryPath)
	}
	return o, nil
}

// checkListenAddress checks that a is an address exporter-toolkit can
// listen on: host:port, or vsock://CID:port. The host is not resolved here.
func checkListenAddress(a string) error {
	const want = "want host:port, such as :9965, 127.0.0.1:9965 or [::1]:9965"
	vsock := strings.HasPrefix(a, "vsock://")
	_, port, err := net.SplitHostPort(strings.TrimPrefix(a, "vsock://"))
	if err != nil {
		return fmt.Errorf("%s: %w", want, err)
	}
	if vsock {
		if _, err := strconv.ParseUint(port, 10, 32); err != nil {
			return fmt.Errorf("want vsock://CID:port, such as vsock://:9965: port %q is not a number", port)
		}
		return nil
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("%s: port %q is neither a number up to 65535 nor a service name", want, port)
	}
	return nil
}

func run(args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	logger := promslog.New(&o.log)
	if err := serve(o, logger); err != nil {
		// One line, whatever the error holds (YAML errors span several),
		// and only this one: the reason is not logged as well.
		fmt.Fprintf(stderr, "%s: %s\n", name, strings.Join(strings.Fields(err.Error()), " "))
		return 1
	}
	return 0
}

// newPoller opens what --netns names and returns a poller of it, the
// exporter options that go with it, and what closes it all.
func newPoller(o *options, cfg collector.Config) (*collector.Poller, []exporter.Option, func(), error) {
	if o.netns == "all" {
		disc := procscan.NewDiscoverer("/proc", "/run/netns")
		discover := func() ([]collector.Namespace, error) {
			found, err := disc.Discover()
			nss := make([]collector.Namespace, len(found))
			for i, ns := range found {
				nss[i] = collector.Namespace{ID: ns.Inode, Name: ns.Name, Path: ns.Path}
			}
			return nss, err
		}
		if _, err := discover(); err != nil {
			return nil, nil, nil, fmt.Errorf("--netns=all: %w", err)
		}
		p := collector.NewDiscoveringPoller(collector.Discovery{
			Discover: discover,
			Dial: func(ns collector.Namespace) (collector.DumpCloser, error) {
				return netlinkdiag.Dial(netlinkdiag.Options{NetNS: ns.Path})
			},
			Still: func(ns collector.Namespace) bool {
				var st syscall.Stat_t
				return syscall.Stat(ns.Path, &st) == nil && st.Ino == ns.ID
			},
		}, cfg)
		return p, []exporter.Option{exporter.WithNamespaces()}, p.Close, nil
	}
	conn, err := netlinkdiag.Dial(netlinkdiag.Options{NetNS: o.netns})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open sock_diag: %w", err)
	}
	return collector.NewPoller(conn, cfg), nil, func() { conn.Close() }, nil
}

// openEvents loads and attaches the BPF program in precise mode, and in
// auto mode where the kernel and privileges allow it; it returns the mode
// the exporter runs in.
func openEvents(o *options, logger *slog.Logger) (*bpfsource.Source, string, error) {
	if o.mode == "poll" {
		return nil, "poll", nil
	}
	// Every publish (a second) syncs with the source, which makes it read
	// the ring; between publishes it wakes only when a quarter of the ring
	// fills (1 MiB, 14,500 events, by default), leaving three quarters for
	// what comes while it wakes. Its own read interval is a backstop: each
	// wakeup costs more than reading the events it brings.
	src, err := bpfsource.Open(bpfsource.Options{RingBytes: o.ringBytes, WakeupBytes: o.ringBytes / 4, ReadInterval: readInterval})
	switch {
	case err == nil:
		return src, "precise", nil
	case o.mode == "precise":
		return nil, "", fmt.Errorf("--mode=precise: %w", err)
	}
	logger.Info("precise mode unavailable; polling", "reason", err)
	return nil, "poll", nil
}

// readInterval is how often the event source reads the ring when neither
// a publish nor a filling ring wakes it.
const readInterval = 5 * time.Second

// namespaceInode is the inode of the network namespace --netns names (our
// own for ""), which kernel events carry.
func namespaceInode(netns string) (uint64, error) {
	path := "/proc/self/ns/net"
	switch {
	case strings.Contains(netns, "/"):
		path = netns
	case netns != "":
		path = "/run/netns/" + netns
	}
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("network namespace %s: %w", path, err)
	}
	return st.Ino, nil
}

func serve(o *options, logger *slog.Logger) error {
	logger.Info("starting", "version", version.Info(), "build", version.BuildContext())
	if err := web.Validate(*o.web.WebConfigFile); err != nil {
		return fmt.Errorf("--web.config.file=%s: %w", *o.web.WebConfigFile, err)
	}
	hist := exporter.NewHistograms()
	// Precise mode attaches before the first dump, so that no change falls
	// between the dump and the first event.
	events, mode, err := openEvents(o, logger)
	if err != nil {
		return err
	}
	if events != nil {
		defer events.Close()
	}
	interval := o.interval
	var netnsInode uint64
	if events != nil {
		interval = o.dumpInterval
		if o.netns != "all" {
			if netnsInode, err = namespaceInode(o.netns); err != nil {
				return err
			}
		}
	}
	poller, exporterOpts, closePoller, err := newPoller(o, collector.Config{
		Interval:          interval,
		NetnsInode:        netnsInode,
		MaxTracked:        o.maxTracked,
		PortTop:           o.portTop,
		RemoteTop:         o.remoteTop,
		AttributionStates: o.attrStates,
		ObserveStay:       hist.ObserveStay,
		ObservePoll:       hist.ObservePoll,
		Logger:            logger,
	})
	if err != nil {
		return err
	}
	defer closePoller()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The first poll runs before we listen, so a dump the kernel refuses
	// stops us with its reason instead of serving empty metrics.
	if err := poller.Poll(ctx); err != nil {
		if errors.Is(err, os.ErrPermission) || errors.Is(err, netlinkdiag.ErrNamespaceGone) || errors.Is(err, netlinkdiag.ErrUnsupported) {
			return fmt.Errorf("first poll: %w", err)
		}
		logger.Warn("first poll failed; will retry", "err", err)
	}

	var attributor *collector.Attributor
	if len(o.attrStates) > 0 {
		attributor = collector.NewAttributor(poller, collector.AttributionConfig{
			Interval: o.attrInterval,
			Top:      o.attrTop,
			Logger:   logger,
		})
		attributor.Attribute()
		exporterOpts = append(exporterOpts, exporter.WithAttribution(attributor))
	}

	var attribution exporter.AttributionSource
	if attributor != nil {
		attribution = attributor
	}
	api := exporter.NewAPI(poller, attribution, exporter.APIConfig{Mode: mode, PollInterval: interval})

	reg := prometheus.NewRegistry()
	exporterOpts = append(exporterOpts, exporter.WithMode(mode))
	reg.MustRegister(
		exporter.New(poller, hist, exporterOpts...),
		versioncollector.NewCollector("tcpstate"),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	handler, err := exporter.Handler(reg, reg, exporter.HTTPConfig{
		TelemetryPath:       o.telemetryPath,
		MaxRequestsInFlight: o.maxRequests,
		Timeout:             10 * time.Second,
		Version:             version.Info(),
		Logger:              logger,
		API:                 api,
	})
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    1 << 16,
	}

	// Start-up is over: keep only the capabilities polling and serving
	// need (see privileges_linux.go). This comes before listening, so a
	// listen port below 1024 takes systemd socket activation.
	couldBind := canBindPrivilegedPorts()
	if err := dropPrivileges(o.netns != "", logger); err != nil {
		return fmt.Errorf("drop privileges: %w", err)
	}
	var background sync.WaitGroup
	if events != nil {
		feed := collector.NewFeed(8, 1024)
		background.Go(func() {
			err := events.Read(ctx, func(batch []bpfsource.Event) { _ = feed.Push(ctx, batch) })
			if err != nil && ctx.Err() == nil {
				logger.Error("reading kernel events stopped", "err", err)
			}
		})
		background.Go(func() { poller.RunFeed(ctx, feed, time.Second, events) })
	} else {
		background.Go(func() { poller.Run(ctx) })
	}
	if attributor != nil {
		background.Go(func() { attributor.Run(ctx) })
	}
	background.Go(func() { api.Run(ctx) })
	served := make(chan error, 1)
	go func() { served <- web.ListenAndServe(srv, o.web, logger) }()

	select {
	case err = <-served:
		stop()
		background.Wait()
		return fmt.Errorf("serve HTTP: %w", explainListenError(err, couldBind))
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("HTTP shutdown", "err", err)
	}
	background.Wait()
	return nil
}

// explainListenError says why a listen the kernel refused with EACCES was
// refused: the port is below 1024 (more exactly, below
// net.ipv4.ip_unprivileged_port_start), which takes CAP_NET_BIND_SERVICE,
// and the exporter either never had it (couldBind false) or dropped it
// before listening. Other errors are returned as they are.
func explainListenError(err error, couldBind bool) error {
	var op *net.OpError
	if !errors.As(err, &op) || op.Op != "listen" || !errors.Is(err, syscall.EACCES) {
		return err
	}
	why := "which this process does not have"
	if couldBind {
		why = "which the exporter drops with its other capabilities at start-up, before it listens"
	}
	return fmt.Errorf("%w: a port below 1024 needs CAP_NET_BIND_SERVICE, %s; "+
		"use systemd socket activation (--web.systemd-socket) or a port of 1024 or more", err, why)
}
