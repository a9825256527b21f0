package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
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
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasourceRef  `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
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

// substituteVariables replaces the dashboard's variables and Grafana's
// interval macros with values a plain Prometheus query accepts.
func substituteVariables(expr, instance string) (string, error) {
	r := strings.NewReplacer(
		"${__rate_interval}", "1m", "$__rate_interval", "1m",
		"${__interval}", "5s", "$__interval", "5s",
		"${__range}", "5m", "$__range", "5m",
		"${instance}", instance, "$instance", instance,
		"${state}", "ESTABLISHED", "$state", "ESTABLISHED",
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
			var q string
			var qo struct {
				Query string `json:"query"`
			}
			if json.Unmarshal(v.Query, &q) != nil {
				if err := json.Unmarshal(v.Query, &qo); err != nil {
					t.Errorf("variable instance: query %s: %v", v.Query, err)
				}
				q = qo.Query
			}
			if v.Type != "query" || q != want {
				t.Errorf("variable instance: type %q, query %q; want a query variable %q", v.Type, q, want)
			}
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable instance: data source %+v, want ${datasource}", v.Datasource)
			}
		}
	}
	for _, name := range []string{"datasource", "instance"} {
		if !vars[name] {
			t.Errorf("no %s variable", name)
		}
	}

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
		for i, e := range dashboardExprs(t) {
			expr, err := substituteVariables(e.Expr, "host1:9965")
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
