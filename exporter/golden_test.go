package exporter

import (
	"bytes"
	"flag"
	"net/netip"
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

type fixedAttribution struct{ a *collector.Attribution }

func (f fixedAttribution) Snapshot() *collector.Attribution { return f.a }

func sampleAttribution() *collector.Attribution {
	a := &collector.Attribution{Time: time.Unix(1_700_000_000, 0), Took: 12 * time.Millisecond, Folded: 4, Denied: 1}
	row := func(k collector.ProcessKind, name string, n int) collector.ProcessCount {
		r := collector.ProcessCount{Kind: k, Process: name}
		r.Sockets[collector.CloseWait] = n
		return r
	}
	a.Rows = []collector.ProcessCount{
		row(collector.ProcessNamed, "java", 40),
		row(collector.ProcessOther, "", 6),
		row(collector.ProcessNone, "", 2),
		row(collector.ProcessUnknown, "", 1),
	}
	return a
}

// withBreakdowns adds ports and namespaces to sample().
func withBreakdowns() *collector.Snapshot {
	s := sample()
	web := collector.PortCount{Netns: "web", Kind: collector.PortListening, Port: 8080, Queue: 3, Limit: 4096}
	web.Sockets[collector.Listen] = 1
	web.Sockets[collector.CloseWait] = 40
	other := collector.PortCount{Netns: "web", Kind: collector.PortOther, Queue: 0, Limit: 128}
	other.Sockets[collector.Established] = 5
	none := collector.PortCount{Netns: "web", Kind: collector.PortNone}
	none.Sockets[collector.FinWait2] = 2
	s.Ports = collector.PortBreakdown{Rows: []collector.PortCount{web, other, none}, Folded: 7}
	up := collector.RemoteCount{Netns: "web", Remote: netip.MustParseAddrPort("10.0.0.7:5432"), Ports: 700, Range: 1000}
	up.Sockets[collector.Established] = 20
	up.Sockets[collector.TimeWait] = 680
	up6 := collector.RemoteCount{Netns: "web", Remote: netip.MustParseAddrPort("[2001:db8::1]:443"), Ports: 3, Range: 1000}
	up6.Sockets[collector.SynSend] = 3
	rest := collector.RemoteCount{Netns: "web", Other: true}
	rest.Sockets[collector.FinWait2] = 2
	s.Remotes = collector.RemoteBreakdown{Rows: []collector.RemoteCount{up, up6, rest}, Folded: 3}
	s.Namespaces = []collector.NamespaceResult{{Name: "web", Time: s.Time, PollResult: s.PollResult, Took: 3 * time.Millisecond}}
	return s
}

// exposition renders the exporter's metrics in the text format, as a scrape
// sees them.
func exposition(t *testing.T, opts ...Option) []byte {
	t.Helper()
	h := NewHistograms()
	h.ObserveStay(collector.SynSend, 30*time.Millisecond)
	h.ObserveStay(collector.Established, 90*time.Second)
	h.ObservePoll(4 * time.Millisecond)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(New(fixed{withBreakdowns()}, h, opts...))
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
// to the contract shows up as a diff against the files in testdata, which
// promtool must accept.
func TestGoldenExposition(t *testing.T) {
	for golden, opts := range map[string][]Option{
		"testdata/metrics.prom":     {WithAttribution(fixedAttribution{sampleAttribution()})},
		"testdata/metrics_all.prom": {WithAttribution(fixedAttribution{sampleAttribution()}), WithNamespaces()},
	} {
		t.Run(golden, func(t *testing.T) {
			got := exposition(t, opts...)
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
		})
	}
}
