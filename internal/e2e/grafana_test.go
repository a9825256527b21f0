package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"
)

type dashboard struct {
	Inputs []struct {
		Name     string `json:"name"`
		Type     string `json:"type"`
		PluginID string `json:"pluginId"`
	} `json:"__inputs"`
	SchemaVersion int     `json:"schemaVersion"`
	UID           string  `json:"uid"`
	Title         string  `json:"title"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []variable `json:"list"`
	} `json:"templating"`
}

type variable struct {
	Name       string          `json:"name"`
	Type       string          `json:"type"`
	Query      json.RawMessage `json:"query"`
	Definition string          `json:"definition"`
	Datasource *datasourceRef  `json:"datasource"`
	IncludeAll bool            `json:"includeAll"`
	AllValue   string          `json:"allValue"`
	Multi      bool            `json:"multi"`
	Current    struct {
		Value any `json:"value"`
	} `json:"current"`
}

// queryString returns a query variable's query, saved either as a string or
// as the Prometheus variable editor's object.
func (v variable) queryString() (string, error) {
	var q string
	if json.Unmarshal(v.Query, &q) == nil {
		return q, nil
	}
	var qo struct {
		Query string `json:"query"`
	}
	err := json.Unmarshal(v.Query, &qo)
	return qo.Query, err
}

// variable returns the dashboard's variable of that name.
func (d dashboard) variable(t testing.TB, name string) variable {
	t.Helper()
	for _, v := range d.Templating.List {
		if v.Name == name {
			return v
		}
	}
	t.Fatalf("the dashboard has no %s variable", name)
	return variable{}
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int            `json:"id"`
	Type       string         `json:"type"`
	Title      string         `json:"title"`
	Datasource *datasourceRef `json:"datasource"`
	GridPos    struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr   string         `json:"expr"`
		RefID  string         `json:"refId"`
		Format string         `json:"format"`
		DS     *datasourceRef `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // of a collapsed row
}

// dashboardExpr is one query of the dashboard.
type dashboardExpr struct {
	Panel, RefID, Expr string
}

func (e dashboardExpr) String() string { return fmt.Sprintf("panel %q, query %s", e.Panel, e.RefID) }

func loadDashboard(t testing.TB) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, deployPath(t, "grafana", "tcpstate.json")), &d); err != nil {
		t.Fatalf("grafana/tcpstate.json: %v", err)
	}
	return d
}

func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// dashboardExprs returns every PromQL expression of the dashboard's panels.
func dashboardExprs(t testing.TB) []dashboardExpr {
	t.Helper()
	var out []dashboardExpr
	for _, p := range allPanels(loadDashboard(t).Panels) {
		for _, tg := range p.Targets {
			out = append(out, dashboardExpr{Panel: p.Title, RefID: tg.RefID, Expr: tg.Expr})
		}
	}
	if len(out) == 0 {
		t.Fatal("the dashboard has no queries")
	}
	return out
}

var leftoverVariable = regexp.MustCompile(`\$\{?\w+`)

// The state variables' values in the tests.
const (
	testState      = "ESTABLISHED" // $state, time in state
	testNetnsState = "CLOSE_WAIT"  // $netns_state, sockets by namespace
)

// queryValues are what the dashboard's instance and netns variables stand
// for in a query.
type queryValues struct {
	Instance string // $instance
	Netns    string // $netns: a namespace's name, or the variable's all value
}

// substituteVariables replaces the dashboard's variables and Grafana's
// interval macros with values a plain Prometheus query accepts.
func substituteVariables(expr string, v queryValues) (string, error) {
	// A name that begins with another (netns_state, netns) goes first.
	r := strings.NewReplacer(
		"${__rate_interval}", "1m", "$__rate_interval", "1m",
		"${__interval}", "5s", "$__interval", "5s",
		"${__range}", "5m", "$__range", "5m",
		"${instance}", v.Instance, "$instance", v.Instance,
		"${netns_state}", testNetnsState, "$netns_state", testNetnsState,
		"${netns}", v.Netns, "$netns", v.Netns,
		"${state}", testState, "$state", testState,
	)
	out := r.Replace(expr)
	if v := leftoverVariable.FindString(out); v != "" {
		return "", fmt.Errorf("unknown variable %s in %q", v, expr)
	}
	return out, nil
}

func TestGrafanaDashboard(t *testing.T) {
	d := loadDashboard(t)
	if d.SchemaVersion < 39 {
		t.Errorf("schemaVersion %d, want 39 or later", d.SchemaVersion)
	}
	if d.UID == "" || d.Title == "" {
		t.Error("dashboard without uid or title")
	}
	if len(d.Inputs) == 0 || d.Inputs[0].Type != "datasource" || d.Inputs[0].PluginID != "prometheus" {
		t.Errorf("__inputs %+v, want a prometheus data source input", d.Inputs)
	}

	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Name {
		case "datasource":
			var q string
			if v.Type != "datasource" || json.Unmarshal(v.Query, &q) != nil || q != "prometheus" {
				t.Errorf("variable datasource: type %q, query %s; want a prometheus data source variable", v.Type, v.Query)
			}
		case "instance":
			const want = "label_values(tcpstate_build_info, instance)"
			q, err := v.queryString()
			if err != nil {
				t.Errorf("variable instance: query %s: %v", v.Query, err)
			}
			if v.Type != "query" || q != want {
				t.Errorf("variable instance: type %q, query %q; want a query variable %q", v.Type, q, want)
			}
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable instance: data source %+v, want ${datasource}", v.Datasource)
			}
		}
	}
	for _, name := range []string{"datasource", "instance", "netns", "netns_state"} {
		if !vars[name] {
			t.Errorf("no %s variable", name)
		}
	}
	checkNetnsVariables(t, d)

	ids := map[int]string{}
	metrics := map[string]bool{}
	var heatmap bool
	metricRE := regexp.MustCompile(`\b(tcpstate_[a-z_]+)`)
	for _, p := range allPanels(d.Panels) {
		if prev, ok := ids[p.ID]; ok || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or taken by %q", p.Title, p.ID, prev)
		}
		ids[p.ID] = p.Title
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("panel %q: gridPos %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: data source %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q: no queries", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q, query %s: empty expression", p.Title, tg.RefID)
			}
			if !strings.Contains(tg.Expr, `instance=~"$instance"`) {
				t.Errorf("panel %q, query %s: not filtered by the instance variable: %s", p.Title, tg.RefID, tg.Expr)
			}
			if tg.DS == nil || tg.DS.UID != "${datasource}" {
				t.Errorf("panel %q, query %s: data source %+v, want ${datasource}", p.Title, tg.RefID, tg.DS)
			}
			for _, m := range metricRE.FindAllString(tg.Expr, -1) {
				metrics[m] = true
			}
			if err := checkNetnsFilter(tg.Expr); err != nil {
				t.Errorf("panel %q, query %s: %v: %s", p.Title, tg.RefID, err, tg.Expr)
			}
			if p.Type == "heatmap" && tg.Format == "heatmap" && strings.Contains(tg.Expr, "tcpstate_state_duration_seconds_bucket") {
				heatmap = true
			}
		}
	}
	if !heatmap {
		t.Error("no heatmap of tcpstate_state_duration_seconds_bucket")
	}
	// Every metric of the exporter is shown somewhere.
	for _, m := range []string{
		"tcpstate_sockets", "tcpstate_oldest_in_state_seconds", "tcpstate_state_duration_seconds_bucket",
		"tcpstate_transitions_total", "tcpstate_poll_duration_seconds_bucket", "tcpstate_polls_total",
		"tcpstate_poll_errors_total", "tcpstate_tracked_sockets", "tcpstate_untracked_sockets",
		"tcpstate_last_poll_timestamp_seconds", "tcpstate_build_info",
		"tcpstate_process_sockets", "tcpstate_port_sockets", "tcpstate_listen_queue_length",
		"tcpstate_listen_queue_limit", "tcpstate_breakdown_truncated_values",
		"tcpstate_attribution_duration_seconds", "tcpstate_attribution_last_timestamp_seconds",
		"tcpstate_attribution_denied_processes", "tcpstate_namespaces", "tcpstate_namespace_poll_duration_seconds",
		"tcpstate_unknown_state_sockets", "tcpstate_missing_sockets", "tcpstate_dump_inconsistencies_total",
		"tcpstate_mode", "tcpstate_events_total", "tcpstate_events_lost_total", "tcpstate_reconcile_corrections_total",
		"tcpstate_remote_sockets", "tcpstate_remote_port_usage_ratio",
	} {
		if !metrics[m] {
			t.Errorf("no panel shows %s", m)
		}
	}

	// Every expression parses: promtool checks them as recording rules.
	t.Run("expressions parse", func(t *testing.T) {
		promtool := requireTool(t, "promtool", promtoolHint)
		var rf ruleFile
		g := ruleGroup{Name: "dashboard"}
		values := queryValues{Instance: "host1:9965", Netns: d.variable(t, "netns").AllValue}
		for i, e := range dashboardExprs(t) {
			expr, err := substituteVariables(e.Expr, values)
			if err != nil {
				t.Fatalf("%s: %v", e, err)
			}
			g.Rules = append(g.Rules, rule{Record: fmt.Sprintf("dashboard:query_%d:expr", i), Expr: expr})
		}
		rf.Groups = append(rf.Groups, g)
		path := filepath.Join(t.TempDir(), "dashboard.yml")
		writeRules(t, rf, path)
		if out, err := run("", promtool, "check", "rules", path); err != nil {
			b, _ := os.ReadFile(path)
			t.Fatalf("promtool check rules: %v\n%s\n%s", err, out, b)
		}
	})
}

// netnsOnlyMetrics are served only by an exporter run with --netns=all.
var netnsOnlyMetrics = []string{"tcpstate_namespaces", "tcpstate_namespace_poll_duration_seconds"}

// preciseOnlyMetrics are served only by an exporter in precise mode.
var preciseOnlyMetrics = []string{"tcpstate_events_total", "tcpstate_events_lost_total", "tcpstate_reconcile_corrections_total"}

// netnsLabelled are the metrics that carry a netns label with --netns=all.
var netnsLabelled = []string{
	"tcpstate_sockets", "tcpstate_oldest_in_state_seconds", "tcpstate_port_sockets",
	"tcpstate_listen_queue_length", "tcpstate_listen_queue_limit", "tcpstate_namespace_poll_duration_seconds",
	"tcpstate_remote_sockets", "tcpstate_remote_port_usage_ratio",
}

var selectorRE = regexp.MustCompile(`\b(tcpstate_[a-z_]+)(\{[^}]*\})?`)

// usesMetric says whether expr reads any of the metrics.
func usesMetric(expr string, metrics []string) bool {
	for _, m := range selectorRE.FindAllStringSubmatch(expr, -1) {
		if slices.Contains(metrics, m[1]) {
			return true
		}
	}
	return false
}

// checkNetnsFilter checks that expr filters by the netns variable every
// metric that has the label, and no other: a chosen namespace would match
// nothing in a metric without it and empty the panel.
func checkNetnsFilter(expr string) error {
	for _, m := range selectorRE.FindAllStringSubmatch(expr, -1) {
		filtered := strings.Contains(m[2], `netns=~"$netns"`)
		switch labelled := slices.Contains(netnsLabelled, m[1]); {
		case labelled && !filtered:
			return fmt.Errorf("%s is not filtered by the netns variable", m[1])
		case !labelled && strings.Contains(m[2], "netns"):
			return fmt.Errorf("%s has no netns label to filter by", m[1])
		}
	}
	return nil
}

// checkNetnsVariables checks the namespace variables: netns lists the
// namespaces of an exporter run with --netns=all, and its All must also
// match the series of one run without it, which have no netns label.
func checkNetnsVariables(t *testing.T, d dashboard) {
	t.Helper()
	v := d.variable(t, "netns")
	q, err := v.queryString()
	if err != nil {
		t.Errorf("variable netns: query %s: %v", v.Query, err)
	}
	if v.Type != "query" || !regexp.MustCompile(`^label_values\(tcpstate_sockets(\{[^}]*\})?, *netns\)$`).MatchString(q) {
		t.Errorf("variable netns: type %q, query %q; want a query variable label_values(tcpstate_sockets, netns)", v.Type, q)
	}
	if v.Definition != q {
		t.Errorf("variable netns: definition %q differs from its query %q", v.Definition, q)
	}
	if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
		t.Errorf("variable netns: data source %+v, want ${datasource}", v.Datasource)
	}
	if !v.IncludeAll || !v.Multi {
		t.Errorf("variable netns: includeAll %v, multi %v; want both", v.IncludeAll, v.Multi)
	}
	// Without --netns=all the variable has no values and Grafana selects
	// All: Grafana's own All (the values, joined) would then be empty.
	all, err := regexp.Compile("^(?:" + v.AllValue + ")$")
	if v.AllValue == "" || err != nil {
		t.Errorf("variable netns: allValue %q (%v), want a regular expression", v.AllValue, err)
	} else {
		for _, s := range []string{"", "nginx:4026532281", "tcpstate-test-1-1"} {
			if !all.MatchString(s) {
				t.Errorf("variable netns: allValue %q does not match netns=%q", v.AllValue, s)
			}
		}
	}
	st, ns := d.variable(t, "state"), d.variable(t, "netns_state")
	if ns.Type != "custom" || string(ns.Query) != string(st.Query) {
		t.Errorf("variable netns_state: type %q, query %s; want a custom variable of the states, as state's %s", ns.Type, ns.Query, st.Query)
	}
}

// TestGrafanaNamespacePanel evaluates the per-namespace panel's query with
// promtool, on one exporter run with --netns=all and one without: with it,
// each namespace is a line, and choosing one keeps only that; without it,
// the netns variable's All still matches, and the one line is named.
func TestGrafanaNamespacePanel(t *testing.T) {
	promtool := requireTool(t, "promtool", promtoolHint)
	d := loadDashboard(t)
	all := d.variable(t, "netns").AllValue
	var panelExpr string
	for _, e := range dashboardExprs(t) {
		if strings.Contains(e.Expr, "$netns_state") {
			if panelExpr != "" {
				t.Fatalf("two queries by $netns_state; the test expects one")
			}
			panelExpr = e.Expr
		}
	}
	if panelExpr == "" {
		t.Fatal("no query by $netns_state")
	}
	expr := func(instance, netns string) string {
		t.Helper()
		s, err := substituteVariables(panelExpr, queryValues{Instance: instance, Netns: netns})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	type sample struct {
		Labels string  `yaml:"labels"`
		Value  float64 `yaml:"value"`
	}
	type exprTest struct {
		Expr       string   `yaml:"expr"`
		EvalTime   string   `yaml:"eval_time"`
		ExpSamples []sample `yaml:"exp_samples"`
	}
	type series struct {
		Series string `yaml:"series"`
		Values string `yaml:"values"`
	}
	in := []series{
		// host1: no --netns=all, no netns label.
		{`tcpstate_sockets{family="ipv4",state="CLOSE_WAIT",instance="host1:9965",job="tcpstate"}`, "3x5"},
		{`tcpstate_sockets{family="ipv6",state="CLOSE_WAIT",instance="host1:9965",job="tcpstate"}`, "2x5"},
		{`tcpstate_sockets{family="ipv4",state="ESTABLISHED",instance="host1:9965",job="tcpstate"}`, "40x5"},
		// host2: --netns=all.
		{`tcpstate_sockets{family="ipv4",state="CLOSE_WAIT",netns="nginx:4026532281",instance="host2:9965",job="tcpstate"}`, "7x5"},
		{`tcpstate_sockets{family="ipv6",state="CLOSE_WAIT",netns="nginx:4026532281",instance="host2:9965",job="tcpstate"}`, "1x5"},
		{`tcpstate_sockets{family="ipv4",state="CLOSE_WAIT",netns="kubelet:4026531840",instance="host2:9965",job="tcpstate"}`, "2x5"},
		{`tcpstate_sockets{family="ipv4",state="ESTABLISHED",netns="kubelet:4026531840",instance="host2:9965",job="tcpstate"}`, "90x5"},
	}
	tests := []exprTest{
		{expr("host1:9965", all), "2m", []sample{{`{netns="observed namespace"}`, 5}}},
		{expr("host2:9965", all), "2m", []sample{{`{netns="nginx:4026532281"}`, 8}, {`{netns="kubelet:4026531840"}`, 2}}},
		{expr("host2:9965", "nginx:4026532281"), "2m", []sample{{`{netns="nginx:4026532281"}`, 8}}},
		{expr("host1:9965", "nginx:4026532281"), "2m", nil},
	}
	file := map[string]any{
		"evaluation_interval": "1m",
		"tests": []map[string]any{{
			"interval":         "1m",
			"input_series":     in,
			"promql_expr_test": tests,
		}},
	}
	b, err := yaml.Marshal(file)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "namespace_test.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := run("", promtool, "test", "rules", path); err != nil {
		t.Fatalf("promtool test rules: %v\n%s\n%s", err, out, b)
	}
}
