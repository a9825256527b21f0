package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gocmp "github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/tcpstate/tcpstate_exporter/internal/eventlock"
	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

const (
	leakAlert  = "TCPStateCloseWaitLeak"
	queueAlert = "TCPStateAcceptQueueFull"
	leaks      = 5 // sockets left in CLOSE_WAIT
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
// shipped rules, leaks sockets in CLOSE_WAIT there and fills an accept
// queue, and checks what Prometheus sees: the socket counts; who leaks (the
// test's own process, on the leak's listening port), found by the leak
// alert's runbook queries; the leak and accept queue alerts firing and no
// other; and every query of the dashboard and of the recording rules
// returning data.
//
// A second exporter observes every namespace (--netns=all), and Prometheus
// keeps what it sees of the test's namespace: the dashboard's namespace
// variable and panels are checked both with the netns label (that exporter,
// the test's namespace chosen) and without it (the first, All chosen).
//
// A third observes the test's namespace in precise mode, where the kernel
// allows it: the dashboard's kernel-event queries, which only precise mode
// serves data for, run for it.
func TestIntegrationPrometheusEndToEnd(t *testing.T) {
	netnstest.RequireRoot(t)
	eventlock.Exact(t) // it expects no event lost, which churn elsewhere would make
	prometheus := requireTool(t, "prometheus", promtoolHint)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Second)
	defer cancel()

	nsName, nsPath := netnstest.New(t)

	// Attribution every second, of the default --attribution.states
	// (CLOSE_WAIT).
	exporterAddr := startExporter(t, ctx,
		"--netns="+nsName,
		"--poll.interval=1s",
		"--attribution.interval=1s",
	)
	// The second sees the host's other namespaces too, whose ports could
	// push the test's out of the top --port.top.
	allAddr := startExporter(t, ctx,
		"--netns=all",
		"--poll.interval=1s",
		"--port.top=10000",
		"--attribution.states=",
	)
	// --mode=auto: a kernel without what precise mode needs polls, and
	// the queries of precise mode's metrics are then not checked.
	preciseAddr := startExporter(t, ctx,
		"--netns="+nsName,
		"--mode=auto",
		"--precise.dump-interval=5s",
		"--attribution.states=",
	)
	precise := exportertest.Scrape(t, "http://"+preciseAddr+"/metrics").Value("tcpstate_mode", "mode=precise") == 1
	if !precise {
		t.Log("precise mode unavailable here: the dashboard's kernel-event queries are not checked")
	}

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
  # Every namespace of the host, of which only the test's is kept: the
  # others are not the test's to judge.
  - job_name: tcpstate_all_namespaces
    static_configs:
      - targets: [%q]
    metric_relabel_configs:
      - source_labels: [__name__, netns]
        regex: 'tcpstate_namespaces;|.+;%s'
        action: keep
  - job_name: tcpstate_precise
    static_configs:
      - targets: [%q]
`, exporterAddr, allAddr, regexp.QuoteMeta(nsName), preciseAddr)
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

	// The leak: the server side (this process) accepts and never closes;
	// the client closes, leaving the server's sockets in CLOSE_WAIT.
	leakCloseWait(t, nsPath, ln, leaks)
	leakPort := strconv.Itoa(ln.Addr().(*net.TCPAddr).Port)
	// A listener that never accepts, its queue full.
	fullPort := strconv.Itoa(fillAcceptQueue(t, nsPath))

	want := func(expr string, value float64) {
		t.Helper()
		waitFor(t, ctx, fmt.Sprintf("%s == %v", expr, value), func() error {
			res, err := api.query(ctx, expr)
			if err != nil {
				return err
			}
			if len(res) != 1 || res[0].value() != value {
				return fmt.Errorf("%s = %v", expr, res)
			}
			return nil
		})
	}
	inst := fmt.Sprintf("instance=%q", exporterAddr)
	want(`sum(tcpstate_sockets{`+inst+`, state="CLOSE_WAIT"})`, leaks)

	// Who is leaking: this process, under its own name, on the leak's port.
	comm := processName(t)
	want(`sum(tcpstate_process_sockets{`+inst+`, state="CLOSE_WAIT"})`, leaks)
	want(fmt.Sprintf(`tcpstate_process_sockets{%s, state="CLOSE_WAIT", process=%q}`, inst, comm), leaks)
	want(fmt.Sprintf(`tcpstate_port_sockets{%s, state="CLOSE_WAIT", port=%q}`, inst, leakPort), leaks)
	// The kernel queues one connection more than the backlog.
	want(fmt.Sprintf(`tcpstate_listen_queue_length{%s, port=%q}`, inst, fullPort), 2)
	want(fmt.Sprintf(`tcpstate_listen_queue_limit{%s, port=%q}`, inst, fullPort), 1)
	// The same, labelled by namespace, from the --netns=all exporter.
	want(fmt.Sprintf(`sum(tcpstate_sockets{instance=%q, netns=%q, state="CLOSE_WAIT"})`, allAddr, nsName), leaks)
	want(fmt.Sprintf(`tcpstate_port_sockets{instance=%q, netns=%q, state="CLOSE_WAIT", port=%q}`, allAddr, nsName, leakPort), leaks)

	// The rules rely on every state's series being present, sockets or not.
	for expr, want := range map[string]float64{
		"count(tcpstate_sockets{" + inst + "})":                      22,
		"count(tcpstate_oldest_in_state_seconds{" + inst + "})":      11,
		"count(tcpstate_state_duration_seconds_count{" + inst + "})": 11,
	} {
		res, err := api.query(ctx, expr)
		if err != nil {
			t.Fatal(err)
		}
		if len(res) != 1 || res[0].value() != want {
			t.Errorf("%s = %v, want %v", expr, res, want)
		}
	}

	// From the leak alert to the process: its runbook's queries name the
	// leak's port and this process first.
	checkRunbookQueries(t, ctx, api, rules, exporterAddr, map[string]string{"port": leakPort, "process": comm})

	// Each alert fires for each exporter; the one observing every namespace
	// says which.
	for _, a := range []struct {
		name   string
		labels map[string]string
	}{
		{leakAlert, map[string]string{"instance": exporterAddr, "state": "CLOSE_WAIT"}},
		{leakAlert, map[string]string{"instance": allAddr, "state": "CLOSE_WAIT", "netns": nsName}},
		{queueAlert, map[string]string{"instance": exporterAddr, "port": fullPort}},
		{queueAlert, map[string]string{"instance": allAddr, "port": fullPort, "netns": nsName}},
	} {
		waitForAlert(t, ctx, api, a.name, a.labels)
	}

	// Every query of the dashboard and of the recording rules returns data,
	// and so does every recorded series. The dashboard's queries run for
	// the first exporter, the netns variable at All, but those of metrics
	// only --netns=all or precise mode has; those that use the netns
	// variable or --netns=all's metrics run again for the second, the
	// test's namespace chosen; and those of precise mode's metrics for the
	// third.
	d := loadDashboard(t)
	allNetns := d.variable(t, "netns").AllValue
	type query struct{ what, expr string }
	var queries []query
	add := func(what string, e dashboardExpr, v queryValues) {
		expr, err := substituteVariables(e.Expr, v)
		if err != nil {
			t.Fatalf("%s: %v", e, err)
		}
		queries = append(queries, query{what + e.String(), expr})
	}
	for _, e := range dashboardExprs(t) {
		if usesMetric(e.Expr, preciseOnlyMetrics) {
			if precise {
				add("dashboard, precise mode, ", e, queryValues{Instance: preciseAddr, Netns: allNetns})
			}
			continue
		}
		netnsOnly := usesMetric(e.Expr, netnsOnlyMetrics)
		if !netnsOnly {
			add("dashboard ", e, queryValues{Instance: exporterAddr, Netns: allNetns})
		}
		if netnsOnly || strings.Contains(e.Expr, "$netns") {
			add("dashboard, --netns=all, ", e, queryValues{Instance: allAddr, Netns: nsName})
		}
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

	// The namespace panel and variable, with the netns label and without.
	checkNamespacePanel(t, ctx, api, d, []namespaceCase{
		{queryValues{Instance: exporterAddr, Netns: allNetns}, "observed namespace", nil},
		{queryValues{Instance: allAddr, Netns: nsName}, nsName, []string{nsName}},
	})

	// The rules evaluate without errors, and on this quiet namespace no
	// alert fires but the leak's and the full accept queue's.
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
		case a.Labels["alertname"] == leakAlert, a.Labels["alertname"] == queueAlert && a.Labels["port"] == fullPort:
		case a.State == "firing":
			t.Errorf("unexpected alert %s firing on a quiet namespace: labels %v, value %s", a.Labels["alertname"], a.Labels, a.Value)
		default:
			t.Logf("alert %s %s: labels %v, value %s", a.Labels["alertname"], a.State, a.Labels, a.Value)
		}
	}
}

// startExporter starts the exporter, waits for its first poll, and returns
// the address it listens on.
func startExporter(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	p := exportertest.Start(t, args...)
	waitFor(t, ctx, "the first poll of the exporter "+strings.Join(args, " "), func() error {
		if v := exportertest.Scrape(t, p.URL+"/metrics").Value("tcpstate_last_poll_timestamp_seconds"); v <= 0 {
			return fmt.Errorf("tcpstate_last_poll_timestamp_seconds is %v", v)
		}
		return nil
	})
	return p.Addr
}

// processName returns this process's name as the kernel has it (comm), the
// name the exporter attributes its sockets to.
func processName(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// runbookQueryRE finds the PromQL queries quoted in a runbook annotation.
var runbookQueryRE = regexp.MustCompile("`(topk\\([^`]+)`")

// checkRunbookQueries runs the queries of the leak alert's runbook for the
// instance, and checks that the first result of each names what want says:
// a label (port, process) and its value, with the leak's socket count.
func checkRunbookQueries(t *testing.T, ctx context.Context, api promAPI, rf ruleFile, instance string, want map[string]string) {
	t.Helper()
	var runbook string
	for _, a := range rf.alerts() {
		if a.Alert == leakAlert {
			runbook = a.Annotations["runbook"]
		}
	}
	found := map[string]bool{}
	for _, m := range runbookQueryRE.FindAllStringSubmatch(runbook, -1) {
		expr := strings.ReplaceAll(m[1], "{{ $labels.instance }}", instance)
		res, err := api.query(ctx, expr)
		if err != nil {
			t.Fatalf("%s runbook: %s: %v", leakAlert, expr, err)
		}
		slices.SortFunc(res, func(a, b sample) int { return cmp.Compare(b.value(), a.value()) })
		var matched bool
		for label, value := range want {
			if len(res) > 0 && res[0].Metric[label] != "" {
				matched = true
				found[label] = true
				if res[0].Metric[label] != value || res[0].value() != leaks {
					t.Errorf("%s runbook: %s: first %v, want %s=%q with %d sockets", leakAlert, expr, res[0], label, value, leaks)
				}
			}
		}
		if !matched {
			t.Errorf("%s runbook: %s names none of %v: %v", leakAlert, expr, slices.Collect(maps.Keys(want)), res)
		}
	}
	for label := range want {
		if !found[label] {
			t.Errorf("%s runbook: no query names the %s", leakAlert, label)
		}
	}
}

// waitForAlert waits until the alert fires with labels including want,
// its annotations expanded.
func waitForAlert(t *testing.T, ctx context.Context, api promAPI, name string, want map[string]string) {
	t.Helper()
	waitFor(t, ctx, fmt.Sprintf("%s firing with %v", name, want), func() error {
		alerts, err := api.alerts(ctx)
		if err != nil {
			return err
		}
	next:
		for _, a := range alerts {
			if a.Labels["alertname"] != name || a.State != "firing" {
				continue
			}
			for k, v := range want {
				if a.Labels[k] != v {
					continue next
				}
			}
			for k, v := range a.Annotations {
				if strings.Contains(v, "<error expanding template") || strings.Contains(v, "<no value>") {
					return fmt.Errorf("%s: annotation %s did not expand: %s", name, k, v)
				}
			}
			return nil
		}
		return fmt.Errorf("not firing; alerts: %+v", alerts)
	})
}

// namespaceCase is what the dashboard's namespace panel and variable show
// for an exporter: the panel's one line's netns, and the variable's values.
type namespaceCase struct {
	values    queryValues
	line      string
	variables []string
}

// checkNamespacePanel checks the per-namespace panel (sockets in the chosen
// state by namespace: the leak's) and the netns variable's values.
func checkNamespacePanel(t *testing.T, ctx context.Context, api promAPI, d dashboard, cases []namespaceCase) {
	t.Helper()
	var panelExpr string
	for _, e := range dashboardExprs(t) {
		if strings.Contains(e.Expr, "$netns_state") {
			panelExpr = e.Expr
		}
	}
	v := d.variable(t, "netns")
	q, err := v.queryString()
	if err != nil {
		t.Fatal(err)
	}
	lv := regexp.MustCompile(`^label_values\((.+), *(\w+)\)$`).FindStringSubmatch(q)
	if lv == nil {
		t.Fatalf("variable netns: query %q is no label_values(selector, label)", q)
	}
	for _, c := range cases {
		expr, err := substituteVariables(panelExpr, c.values)
		if err != nil {
			t.Fatal(err)
		}
		res, err := api.query(ctx, expr)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		if len(res) != 1 || res[0].Metric["netns"] != c.line || res[0].value() != leaks {
			t.Errorf("%s = %v, want netns=%q with %d sockets", expr, res, c.line, leaks)
		}
		selector, err := substituteVariables(lv[1], c.values)
		if err != nil {
			t.Fatal(err)
		}
		got, err := api.labelValues(ctx, lv[2], selector)
		if err != nil {
			t.Fatalf("label values of %s for %s: %v", lv[2], selector, err)
		}
		if d := gocmp.Diff(c.variables, got, cmpopts.EquateEmpty()); d != "" {
			t.Errorf("variable netns for %s: values (-want +got)\n%s", c.values.Instance, d)
		}
	}
}

// fillAcceptQueue opens, inside the namespace, a listener with a backlog of
// 1 that never accepts, and connects to it until its accept queue is full:
// the kernel queues one connection more than the backlog. It returns the
// listener's port.
func fillAcceptQueue(t *testing.T, nsPath string) int {
	t.Helper()
	fd := -1
	var port int
	var clients []net.Conn
	t.Cleanup(func() {
		for _, c := range clients {
			c.Close()
		}
		if fd >= 0 {
			syscall.Close(fd)
		}
	})
	err := netlinkdiag.Do(nsPath, func() error {
		var err error
		if fd, err = syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
			return err
		}
		if err := syscall.Listen(fd, 1); err != nil {
			return err
		}
		sa, err := syscall.Getsockname(fd)
		if err != nil {
			return err
		}
		port = sa.(*syscall.SockaddrInet4).Port
		for range 2 {
			c, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), 5*time.Second)
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
	return port
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
	out, err := os.Create(filepath.Join(t.TempDir(), "output"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	cmd := exec.Command(path, args...)
	cmd.Stdout, cmd.Stderr = out, out
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
			b, _ := os.ReadFile(out.Name())
			t.Logf("%s %s output:\n%s", name, strings.Join(args, " "), b)
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

// listen opens a listener inside the namespace; it is closed when the test
// ends.
func listen(t *testing.T, nsPath string) net.Listener {
	t.Helper()
	var ln net.Listener
	err := netlinkdiag.Do(nsPath, func() error {
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
	err := netlinkdiag.Do(nsPath, func() error {
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

// labelValues returns the values of a label in the series matching selector.
func (p promAPI) labelValues(ctx context.Context, label, selector string) ([]string, error) {
	var values []string
	err := p.get(ctx, "/api/v1/label/"+url.PathEscape(label)+"/values", url.Values{"match[]": {selector}}, &values)
	return values, err
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
