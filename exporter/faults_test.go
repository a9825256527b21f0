package exporter_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/exporter"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// step is one scripted dump: the sockets delivered, then err.
type step struct {
	socks []netlinkdiag.Socket
	err   error
}

type scriptDumper struct {
	steps []step
	calls int
}

func (d *scriptDumper) DumpTCP(_ context.Context, _ netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	if d.calls >= len(d.steps) {
		return fmt.Errorf("script exhausted after %d dumps", d.calls)
	}
	s := d.steps[d.calls]
	d.calls++
	for i := range s.socks {
		if err := fn(&s.socks[i]); err != nil {
			return err
		}
	}
	return s.err
}

func sock(state uint8, cookie uint64) netlinkdiag.Socket {
	return netlinkdiag.Socket{Family: syscall.AF_INET, State: state, Cookie: cookie}
}

// values gathers g and returns every sample of the tcpstate_ families the
// test looks at, keyed "name{labels}".
func values(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "tcpstate_sockets", "tcpstate_poll_errors_total", "tcpstate_polls_total",
			"tcpstate_last_poll_timestamp_seconds", "tcpstate_tracked_sockets", "tcpstate_transitions_total":
		default:
			continue
		}
		for _, m := range mf.GetMetric() {
			out[mf.GetName()+labels(m)] = value(m)
		}
	}
	return out
}

func labels(m *dto.Metric) string {
	var parts []string
	for _, l := range m.GetLabel() {
		parts = append(parts, l.GetName()+"="+l.GetValue())
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func value(m *dto.Metric) float64 {
	switch {
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	case m.Counter != nil:
		return m.Counter.GetValue()
	}
	return 0
}

// TestFaultsExposition reads a Poller through the Exporter while faults
// come and go: each failed poll shows in tcpstate_poll_errors_total under
// its reason and in nothing else; the socket gauges and the last poll's
// timestamp stay those of the last complete poll until a whole dump
// replaces them.
func TestFaultsExposition(t *testing.T) {
	good := []netlinkdiag.Socket{sock(netlinkdiag.StateEstablished, 1), sock(netlinkdiag.StateEstablished, 2), sock(netlinkdiag.StateListen, 3)}
	partial := good[:1]
	better := append(good[:3:3], sock(netlinkdiag.StateCloseWait, 4))
	faults := []struct {
		reason string
		err    error
	}{
		{"permission", fmt.Errorf("netlinkdiag: kernel answered the dump with NLMSG_ERROR: %w", syscall.EPERM)},
		{"enobufs", fmt.Errorf("netlinkdiag: receive: %w", syscall.ENOBUFS)},
		{"malformed", fmt.Errorf("%w: nlmsg_len 88 beyond the 36 bytes left at offset 88", netlinkdiag.ErrMalformed)},
		{"namespace", fmt.Errorf("netlinkdiag: network namespace /run/netns/x vanished: %w", netlinkdiag.ErrNamespaceGone)},
		{"unsupported", fmt.Errorf("netlinkdiag: kernel answered the dump with NLMSG_ERROR ENOENT: %w", netlinkdiag.ErrUnsupported)},
		{"dump", fmt.Errorf("netlinkdiag: no reply from the kernel within 10s: %w", os.ErrDeadlineExceeded)},
	}
	steps := []step{{socks: good}}
	for _, f := range faults {
		steps = append(steps, step{socks: partial, err: f.err})
	}
	steps = append(steps, step{socks: better})

	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	p := collector.NewPoller(&scriptDumper{steps: steps}, collector.Config{Interval: time.Second, MaxTracked: 100, Now: clock})
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(exporter.New(p, exporter.NewHistograms()))
	ctx := context.Background()

	if err := p.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	last := values(t, reg)
	if last[`tcpstate_sockets{family=ipv4,state=ESTABLISHED}`] != 2 || last[`tcpstate_last_poll_timestamp_seconds{}`] != 1_700_000_000 {
		t.Fatalf("first poll: %v", last)
	}
	check := func(step string, reason string, n float64) {
		t.Helper()
		got := values(t, reg)
		for k, v := range last {
			want := v
			switch {
			case k == `tcpstate_polls_total{}`:
				want = v + 1
			case k == `tcpstate_poll_errors_total{reason=`+reason+`}`:
				want = v + n
			}
			if got[k] != want {
				t.Errorf("%s: %s = %v, want %v", step, k, got[k], want)
			}
		}
		if len(got) != len(last) {
			t.Errorf("%s: %d series, %d before", step, len(got), len(last))
		}
		last = got
	}
	for _, f := range faults {
		now = now.Add(time.Second)
		if err := p.Poll(ctx); err == nil {
			t.Fatalf("%s: poll succeeded", f.reason)
		}
		check(f.reason, f.reason, 1)
	}

	now = now.Add(time.Second)
	if err := p.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	got := values(t, reg)
	for k, want := range map[string]float64{
		`tcpstate_sockets{family=ipv4,state=ESTABLISHED}`:       2,
		`tcpstate_sockets{family=ipv4,state=LISTEN}`:            1,
		`tcpstate_sockets{family=ipv4,state=CLOSE_WAIT}`:        1,
		`tcpstate_tracked_sockets{}`:                            4,
		`tcpstate_last_poll_timestamp_seconds{}`:                float64(now.Unix()),
		`tcpstate_transitions_total{from=CLOSED,to=CLOSE_WAIT}`: 1,
	} {
		if got[k] != want {
			t.Errorf("after recovery: %s = %v, want %v", k, got[k], want)
		}
	}
	for k, v := range got {
		if strings.HasPrefix(k, "tcpstate_transitions_total") && strings.Contains(k, "to=CLOSED") && v != 0 {
			t.Errorf("after recovery: %s = %v: a partial dump declared sockets gone", k, v)
		}
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// blockingGatherer holds every Gather until release is closed.
type blockingGatherer struct {
	entered chan struct{}
	release chan struct{}
}

func (b *blockingGatherer) Gather() ([]*dto.MetricFamily, error) {
	b.entered <- struct{}{}
	<-b.release
	return nil, nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Error(err)
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestHandlerLimitsConcurrentScrapes: past MaxRequestsInFlight, a scrape
// is answered 503 at once instead of queueing behind slow ones.
func TestHandlerLimitsConcurrentScrapes(t *testing.T) {
	g := &blockingGatherer{entered: make(chan struct{}, 4), release: make(chan struct{})}
	h, err := exporter.Handler(g, prometheus.NewRegistry(), exporter.HTTPConfig{
		TelemetryPath: "/metrics", MaxRequestsInFlight: 1, Timeout: time.Minute,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	var wg sync.WaitGroup
	var first int
	wg.Go(func() { first, _ = get(t, srv.URL+"/metrics") })
	<-g.entered // the first scrape holds the only slot
	start := time.Now()
	code, body := get(t, srv.URL+"/metrics")
	if code != http.StatusServiceUnavailable {
		t.Errorf("second concurrent scrape: %d %q, want 503", code, body)
	}
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the refused scrape took %v: it waited for the slot", took)
	}
	close(g.release)
	wg.Wait()
	if first != http.StatusOK {
		t.Errorf("first scrape: %d, want 200", first)
	}
	if code, _ := get(t, srv.URL+"/metrics"); code != http.StatusOK {
		t.Errorf("scrape after the slot freed: %d, want 200", code)
	}
}

// TestHandlerTimesOutSlowScrape: a scrape whose gathering outlasts Timeout
// is answered 503 when the timeout passes.
func TestHandlerTimesOutSlowScrape(t *testing.T) {
	g := &blockingGatherer{entered: make(chan struct{}, 4), release: make(chan struct{})}
	defer close(g.release)
	h, err := exporter.Handler(g, prometheus.NewRegistry(), exporter.HTTPConfig{
		TelemetryPath: "/metrics", MaxRequestsInFlight: 4, Timeout: 100 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	start := time.Now()
	code, _ := get(t, srv.URL+"/metrics")
	if took := time.Since(start); code != http.StatusServiceUnavailable || took > 5*time.Second {
		t.Errorf("scrape of a gatherer that never returns: %d after %v, want 503 after 100ms", code, took)
	}
}
