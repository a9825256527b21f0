package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v2"
)

// ruleFile is a Prometheus rule file, as deploy/prometheus/rules.yml.
type ruleFile struct {
	Groups []ruleGroup `yaml:"groups"`
}

type ruleGroup struct {
	Name     string `yaml:"name"`
	Interval string `yaml:"interval,omitempty"`
	Rules    []rule `yaml:"rules"`
}

type rule struct {
	Record      string            `yaml:"record,omitempty"`
	Alert       string            `yaml:"alert,omitempty"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for,omitempty"`
	Labels      map[string]string `yaml:"labels,omitempty"`
	Annotations map[string]string `yaml:"annotations,omitempty"`
}

const runbookBase = "https://github.com/tcpstate/tcpstate_exporter/blob/main/deploy/README.md#"

// loadRules reads a rule file strictly: an unknown key is an error.
func loadRules(t testing.TB, path string) ruleFile {
	t.Helper()
	var rf ruleFile
	if err := yaml.UnmarshalStrict(readFile(t, path), &rf); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return rf
}

func shippedRules(t testing.TB) ruleFile {
	t.Helper()
	return loadRules(t, deployPath(t, "prometheus", "rules.yml"))
}

func (rf ruleFile) alerts() []rule  { return rf.where(func(r rule) bool { return r.Alert != "" }) }
func (rf ruleFile) records() []rule { return rf.where(func(r rule) bool { return r.Record != "" }) }

// where returns the rules of every group that keep accepts.
func (rf ruleFile) where(keep func(rule) bool) []rule {
	var out []rule
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if keep(r) {
				out = append(out, r)
			}
		}
	}
	return out
}

// A threshold is a number compared against on a line of its own that ends
// in a "# threshold: ..." comment (a PromQL comment), for example
//
//	> 600  # threshold: seconds the oldest socket has been in CLOSE_WAIT
var thresholdRE = regexp.MustCompile(`(?m)([<>]=?|==|!=)([ \t]*)(-?[0-9]+(?:\.[0-9]+)?)([ \t]*# threshold:[^\n]*)$`)

// thresholds returns the marked thresholds of expr, in order.
func thresholds(expr string) []string {
	var out []string
	for _, m := range thresholdRE.FindAllStringSubmatch(expr, -1) {
		out = append(out, m[3])
	}
	return out
}

// withThresholds returns expr with its marked thresholds replaced, in order,
// by values, and nothing else changed.
func withThresholds(expr string, values []string) (string, error) {
	if n := len(thresholds(expr)); n != len(values) {
		return "", fmt.Errorf("expression has %d marked thresholds, %d values given", n, len(values))
	}
	i := 0
	return thresholdRE.ReplaceAllStringFunc(expr, func(s string) string {
		m := thresholdRE.FindStringSubmatch(s)
		v := values[i]
		i++
		return m[1] + m[2] + v + m[4]
	}), nil
}

// withoutThresholds returns expr with every marked threshold replaced by N.
func withoutThresholds(expr string) string {
	return thresholdRE.ReplaceAllString(expr, "${1}${2}N${4}")
}

// alertOverride sets an alert's thresholds (nil keeps the shipped ones) and
// its for-duration ("" keeps the shipped one).
type alertOverride struct {
	Thresholds []string
	For        string
}

// renderRules returns rf with thresholds and for-durations replaced, by
// alert name; defaultFor, when set, replaces the for-duration of every alert
// without an override of its own. It fails if an override names no alert,
// and checks that each rendered expression equals the shipped one apart from
// the marked thresholds.
func renderRules(t testing.TB, rf ruleFile, overrides map[string]alertOverride, defaultFor string) ruleFile {
	t.Helper()
	out := ruleFile{}
	seen := map[string]bool{}
	for _, g := range rf.Groups {
		ng := g
		ng.Rules = slices.Clone(g.Rules)
		for i, r := range ng.Rules {
			if r.Alert == "" {
				continue
			}
			o, ok := overrides[r.Alert]
			seen[r.Alert] = ok
			if o.Thresholds != nil {
				expr, err := withThresholds(r.Expr, o.Thresholds)
				if err != nil {
					t.Fatalf("%s: %v", r.Alert, err)
				}
				r.Expr = expr
			}
			switch {
			case o.For != "":
				r.For = o.For
			case defaultFor != "":
				r.For = defaultFor
			}
			if got, want := withoutThresholds(r.Expr), withoutThresholds(g.Rules[i].Expr); got != want {
				t.Fatalf("%s: rendered expression differs from the shipped one beyond its thresholds:\n%s", r.Alert, cmp.Diff(want, got))
			}
			ng.Rules[i] = r
		}
		out.Groups = append(out.Groups, ng)
	}
	for name := range overrides {
		if !seen[name] {
			t.Fatalf("override for %s, which rules.yml does not define", name)
		}
	}
	return out
}

func writeRules(t testing.TB, rf ruleFile, path string) {
	t.Helper()
	b, err := yaml.Marshal(rf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// isRuleFile says whether a YAML file under deploy/prometheus holds rule
// groups (and not a Prometheus configuration or promtool tests).
func isRuleFile(t testing.TB, path string) bool {
	t.Helper()
	var top map[string]any
	if err := yaml.Unmarshal(readFile(t, path), &top); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	_, groups := top["groups"]
	return groups
}

func TestPromtoolRules(t *testing.T) {
	promtool := requireTool(t, "promtool", promtoolHint)
	dir := deployPath(t, "prometheus")
	files, err := filepath.Glob(filepath.Join(dir, "*.y*ml"))
	if err != nil {
		t.Fatal(err)
	}
	var ruleFiles []string
	for _, f := range files {
		if isRuleFile(t, f) {
			ruleFiles = append(ruleFiles, f)
		}
	}
	if !slices.Contains(ruleFiles, filepath.Join(dir, "rules.yml")) {
		t.Fatalf("rules.yml not among the rule files found: %v", ruleFiles)
	}
	t.Run("check", func(t *testing.T) {
		// Every lint promtool has, and a lint finding fails (exit 3).
		if out, err := run(dir, promtool, append([]string{"check", "rules", "--lint=all", "--lint-fatal"}, ruleFiles...)...); err != nil {
			t.Fatalf("promtool check rules --lint=all --lint-fatal: %v\n%s", err, out)
		}
	})
	t.Run("test", func(t *testing.T) {
		if out, err := run(dir, promtool, "test", "rules", "rules_test.yml"); err != nil {
			t.Fatalf("promtool test rules rules_test.yml: %v\n%s", err, out)
		}
	})
}

func TestPrometheusConfig(t *testing.T) {
	promtool := requireTool(t, "promtool", promtoolHint)
	dir := deployPath(t, "prometheus")
	if out, err := run(dir, promtool, "check", "config", "prometheus.yml"); err != nil {
		t.Fatalf("promtool check config prometheus.yml: %v\n%s", err, out)
	}
}

// TestRulesTestCoverage checks that rules_test.yml has, for every alert, a
// case where it fires and one where it does not.
func TestRulesTestCoverage(t *testing.T) {
	var tests struct {
		Tests []struct {
			Name          string `yaml:"name"`
			AlertRuleTest []struct {
				AlertName string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(readFile(t, deployPath(t, "prometheus", "rules_test.yml")), &tests); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.AlertName] = true
			} else {
				quiet[a.AlertName] = true
			}
		}
	}
	for _, a := range shippedRules(t).alerts() {
		if !fires[a.Alert] {
			t.Errorf("rules_test.yml: no case where %s fires", a.Alert)
		}
		if !quiet[a.Alert] {
			t.Errorf("rules_test.yml: no case where %s must not fire", a.Alert)
		}
	}
}

// TestRuleConventions checks what operators rely on: annotations, runbook
// links that resolve to a section of deploy/README.md, marked thresholds.
func TestRuleConventions(t *testing.T) {
	rf := shippedRules(t)
	anchors := readmeAnchors(t)
	names := map[string]bool{}
	alerts := rf.alerts()
	if len(alerts) == 0 {
		t.Fatal("rules.yml has no alerts")
	}
	for _, a := range alerts {
		if names[a.Alert] {
			t.Errorf("alert %s defined twice", a.Alert)
		}
		names[a.Alert] = true
		for _, k := range []string{"summary", "description", "runbook", "runbook_url"} {
			if strings.TrimSpace(a.Annotations[k]) == "" {
				t.Errorf("%s: no %s annotation", a.Alert, k)
			}
		}
		if a.Labels["severity"] == "" {
			t.Errorf("%s: no severity label", a.Alert)
		}
		url := runbookBase + githubSlug(a.Alert)
		if a.Annotations["runbook_url"] != url {
			t.Errorf("%s: runbook_url %q, want %q", a.Alert, a.Annotations["runbook_url"], url)
		}
		if !strings.Contains(a.Annotations["runbook"], url) {
			t.Errorf("%s: runbook annotation does not link %s", a.Alert, url)
		}
		if !anchors[githubSlug(a.Alert)] {
			t.Errorf("%s: deploy/README.md has no section %q for its runbook", a.Alert, "### "+a.Alert)
		}
		if _, err := time.ParseDuration(a.For); a.For != "" && err != nil {
			// Prometheus durations such as 1h30m parse the same way;
			// units Go lacks (d, w, y) are not used here.
			t.Errorf("%s: for %q: %v", a.Alert, a.For, err)
		}
		// Every alert on a quantity has a marked, overridable threshold.
		if a.Alert != "TCPStateExporterDown" && len(thresholds(a.Expr)) == 0 {
			t.Errorf("%s: no threshold marked with \"# threshold:\" in its expression", a.Alert)
		}
		// The README's threshold table states the shipped values.
		row := readmeThresholdRow(t, a.Alert)
		if row == "" {
			t.Errorf("%s: no row in deploy/README.md's threshold table", a.Alert)
		} else {
			cells := strings.Split(row, "|")
			if len(cells) < 5 || strings.TrimSpace(cells[3]) != a.For {
				t.Errorf("%s: README says %q, rules.yml has for: %s", a.Alert, row, a.For)
			}
			for _, th := range thresholds(a.Expr) {
				if !regexp.MustCompile(`(^|[^0-9.])` + regexp.QuoteMeta(th) + `([^0-9]|$)`).MatchString(cells[2]) {
					t.Errorf("%s: README's threshold %q does not mention %s", a.Alert, strings.TrimSpace(cells[2]), th)
				}
			}
		}
		for _, s := range []string{`state="LISTEN"`, `state="ESTABLISHED"`} {
			if strings.Contains(a.Expr, s) {
				t.Errorf("%s: alerts on %s, a normal steady state", a.Alert, s)
			}
		}
	}
	for _, r := range rf.records() {
		if strings.Count(r.Record, ":") != 2 {
			t.Errorf("recording rule %s: not named level:metric:operations", r.Record)
		}
	}
}

// readmeThresholdRow returns the row of deploy/README.md's threshold table
// about alert.
func readmeThresholdRow(t testing.TB, alert string) string {
	t.Helper()
	prefix := "| [" + alert + "](#" + githubSlug(alert) + ") |"
	for _, line := range strings.Split(string(readFile(t, deployPath(t, "README.md"))), "\n") {
		if strings.HasPrefix(line, prefix) {
			return line
		}
	}
	return ""
}

// readmeAnchors returns the anchors of deploy/README.md's headings, and
// checks that the README's own #links resolve.
func readmeAnchors(t testing.TB) map[string]bool {
	t.Helper()
	readme := string(readFile(t, deployPath(t, "README.md")))
	anchors := map[string]bool{}
	inCode := false
	for _, line := range strings.Split(readme, "\n") {
		if strings.HasPrefix(line, "```") {
			inCode = !inCode
		}
		if !inCode && strings.HasPrefix(line, "#") {
			anchors[githubSlug(strings.TrimLeft(line, "#"))] = true
		}
	}
	for _, m := range regexp.MustCompile(`\]\(#([^)]+)\)`).FindAllStringSubmatch(readme, -1) {
		if !anchors[m[1]] {
			t.Errorf("deploy/README.md links #%s, which is no heading", m[1])
		}
	}
	return anchors
}

// TestThresholdRendering checks the mechanical substitution the end-to-end
// test relies on.
func TestThresholdRendering(t *testing.T) {
	rf := shippedRules(t)
	// Rendering every alert with its own thresholds changes nothing.
	same := map[string]alertOverride{}
	for _, a := range rf.alerts() {
		same[a.Alert] = alertOverride{Thresholds: thresholds(a.Expr)}
	}
	if d := cmp.Diff(rf, renderRules(t, rf, same, "")); d != "" {
		t.Fatalf("rendering with the shipped thresholds changed the rules (-shipped +rendered)\n%s", d)
	}
	const expr = "foo\n  > 600  # threshold: seconds\nand bar > 5\n  >= 0.5 # threshold: ratio\n"
	got, err := withThresholds(expr, []string{"3", "0.25"})
	if err != nil {
		t.Fatal(err)
	}
	want := "foo\n  > 3  # threshold: seconds\nand bar > 5\n  >= 0.25 # threshold: ratio\n"
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("(-want +got)\n%s", d)
	}
	if _, err := withThresholds(expr, []string{"3"}); err == nil {
		t.Fatal("withThresholds accepted too few values")
	}
}
