package exporter

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

// TestPageServed: /states is HTML, draws every state with its counts, the
// standard transitions and the ones the host made beyond them, and
// renders the numbers without any script.
func TestPageServed(t *testing.T) {
	first, s := apiSamples()
	s.Oldest[collector.CloseWait] = CloseWaitLeakAfter + time.Second
	src := newSwappable(first)
	api := NewAPI(src, fixedAttribution{sampleAttribution()}, APIConfig{Mode: "poll", PollInterval: time.Second})
	api.Latest()
	src.p.Store(s)
	srv := httptest.NewServer(http.HandlerFunc(api.ServePage))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/html; charset=utf-8" {
		t.Errorf("Content-Type %q", ct)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("Content-Security-Policy %q lets the page load from elsewhere", csp)
	}
	b, _ := io.ReadAll(resp.Body)
	page := string(b)
	for _, st := range collector.States() {
		want := `id="state-` + st.String() + `" data-state="` + st.String() + `" data-ipv4="` +
			strconv.Itoa(s.Sockets[collector.IPv4][st]) + `" data-ipv6="` + strconv.Itoa(s.Sockets[collector.IPv6][st]) + `"`
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	for _, e := range standardEdges {
		id := `id="t-` + e.From.String() + "-" + e.To.String() + `"`
		if !strings.Contains(page, `<g class="arrow" `+id) {
			t.Errorf("standard transition %s -> %s not drawn as one", e.From, e.To)
		}
	}
	for _, want := range []string{
		`<g class="arrow extra" id="t-ESTABLISHED-CLOSED"`,    // made by the host, not in the diagram
		`<g class="arrow extra unseen" id="t-CLOSED-CLOSING"`, // never made: not shown
		`<g class="state trouble" id="state-CLOSE_WAIT"`,      // older than the leak alert's threshold
		`<tspan class="rate">2.0/s</tspan>`,                   // CLOSED -> SYN_SEND
		`<td>java</td><td>CLOSE_WAIT 40</td>`,
		`<td>8080</td><td class="ns">web</td><td>40</td>`,
		`<tr id="r-TIME_WAIT"><td>TIME_WAIT</td><td>0</td><td>0</td><td>–</td><td>100</td>`,
		`<option value="web">web (4026531840)</option>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page lacks %s", want)
		}
	}
	if n := strings.Count(page, `<g class="arrow`); n != collector.NumStates*(collector.NumStates-1) {
		t.Errorf("%d arrows, want one for each of the %d ordered pairs of states", n, collector.NumStates*(collector.NumStates-1))
	}
}

// TestPageLoadsNothingFromElsewhere: no embedded asset names a URL off the
// exporter, except the SVG namespace, which is a name, not a load.
func TestPageLoadsNothingFromElsewhere(t *testing.T) {
	url := regexp.MustCompile(`(?i)(https?:)?//[a-z0-9.-]+`)
	err := fs.WalkDir(pageFiles, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := pageFiles.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range url.FindAllString(string(b), -1) {
			if m != "http://www.w3.org" {
				t.Errorf("%s names %s", path, m)
			}
		}
		if strings.Contains(string(b), "@import") || strings.Contains(string(b), "url(http") {
			t.Errorf("%s imports something", path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestPageThresholdsAreTheAlerts: what the page marks as trouble is what
// the shipped alerts fire on.
func TestPageThresholdsAreTheAlerts(t *testing.T) {
	rules, err := os.ReadFile("../deploy/prometheus/rules.yml")
	if err != nil {
		t.Fatal(err)
	}
	for alert, want := range map[string]float64{
		"TCPStateCloseWaitLeak": CloseWaitLeakAfter.Seconds(),
		"TCPStateSynSendStuck":  SynSendStuckAfter.Seconds(),
		"TCPStateSynRecvPileUp": SynRcvdPileUp,
	} {
		m := regexp.MustCompile(`alert: ` + alert + `\n\s+expr: \|\n[^\n]*\n\s+> (\d+)\s+# threshold`).FindSubmatch(rules)
		if m == nil {
			t.Errorf("no threshold found for %s in rules.yml", alert)
			continue
		}
		if got, _ := strconv.ParseFloat(string(m[1]), 64); got != want {
			t.Errorf("%s fires past %v, the page marks trouble past %v", alert, got, want)
		}
	}
}

// TestFormatSeconds: the page's durations, which its script writes alike.
func TestFormatSeconds(t *testing.T) {
	for s, want := range map[float64]string{
		0: "–", 0.000850: "850µs", 0.0042: "4.2ms", 0.25: "250ms", 3.44: "3.4s",
		307: "5m07s", 7500: "2h05m", 3*86400 + 4*3600: "3d04h",
	} {
		if got := formatSeconds(s); got != want {
			t.Errorf("formatSeconds(%v) = %q, want %q", s, got, want)
		}
	}
}
