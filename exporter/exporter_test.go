package exporter

import (
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

type fixed struct{ s *collector.Snapshot }

func (f fixed) Snapshot() *collector.Snapshot { return f.s }

func sample() *collector.Snapshot {
	s := &collector.Snapshot{Time: time.Unix(1_700_000_000, 500_000_000), Polls: 12, Overruns: 1}
	s.Sockets[collector.IPv4][collector.Established] = 7
	s.Sockets[collector.IPv6][collector.Listen] = 2
	s.Sockets[collector.IPv4][collector.CloseWait] = 3
	s.Oldest[collector.CloseWait] = 90 * time.Second
	s.Oldest[collector.Established] = 1500 * time.Millisecond
	s.Tracked, s.Untracked = 12, 4
	s.Errors[collector.ReasonUnsupported] = 2
	s.Unknown, s.Missing = 1, 3
	s.Inconsistencies[collector.InconsistencyDuplicate] = 5
	s.Inconsistencies[collector.InconsistencySkipped] = 4
	s.Transitions[collector.Established][collector.CloseWait] = 3
	s.Transitions[collector.Closed][collector.SynSend] = 5
	return s
}

// allStates renders the 11 lines of a per-state metric, with overrides.
func allStates(metric, extra string, v map[string]string) string {
	var b strings.Builder
	for _, st := range collector.States() {
		val := "0"
		if x, ok := v[st.String()]; ok {
			val = x
		}
		fmt.Fprintf(&b, "%s{%sstate=%q} %s\n", metric, extra, st, val)
	}
	return b.String()
}

func TestCollectGauges(t *testing.T) {
	e := New(fixed{sample()}, NewHistograms())
	want := `# HELP tcpstate_sockets TCP sockets in each documented state at the latest complete poll, counting sockets that dump left out until a second dump confirms them closed (see tcpstate_missing_sockets).
# TYPE tcpstate_sockets gauge
` + allStates("tcpstate_sockets", `family="ipv4",`, map[string]string{"ESTABLISHED": "7", "CLOSE_WAIT": "3"}) +
		allStates("tcpstate_sockets", `family="ipv6",`, map[string]string{"LISTEN": "2"}) + `# HELP tcpstate_oldest_in_state_seconds How long the longest-standing socket now in the state has been in it, as of the latest complete poll; 0 when no socket is in it. For sockets present when the exporter started it is a lower bound.
# TYPE tcpstate_oldest_in_state_seconds gauge
` + allStates("tcpstate_oldest_in_state_seconds", "", map[string]string{"CLOSE_WAIT": "90", "ESTABLISHED": "1.5"}) + `# HELP tcpstate_transitions_total State transitions observed between polls. Appearance counts as from CLOSED, disappearance as to CLOSED. Only pairs seen at least once are exported.
# TYPE tcpstate_transitions_total counter
tcpstate_transitions_total{from="CLOSED",to="SYN_SEND"} 5
tcpstate_transitions_total{from="ESTABLISHED",to="CLOSE_WAIT"} 3
# HELP tcpstate_poll_errors_total Polls that failed, by reason.
# TYPE tcpstate_poll_errors_total counter
tcpstate_poll_errors_total{reason="dump"} 0
tcpstate_poll_errors_total{reason="enobufs"} 0
tcpstate_poll_errors_total{reason="malformed"} 0
tcpstate_poll_errors_total{reason="namespace"} 0
tcpstate_poll_errors_total{reason="permission"} 0
tcpstate_poll_errors_total{reason="unsupported"} 2
# HELP tcpstate_polls_total Polls attempted.
# TYPE tcpstate_polls_total counter
tcpstate_polls_total 12
# HELP tcpstate_poll_overruns_total Polls that took longer than the poll interval; the ticks they overran were skipped, not queued.
# TYPE tcpstate_poll_overruns_total counter
tcpstate_poll_overruns_total 1
# HELP tcpstate_tracked_sockets Sockets whose time in state is tracked.
# TYPE tcpstate_tracked_sockets gauge
tcpstate_tracked_sockets 12
# HELP tcpstate_untracked_sockets Sockets counted but not tracked because --max-tracked-sockets was reached.
# TYPE tcpstate_untracked_sockets gauge
tcpstate_untracked_sockets 4
# HELP tcpstate_last_poll_timestamp_seconds Unix time of the latest complete poll; 0 before the first.
# TYPE tcpstate_last_poll_timestamp_seconds gauge
tcpstate_last_poll_timestamp_seconds 1.7000000005e+09
# HELP tcpstate_unknown_state_sockets Sockets the latest complete poll found in a kernel state with no documented name (a newer kernel's); counted in no state.
# TYPE tcpstate_unknown_state_sockets gauge
tcpstate_unknown_state_sockets 1
# HELP tcpstate_missing_sockets Sockets the latest complete dump left out that are not yet confirmed closed: a sock_diag dump skips sockets when the kernel's tables change during it, so a socket is taken for closed only when a second consecutive dump leaves it out too (or its TIME_WAIT timer has run out). They are counted in tcpstate_sockets in their last state.
# TYPE tcpstate_missing_sockets gauge
tcpstate_missing_sockets 3
# HELP tcpstate_dump_inconsistencies_total Inconsistencies in the kernel's dumps that were corrected, by kind: duplicate (a socket reported twice in one dump, counted once), skipped (a socket a complete dump left out that was still open: not taken for closed), interrupted (dumps the kernel flagged NLM_F_DUMP_INTR).
# TYPE tcpstate_dump_inconsistencies_total counter
tcpstate_dump_inconsistencies_total{kind="duplicate"} 5
tcpstate_dump_inconsistencies_total{kind="interrupted"} 0
tcpstate_dump_inconsistencies_total{kind="skipped"} 4
`
	names := []string{"tcpstate_sockets", "tcpstate_oldest_in_state_seconds", "tcpstate_transitions_total",
		"tcpstate_poll_errors_total", "tcpstate_polls_total", "tcpstate_poll_overruns_total",
		"tcpstate_tracked_sockets", "tcpstate_untracked_sockets", "tcpstate_last_poll_timestamp_seconds",
		"tcpstate_unknown_state_sockets", "tcpstate_missing_sockets", "tcpstate_dump_inconsistencies_total"}
	if err := testutil.CollectAndCompare(e, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
}

func TestCollectEmptySnapshotHasEverySeries(t *testing.T) {
	e := New(fixed{&collector.Snapshot{}}, NewHistograms())
	if got := testutil.CollectAndCount(e, "tcpstate_sockets"); got != 22 {
		t.Errorf("tcpstate_sockets has %d series, want 22 (every family and state, zeros included)", got)
	}
	if got := testutil.CollectAndCount(e, "tcpstate_oldest_in_state_seconds"); got != 11 {
		t.Errorf("tcpstate_oldest_in_state_seconds has %d series, want 11", got)
	}
	if got := testutil.CollectAndCount(e, "tcpstate_state_duration_seconds"); got != 11 {
		t.Errorf("tcpstate_state_duration_seconds has %d series, want 11", got)
	}
	if got := testutil.CollectAndCount(e, "tcpstate_transitions_total"); got != 0 {
		t.Errorf("tcpstate_transitions_total has %d series before any transition, want 0", got)
	}
}

func TestHistograms(t *testing.T) {
	h := NewHistograms()
	e := New(fixed{&collector.Snapshot{}}, h)
	h.ObserveStay(collector.SynSend, 2*time.Millisecond)
	h.ObserveStay(collector.SynSend, 40*time.Microsecond) // a precise-mode connect on a LAN
	h.ObserveStay(collector.Established, 2*time.Second)
	h.ObserveStay(collector.Established, 2*time.Hour)
	h.ObserveStay(collector.State(200), time.Second) // ignored, not a panic
	h.ObservePoll(3 * time.Millisecond)

	var b strings.Builder
	b.WriteString("# HELP tcpstate_state_duration_seconds Completed stays of sockets in a TCP state, from entry to exit: exact in precise mode, estimated to within one poll interval in poll mode. Stays that began before the exporter started are not included.\n# TYPE tcpstate_state_duration_seconds histogram\n")
	obs := map[string][]float64{"SYN_SEND": {0.002, 0.00004}, "ESTABLISHED": {2, 7200}}
	for _, st := range collector.States() {
		var sum float64
		for _, o := range obs[st.String()] {
			sum += o
		}
		for _, le := range append(DurationBuckets, 0) {
			n := 0
			for _, o := range obs[st.String()] {
				if le == 0 || o <= le {
					n++
				}
			}
			l := fmt.Sprint(le)
			if le == 0 {
				l = "+Inf"
			}
			fmt.Fprintf(&b, "tcpstate_state_duration_seconds_bucket{state=%q,le=%q} %d\n", st, l, n)
		}
		fmt.Fprintf(&b, "tcpstate_state_duration_seconds_sum{state=%q} %v\n", st, sum)
		fmt.Fprintf(&b, "tcpstate_state_duration_seconds_count{state=%q} %d\n", st, len(obs[st.String()]))
	}
	if err := testutil.CollectAndCompare(e, strings.NewReader(b.String()), "tcpstate_state_duration_seconds"); err != nil {
		t.Error(err)
	}
	if got := testutil.CollectAndCount(e, "tcpstate_poll_duration_seconds"); got != 1 {
		t.Errorf("tcpstate_poll_duration_seconds has %d series, want 1", got)
	}
}

func TestLint(t *testing.T) {
	h := NewHistograms()
	h.ObserveStay(collector.Established, time.Second)
	problems, err := testutil.CollectAndLint(New(fixed{sample()}, h))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestHandler(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(New(fixed{sample()}, NewHistograms()))
	logger := slog.New(slog.DiscardHandler)
	h, err := Handler(reg, reg, HTTPConfig{TelemetryPath: "/metrics", MaxRequestsInFlight: 2, Timeout: time.Second, Version: "test", Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()

	body := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`tcpstate_sockets{family="ipv4",state="ESTABLISHED"} 7`,
		`tcpstate_oldest_in_state_seconds{state="CLOSE_WAIT"} 90`,
		`promhttp_metric_handler_requests_total{code="200"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if landing := get(t, srv.URL+"/"); !strings.Contains(landing, `href="/metrics"`) {
		t.Errorf("landing page does not link /metrics:\n%s", landing)
	}
	if _, err := Handler(reg, reg, HTTPConfig{TelemetryPath: "metrics", Logger: logger}); err == nil {
		t.Error("a telemetry path without a leading / was accepted")
	}
	api := NewAPI(fixed{sample()}, nil, APIConfig{})
	if _, err := Handler(reg, reg, HTTPConfig{TelemetryPath: "/states", Logger: logger, API: api}); err == nil {
		t.Error("a telemetry path that is the page's was accepted")
	}
}

// TestLandingPageLinksAnswer fetches every link of the landing page, for
// the default telemetry path and another: each must answer 200. A link off
// the exporter (exporter-toolkit's pprof.me, say) fails too: nothing here
// can vouch for it.
func TestLandingPageLinksAnswer(t *testing.T) {
	attr := regexp.MustCompile(`(?i)\b(?:href|src|action)="([^"]*)"`)
	for _, path := range []string{"/metrics", "/custom/metrics"} {
		t.Run(path, func(t *testing.T) {
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(New(fixed{sample()}, NewHistograms()))
			api := NewAPI(fixed{sample()}, nil, APIConfig{Mode: "poll", PollInterval: time.Second})
			h, err := Handler(reg, reg, HTTPConfig{TelemetryPath: path, Timeout: time.Second, Version: "test", Logger: slog.New(slog.DiscardHandler), API: api})
			if err != nil {
				t.Fatal(err)
			}
			srv := httptest.NewServer(h)
			defer srv.Close()
			base, err := url.Parse(srv.URL + "/")
			if err != nil {
				t.Fatal(err)
			}
			links := attr.FindAllStringSubmatch(get(t, base.String()), -1)
			if len(links) == 0 {
				t.Fatal("the landing page links nothing")
			}
			var linked []string
			for _, m := range links {
				ref, err := base.Parse(html.UnescapeString(m[1]))
				if err != nil {
					t.Errorf("link %q: %v", m[1], err)
					continue
				}
				if ref.Host != base.Host {
					t.Errorf("link %q leaves the exporter", m[1])
					continue
				}
				linked = append(linked, ref.Path)
				resp, err := http.Get(ref.String())
				if err != nil {
					t.Errorf("GET %s: %v", ref, err)
					continue
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("link %q: GET %s: %s", m[1], ref, resp.Status)
				}
			}
			for _, want := range []string{path, "/states", "/api/v1/snapshot"} {
				if !slices.Contains(linked, want) {
					t.Errorf("the landing page links %q, not %s", linked, want)
				}
			}
		})
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}

func TestScrapeErrorLog(t *testing.T) {
	var b strings.Builder
	l := scrapeErrorLog{slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug}))}
	l.Println("error encoding and sending metric family:", "write tcp: broken pipe")
	l.Println("error gathering metrics:", "collector failed")
	out := b.String()
	if !strings.Contains(out, "level=DEBUG") || !strings.Contains(out, "broken pipe") {
		t.Errorf("a scraper going away is not logged at debug:\n%s", out)
	}
	if !strings.Contains(out, "level=ERROR") || !strings.Contains(out, "collector failed") {
		t.Errorf("a real error is not logged at error:\n%s", out)
	}
}

// TestCollectNonUTF8Labels: namespace names under /run/netns and process
// names are bytes. One that is not valid UTF-8 is published with its bad
// bytes escaped, distinct from every other name, and every other metric
// of the scrape is still there; Collect never panics.
func TestCollectNonUTF8Labels(t *testing.T) {
	s := withBreakdowns()
	s.Namespaces = append(s.Namespaces,
		collector.NamespaceResult{Name: "bad\xffns", Time: s.Time, PollResult: s.PollResult},
		collector.NamespaceResult{Name: "bad\xfens", Time: s.Time, PollResult: s.PollResult})
	row := collector.PortCount{Netns: "bad\xffns", Kind: collector.PortListening, Port: 9000}
	row.Sockets[collector.CloseWait] = 2
	s.Ports.Rows = append(s.Ports.Rows, row)
	a := sampleAttribution()
	odd := collector.ProcessCount{Kind: collector.ProcessNamed, Process: "java\xc3"}
	odd.Sockets[collector.CloseWait] = 3
	a.Rows = append(a.Rows, odd)

	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(New(fixed{s}, NewHistograms(), WithNamespaces(), WithAttribution(fixedAttribution{a})))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	got := map[string]bool{}
	families := map[string]bool{}
	for _, mf := range mfs {
		families[mf.GetName()] = true
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if !utf8.ValidString(l.GetValue()) {
					t.Errorf("%s: label %s=%q is not UTF-8", mf.GetName(), l.GetName(), l.GetValue())
				}
				got[l.GetName()+"="+l.GetValue()] = true
			}
		}
	}
	for _, want := range []string{`netns=bad\xffns`, `netns=bad\xfens`, `netns=web`, `process=java\xc3`, `process=java`} {
		if !got[want] {
			t.Errorf("no series labelled %s", want)
		}
	}
	for _, name := range []string{"tcpstate_sockets", "tcpstate_port_sockets", "tcpstate_process_sockets", "tcpstate_namespace_poll_duration_seconds", "tcpstate_last_poll_timestamp_seconds"} {
		if !families[name] {
			t.Errorf("%s missing from the scrape", name)
		}
	}
	if got, want := LabelValue("a\xffb"), `a\xffb`; got != want {
		t.Errorf("LabelValue = %q, want %q", got, want)
	}
	if got := LabelValue("ok-ünïcode"); got != "ok-ünïcode" {
		t.Errorf("LabelValue changed a valid name: %q", got)
	}
}
