package exporter

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

var update = flag.Bool("update", false, "rewrite testdata/metrics.prom")

// exposition renders the exporter's metrics for sample() in the text
// format, as a scrape sees them.
func exposition(t *testing.T) []byte {
	t.Helper()
	h := NewHistograms()
	h.ObserveStay(collector.SynSend, 30*time.Millisecond)
	h.ObserveStay(collector.Established, 90*time.Second)
	h.ObservePoll(4 * time.Millisecond)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(New(fixed{sample()}, h))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// TestGoldenExposition keeps metric names, help and labels honest: a change
// to the contract shows up as a diff against testdata/metrics.prom, which
// promtool must accept.
func TestGoldenExposition(t *testing.T) {
	const golden = "testdata/metrics.prom"
	got := exposition(t)
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./exporter -update to create it)", err)
	}
	if d := cmp.Diff(string(want), string(got)); d != "" {
		t.Errorf("exposition differs from %s (-want +got); run with -update if intended\n%s", golden, d)
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: apt-get install -y prometheus")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = bytes.NewReader(got)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}
