package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/internal/statezoo"
	"github.com/tcpstate/tcpstate_exporter/termview"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// zoo builds sockets in every documented state, perState of each per
// family, in a namespace of the test's own.
func zoo(t *testing.T, perState int) (name, path string, want map[string]map[string]int) {
	t.Helper()
	name, path = netnstest.New(t)
	z, err := statezoo.Build(path, statezoo.Options{PerState: perState})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { z.Close() })
	return name, path, z.Expected()
}

// What varies from run to run: the TIME_WAIT sockets' age, the ports the
// namespace's listeners got.
var (
	timeWaitAge = regexp.MustCompile(`(?m)^(TIME_WAIT +\d+ +\d+ +\d+  )\S+`)
	portRow     = regexp.MustCompile(`(?m)^  \d+ +\d+$`)
	// Processes of other users, readable or not as the host has them.
	unreadable = regexp.MustCompile(`(?m)^  \(\d+ process(es)?'s? open files could not be read\)\n`)
)

func normalise(s string) string {
	s = timeWaitAge.ReplaceAllString(s, "${1}AGE")
	s = portRow.ReplaceAllStringFunc(s, func(row string) string {
		f := strings.Fields(row)
		return fmt.Sprintf("  %-26s %10s", "PORT", f[1])
	})
	return unreadable.ReplaceAllString(s, "")
}

// TestIntegrationOneShotGolden: the table for a zoo of sockets in known
// states, in a namespace the test made.
func TestIntegrationOneShotGolden(t *testing.T) {
	name, _, _ := zoo(t, 2)
	code, stdout, stderr := runTool(t, "--netns="+name)
	if code != 0 {
		t.Fatalf("exit code %d\n%s", code, stderr)
	}
	got := normalise(stdout)
	golden := filepath.Join("testdata", "zoo.golden")
	if *update {
		if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(string(want), got); d != "" {
		t.Errorf("output (-want +got)\n%s\nraw output:\n%s", d, stdout)
	}
}

// TestIntegrationJSON: --json gives the kernel's counts field by field,
// under the field names the README documents.
func TestIntegrationJSON(t *testing.T) {
	name, _, want := zoo(t, 2)
	code, stdout, stderr := runTool(t, "--json", "--netns="+name)
	if code != 0 {
		t.Fatalf("exit code %d\n%s", code, stderr)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(stdout), &fields); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, stdout)
	}
	var keys []string
	for k := range fields {
		keys = append(keys, k)
	}
	wantKeys := []string{"close_wait_ports", "close_wait_ports_omitted", "close_wait_processes", "exporter", "netns", "processes_unreadable",
		"since_seconds", "states", "time", "total", "transitions_per_second", "unknown_state_sockets"}
	if d := cmp.Diff(wantKeys, keys, cmpSorted); d != "" {
		t.Errorf("top-level fields (-want +got)\n%s", d)
	}
	var rows []map[string]json.RawMessage
	if err := json.Unmarshal(fields["states"], &rows); err != nil || len(rows) == 0 {
		t.Fatalf("states: %v", err)
	}
	keys = keys[:0]
	for k := range rows[0] {
		keys = append(keys, k)
	}
	wantKeys = []string{"entered_per_second", "ipv4", "ipv6", "left_per_second", "oldest", "state", "stay_median_seconds",
		"stay_p99_seconds", "stays", "total"}
	if d := cmp.Diff(wantKeys, keys, cmpSorted); d != "" {
		t.Errorf("fields of a state (-want +got)\n%s", d)
	}

	var table termview.Table
	if err := json.Unmarshal([]byte(stdout), &table); err != nil {
		t.Fatal(err)
	}
	if table.Netns != name || table.SinceSeconds != 0 || table.TransitionsPerSecond != nil {
		t.Errorf("netns %q, since %v, transitions/s %v; want %q, 0, null", table.Netns, table.SinceSeconds, table.TransitionsPerSecond, name)
	}
	if time.Since(table.Time) > time.Minute || time.Since(table.Time) < 0 {
		t.Errorf("time %v is not the dump's", table.Time)
	}
	if len(table.States) != collector.NumStates {
		t.Fatalf("%d states, want %d", len(table.States), collector.NumStates)
	}
	var v4, v6 int
	for i, st := range collector.States() {
		r := table.States[i]
		if r.State != st.String() {
			t.Errorf("states[%d] is %q, want %q", i, r.State, st)
		}
		if r.IPv4 != want["ipv4"][r.State] || r.IPv6 != want["ipv6"][r.State] || r.Total != r.IPv4+r.IPv6 {
			t.Errorf("%s: ipv4 %d ipv6 %d total %d; the kernel holds ipv4 %d ipv6 %d",
				r.State, r.IPv4, r.IPv6, r.Total, want["ipv4"][r.State], want["ipv6"][r.State])
		}
		v4, v6 = v4+want["ipv4"][r.State], v6+want["ipv6"][r.State]
		switch {
		case st == collector.TimeWait:
			if r.Oldest == nil || r.Oldest.AtLeast || r.Oldest.Seconds < 0 || r.Oldest.Seconds > collector.TimeWaitLifetime.Seconds() {
				t.Errorf("TIME_WAIT's oldest is %+v, want the age its timer gives", r.Oldest)
			}
		case r.Oldest != nil:
			t.Errorf("%s's oldest is %+v; one dump cannot know it", r.State, *r.Oldest)
		}
		if r.EnteredPerSecond != nil || r.LeftPerSecond != nil || r.StayMedianSeconds != nil || r.StayP99Seconds != nil || r.Stays != 0 {
			t.Errorf("%s has rates or stays from a single dump: %+v", r.State, r)
		}
	}
	if table.Total.IPv4 != v4 || table.Total.IPv6 != v6 || table.Total.Total != v4+v6 {
		t.Errorf("total %+v, want ipv4 %d ipv6 %d", table.Total, v4, v6)
	}
	// Two listeners (one per family) hold the zoo's CLOSE_WAIT sockets,
	// and this process holds them all.
	if len(table.Ports) != 2 {
		t.Fatalf("close_wait_ports %+v, want the zoo's two listeners", table.Ports)
	}
	for _, p := range table.Ports {
		if p.Kind != "listening" || p.Port == nil || p.CloseWait != 2 {
			t.Errorf("close_wait_ports row %+v, want a listening port with 2", p)
		}
	}
	self, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	wantProc := []termview.ProcessRow{{Kind: "named", Process: strings.TrimSpace(string(self)), CloseWait: 4}}
	if d := cmp.Diff(wantProc, table.Processes); d != "" {
		t.Errorf("close_wait_processes (-want +got)\n%s", d)
	}
}

var cmpSorted = cmp.Transformer("sort", func(in []string) []string {
	out := append([]string(nil), in...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
})

// TestIntegrationUnprivileged: with no capability, the command reads its
// own namespace, and refuses another's in one line with status 1.
func TestIntegrationUnprivileged(t *testing.T) {
	_, path, _ := zoo(t, 1)
	bin := exportertest.Build(t, "tcpstate", nil, "build", "./cmd/tcpstate")
	nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", bin}
	var stdout, stderr strings.Builder
	cmd := exec.Command(nobody[0], append(nobody[1:], "--json")...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("as nobody: %v\n%s", err, stderr.String())
	}
	var table termview.Table
	if err := json.Unmarshal([]byte(stdout.String()), &table); err != nil || len(table.States) != collector.NumStates {
		t.Fatalf("as nobody, not the table: %v\n%s", err, stdout.String())
	}

	stderr.Reset()
	cmd = exec.Command(nobody[0], append(nobody[1:], "--netns="+path)...)
	cmd.Stderr = &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("--netns as nobody: %v, want exit status 1\n%s", err, stderr.String())
	}
	if lines := strings.Split(strings.TrimSuffix(stderr.String(), "\n"), "\n"); len(lines) != 1 || !strings.Contains(lines[0], path) {
		t.Errorf("--netns as nobody: stderr is not one line naming %s:\n%s", path, stderr.String())
	}
}

// TestIntegrationFrom: --from shows a running exporter's view of a zoo
// through its JSON API: the kernel's counts, with the exporter's rates,
// as JSON and as the text table.
func TestIntegrationFrom(t *testing.T) {
	name, _, want := zoo(t, 2)
	p := exportertest.Start(t, "--netns="+name, "--mode=poll", "--poll.interval=100ms")
	code, stdout, stderr := runTool(t, "--from="+p.URL, "--json")
	if code != 0 {
		t.Fatalf("exit code %d\n%s", code, stderr)
	}
	var table termview.Table
	if err := json.Unmarshal([]byte(stdout), &table); err != nil {
		t.Fatal(err)
	}
	if !table.Exporter || table.Netns != p.URL || table.TransitionsPerSecond == nil || time.Since(table.Time) > time.Minute {
		t.Errorf("netns %q, transitions/s %v, time %v; want %q, the exporter's rate, its last poll's time", table.Netns, table.TransitionsPerSecond, table.Time, p.URL)
	}
	if len(table.States) != collector.NumStates {
		t.Fatalf("%d states, want %d", len(table.States), collector.NumStates)
	}
	for i, st := range collector.States() {
		r := table.States[i]
		if r.State != st.String() || r.IPv4 != want["ipv4"][r.State] || r.IPv6 != want["ipv6"][r.State] || r.Total != r.IPv4+r.IPv6 {
			t.Errorf("states[%d]: %s ipv4 %d ipv6 %d total %d; the kernel holds %s ipv4 %d ipv6 %d",
				i, r.State, r.IPv4, r.IPv6, r.Total, st, want["ipv4"][st.String()], want["ipv6"][st.String()])
		}
		if r.EnteredPerSecond == nil || r.LeftPerSecond == nil {
			t.Errorf("%s has no rates", r.State)
		}
	}
	if len(table.Ports) != 2 {
		t.Errorf("close_wait_ports %+v, want the zoo's two listeners", table.Ports)
	}
	code, stdout, stderr = runTool(t, "--from="+p.URL)
	if code != 0 {
		t.Fatalf("exit code %d\n%s", code, stderr)
	}
	cw := want["ipv4"]["CLOSE_WAIT"] + want["ipv6"]["CLOSE_WAIT"]
	if !regexp.MustCompile(fmt.Sprintf(`(?m)^CLOSE_WAIT +%d +%d +%d `, want["ipv4"]["CLOSE_WAIT"], want["ipv6"]["CLOSE_WAIT"], cw)).MatchString(stdout) ||
		!strings.Contains(stdout, "IN/S") || !strings.Contains(stdout, "over the exporter's last minute") {
		t.Errorf("the text table lacks the zoo's CLOSE_WAIT row, or the exporter's rates:\n%s", stdout)
	}
}
