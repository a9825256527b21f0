package exporter

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

// swappable is a SnapshotSource whose snapshot a test replaces, as the
// poll loop does.
type swappable struct {
	p atomic.Pointer[collector.Snapshot]
}

func (s *swappable) Snapshot() *collector.Snapshot { return s.p.Load() }

func newSwappable(s *collector.Snapshot) *swappable {
	w := &swappable{}
	w.p.Store(s)
	return w
}

// apiSample is withBreakdowns() with stays, events and counters set, a
// minute after a first snapshot with fewer transitions.
func apiSamples() (first, second *collector.Snapshot) {
	first = withBreakdowns()
	first.Time = first.Time.Add(-time.Minute)
	first.Transitions[collector.Closed][collector.SynSend] = 5
	first.Transitions[collector.Established][collector.CloseWait] = 0
	second = withBreakdowns()
	second.Namespaces[0].Inode = 4026531840
	second.Transitions[collector.Closed][collector.SynSend] = 125
	second.Transitions[collector.Established][collector.Closed] = 2
	second.Events, second.EventsLost[collector.Loss(0)] = 900, 3
	second.Corrections[collector.Correction(0)] = 4
	for range 99 {
		second.Stays.Observe(collector.TimeWait, 60*time.Second)
	}
	second.Stays.Observe(collector.TimeWait, time.Hour)
	second.Stays.Observe(collector.SynSend, 250*time.Microsecond)
	return first, second
}

var updateAPI = os.Getenv("UPDATE_GOLDEN") != ""

// TestAPISnapshotGolden: the JSON of a fixed snapshot, names and all, is
// testdata/snapshot.json (UPDATE_GOLDEN=1 rewrites it).
func TestAPISnapshotGolden(t *testing.T) {
	first, second := apiSamples()
	src := newSwappable(first)
	api := NewAPI(src, fixedAttribution{sampleAttribution()}, APIConfig{Mode: "precise", PollInterval: 30 * time.Second})
	api.Latest()
	src.p.Store(second)
	srv := httptest.NewServer(http.HandlerFunc(api.ServeSnapshot))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	body, _ := io.ReadAll(resp.Body)
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, body, "", "  "); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, body)
	}
	const golden = "testdata/snapshot.json"
	if updateAPI {
		if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(string(want), pretty.String()); d != "" {
		t.Errorf("/api/v1/snapshot differs from %s (UPDATE_GOLDEN=1 go test -run Golden rewrites it) (-want +got)\n%s", golden, d)
	}
	// It decodes strictly into the exported types: they are the schema.
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var v APISnapshot
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode into APISnapshot: %v", err)
	}
	for _, tr := range v.Transitions {
		if tr.From == "CLOSED" && tr.To == "SYN_SEND" && tr.PerSecond != 2 {
			t.Errorf("CLOSED -> SYN_SEND: %v a second, want 2 (120 in a minute)", tr.PerSecond)
		}
	}
}

// TestAPIAgreesWithMetrics: on the same snapshot, the API's counts per
// state and family, ages and transitions are the metrics' values.
func TestAPIAgreesWithMetrics(t *testing.T) {
	_, s := apiSamples()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(New(fixed{s}, NewHistograms()))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	metrics := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			for _, l := range m.GetLabel() {
				key += "," + l.GetName() + "=" + l.GetValue()
			}
			metrics[key] = m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	v, _ := NewAPI(fixed{s}, nil, APIConfig{}).Latest()
	api := map[string]float64{}
	for _, st := range v.States {
		api["tcpstate_sockets,family=ipv4,state="+st.State] = float64(st.Sockets.IPv4)
		api["tcpstate_sockets,family=ipv6,state="+st.State] = float64(st.Sockets.IPv6)
		api["tcpstate_oldest_in_state_seconds,state="+st.State] = st.OldestSeconds
	}
	for _, tr := range v.Transitions {
		api["tcpstate_transitions_total,from="+tr.From+",to="+tr.To] = float64(tr.Total)
	}
	api["tcpstate_polls_total"] = float64(v.Exporter.Polls)
	want := map[string]float64{}
	for k := range metrics {
		for _, prefix := range []string{"tcpstate_sockets,", "tcpstate_oldest_in_state_seconds,", "tcpstate_transitions_total,", "tcpstate_polls_total"} {
			if strings.HasPrefix(k, prefix) {
				want[k] = metrics[k]
			}
		}
	}
	if len(want) < 2*collector.NumStates+collector.NumStates+1 {
		t.Fatalf("only %d of the metrics compared: %v", len(want), want)
	}
	if d := cmp.Diff(want, api); d != "" {
		t.Errorf("the API and /metrics disagree (-metrics +api)\n%s", d)
	}
}

// TestAPIRatesOverTheLastMinute: rates come from the snapshots seen over
// the last minute, at most one sample a second.
func TestAPIRatesOverTheLastMinute(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	src := newSwappable(&collector.Snapshot{})
	api := NewAPI(src, nil, APIConfig{})
	rate := func() float64 {
		v, _ := api.Latest()
		for _, tr := range v.Transitions {
			return tr.PerSecond
		}
		return -1
	}
	// 10 a second for two minutes, seen every 250ms, then none.
	for i := 0; i <= 480; i++ {
		s := &collector.Snapshot{Time: start.Add(time.Duration(i) * 250 * time.Millisecond)}
		s.Transitions[collector.Established][collector.CloseWait] = uint64(i) * 10 / 4
		src.p.Store(s)
		if got := rate(); i > 8 && (got < 9.5 || got > 10.5) {
			t.Fatalf("after %v: %v a second, want 10", time.Duration(i)*250*time.Millisecond, got)
		}
	}
	final := src.Snapshot().Transitions
	for i := 1; i <= 240; i++ {
		s := &collector.Snapshot{Time: start.Add(2*time.Minute + time.Duration(i)*250*time.Millisecond), Transitions: final}
		src.p.Store(s)
		got := rate()
		if i == 120 && (got < 4 || got > 6) {
			t.Errorf("half a minute after it stopped: %v a second, want about 5", got)
		}
	}
	if got := rate(); got != 0 {
		t.Errorf("a minute after it stopped: %v a second, want 0", got)
	}
}

// sseEvent reads the next event of a stream, skipping comments.
func sseEvent(t *testing.T, r *bufio.Reader) (event string, data []byte) {
	t.Helper()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("read the event stream: %v", err)
		}
		line = strings.TrimRight(line, "\n")
		switch {
		case line == "" && event != "":
			return event, data
		case strings.HasPrefix(line, "event: "):
			event = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			data = append(data, strings.TrimPrefix(line, "data: ")...)
		}
	}
}

// openEvents opens /api/v1/events; the stream ends with the test or with
// cancel.
func openEvents(t *testing.T, url string) (*http.Response, *bufio.Reader, context.CancelFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/api/v1/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	return resp, bufio.NewReader(resp.Body), cancel
}

func eventsServer(t *testing.T, src SnapshotSource, cfg APIConfig, tweak func(*http.Server)) (*API, string) {
	t.Helper()
	api := NewAPI(src, nil, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { api.Run(ctx); close(done) }()
	reg := prometheus.NewRegistry()
	h, err := Handler(reg, reg, HTTPConfig{TelemetryPath: "/metrics", Logger: slog.New(slog.DiscardHandler), API: api})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	if tweak != nil {
		tweak(srv.Config)
	}
	srv.Start()
	t.Cleanup(func() { cancel(); <-done; srv.Close() })
	return api, srv.URL
}

// TestAPIEventsPushNewSnapshots: a viewer gets the latest snapshot at once
// and each new one as it is published, and the stream outlives the
// server's read and write timeouts.
func TestAPIEventsPushNewSnapshots(t *testing.T) {
	src := newSwappable(sample())
	_, url := eventsServer(t, src, APIConfig{Check: 10 * time.Millisecond, Heartbeat: 50 * time.Millisecond}, func(s *http.Server) {
		s.ReadTimeout, s.WriteTimeout = 200*time.Millisecond, 200*time.Millisecond
	})
	resp, r, _ := openEvents(t, url)
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET /api/v1/events: %s, %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	ev, data := sseEvent(t, r)
	var v APISnapshot
	if err := json.Unmarshal(data, &v); ev != "snapshot" || err != nil || v.Exporter.Polls != 12 {
		t.Fatalf("first event %q (%v): polls %d, want a snapshot of 12 polls", ev, err, v.Exporter.Polls)
	}
	for i := range 3 {
		time.Sleep(300 * time.Millisecond) // past both timeouts
		next := sample()
		next.Polls = uint64(13 + i)
		src.p.Store(next)
		start := time.Now()
		ev, data = sseEvent(t, r)
		if err := json.Unmarshal(data, &v); ev != "snapshot" || err != nil || v.Exporter.Polls != next.Polls {
			t.Fatalf("event %q (%v): polls %d, want %d", ev, err, v.Exporter.Polls, next.Polls)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("a new snapshot took %v to reach the viewer", d)
		}
	}
}

// TestAPIEventsBoundViewers: the 17th concurrent viewer is refused, and a
// viewer that goes away frees its slot.
func TestAPIEventsBoundViewers(t *testing.T) {
	_, url := eventsServer(t, newSwappable(sample()), APIConfig{Check: 10 * time.Millisecond}, nil)
	var cancels []context.CancelFunc
	for range 16 {
		resp, r, cancel := openEvents(t, url)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("viewer %d: %s", len(cancels)+1, resp.Status)
		}
		sseEvent(t, r)
		cancels = append(cancels, cancel)
	}
	resp, _, _ := openEvents(t, url)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("17th viewer: %s, want 503", resp.Status)
	}
	cancels[3]()
	deadline := time.Now().Add(3 * time.Second)
	for {
		resp, r, _ := openEvents(t, url)
		if resp.StatusCode == http.StatusOK {
			if ev, _ := sseEvent(t, r); ev != "snapshot" {
				t.Fatalf("first event %q", ev)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a viewer went away, and 3 s later a new one still gets %s", resp.Status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAPIEventsEndWithRun: when the exporter shuts down (Run returns),
// the streams end, so that the HTTP server's shutdown does not wait.
func TestAPIEventsEndWithRun(t *testing.T) {
	api := NewAPI(newSwappable(sample()), nil, APIConfig{Check: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	go api.Run(ctx)
	srv := httptest.NewServer(http.HandlerFunc(api.ServeEvents))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	sseEvent(t, r)
	cancel()
	ended := make(chan error, 1)
	go func() { _, err := io.Copy(io.Discard, r); ended <- err }()
	select {
	case <-ended:
	case <-time.After(3 * time.Second):
		t.Fatal("the stream did not end when Run returned")
	}
}
