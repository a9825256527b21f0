package check

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
)

// exportKeys are the keys Grafana adds to a dashboard exported "for
// sharing externally" and reads on import; they are not part of the
// dashboard model. They are the only keys tolerated beside it.
var exportKeys = []string{"__inputs", "__requires", "__elements"}

// checkDashboard decodes a dashboard strictly into the Grafana Foundation
// SDK's types (every panel's options, field config and queries into their
// plugin's types too) and validates it. Anything the SDK does not know, a
// wrong type, or a required field missing is an error.
func checkDashboard(raw []byte) error {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return err
	}
	for _, k := range exportKeys {
		delete(top, k)
	}
	model, err := json.Marshal(top)
	if err != nil {
		return err
	}
	var d dashboard.Dashboard
	if err := orNil(d.UnmarshalJSONStrict(model)); err != nil {
		return err
	}
	return orNil(d.Validate())
}

// orNil turns the SDK's empty list of errors, which it returns as a
// non-nil error, into nil.
func orNil(err error) error {
	var errs cog.BuildErrors
	if errors.As(err, &errs) && len(errs) == 0 {
		return nil
	}
	return err
}

func readDashboard(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "grafana", "tcpstate.json"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestGrafanaDashboard: deploy/grafana/tcpstate.json is a dashboard the
// Grafana Foundation SDK reads strictly and finds valid.
func TestGrafanaDashboard(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	if err := checkDashboard(readDashboard(t)); err != nil {
		t.Errorf("deploy/grafana/tcpstate.json:\n%v", err)
	}
}

// TestGrafanaDashboardCheckIsStrict: the check above fails on what it
// should, so that its passing means something.
func TestGrafanaDashboardCheckIsStrict(t *testing.T) {
	plugins.RegisterDefaultPlugins()
	var d map[string]any
	if err := json.Unmarshal(readDashboard(t), &d); err != nil {
		t.Fatal(err)
	}
	firstOf := func(d map[string]any, typ string) map[string]any {
		for _, p := range d["panels"].([]any) {
			if p := p.(map[string]any); p["type"] == typ {
				return p
			}
		}
		t.Fatalf("no %s panel", typ)
		return nil
	}
	for _, c := range []struct {
		name   string
		change func(d map[string]any)
		want   string
	}{
		{"unknown top-level key", func(d map[string]any) { d["__exported"] = true }, "__exported"},
		{"unknown panel key", func(d map[string]any) { firstOf(d, "timeseries")["colour"] = "red" }, "colour"},
		{"unknown panel option", func(d map[string]any) {
			firstOf(d, "timeseries")["options"].(map[string]any)["legendd"] = map[string]any{}
		}, "legendd"},
		{"unknown query field", func(d map[string]any) {
			firstOf(d, "timeseries")["targets"].([]any)[0].(map[string]any)["exprr"] = "up"
		}, "exprr"},
		{"wrong type", func(d map[string]any) { d["refresh"] = 30 }, "refresh"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var copied map[string]any
			b, _ := json.Marshal(d)
			if err := json.Unmarshal(b, &copied); err != nil {
				t.Fatal(err)
			}
			c.change(copied)
			b, _ = json.Marshal(copied)
			err := checkDashboard(b)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error naming %q", err, c.want)
			}
		})
	}
}
