package collector

import (
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

func TestStaysQuantile(t *testing.T) {
	var h Stays
	if _, ok := h.Quantile(CloseWait, 0.5); ok {
		t.Error("a state with no stays has a median")
	}
	// 99 stays of 10 ms, one of 10 s: median about 10 ms, p99 10 ms, max 10 s.
	for range 99 {
		h.Observe(TimeWait, 10*time.Millisecond)
	}
	h.Observe(TimeWait, 10*time.Second)
	h.Observe(NumStates, time.Second) // ignored
	if h.Count[TimeWait] != 100 {
		t.Fatalf("count %d, want 100", h.Count[TimeWait])
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 10 * time.Millisecond}, {0.99, 10 * time.Millisecond}, {1, 10 * time.Second}} {
		got, ok := h.Quantile(TimeWait, c.q)
		if !ok || got < c.want*91/100 || got > c.want*110/100 {
			t.Errorf("quantile %v = %v, %v; want %v within 9%%", c.q, got, ok, c.want)
		}
	}
	h.Observe(SynSend, 0)
	h.Observe(SynSend, 1000*time.Hour)
	if got, _ := h.Quantile(SynSend, 0.5); got != StayMin {
		t.Errorf("median of a zero stay = %v, want %v", got, StayMin)
	}
	if got, _ := h.Quantile(SynSend, 1); got < StayBucketBound(NumStayBuckets-2) {
		t.Errorf("max of an overlong stay = %v, want the last bound", got)
	}
}

func TestStaysObserveAllocatesNothing(t *testing.T) {
	var h Stays
	if n := testing.AllocsPerRun(100, func() { h.Observe(Established, 3*time.Second) }); n != 0 {
		t.Errorf("Observe allocates %v times, want 0", n)
	}
}

// TestPollerStaysInSnapshot: the stays the trackers complete reach the
// published snapshot, and the configured hook still sees them.
func TestPollerStaysInSnapshot(t *testing.T) {
	var hooked int
	clock := &fakeClock{now: time.Unix(1_700_000_000, 0)}
	syn := netlinkdiag.Socket{Family: syscall.AF_INET, State: netlinkdiag.StateSynSent, Cookie: 1}
	d := &fakeDumper{clock: clock, steps: []step{
		{took: 2 * time.Second},
		{socks: []netlinkdiag.Socket{syn}, took: 2 * time.Second},
		{socks: []netlinkdiag.Socket{est(1)}},
	}}
	p := NewPoller(d, Config{Now: clock.Now, MaxTracked: 10, ObserveStay: func(State, time.Duration) { hooked++ }})
	for range 3 {
		if err := p.Poll(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	s := p.Snapshot()
	if s.Stays.Count[SynSend] != 1 || hooked != 1 {
		t.Fatalf("SYN_SEND stays in snapshot %d, hooked %d; want 1 and 1", s.Stays.Count[SynSend], hooked)
	}
	if got, _ := s.Stays.Quantile(SynSend, 0.5); got < 1800*time.Millisecond || got > 2200*time.Millisecond {
		t.Errorf("median SYN_SEND stay %v, want about 2s", got)
	}
}
