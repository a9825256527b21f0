package main

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/exporter"
	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
)

// TestIntegrationStatesPageAndAPI: the exporter serves the page and the
// JSON API of the namespace it watches, and a viewer of the live events
// does not hold up its shutdown.
func TestIntegrationStatesPageAndAPI(t *testing.T) {
	name, path := netnstest.New(t)
	holdCloseWait(t, path, 4)
	p := exportertest.Start(t, "--netns="+name, "--mode=poll", "--poll.interval=100ms")
	if _, ok := eventually(t, p.URL+"/metrics", 10*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_sockets", "family=ipv4", "state=CLOSE_WAIT") == 2
	}); !ok {
		t.Fatal("the exporter never saw the CLOSE_WAIT sockets")
	}
	var snap exporter.APISnapshot
	if err := json.Unmarshal(exportertest.Fetch(t, p.URL+"/api/v1/snapshot"), &snap); err != nil {
		t.Fatal(err)
	}
	if snap.Mode != "poll" || snap.PollIntervalSeconds != 0.1 || len(snap.States) != 11 {
		t.Fatalf("snapshot: mode %q, interval %v, %d states", snap.Mode, snap.PollIntervalSeconds, len(snap.States))
	}
	if cw := snap.States[9]; cw.State != "CLOSE_WAIT" || cw.Sockets.IPv4 != 2 || cw.Sockets.IPv6 != 2 {
		t.Errorf("CLOSE_WAIT in the API: %+v, want 2 IPv4 and 2 IPv6", cw)
	}
	if page := string(exportertest.Fetch(t, p.URL+"/states")); !strings.Contains(page, `id="state-CLOSE_WAIT" data-state="CLOSE_WAIT" data-ipv4="2" data-ipv6="2"`) {
		t.Errorf("/states does not show the CLOSE_WAIT sockets")
	}

	resp, err := http.Get(p.URL + "/api/v1/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "event: snapshot\n" {
		t.Fatalf("first line of the event stream: %q, %v", line, err)
	}
	start := time.Now()
	if err := p.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if exited, err := p.Wait(2 * time.Second); !exited || err != nil {
		t.Fatalf("with a live viewer, SIGTERM: exited %v (%v) after %v", exited, err, time.Since(start))
	}
}
