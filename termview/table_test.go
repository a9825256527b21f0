package termview

import (
	"encoding/json"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

func f(v float64) *float64 { return &v }

// TestAges: one dump dates only TIME_WAIT; watching, a socket there from
// the start is at least as old as the view, and a later one is dated.
func TestAges(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	first := &collector.Snapshot{Time: start}
	first.Sockets[collector.IPv4][collector.Established] = 3
	first.Sockets[collector.IPv6][collector.TimeWait] = 1
	first.Oldest[collector.TimeWait] = 12 * time.Second

	v := NewView(Options{Interval: time.Second, Top: 5})
	tab := v.Table(first, nil)
	if tab.States[collector.Established].Oldest != nil || tab.States[collector.Listen].Oldest != nil {
		t.Errorf("one dump dated ESTABLISHED or an empty LISTEN: %+v", tab.States)
	}
	if d := cmp.Diff(&Age{Seconds: 12}, tab.States[collector.TimeWait].Oldest); d != "" {
		t.Errorf("TIME_WAIT (-want +got)\n%s", d)
	}
	if tab.TransitionsPerSecond != nil || tab.States[collector.Established].EnteredPerSecond != nil {
		t.Error("rates from a single dump")
	}

	later := &collector.Snapshot{Time: start.Add(10 * time.Second)}
	later.Sockets[collector.IPv4][collector.Established] = 3
	later.Sockets[collector.IPv4][collector.CloseWait] = 2
	later.Oldest[collector.Established] = 10*time.Second + time.Millisecond // there from the start
	later.Oldest[collector.CloseWait] = 4500 * time.Millisecond             // entered since
	later.Transitions[collector.Established][collector.CloseWait] = 5
	later.Transitions[collector.CloseWait][collector.Closed] = 3
	tab = v.Table(later, nil)
	if d := cmp.Diff(&Age{Seconds: 10, AtLeast: true}, tab.States[collector.Established].Oldest); d != "" {
		t.Errorf("ESTABLISHED (-want +got)\n%s", d)
	}
	if d := cmp.Diff(&Age{Seconds: 4.5}, tab.States[collector.CloseWait].Oldest); d != "" {
		t.Errorf("CLOSE_WAIT (-want +got)\n%s", d)
	}
	if d := cmp.Diff(f(0.8), tab.TransitionsPerSecond); d != "" {
		t.Errorf("transitions/s (-want +got)\n%s", d)
	}
	cw := tab.States[collector.CloseWait]
	if d := cmp.Diff([]*float64{f(0.5), f(0.3)}, []*float64{cw.EnteredPerSecond, cw.LeftPerSecond}); d != "" {
		t.Errorf("CLOSE_WAIT in/out per second (-want +got)\n%s", d)
	}
	if tab.Total.IPv4 != 5 || tab.Total.Total != 5 {
		t.Errorf("total %+v", tab.Total)
	}
}

// TestStays: the stays come from the snapshot's, since the view started,
// as median and 99th percentile; a state with none has nulls.
func TestStays(t *testing.T) {
	first := &collector.Snapshot{Time: time.Now()}
	snap := &collector.Snapshot{Time: first.Time.Add(time.Second)}
	for i := 1; i <= 100; i++ {
		snap.Stays.Observe(collector.CloseWait, time.Duration(i)*time.Second)
	}
	v := NewView(Options{Top: 5})
	v.Table(first, nil)
	r := v.Table(snap, nil).States[collector.CloseWait]
	if r.Stays != 100 || r.StayMedianSeconds == nil || r.StayP99Seconds == nil ||
		math.Abs(*r.StayMedianSeconds/50-1) > 0.09 || math.Abs(*r.StayP99Seconds/99-1) > 0.09 {
		t.Errorf("CLOSE_WAIT: %d stays, median %v, p99 %v; want 100, 50s and 99s within 9%%", r.Stays, r.StayMedianSeconds, r.StayP99Seconds)
	}
	if l := v.Table(snap, nil).States[collector.Listen]; l.Stays != 0 || l.StayMedianSeconds != nil || l.StayP99Seconds != nil {
		t.Errorf("LISTEN, with no stays: %d, %v, %v", l.Stays, l.StayMedianSeconds, l.StayP99Seconds)
	}
}

// TestCloseWaitBreakdown: the ports and processes with the most CLOSE_WAIT
// sockets first, the top kept, JSON with nulls rather than gaps.
func TestCloseWaitBreakdown(t *testing.T) {
	snap := &collector.Snapshot{Time: time.Now()}
	row := func(kind collector.PortKind, port uint16, cw int) collector.PortCount {
		r := collector.PortCount{Kind: kind, Port: port}
		r.Sockets[collector.CloseWait] = cw
		r.Sockets[collector.Established] = 100
		return r
	}
	snap.Ports.Rows = []collector.PortCount{row(collector.PortListening, 80, 1), row(collector.PortListening, 443, 0),
		row(collector.PortListening, 8080, 7), row(collector.PortNone, 0, 7), row(collector.PortListening, 9000, 1)}
	attr := &collector.Attribution{Denied: 2}
	for _, p := range []collector.ProcessCount{{Kind: collector.ProcessNamed, Process: "java"}, {Kind: collector.ProcessNamed, Process: "nginx"}, {Kind: collector.ProcessUnknown}} {
		p.Sockets[collector.CloseWait] = map[string]int{"java": 9, "nginx": 0, "": 2}[p.Process]
		attr.Rows = append(attr.Rows, p)
	}
	tab := NewView(Options{Top: 2}).Table(snap, attr)
	port := 8080
	wantPorts := []PortRow{{Kind: "listening", Port: &port, CloseWait: 7}, {Kind: "no_listener", CloseWait: 7}}
	if d := cmp.Diff(wantPorts, tab.Ports); d != "" || tab.PortsOmitted != 2 {
		t.Errorf("ports (-want +got)\n%s\nomitted %d, want 2", d, tab.PortsOmitted)
	}
	wantProcs := []ProcessRow{{Kind: "named", Process: "java", CloseWait: 9}, {Kind: "owner_not_found", CloseWait: 2}}
	if d := cmp.Diff(wantProcs, tab.Processes); d != "" {
		t.Errorf("processes (-want +got)\n%s", d)
	}
	text := tab.Text()
	for _, want := range []string{"8080", "(no listener)", "(2 more)", "java", "(owner not found)", "2 processes' open files could not be read"} {
		if !strings.Contains(text, want) {
			t.Errorf("the text does not show %q:\n%s", want, text)
		}
	}
	js, err := json.Marshal(tab)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(js), `"oldest":null`) || !strings.Contains(string(js), `"port":null`) {
		t.Errorf("unknown values are not null: %s", js)
	}
}

func TestDurationText(t *testing.T) {
	for s, want := range map[float64]string{0.0004: "0ms", 0.34: "340ms", 4.54: "4.5s", 42.4: "42s", 187: "3m07s", 7500: "2h05m", 273600: "3d04h"} {
		if got := durationText(s); got != want {
			t.Errorf("durationText(%v) = %q, want %q", s, got, want)
		}
	}
}
