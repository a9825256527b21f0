package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// upstream is a listener the test's clients connect to: tw connections
// closed client-first (the client's end left in TIME_WAIT), est held
// open.
type upstream struct {
	addr    string
	tw, est int
}

// The upstreams of every case, busiest first: two on IPv4 loopback
// addresses, one on an address that is not loopback (10.99.0.1, on lo),
// and one on IPv6 loopback.
var upstreams = []upstream{
	{"127.0.0.1:7001", 30, 5},
	{"127.0.0.2:7002", 12, 3},
	{"10.99.0.1:7004", 10, 1},
	{"[::1]:7003", 6, 2},
}

// buildRemotes sets the namespace's local port range to 40000-40999 and
// tcp_tw_reuse to reuse, and makes the upstreams' connections. Everything
// goes with the test.
func buildRemotes(t *testing.T, name, path, reuse string) {
	t.Helper()
	if out, err := exec.Command("ip", "-n", name, "addr", "add", "10.99.0.1/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("add 10.99.0.1 to lo: %v: %s", err, out)
	}
	var (
		mu   sync.Mutex
		open []io.Closer
		wg   sync.WaitGroup
	)
	keep := func(c io.Closer) {
		mu.Lock()
		open = append(open, c)
		mu.Unlock()
	}
	t.Cleanup(func() {
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	serve := func(l net.Listener) {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			keep(c)
			wg.Add(1)
			go func() {
				defer wg.Done()
				io.Copy(io.Discard, c) // until the client closes
				c.Close()
			}()
		}
	}
	err := netlinkdiag.Do(path, func() error {
		for file, v := range map[string]string{"ip_local_port_range": "40000 40999", "tcp_tw_reuse": reuse} {
			if err := os.WriteFile("/proc/sys/net/ipv4/"+file, []byte(v), 0o644); err != nil {
				return err
			}
		}
		for _, u := range upstreams {
			l, err := net.Listen("tcp", u.addr)
			if err != nil {
				return err
			}
			keep(l)
			wg.Add(1)
			go serve(l)
			for i := range u.tw + u.est {
				c, err := net.Dial("tcp", u.addr)
				if err != nil {
					return err
				}
				if i < u.tw {
					c.Close()
				} else {
					keep(c)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// remoteSockets maps "remote state" to the value of each series of
// tcpstate_remote_sockets.
func remoteSockets(m exportertest.Metrics) map[string]float64 {
	out := map[string]float64{}
	for _, st := range stateNames {
		for remote, v := range series(m, "tcpstate_remote_sockets", "remote", "state="+st) {
			out[remote+" "+st] = v
		}
	}
	return out
}

func TestIntegrationRemote(t *testing.T) {
	all := map[string]float64{
		"127.0.0.1:7001 TIME_WAIT": 30, "127.0.0.1:7001 ESTABLISHED": 5,
		"127.0.0.2:7002 TIME_WAIT": 12, "127.0.0.2:7002 ESTABLISHED": 3,
		"10.99.0.1:7004 TIME_WAIT": 10, "10.99.0.1:7004 ESTABLISHED": 1,
		"[::1]:7003 TIME_WAIT": 6, "[::1]:7003 ESTABLISHED": 2,
	}
	for _, tc := range []struct {
		name, reuse string
		mode        []string // the default: poll mode, every 200ms
		top         int
		sockets     map[string]float64
		ratios      map[string]float64
		truncated   float64
	}{{
		// No reuse: every TIME_WAIT socket holds its port.
		name: "reuse=0", reuse: "0", top: 20,
		sockets: all,
		ratios:  map[string]float64{"127.0.0.1:7001": 0.035, "127.0.0.2:7002": 0.015, "10.99.0.1:7004": 0.011, "[::1]:7003": 0.008},
	}, {
		// The default: loopback connections reuse TIME_WAIT ports, the
		// one to 10.99.0.1 does not; the IPv6 upstream folds into other.
		name: "reuse=2", reuse: "2", top: 3,
		sockets: map[string]float64{
			"127.0.0.1:7001 TIME_WAIT": 30, "127.0.0.1:7001 ESTABLISHED": 5,
			"127.0.0.2:7002 TIME_WAIT": 12, "127.0.0.2:7002 ESTABLISHED": 3,
			"10.99.0.1:7004 TIME_WAIT": 10, "10.99.0.1:7004 ESTABLISHED": 1,
			"other TIME_WAIT": 6, "other ESTABLISHED": 2,
		},
		ratios:    map[string]float64{"127.0.0.1:7001": 0.005, "127.0.0.2:7002": 0.003, "10.99.0.1:7004": 0.011},
		truncated: 1,
	}, {
		// Reuse for every connection.
		name: "reuse=1", reuse: "1", top: 20,
		sockets: all,
		ratios:  map[string]float64{"127.0.0.1:7001": 0.005, "127.0.0.2:7002": 0.003, "10.99.0.1:7004": 0.001, "[::1]:7003": 0.002},
	}, {
		// Precise mode: the breakdown comes from the reconciling dumps.
		name: "precise, reuse=2", reuse: "2", top: 20,
		mode:    []string{"--mode=precise", "--precise.dump-interval=1s"},
		sockets: all,
		ratios:  map[string]float64{"127.0.0.1:7001": 0.005, "127.0.0.2:7002": 0.003, "10.99.0.1:7004": 0.011, "[::1]:7003": 0.002},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			name, path := netnstest.New(t)
			buildRemotes(t, name, path, tc.reuse)
			mode := tc.mode
			if mode == nil {
				mode = []string{"--mode=poll", "--poll.interval=200ms"}
			}
			p := exportertest.Start(t, append(mode, "--netns="+name, fmt.Sprintf("--remote.top=%d", tc.top))...)
			// TIME_WAIT sockets become reusable a second
			// (tcp_tw_reuse_delay) after they entered it.
			m, ok := eventually(t, p.URL+"/metrics", 10*time.Second, func(m exportertest.Metrics) bool {
				return cmp.Equal(tc.sockets, remoteSockets(m)) && cmp.Equal(tc.ratios, series(m, "tcpstate_remote_port_usage_ratio", "remote"))
			})
			if !ok {
				t.Errorf("tcpstate_remote_sockets (-want +got)\n%s", cmp.Diff(tc.sockets, remoteSockets(m)))
				t.Fatalf("tcpstate_remote_port_usage_ratio (-want +got)\n%s", cmp.Diff(tc.ratios, series(m, "tcpstate_remote_port_usage_ratio", "remote")))
			}
			if v := m.Value("tcpstate_breakdown_truncated_values", "breakdown=remote"); v != tc.truncated {
				t.Errorf("tcpstate_breakdown_truncated_values{breakdown=\"remote\"} = %v, want %v", v, tc.truncated)
			}
			// The remote breakdown is the port breakdown's "none", split.
			for _, st := range stateNames {
				var sum float64
				for _, v := range series(m, "tcpstate_remote_sockets", "remote", "state="+st) {
					sum += v
				}
				if none := max(m.Value("tcpstate_port_sockets", "port=none", "state="+st), 0); sum != none {
					t.Errorf("%s: remote breakdown sums to %v, port=\"none\" to %v", st, sum, none)
				}
			}
		})
	}
}
