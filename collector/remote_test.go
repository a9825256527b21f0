package collector

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// settingsDumper replays socks and answers PortSettings with ps, or err.
type settingsDumper struct {
	replayDumper
	ps  netlinkdiag.PortSettings
	err error
}

func (d *settingsDumper) PortSettings() (netlinkdiag.PortSettings, error) { return d.ps, d.err }

func clientSock(cookie uint64, st uint8, src, dst string) netlinkdiag.Socket {
	s := netlinkdiag.Socket{Family: unix.AF_INET, Cookie: cookie, State: st,
		Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)}
	if s.Src.Addr().Is6() {
		s.Family = unix.AF_INET6
	}
	if st == netlinkdiag.StateTimeWait {
		s.Timer, s.Expires = netlinkdiag.TimerTimeWait, 30_000 // 30s in
	}
	return s
}

// remoteDump: a service on 8080 with clients, and a client side toward
// a loopback upstream (A), a remote one (B) and a third (C), some of it
// from a second local address, and a listener that comes after sockets
// on its port.
func remoteDump() []netlinkdiag.Socket {
	var socks []netlinkdiag.Socket
	c := uint64(1)
	add := func(n int, st uint8, src func(i int) string, dst string) {
		for i := range n {
			socks = append(socks, clientSock(c, st, src(i), dst))
			c++
		}
	}
	at := func(addr string, base int) func(int) string {
		return func(i int) string { return netip.AddrPortFrom(netip.MustParseAddr(addr), uint16(base+i)).String() }
	}
	add(1, netlinkdiag.StateListen, at("0.0.0.0", 8080), "0.0.0.0:0")
	add(3, netlinkdiag.StateEstablished, func(int) string { return "10.0.0.9:8080" }, "10.0.0.1:50000")
	// A: 127.0.0.1:7001, 6 TIME_WAIT and 2 ESTABLISHED from 127.0.0.1, 1 ESTABLISHED from 127.0.0.2.
	add(6, netlinkdiag.StateTimeWait, at("127.0.0.1", 40000), "127.0.0.1:7001")
	add(2, netlinkdiag.StateEstablished, at("127.0.0.1", 40100), "127.0.0.1:7001")
	add(1, netlinkdiag.StateEstablished, at("127.0.0.2", 40200), "127.0.0.1:7001")
	// B: [2001:db8::1]:443, 3 TIME_WAIT, 1 SYN_SEND, 1 CLOSE_WAIT; one more
	// through an IPv4-mapped socket to 10.0.0.2:443 counts under 10.0.0.2.
	add(3, netlinkdiag.StateTimeWait, at("2001:db8::2", 41000), "[2001:db8::1]:443")
	add(1, netlinkdiag.StateSynSent, at("2001:db8::2", 41100), "[2001:db8::1]:443")
	add(1, netlinkdiag.StateCloseWait, at("2001:db8::2", 41200), "[2001:db8::1]:443")
	add(1, netlinkdiag.StateEstablished, at("::ffff:10.0.0.3", 41300), "[::ffff:10.0.0.2]:443")
	// A server socket on 9090, dumped before its listener.
	add(2, netlinkdiag.StateEstablished, func(int) string { return "10.0.0.9:9090" }, "10.0.0.1:50001")
	add(1, netlinkdiag.StateListen, at("0.0.0.0", 9090), "0.0.0.0:0")
	return socks
}

func counts(pairs ...any) [NumStates]int {
	var a [NumStates]int
	for i := 0; i < len(pairs); i += 2 {
		a[pairs[i].(State)] = pairs[i+1].(int)
	}
	return a
}

func TestRemoteBreakdown(t *testing.T) {
	a := netip.MustParseAddrPort("127.0.0.1:7001")
	b := netip.MustParseAddrPort("[2001:db8::1]:443")
	c := netip.MustParseAddrPort("10.0.0.2:443")
	for _, tc := range []struct {
		name  string
		ps    netlinkdiag.PortSettings
		err   error
		top   int
		want  RemoteBreakdown
		ratio []float64 // of the named rows, in order; -1 for none
	}{{
		name: "reuse loopback",
		ps:   netlinkdiag.PortSettings{Low: 40000, High: 40999, TWReuse: 2, TWReuseDelay: time.Second, Timestamps: true},
		top:  5,
		want: RemoteBreakdown{Rows: []RemoteCount{
			{Remote: a, Sockets: counts(Established, 3, TimeWait, 6), Ports: 2, Range: 1000},
			{Remote: b, Sockets: counts(SynSend, 1, TimeWait, 3, CloseWait, 1), Ports: 5, Range: 1000},
			{Remote: c, Sockets: counts(Established, 1), Ports: 1, Range: 1000},
		}},
		ratio: []float64{0.002, 0.005, 0.001},
	}, {
		name: "no reuse, folded",
		ps:   netlinkdiag.PortSettings{Low: 40000, High: 40999, Reserved: 500, TWReuse: 0, TWReuseDelay: time.Second, Timestamps: true},
		top:  1,
		want: RemoteBreakdown{Rows: []RemoteCount{
			{Remote: a, Sockets: counts(Established, 3, TimeWait, 6), Ports: 8, Range: 500},
			{Other: true, Sockets: counts(SynSend, 1, Established, 1, TimeWait, 3, CloseWait, 1)},
		}, Folded: 2},
		ratio: []float64{0.016, -1},
	}, {
		name: "reuse for all, no timestamps",
		ps:   netlinkdiag.PortSettings{Low: 40000, High: 40999, TWReuse: 1, TWReuseDelay: time.Second},
		top:  2,
		want: RemoteBreakdown{Rows: []RemoteCount{
			{Remote: a, Sockets: counts(Established, 3, TimeWait, 6), Ports: 8, Range: 1000},
			{Remote: b, Sockets: counts(SynSend, 1, TimeWait, 3, CloseWait, 1), Ports: 5, Range: 1000},
			{Other: true, Sockets: counts(Established, 1)},
		}, Folded: 1},
		ratio: []float64{0.008, 0.005, -1},
	}, {
		name: "reuse for all",
		ps:   netlinkdiag.PortSettings{Low: 40000, High: 40999, TWReuse: 1, TWReuseDelay: time.Second, Timestamps: true},
		top:  2,
		want: RemoteBreakdown{Rows: []RemoteCount{
			{Remote: a, Sockets: counts(Established, 3, TimeWait, 6), Ports: 2, Range: 1000},
			{Remote: b, Sockets: counts(SynSend, 1, TimeWait, 3, CloseWait, 1), Ports: 2, Range: 1000},
			{Other: true, Sockets: counts(Established, 1)},
		}, Folded: 1},
		ratio: []float64{0.002, 0.002, -1},
	}, {
		name: "settings unreadable",
		err:  errors.New("no /proc"),
		top:  5,
		want: RemoteBreakdown{Rows: []RemoteCount{
			{Remote: a, Sockets: counts(Established, 3, TimeWait, 6), Ports: 8},
			{Remote: b, Sockets: counts(SynSend, 1, TimeWait, 3, CloseWait, 1), Ports: 5},
			{Remote: c, Sockets: counts(Established, 1), Ports: 1},
		}},
		ratio: []float64{-1, -1, -1},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			d := &settingsDumper{replayDumper{remoteDump()}, tc.ps, tc.err}
			p := NewPoller(d, Config{MaxTracked: 100, PortTop: 5, RemoteTop: tc.top})
			for range 2 { // the second dump reuses the first's tallies
				if err := p.Poll(context.Background()); err != nil {
					t.Fatal(err)
				}
			}
			s := p.Snapshot()
			if d := cmp.Diff(tc.want, s.Remotes, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b })); d != "" {
				t.Fatalf("(-want +got)\n%s", d)
			}
			var sum [NumStates]int
			for _, r := range s.Remotes.Rows {
				for st, n := range r.Sockets {
					sum[st] += n
				}
			}
			for _, r := range s.Ports.Rows {
				if r.Kind == PortNone && r.Sockets != sum {
					t.Errorf("remote rows sum to %v, the port breakdown's none to %v", sum, r.Sockets)
				}
			}
			for i, r := range s.Remotes.Rows {
				got, ok := r.Usage()
				if !ok {
					got = -1
				}
				if got != tc.ratio[i] {
					t.Errorf("row %d (%v): usage %v, want %v", i, r.Remote, got, tc.ratio[i])
				}
			}
		})
	}
}

func TestPortHeld(t *testing.T) {
	lo, other := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.1")
	mappedLo := netip.MustParseAddr("::ffff:127.0.0.5")
	reuse := func(n int) *netlinkdiag.PortSettings {
		return &netlinkdiag.PortSettings{TWReuse: n, TWReuseDelay: time.Second, Timestamps: true}
	}
	old, fresh := 30*time.Second, 59500*time.Millisecond
	for _, tc := range []struct {
		name        string
		st          State
		local, peer netip.Addr
		tw          time.Duration
		ps          *netlinkdiag.PortSettings
		want        bool
	}{
		{"established", Established, lo, lo, 0, reuse(1), true},
		{"syn_rcvd", SynRcvd, lo, lo, 0, nil, false},
		{"closed", Closed, lo, lo, 0, nil, false},
		{"tw unknown settings", TimeWait, lo, lo, old, nil, true},
		{"tw reuse 0", TimeWait, lo, lo, old, reuse(0), true},
		{"tw reuse 2 loopback", TimeWait, other, lo, old, reuse(2), false},
		{"tw reuse 2 mapped loopback", TimeWait, mappedLo, other, old, reuse(2), false},
		{"tw reuse 2 not loopback", TimeWait, other, other, old, reuse(2), true},
		{"tw reuse 1", TimeWait, other, other, old, reuse(1), false},
		{"tw reuse 1 too fresh", TimeWait, other, other, fresh, reuse(1), true},
		{"tw reuse 1 no timestamps", TimeWait, other, other, old, &netlinkdiag.PortSettings{TWReuse: 1}, true},
	} {
		if got := PortHeld(tc.st, tc.local, tc.peer, tc.tw, tc.ps); got != tc.want {
			t.Errorf("%s: PortHeld = %v, want %v", tc.name, got, tc.want)
		}
	}
}
