package main

import (
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/loadtest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
)

// TestIntegrationSIGTERMDuringPoll stops the exporter while it is dumping a
// socket table big enough that it is nearly always mid-poll: it must exit
// with status 0 within a second each time.
func TestIntegrationSIGTERMDuringPoll(t *testing.T) {
	name, path := netnstest.New(t)
	pop, err := loadtest.NewPopulation(path, 4000)
	if err != nil {
		t.Fatal(err)
	}
	defer pop.Close()
	for i := range 4 {
		p := exportertest.Start(t, "--netns="+name, "--mode=poll", "--poll.interval=10ms")
		m, ok := eventually(t, p.URL+"/metrics", 10*time.Second, func(m exportertest.Metrics) bool {
			return m.Value("tcpstate_polls_total") >= 5
		})
		if !ok {
			t.Fatalf("no 5 polls: %v", m.Value("tcpstate_polls_total"))
		}
		if got := m.Value("tcpstate_tracked_sockets"); got != float64(pop.Sockets()) {
			t.Fatalf("tracked %v sockets, want the population's %d", got, pop.Sockets())
		}
		// With polls longer than the interval the exporter is always
		// mid-poll; on a machine fast enough that they are not, most
		// signals still land in one.
		n, sum, _ := m.Histogram("tcpstate_poll_duration_seconds")
		t.Logf("run %d: %d polls of %d sockets, %.1f ms each on average, %v overran the 10ms interval", i, n, pop.Sockets(),
			sum/float64(n)*1000, m.Value("tcpstate_poll_overruns_total"))
		time.Sleep(time.Duration(i) * 3 * time.Millisecond) // vary where in a poll the signal lands
		start := time.Now()
		if err := p.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		exited, err := p.Wait(time.Second)
		took := time.Since(start)
		if !exited {
			t.Fatalf("run %d: still running 1 s after SIGTERM\n%s", i, p.Log())
		}
		if err != nil {
			t.Fatalf("run %d: exit after SIGTERM: %v\n%s", i, err, p.Log())
		}
		t.Logf("run %d: exited %v after SIGTERM", i, took)
		if log := p.Log(); !strings.Contains(log, "shutting down") {
			t.Errorf("run %d: no shutdown logged:\n%s", i, log)
		}
	}
}
