// Command tcpstate_exporter polls Linux sock_diag for every TCP socket and
// serves per-state counts, time in state and transitions to Prometheus.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
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

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/exporter"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

const name = "tcpstate_exporter"

// defaultListen is in the Prometheus exporter port range (9100-9999).
const defaultListen = ":9965"

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

type options struct {
	web           *web.FlagConfig
	telemetryPath string
	maxRequests   int
	interval      time.Duration
	netns         string
	maxTracked    int
	log           promslog.Config
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	app := kingpin.New(name, "Exports Linux TCP socket states, time in state and transitions, read from sock_diag, to Prometheus.")
	app.UsageWriter(stderr).ErrorWriter(stderr)
	app.HelpFlag.Short('h')
	app.Version(version.Print(name))
	o := &options{web: kingpinflag.AddFlags(app, defaultListen)}
	app.Flag("web.telemetry-path", "Path under which to expose metrics.").Default("/metrics").StringVar(&o.telemetryPath)
	app.Flag("web.max-requests", "Maximum number of concurrent scrapes; more are answered 503. 0 means no limit.").Default("10").IntVar(&o.maxRequests)
	interval := app.Flag("poll.interval", "How often to dump the socket table, such as 1s or 500ms. Time-in-state precision is this interval.").Default("1s").String()
	app.Flag("netns", "Observe this network namespace instead of our own: a name under /run/netns or a path such as /proc/PID/ns/net. Needs CAP_SYS_ADMIN.").Default("").StringVar(&o.netns)
	app.Flag("max-tracked-sockets", "Track time in state for at most this many sockets; sockets past it are still counted, and tcpstate_untracked_sockets says how many.").Default("1048576").IntVar(&o.maxTracked)
	o.log.Level = promslog.NewLevel()
	o.log.Format = promslog.NewFormat()
	flag.AddFlags(app, &o.log)
	if _, err := app.Parse(args); err != nil {
		return nil, err
	}
	var err error
	if o.interval, err = time.ParseDuration(*interval); err != nil {
		return nil, fmt.Errorf("--poll.interval=%s: not a duration such as 1s or 500ms", *interval)
	}
	switch {
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

func run(args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	logger := promslog.New(&o.log)
	if err := serve(o, logger); err != nil {
		logger.Error("exiting", "err", err)
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
	return 0
}

func serve(o *options, logger *slog.Logger) error {
	logger.Info("starting", "version", version.Info(), "build", version.BuildContext())
	conn, err := netlinkdiag.Dial(netlinkdiag.Options{NetNS: o.netns})
	if err != nil {
		return fmt.Errorf("open sock_diag: %w", err)
	}
	defer conn.Close()

	hist := exporter.NewHistograms()
	poller := collector.NewPoller(conn, collector.Config{
		Interval:    o.interval,
		MaxTracked:  o.maxTracked,
		ObserveStay: hist.ObserveStay,
		ObservePoll: hist.ObservePoll,
		Logger:      logger,
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// The first poll runs before we listen, so a dump the kernel refuses
	// stops us with its reason instead of serving empty metrics.
	if err := poller.Poll(ctx); err != nil {
		if errors.Is(err, os.ErrPermission) || errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("first poll: %w", err)
		}
		logger.Warn("first poll failed; will retry", "err", err)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		exporter.New(poller, hist),
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

	polled := make(chan struct{})
	go func() {
		defer close(polled)
		poller.Run(ctx)
	}()
	served := make(chan error, 1)
	go func() { served <- web.ListenAndServe(srv, o.web, logger) }()

	select {
	case err = <-served:
		stop()
		<-polled
		return fmt.Errorf("serve HTTP: %w", err)
	case <-ctx.Done():
	}
	logger.Info("shutting down")
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("HTTP shutdown", "err", err)
	}
	<-polled
	return nil
}
