package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
)

const (
	leakAlert = "TCPStateCloseWaitLeak"
	leaks     = 5 // sockets left in CLOSE_WAIT
)

// The shipped rules with test thresholds: the CLOSE_WAIT leak alert fires
// after seconds, not minutes. Every other alert keeps its thresholds and
// waits only a few seconds, so that one that would fire on a quiet namespace
// does so within the test (a single failed scrape does not).
var testOverrides = map[string]alertOverride{
	leakAlert: {Thresholds: []string{"3"}, For: "2s"},
}

const testFor = "3s"

// TestIntegrationPrometheusEndToEnd runs the exporter on a network namespace
// of its own, scraped every second by a real Prometheus that evaluates the
// shipped rules, leaks sockets in CLOSE_WAIT there, and checks what
// Prometheus sees: the socket count, the leak alert firing and no other, and
// every query of the dashboard and of the recording rules returning data.
func TestIntegrationPrometheusEndToEnd(t *testing.T) {
	netnstest.RequireRoot(t)
	prometheus := requireTool(t, "prometheus", promtoolHint)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()

	bin := buildExporter(t)
	nsName, nsPath := netnstest.New(t)

	exporterAddr := freeAddr(t)
	startProcess(t, "exporter", bin,
		"--netns="+nsName,
		"--poll.interval=1s",
		"--web.listen-address="+exporterAddr,
	)
	waitFor(t, ctx, "the exporter's first poll", func() error {
		v, err := scrapeValue("http://"+exporterAddr+"/metrics", "tcpstate_last_poll_timestamp_seconds")
		if err == nil && v <= 0 {
			err = errors.New("tcpstate_last_poll_timestamp_seconds is 0")
		}
		return err
	})

	dir := t.TempDir()
	rules := renderRules(t, shippedRules(t), testOverrides, testFor)
	writeRules(t, rules, filepath.Join(dir, "rules.yml"))
	promAddr := freeAddr(t)
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - rules.yml
scrape_configs:
  - job_name: tcpstate
    static_configs:
      - targets: [%q]
`, exporterAddr)
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	startProcess(t, "prometheus", prometheus,
		"--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr,
		"--log.level=warn",
	)
	api := promAPI{base: "http://" + promAddr}
	waitFor(t, ctx, "Prometheus to be ready", func() error { return api.ready(ctx) })

	// A little traffic: connections that live across polls, then close
	// (client first), so that transitions and completed stays exist.
	ln := listen(t, nsPath)
	traffic(t, nsPath, ln, 3)

	// The leak: the server side accepts and never closes; the client
	// closes, leaving the server's sockets in CLOSE_WAIT.
	leakCloseWait(t, nsPath, ln, leaks)

	const closeWait = `sum(tcpstate_sockets{state="CLOSE_WAIT"})`
	waitFor(t, ctx, closeWait+" == 5", func() error {
		res, err := api.query(ctx, closeWait)
		if err != nil {
			return err
		}
		if len(res) != 1 || res[0].value() != leaks {
			return fmt.Errorf("%s = %v", closeWait, res)
		}
		return nil
	})

	// The rules rely on every state's series being present, sockets or not.
	for expr, want := range map[string]float64{
		"count(tcpstate_sockets)":                      22,
		"count(tcpstate_oldest_in_state_seconds)":      11,
		"count(tcpstate_state_duration_seconds_count)": 11,
	} {
		res, err := api.query(ctx, expr)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 1 || res[0].value() != want {
			t.Errorf("%s = %v, want %v", expr, res, want)
		}
	}

	waitFor(t, ctx, leakAlert+" firing", func() error {
		alerts, err := api.alerts(ctx)
		if err != nil {
			return err
		}
		for _, a := range alerts {
			if a.Labels["alertname"] == leakAlert && a.State == "firing" {
				if a.Labels["state"] != "CLOSE_WAIT" || a.Labels["instance"] != exporterAddr {
					return fmt.Errorf("%s fires with labels %v", leakAlert, a.Labels)
				}
				for k, v := range a.Annotations {
					if strings.Contains(v, "<error expanding template") || strings.Contains(v, "<no value>") {
						return fmt.Errorf("%s: annotation %s did not expand: %s", leakAlert, k, v)
					}
				}
				return nil
			}
		}
		oldest, err := api.query(ctx, `tcpstate_oldest_in_state_seconds{state="CLOSE_WAIT"}`)
		return fmt.Errorf("not firing; alerts: %+v; oldest in CLOSE_WAIT: %v (%v)", alerts, oldest, err)
	})

	// Every query of the dashboard and of the recording rules returns data,
	// and so does every recorded series.
	type query struct{ what, expr string }
	var queries []query
	for _, e := range dashboardExprs(t) {
		expr, err := substituteVariables(e.Expr, exporterAddr)
		if err != nil {
			t.Fatalf("%s: %v", e, err)
		}
		queries = append(queries, query{"dashboard " + e.String(), expr})
	}
	for _, r := range rules.records() {
		queries = append(queries, query{"recording rule " + r.Record, r.Expr})
		queries = append(queries, query{"recorded series", r.Record})
	}
	waitFor(t, ctx, "every dashboard and recording rule query to return data", func() error {
		var empty []string
		for _, q := range queries {
			res, err := api.query(ctx, q.expr)
			var perr *promError
			if errors.As(err, &perr) {
				t.Fatalf("%s: %v\n%s", q.what, err, q.expr)
			}
			if err != nil {
				return err
			}
			if len(res) == 0 {
				empty = append(empty, fmt.Sprintf("%s: %s", q.what, q.expr))
			}
		}
		if len(empty) > 0 {
			return fmt.Errorf("no data for:\n%s", strings.Join(empty, "\n"))
		}
		return nil
	})

	// The rules evaluate without errors, and on this quiet namespace no
	// alert but the leak fires.
	groups, err := api.rules(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var evaluated int
	for _, g := range groups {
		for _, r := range g.Rules {
			evaluated++
			if r.Health != "ok" || r.LastError != "" {
				t.Errorf("rule %s in group %s: health %q, error %q", r.Name, g.Name, r.Health, r.LastError)
			}
		}
	}
	if want := len(rules.records()) + len(rules.alerts()); evaluated != want {
		t.Errorf("Prometheus has %d rules, rules.yml %d", evaluated, want)
	}
	alerts, err := api.alerts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range alerts {
		switch {
		case a.Labels["alertname"] == leakAlert:
		case a.State == "firing":
			t.Errorf("unexpected alert %s firing on a quiet namespace: labels %v, value %s", a.Labels["alertname"], a.Labels, a.Value)
		default:
			t.Logf("alert %s %s: labels %v, value %s", a.Labels["alertname"], a.State, a.Labels, a.Value)
		}
	}
}

// buildExporter builds the exporter into a temporary directory.
func buildExporter(t *testing.T) string {
	t.Helper()
	goTool := requireTool(t, "go", "the Go toolchain")
	bin := filepath.Join(t.TempDir(), "tcpstate_exporter")
	start := time.Now()
	if out, err := run(repoRoot(t), goTool, "build", "-o", bin, "./cmd/tcpstate_exporter"); err != nil {
		t.Fatalf("go build ./cmd/tcpstate_exporter: %v\n%s", err, out)
	}
	t.Logf("built the exporter in %v", time.Since(start).Round(time.Millisecond))
	return bin
}

// freeAddr returns a loopback address with a port free a moment ago.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startProcess starts a command, kills it when the test ends, and logs its
// output if the test failed.
func startProcess(t *testing.T, name, path string, args ...string) {
	t.Helper()
	var out syncBuffer
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case err := <-exited:
			t.Errorf("%s exited during the test: %v", name, err)
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("%s %s output:\n%s", name, strings.Join(args, " "), out.String())
		}
	})
}

// waitFor retries check every half second until it succeeds, failing the
// test with check's last error when ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, check func() error) {
	t.Helper()
	start := time.Now()
	for {
		err := check()
		if err == nil {
			t.Logf("%s after %v", what, time.Since(start).Round(100*time.Millisecond))
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, err)
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// scrapeValue returns the value of an unlabelled series from a scrape.
func scrapeValue(url, name string) (float64, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(strings.TrimSpace(v), 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("%s not in the scrape", name)
}

// listen opens a listener inside the namespace; it is closed when the test
// ends.
func listen(t *testing.T, nsPath string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := netnstest.Do(nsPath, func() error {
		var err error
		ln, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// connect opens n connections to ln from inside the namespace and returns
// both ends of each.
func connect(t *testing.T, nsPath string, ln net.Listener, n int) (clients, servers []net.Conn) {
	t.Helper()
	err := netnstest.Do(nsPath, func() error {
		for range n {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				return err
			}
			clients = append(clients, c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for range n {
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		servers = append(servers, s)
	}
	t.Cleanup(func() {
		for _, c := range slices.Concat(clients, servers) {
			c.Close()
		}
	})
	return clients, servers
}

// traffic opens n connections, keeps them across a few polls, exchanges a
// little data, and closes them, client first.
func traffic(t *testing.T, nsPath string, ln net.Listener, n int) {
	t.Helper()
	clients, servers := connect(t, nsPath, ln, n)
	for i, c := range clients {
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(servers[i], buf); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(2500 * time.Millisecond)
	for i := range clients {
		clients[i].Close()
		servers[i].Close()
	}
}

// leakCloseWait leaves n server-side sockets in CLOSE_WAIT.
func leakCloseWait(t *testing.T, nsPath string, ln net.Listener, n int) {
	t.Helper()
	clients, _ := connect(t, nsPath, ln, n)
	for _, c := range clients {
		c.Close()
	}
}

// promAPI is a client of the parts of Prometheus's HTTP API the test uses.
type promAPI struct{ base string }

// promError is an error Prometheus reported about a query.
type promError struct{ Type, Msg string }

func (e *promError) Error() string { return e.Type + ": " + e.Msg }

func (p promAPI) get(ctx context.Context, path string, params url.Values, data any) error {
	u := p.base + path
	if params != nil {
		u += "?" + params.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return fmt.Errorf("GET %s: %s: %w", path, resp.Status, err)
	}
	if body.Status != "success" {
		return &promError{Type: body.ErrorType, Msg: body.Error}
	}
	return json.Unmarshal(body.Data, data)
}

func (p promAPI) ready(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+"/-/ready", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}

type sample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

func (s sample) value() float64 {
	str, _ := s.Value[1].(string)
	v, err := strconv.ParseFloat(str, 64)
	if err != nil {
		return -1
	}
	return v
}

func (s sample) String() string { return fmt.Sprintf("%v => %v", s.Metric, s.Value[1]) }

// query runs an instant query; a scalar result counts as one sample.
func (p promAPI) query(ctx context.Context, expr string) ([]sample, error) {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := p.get(ctx, "/api/v1/query", url.Values{"query": {expr}}, &data); err != nil {
		return nil, err
	}
	switch data.ResultType {
	case "vector":
		var res []sample
		err := json.Unmarshal(data.Result, &res)
		return res, err
	case "scalar", "string":
		var v [2]any
		err := json.Unmarshal(data.Result, &v)
		return []sample{{Value: v}}, err
	}
	return nil, fmt.Errorf("result type %q", data.ResultType)
}

type alert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"`
	Value       string            `json:"value"`
}

func (p promAPI) alerts(ctx context.Context) ([]alert, error) {
	var data struct {
		Alerts []alert `json:"alerts"`
	}
	err := p.get(ctx, "/api/v1/alerts", nil, &data)
	return data.Alerts, err
}

type ruleGroupStatus struct {
	Name  string `json:"name"`
	Rules []struct {
		Name      string `json:"name"`
		Health    string `json:"health"`
		LastError string `json:"lastError"`
	} `json:"rules"`
}

func (p promAPI) rules(ctx context.Context) ([]ruleGroupStatus, error) {
	var data struct {
		Groups []ruleGroupStatus `json:"groups"`
	}
	err := p.get(ctx, "/api/v1/rules", nil, &data)
	return data.Groups, err
}
