package exporter

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/exporter-toolkit/web"
)

// HTTPConfig configures the HTTP side.
type HTTPConfig struct {
	TelemetryPath       string        // where metrics are served, such as "/metrics"
	MaxRequestsInFlight int           // concurrent scrapes served; more get 503
	Timeout             time.Duration // a scrape taking longer gets 503
	Version             string        // shown on the landing page
	Logger              *slog.Logger
	// API, if set, serves the JSON API (/api/v1/snapshot, /api/v1/events)
	// and the live page (/states), linked from the landing page.
	API *API
}

// Handler returns the exporter's HTTP handler: the metrics of g at
// TelemetryPath, the page and the JSON API when cfg.API is set, and a
// landing page linking them at "/".
func Handler(g prometheus.Gatherer, reg prometheus.Registerer, cfg HTTPConfig) (http.Handler, error) {
	if cfg.TelemetryPath == "" || cfg.TelemetryPath[0] != '/' {
		return nil, fmt.Errorf("telemetry path %q must start with /", cfg.TelemetryPath)
	}
	mux := http.NewServeMux()
	mux.Handle(cfg.TelemetryPath, promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(g, promhttp.HandlerOpts{
		ErrorLog:            scrapeErrorLog{cfg.Logger},
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: cfg.MaxRequestsInFlight,
		Timeout:             cfg.Timeout,
		EnableOpenMetrics:   true,
	})))
	links := []web.LandingLinks{{Address: cfg.TelemetryPath, Text: "Metrics"}}
	if a := cfg.API; a != nil {
		for _, p := range []string{"/states", "/api/v1/snapshot", "/api/v1/events"} {
			if cfg.TelemetryPath == p {
				return nil, fmt.Errorf("telemetry path %s is where the page or the JSON API is served", p)
			}
		}
		mux.HandleFunc("/states", a.ServePage)
		mux.HandleFunc("/api/v1/snapshot", a.ServeSnapshot)
		mux.HandleFunc("/api/v1/events", a.ServeEvents)
		links = append(links,
			web.LandingLinks{Address: "/states", Text: "TCP states", Description: "the state diagram with this host's numbers, live"},
			web.LandingLinks{Address: "/api/v1/snapshot", Text: "Snapshot (JSON)", Description: "the same numbers, for programs"},
		)
	}
	if cfg.TelemetryPath != "/" {
		landing, err := web.NewLandingPage(web.LandingConfig{
			Name:        "TCP State Exporter",
			Description: "Linux TCP sockets by documented state, time in state and transitions, from sock_diag",
			Version:     cfg.Version,
			Links:       links,
			// exporter-toolkit links /debug/pprof/ unless told not to; the
			// exporter serves no pprof (not on the metrics port).
			Profiling: "false",
		})
		if err != nil {
			return nil, fmt.Errorf("landing page: %w", err)
		}
		mux.Handle("/", landing)
	}
	return mux, nil
}

// scrapeErrorLog is promhttp's error log. A scraper that goes away mid-scrape
// (a Prometheus restart, a timeout) makes every remaining metric family
// fail to send: those are logged at debug, one line each, so they do not
// drown real errors.
type scrapeErrorLog struct{ logger *slog.Logger }

// Println implements promhttp.Logger.
func (l scrapeErrorLog) Println(v ...any) {
	msg := strings.TrimSpace(fmt.Sprintln(v...))
	level := slog.LevelError
	for _, gone := range []string{"context canceled", "broken pipe", "connection reset by peer", "i/o timeout"} {
		if strings.Contains(msg, gone) {
			level = slog.LevelDebug
			break
		}
	}
	l.logger.Log(context.Background(), level, "serving metrics", "err", msg)
}
