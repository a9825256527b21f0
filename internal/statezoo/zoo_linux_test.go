package statezoo

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// ssStates maps the state names ss prints to the documented ones.
var ssStates = map[string]string{
	"UNCONN":     closed,
	"LISTEN":     listen,
	"SYN-RECV":   synRcvd,
	"SYN-SENT":   synSend,
	"ESTAB":      established,
	"FIN-WAIT-1": finWait1,
	"FIN-WAIT-2": finWait2,
	"TIME-WAIT":  timeWait,
	"CLOSING":    closing,
	"CLOSE-WAIT": closeWait,
	"LAST-ACK":   lastAck,
}

// parseSS counts the sockets in `ss -tanH` output per family and
// documented state. Every documented state is present for both families.
func parseSS(out string) (map[string]map[string]int, error) {
	counts := map[string]map[string]int{"ipv4": {}, "ipv6": {}}
	for _, m := range counts {
		for _, s := range documented {
			m[s] = 0
		}
	}
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) < 5 {
			return nil, fmt.Errorf("short ss line %q", line)
		}
		state, ok := ssStates[f[0]]
		if !ok {
			return nil, fmt.Errorf("unknown ss state %q in line %q", f[0], line)
		}
		fam := "ipv4"
		if strings.HasPrefix(f[3], "[") {
			fam = "ipv6"
		}
		counts[fam][state]++
	}
	return counts, nil
}

func TestParseSS(t *testing.T) {
	out := `LISTEN     0      1          127.0.0.1:40001      0.0.0.0:*
ESTAB      0      0          127.0.0.1:40001    127.0.0.1:50000
SYN-SENT   0      1              [::1]:50002        [::1]:40002
TIME-WAIT  0      0              [::1]:50003        [::1]:40003
TIME-WAIT  0      0              [::1]:50004        [::1]:40003
`
	got, err := parseSS(out)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]map[string]int{"ipv4": {}, "ipv6": {}}
	for _, m := range want {
		for _, s := range documented {
			m[s] = 0
		}
	}
	want["ipv4"][listen] = 1
	want["ipv4"][established] = 1
	want["ipv6"][synSend] = 1
	want["ipv6"][timeWait] = 2
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("(-want +got)\n%s", d)
	}
	for _, bad := range []string{"ESTAB 0 0 127.0.0.1:1\n", "NEW-STATE 0 0 127.0.0.1:1 127.0.0.1:2\n"} {
		if _, err := parseSS(bad); err == nil {
			t.Errorf("parseSS(%q): no error", bad)
		}
	}
}

// totals is what Build's documentation promises per family for PerState n.
func totals(n int) map[string]int {
	return map[string]int{
		closed:      n,
		listen:      n + 8,
		synRcvd:     n,
		synSend:     n,
		established: 4*n + 2,
		finWait1:    n,
		finWait2:    3 * n,
		timeWait:    n,
		closing:     n,
		closeWait:   n,
		lastAck:     n,
	}
}

// TestIntegrationZooMatchesSS checks Expected against what ss sees in the
// namespace.
//
// The CLOSED recipe's sockets are bound but inactive. The kernel (since
// 6.8, commit 91051f003948) dumps those, reported as state CLOSE, only when
// the request's state mask has the TCP_BOUND_INACTIVE pseudo-state (bit 13).
// ss from iproute2 6.1, as on the test machines, never sets that bit: not
// with "state all" (bits 0-12), -a or "state closed", so it shows no CLOSED
// sockets at all. Newer ss knows "state bound-inactive" and prints them as
// UNCONN. So CLOSED is counted with that filter when this ss accepts it,
// and must be absent otherwise.
func TestIntegrationZooMatchesSS(t *testing.T) {
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("PerState=%d", n), func(t *testing.T) {
			name, path := netnstest.New(t)
			start := time.Now()
			z, err := Build(path, Options{Families: []int{unix.AF_INET, unix.AF_INET6}, PerState: n})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("Build took %v", time.Since(start))
			t.Cleanup(func() {
				if err := z.Close(); err != nil {
					t.Error(err)
				}
			})

			want := z.Expected()
			if d := cmp.Diff(map[string]map[string]int{"ipv4": totals(n), "ipv6": totals(n)}, want); d != "" {
				t.Errorf("Expected() differs from the documented totals (-want +got)\n%s", d)
			}

			got := ss(t, name, "state", "all")
			bound, ok := ssBoundInactive(t, name)
			if ok {
				for fam := range got {
					got[fam][closed] = bound[fam][closed]
				}
			} else {
				for fam := range want {
					want[fam][closed] = 0
				}
			}
			if d := cmp.Diff(want, got); d != "" {
				t.Fatalf("ss disagrees with Expected() (-want +got)\n%s", d)
			}
		})
	}
}

func TestIntegrationBuildDefaults(t *testing.T) {
	_, path := netnstest.New(t)
	z, err := Build(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	want := map[string]map[string]int{"ipv4": totals(1), "ipv6": totals(1)}
	got := z.Expected()
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("(-want +got)\n%s", d)
	}
	for fam, m := range got {
		for _, s := range documented {
			if m[s] < 1 {
				t.Errorf("%s %s: %d sockets, want at least 1", fam, s, m[s])
			}
		}
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if err := z.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestIntegrationBuildOneFamily(t *testing.T) {
	name, path := netnstest.New(t)
	z, err := Build(path, Options{Families: []int{unix.AF_INET6}})
	if err != nil {
		t.Fatal(err)
	}
	defer z.Close()
	if _, ok := z.Expected()["ipv4"]; ok {
		t.Errorf("Expected() has ipv4 though only AF_INET6 was built")
	}
	got := ss(t, name, "state", "all")
	for s, c := range got["ipv4"] {
		if c != 0 {
			t.Errorf("ss shows %d ipv4 %s sockets in an ipv6-only zoo", c, s)
		}
	}
}

func TestBuildRejectsBadOptions(t *testing.T) {
	for _, opts := range []Options{
		{PerState: -1},
		{Families: []int{unix.AF_UNIX}},
		{Families: []int{unix.AF_INET, unix.AF_INET}},
	} {
		// The options must be refused before the namespace is opened.
		z, err := Build("/nonexistent", opts)
		if err == nil {
			z.Close()
			t.Fatalf("Build(%+v): no error", opts)
		}
		if strings.Contains(err.Error(), "/nonexistent") {
			t.Errorf("Build(%+v) = %v, want the options refused", opts, err)
		}
	}
}

func TestIntegrationHelpers(t *testing.T) {
	_, path := netnstest.New(t)
	for _, af := range []int{unix.AF_INET, unix.AF_INET6} {
		var lfd, c, s int
		err := netlinkdiag.Do(path, func() error {
			var port uint16
			var err error
			if lfd, port, err = Listen(af, 1); err != nil {
				return err
			}
			if c, err = Connect(af, port); err != nil {
				return err
			}
			s, err = Accept(lfd)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		z := &Zoo{socks: []sock{
			{fd: lfd, want: tcpListen, what: "listener"},
			{fd: c, want: tcpFinWait2, what: "client"},
			{fd: s, want: tcpCloseWait, what: "server"},
		}}
		t.Cleanup(func() { z.Close() })
		if err := HalfClose(c); err != nil {
			t.Fatal(err)
		}
		if err := z.settle(time.Now().Add(settleTimeout)); err != nil {
			t.Errorf("family %d: %v", af, err)
		}
	}
}

// ss runs `ss -tanH <filter...>` in the named namespace and counts what it
// shows.
func ss(t *testing.T, ns string, filter ...string) map[string]map[string]int {
	t.Helper()
	out, err := runSS(ns, filter...)
	if err != nil {
		t.Fatal(err)
	}
	counts, err := parseSS(out)
	if err != nil {
		t.Fatalf("%v in output:\n%s", err, out)
	}
	return counts
}

// ssBoundInactive counts bound-inactive sockets as CLOSED, if this ss
// knows the state.
func ssBoundInactive(t *testing.T, ns string) (map[string]map[string]int, bool) {
	t.Helper()
	out, err := runSS(ns, "state", "bound-inactive")
	if err != nil {
		t.Logf("this ss cannot list bound-inactive sockets: %v", err)
		return nil, false
	}
	counts, err := parseSS(out)
	if err != nil {
		t.Fatalf("%v in output:\n%s", err, out)
	}
	return counts, true
}

func runSS(ns string, filter ...string) (string, error) {
	argv := netnstest.Exec(ns, append([]string{"ss", "-tanH"}, filter...)...)
	cmd := exec.Command(argv[0], argv[1:]...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}
