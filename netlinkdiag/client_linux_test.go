//go:build linux

package netlinkdiag

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
)

// fdInfo is what the test knows about one socket it opened.
type fdInfo struct {
	name   string
	src    netip.AddrPort
	dst    netip.AddrPort
	state  uint8
	inode  uint64
	cookie uint64
	mptcp  bool // an MPTCP socket: the dump shows its TCP subflow
}

func describeFD(t testing.TB, name string, fd int, state uint8) fdInfo {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatalf("fstat %s: %v", name, err)
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		t.Fatalf("SO_COOKIE %s: %v", name, err)
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		t.Fatalf("SO_PROTOCOL %s: %v", name, err)
	}
	info := fdInfo{name: name, state: state, inode: st.Ino, cookie: cookie, mptcp: proto == unix.IPPROTO_MPTCP}
	if sa, err := unix.Getsockname(fd); err == nil {
		info.src = addrPort(sa)
	}
	if sa, err := unix.Getpeername(fd); err == nil {
		info.dst = addrPort(sa)
	} else {
		info.dst = netip.AddrPortFrom(info.unspecified(), 0)
	}
	return info
}

func (f fdInfo) unspecified() netip.Addr {
	if f.src.Addr().Is4() {
		return netip.IPv4Unspecified()
	}
	return netip.IPv6Unspecified()
}

func addrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

func connFD(t testing.TB, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(u uintptr) { fd = int(u) })
	return fd
}

// world is a namespace with one socket in each state the test can make.
type world struct {
	name, path string
	fds        []fdInfo // sockets with a file descriptor
	twSrc      netip.AddrPort
	twDst      netip.AddrPort // the TIME_WAIT socket, which has none
	orphanSrc  netip.AddrPort
	orphanDst  netip.AddrPort // a FIN_WAIT_2 socket whose owner closed it
	synRecvDst netip.AddrPort // the client of the deferred connection: the request socket's peer
}

const (
	port4      = 7001
	port6      = 7002
	portDefer  = 7003
	portFull   = 7004
	portUnlist = 7005
)

// newWorld builds, in a fresh namespace: an IPv4 and an IPv6 listener, an
// established pair on each with unread data, a half-closed pair (FIN_WAIT_2
// and CLOSE_WAIT), a TIME_WAIT socket, an orphaned FIN_WAIT_2 socket and its
// CLOSE_WAIT peer, a request socket held in SYN_RECV by
// TCP_DEFER_ACCEPT, a connection stuck in SYN_SENT against a full accept
// queue, and a socket bound but not listening.
func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{}
	w.name, w.path = netnstest.New(t)
	var closers []func() error
	t.Cleanup(func() {
		for _, c := range closers {
			c()
		}
	})
	keep := func(c interface{ Close() error }) { closers = append(closers, c.Close) }
	keepFD := func(fd int) { closers = append(closers, func() error { return unix.Close(fd) }) }

	err := Do(w.path, func() error {
		ln4, err := net.Listen("tcp4", fmt.Sprintf("127.0.0.1:%d", port4))
		if err != nil {
			return err
		}
		keep(ln4)
		ln6, err := net.Listen("tcp6", fmt.Sprintf("[::1]:%d", port6))
		if err != nil {
			return err
		}
		keep(ln6)
		w.fds = append(w.fds,
			describeFD(t, "listen4", connFD(t, ln4.(*net.TCPListener)), StateListen),
			describeFD(t, "listen6", connFD(t, ln6.(*net.TCPListener)), StateListen))

		pair := func(ln net.Listener) (client, server *net.TCPConn, err error) {
			c, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
			if err != nil {
				return nil, nil, err
			}
			keep(c)
			s, err := ln.Accept()
			if err != nil {
				return nil, nil, err
			}
			keep(s)
			return c.(*net.TCPConn), s.(*net.TCPConn), nil
		}
		for i, ln := range []net.Listener{ln4, ln6} {
			c, s, err := pair(ln)
			if err != nil {
				return err
			}
			if _, err := c.Write([]byte("hello")); err != nil {
				return err
			}
			w.fds = append(w.fds,
				describeFD(t, fmt.Sprintf("client%d", i), connFD(t, c), StateEstablished),
				describeFD(t, fmt.Sprintf("server%d", i), connFD(t, s), StateEstablished))
		}

		// Half close: the client's FIN is acknowledged but not answered.
		c, s, err := pair(ln4)
		if err != nil {
			return err
		}
		if err := c.CloseWrite(); err != nil {
			return err
		}
		w.fds = append(w.fds,
			describeFD(t, "fin-wait-2", connFD(t, c), StateFinWait2),
			describeFD(t, "close-wait", connFD(t, s), StateCloseWait))

		// TIME_WAIT: the client closes first.
		c, s, err = pair(ln6)
		if err != nil {
			return err
		}
		w.twSrc, w.twDst = netip.MustParseAddrPort(c.LocalAddr().String()), netip.MustParseAddrPort(c.RemoteAddr().String())
		c.Close()
		s.Close()

		// Orphaned FIN_WAIT_2: the client closes, the server does not.
		c, s, err = pair(ln4)
		if err != nil {
			return err
		}
		w.orphanSrc, w.orphanDst = netip.MustParseAddrPort(c.LocalAddr().String()), netip.MustParseAddrPort(c.RemoteAddr().String())
		c.Close()
		w.fds = append(w.fds, describeFD(t, "close-wait-orphan-peer", connFD(t, s), StateCloseWait))

		// SYN_RECV: with TCP_DEFER_ACCEPT the server ignores the bare ACK
		// and keeps the request socket until data arrives.
		lnd, err := rawListen(unix.AF_INET, portDefer, 16)
		if err != nil {
			return err
		}
		keepFD(lnd)
		if err := unix.SetsockoptInt(lnd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, 30); err != nil {
			return err
		}
		w.fds = append(w.fds, describeFD(t, "listen-defer", lnd, StateListen))
		cd, err := rawConnect(unix.AF_INET, portDefer, false)
		if err != nil {
			return err
		}
		keepFD(cd)
		w.fds = append(w.fds, describeFD(t, "client-deferred", cd, StateEstablished))
		w.synRecvDst = w.fds[len(w.fds)-1].src

		// SYN_SENT: a listener with backlog 0 takes one connection into its
		// accept queue and drops the next one's SYNs.
		lnf, err := rawListen(unix.AF_INET, portFull, 0)
		if err != nil {
			return err
		}
		keepFD(lnf)
		w.fds = append(w.fds, describeFD(t, "listen-full", lnf, StateListen))
		cq, err := rawConnect(unix.AF_INET, portFull, false)
		if err != nil {
			return err
		}
		keepFD(cq)
		w.fds = append(w.fds, describeFD(t, "client-queued", cq, StateEstablished))
		cs, err := rawConnect(unix.AF_INET, portFull, true)
		if err != nil {
			return err
		}
		keepFD(cs)
		synSent := describeFD(t, "syn-sent", cs, StateSynSent)
		synSent.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), portFull) // no peer name yet
		w.fds = append(w.fds, synSent)

		// Bound, never listening: reported as CLOSE when asked for
		// bound-inactive sockets.
		bi, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		keepFD(bi)
		if err := unix.Bind(bi, &unix.SockaddrInet6{Port: portUnlist, Addr: netip.IPv6Loopback().As16()}); err != nil {
			return err
		}
		w.fds = append(w.fds, describeFD(t, "bound-inactive", bi, StateClose))
		return nil
	})
	if err != nil {
		t.Fatalf("build sockets: %v", err)
	}
	// Wait for the closing handshakes to settle.
	waitFor(t, w.path, func(socks []Socket) bool {
		tw, fw2 := 0, 0
		for _, s := range socks {
			switch s.State {
			case StateTimeWait:
				tw++
			case StateFinWait2:
				fw2++
			}
		}
		return tw == 1 && fw2 == 2
	})
	return w
}

// rawListen opens a listener on loopback.
func rawListen(family, port, backlog int) (int, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Bind(fd, loopback(family, port)); err != nil {
		unix.Close(fd)
		return -1, err
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// rawConnect connects to a loopback port; without waiting it returns while
// the handshake may still be in progress.
func rawConnect(family, port int, nowait bool) (int, error) {
	flags := unix.SOCK_STREAM | unix.SOCK_CLOEXEC
	if nowait {
		flags |= unix.SOCK_NONBLOCK
	}
	fd, err := unix.Socket(family, flags, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Connect(fd, loopback(family, port)); err != nil && !(nowait && err == unix.EINPROGRESS) {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func loopback(family, port int) unix.Sockaddr {
	if family == unix.AF_INET {
		return &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}
	}
	return &unix.SockaddrInet6{Port: port, Addr: netip.IPv6Loopback().As16()}
}

// waitFor dumps the namespace until ok accepts the dump, for a second at
// most.
func waitFor(t *testing.T, path string, ok func([]Socket) bool) {
	t.Helper()
	c := dialT(t, Options{NetNS: path})
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if ok(dumpAll(t, c, Request{})) {
			return
		}
	}
	t.Fatalf("sockets not in the expected states after a second")
}

func dialT(t testing.TB, opts Options) *Conn {
	t.Helper()
	c, err := Dial(opts)
	if err != nil {
		t.Fatalf("Dial(%+v): %v", opts, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dumpAll returns copies of every socket a dump delivers.
func dumpAll(t testing.TB, c *Conn, req Request) []Socket {
	t.Helper()
	var got []Socket
	err := c.DumpTCP(context.Background(), req, func(s *Socket) error {
		cp := *s
		cp.Attrs = slices.Clone(s.Attrs)
		got = append(got, cp)
		return nil
	})
	if err != nil {
		t.Fatalf("DumpTCP(%+v): %v", req, err)
	}
	return got
}

func find(socks []Socket, src, dst netip.AddrPort) *Socket {
	for i := range socks {
		if socks[i].Src == src && socks[i].Dst == dst {
			return &socks[i]
		}
	}
	return nil
}

// key identifies a dumped socket for set comparisons; request and TIME_WAIT
// sockets have no inode, so the addresses are part of it.
type key struct {
	Family   uint8
	State    uint8
	Src, Dst string
	Inode    uint32
	Cookie   uint64
}

func keys(socks []Socket) []key {
	var ks []key
	for _, s := range socks {
		ks = append(ks, key{s.Family, s.State, s.Src.String(), s.Dst.String(), s.Inode, s.Cookie})
	}
	slices.SortFunc(ks, func(a, b key) int { return strings.Compare(fmt.Sprint(a), fmt.Sprint(b)) })
	return ks
}

func TestIntegrationDumpTCP(t *testing.T) {
	w := newWorld(t)

	// A socket in the caller's namespace, which no dump of w may show.
	own, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	ownFD := describeFD(t, "own", connFD(t, own.(*net.TCPListener)), StateListen)

	c := dialT(t, Options{NetNS: w.name})
	got := dumpAll(t, c, Request{})

	t.Run("one legacy walk returns both families", func(t *testing.T) {
		var n4, n6 int
		for _, s := range got {
			switch s.Family {
			case unix.AF_INET:
				n4++
			case unix.AF_INET6:
				n6++
			}
		}
		if n4 == 0 || n6 == 0 {
			t.Fatalf("%d IPv4 and %d IPv6 sockets, want both", n4, n6)
		}
	})

	t.Run("sockets with descriptors", func(t *testing.T) {
		for _, f := range w.fds {
			s := find(got, f.src, f.dst)
			if s == nil {
				t.Errorf("%s: %v -> %v not in the dump", f.name, f.src, f.dst)
				continue
			}
			want := key{uint8(familyOf(f.src)), f.state, f.src.String(), f.dst.String(), uint32(f.inode), f.cookie}
			if f.mptcp {
				// Go listens with MPTCP where the kernel has it. The
				// dump shows the listener's TCP subflow, which reports
				// the MPTCP socket's inode but has a cookie of its own.
				t.Logf("%s is MPTCP: subflow cookie %d, SO_COOKIE %d", f.name, s.Cookie, f.cookie)
				want.Cookie = s.Cookie
			}
			if d := cmp.Diff(want, keys([]Socket{*s})[0]); d != "" {
				t.Errorf("%s (-want +got)\n%s", f.name, d)
			}
			if s.UID != 0 || s.IfIndex != 0 {
				t.Errorf("%s: uid %d ifindex %d, want 0, 0", f.name, s.UID, s.IfIndex)
			}
			// Full sockets always carry a few attributes, asked for or
			// not; INET_DIAG_SHUTDOWN is one.
			shutdown := -1
			if err := Attributes(s.Attrs, func(typ uint16, data []byte) error {
				if typ == AttrShutdown && len(data) == 1 {
					shutdown = int(data[0])
				}
				return nil
			}); err != nil {
				t.Errorf("%s: attributes: %v", f.name, err)
			}
			wantShutdown := 0
			switch f.state {
			case StateFinWait2:
				wantShutdown = 2 // SEND_SHUTDOWN
			case StateCloseWait:
				wantShutdown = 1 // RCV_SHUTDOWN
			}
			if shutdown != wantShutdown {
				t.Errorf("%s: INET_DIAG_SHUTDOWN %d, want %d (attrs % x)", f.name, shutdown, wantShutdown, s.Attrs)
			}
		}
		srv := find(got, w.fds[3].src, w.fds[3].dst) // server0 holds the client's unread "hello"
		if srv == nil || srv.RQueue != 5 {
			t.Errorf("server0 receive queue: %+v, want 5 bytes", srv)
		}
		if l := find(got, w.fds[0].src, w.fds[0].dst); l == nil || l.WQueue == 0 {
			t.Errorf("listener backlog limit (WQueue) not reported: %+v", l)
		}
	})

	t.Run("TIME_WAIT", func(t *testing.T) {
		s := find(got, w.twSrc, w.twDst)
		if s == nil {
			t.Fatalf("TIME_WAIT socket %v -> %v not in the dump", w.twSrc, w.twDst)
		}
		if s.State != StateTimeWait || s.Timer != TimerTimeWait || s.Inode != 0 || s.Cookie == 0 || s.Expires == 0 {
			t.Errorf("TIME_WAIT socket %+v; want state 6, timer 3, inode 0, a cookie and an expiry", *s)
		}
		t.Logf("TIME_WAIT: %+v", *s)
	})

	t.Run("orphaned FIN_WAIT_2", func(t *testing.T) {
		s := find(got, w.orphanSrc, w.orphanDst)
		if s == nil {
			t.Fatalf("orphaned socket %v -> %v not in the dump", w.orphanSrc, w.orphanDst)
		}
		// The kernel keeps it as a TIME_WAIT mini-socket in FIN_WAIT_2.
		if s.State != StateFinWait2 || s.Timer != TimerTimeWait || s.Inode != 0 {
			t.Errorf("orphaned FIN_WAIT_2 socket %+v; want state 5, timer 3, inode 0", *s)
		}
		t.Logf("orphaned FIN_WAIT_2: %+v", *s)
	})

	t.Run("request socket", func(t *testing.T) {
		var s *Socket
		for i := range got {
			if got[i].Dst == w.synRecvDst {
				s = &got[i]
			}
		}
		if s == nil {
			t.Fatalf("no socket with peer %v", w.synRecvDst)
		}
		if s.State != StateSynRecv || s.Inode != 0 || s.Cookie == 0 {
			t.Errorf("request socket %+v; want state 3 (not 12), inode 0, a cookie", *s)
		}
		t.Logf("request socket: %+v", *s)
	})

	t.Run("not the caller's namespace", func(t *testing.T) {
		for _, s := range got {
			if s.Cookie == ownFD.cookie {
				t.Fatalf("the caller's listener %v shows in the namespace dump", ownFD.src)
			}
		}
		mine := dumpAll(t, dialT(t, Options{}), Request{States: 1 << StateListen})
		if find(mine, ownFD.src, ownFD.dst) == nil {
			t.Errorf("the caller's own dump misses its listener %v", ownFD.src)
		}
		for _, s := range mine {
			if s.Src.Port() == port4 && s.Cookie == w.fds[0].cookie {
				t.Errorf("the caller's dump shows the namespace's listener")
			}
		}
	})

	t.Run("by path equals by name", func(t *testing.T) {
		byPath := dumpAll(t, dialT(t, Options{NetNS: w.path}), Request{})
		if d := cmp.Diff(keys(got), keys(byPath)); d != "" {
			t.Errorf("(-by name +by path)\n%s", d)
		}
	})

	t.Run("per family equals legacy", func(t *testing.T) {
		per := dumpAll(t, c, Request{PerFamily: true})
		if d := cmp.Diff(keys(got), keys(per)); d != "" {
			t.Errorf("(-legacy +per family)\n%s", d)
		}
		// The per-family walk returns AF_INET before AF_INET6.
		seen6 := false
		for _, s := range per {
			seen6 = seen6 || s.Family == unix.AF_INET6
			if seen6 && s.Family == unix.AF_INET {
				t.Fatalf("per-family dump returned AF_INET after AF_INET6")
			}
		}
	})

	t.Run("state mask", func(t *testing.T) {
		for _, req := range []Request{{States: 1 << StateListen}, {States: 1 << StateListen, PerFamily: true}} {
			ls := dumpAll(t, c, req)
			if len(ls) != 4 {
				t.Errorf("%+v: %d sockets, want the 4 listeners", req, len(ls))
			}
			for _, s := range ls {
				if s.State != StateListen {
					t.Errorf("%+v: socket in state %d", req, s.State)
				}
			}
		}
		noBound := dumpAll(t, c, Request{States: AllStates &^ (1 << StateBoundInactive)})
		if len(noBound) != len(got)-1 {
			t.Errorf("without the bound-inactive bit: %d sockets, want %d", len(noBound), len(got)-1)
		}
		for _, s := range noBound {
			if s.State == StateClose {
				t.Errorf("CLOSE socket %v reported without the bound-inactive bit", s.Src)
			}
		}
	})

	t.Run("extensions", func(t *testing.T) {
		for _, per := range []bool{false, true} {
			withInfo := dumpAll(t, c, Request{Extensions: ExtInfo | ExtCong, PerFamily: per})
			s := find(withInfo, w.fds[2].src, w.fds[2].dst)
			if s == nil {
				t.Fatal("client0 missing")
			}
			var info, cong []byte
			if err := Attributes(s.Attrs, func(typ uint16, data []byte) error {
				switch typ {
				case AttrInfo:
					info = data
				case AttrCong:
					cong = data
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			// struct tcp_info starts with tcpi_state.
			if len(info) < 8 || info[0] != StateEstablished || len(cong) == 0 {
				t.Errorf("per family %v: tcp_info % x, congestion %q", per, info, cong)
			}
		}
	})
}

func familyOf(a netip.AddrPort) int {
	if a.Addr().Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// ssNames maps kernel states to the names ss prints.
var ssNames = map[uint8]string{
	StateEstablished: "ESTAB", StateSynSent: "SYN-SENT", StateSynRecv: "SYN-RECV",
	StateFinWait1: "FIN-WAIT-1", StateFinWait2: "FIN-WAIT-2", StateTimeWait: "TIME-WAIT",
	StateClose: "UNCONN", StateCloseWait: "CLOSE-WAIT", StateLastAck: "LAST-ACK",
	StateListen: "LISTEN", StateClosing: "CLOSING",
}

func TestIntegrationMatchesSS(t *testing.T) {
	w := newWorld(t)
	if _, err := exec.LookPath("ss"); err != nil {
		t.Skip("ss not installed")
	}
	got := dumpAll(t, dialT(t, Options{NetNS: w.name}), Request{})
	out, err := exec.Command("ip", "netns", "exec", w.name, "ss", "-tanH").Output()
	if err != nil {
		t.Fatalf("ss: %v", err)
	}
	ss := map[string]int{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) > 0 {
			ss[f[0]]++
		}
	}
	ours := map[string]int{}
	for _, s := range got {
		ours[ssNames[s.State]]++
	}
	// ss only shows bound-inactive sockets if it knows to ask for them
	// (iproute2 6.1 does not); compare CLOSE only when it does.
	if ss["UNCONN"] == 0 && ss["BOUND-INACTIVE"] == 0 {
		t.Logf("ss shows no bound-inactive sockets; leaving out our %d", ours["UNCONN"])
		delete(ours, "UNCONN")
	} else if n, ok := ss["BOUND-INACTIVE"]; ok {
		ss["UNCONN"] += n
		delete(ss, "BOUND-INACTIVE")
	}
	if d := cmp.Diff(ss, ours); d != "" {
		t.Errorf("state counts (-ss +DumpTCP)\n%s\nss output:\n%s", d, out)
	}
	t.Logf("ss -tanH:\n%s", out)
}

func TestIntegrationDialMissingNamespace(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, ns := range []string{"tcpstate-test-no-such-namespace", "/run/netns/tcpstate-test-no-such-namespace", "/proc/999999999/ns/net"} {
		c, err := Dial(Options{NetNS: ns})
		if !errors.Is(err, ErrNamespaceGone) || !errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrUnsupported) {
			t.Errorf("Dial(%q) = %v, %v; want ErrNamespaceGone and os.ErrNotExist", ns, c, err)
			continue
		}
		path, _ := nsPath(ns)
		if !strings.Contains(err.Error(), path) {
			t.Errorf("Dial(%q) error %q does not name %s", ns, err, path)
		}
		ran := false
		err = Do(path, func() error { ran = true; return nil })
		if !errors.Is(err, ErrNamespaceGone) || ran {
			t.Errorf("Do(%q) = %v, ran %v; want ErrNamespaceGone without running", path, err, ran)
		}
	}
}

func TestIntegrationNamespaceVanished(t *testing.T) {
	name, path := netnstest.New(t)
	c := dialT(t, Options{NetNS: name})
	dumpAll(t, c, Request{})
	if err := netnstest.Delete(name); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		err := c.DumpTCP(context.Background(), Request{}, func(*Socket) error { return nil })
		if !errors.Is(err, ErrNamespaceGone) || !errors.Is(err, os.ErrNotExist) || !strings.Contains(err.Error(), path) {
			t.Fatalf("DumpTCP after the namespace was deleted: %v; want ErrNamespaceGone naming %s", err, path)
		}
		if errors.Is(err, ErrUnsupported) {
			t.Fatalf("DumpTCP after the namespace was deleted: %v is ErrUnsupported", err)
		}
	}
}

// TestIntegrationNoHandlerIsUnsupported asks the kernel for a protocol no
// sock_diag handler serves, as a kernel without tcp_diag would see TCP.
func TestIntegrationNoHandlerIsUnsupported(t *testing.T) {
	_, path := netnstest.New(t)
	c := dialT(t, Options{NetNS: path}).c
	if err := c.ensure(); err != nil {
		t.Fatal(err)
	}
	c.seq++
	req := appendRequest(nil, c.seq, afInet, Request{})
	req[nlmsgHdrLen+1] = 253 // IPPROTO for experiments: no inet_diag handler
	if _, err := c.f.Write(req); err != nil {
		t.Fatal(err)
	}
	var err error
	for done := false; !done && err == nil; {
		var n int
		if n, err = c.recv(context.Background()); err != nil {
			t.Fatal(err)
		}
		done, _, err = parse(c.buf[:n], c.seq, c.portID, &c.sock, func(*Socket) error { return nil })
	}
	t.Logf("kernel %s: %v", kernelRelease(t), err)
	if !errors.Is(err, ErrUnsupported) || errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrNamespaceGone) {
		t.Fatalf("dump of a protocol without a handler: %v; want ErrUnsupported only", err)
	}
}

func kernelRelease(t *testing.T) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

func TestErrnoNumbers(t *testing.T) {
	if errnoENOENT != int(unix.ENOENT) || errnoEOPNOTSUPP != int(unix.EOPNOTSUPP) {
		t.Fatalf("ENOENT, EOPNOTSUPP = %d, %d; want %d, %d", errnoENOENT, errnoEOPNOTSUPP, unix.ENOENT, unix.EOPNOTSUPP)
	}
}

// threadNS returns the inode of the calling thread's network namespace.
func threadNS() (uint64, error) {
	var st unix.Stat_t
	err := unix.Stat("/proc/thread-self/ns/net", &st)
	return st.Ino, err
}

// threadCaps returns the calling thread's effective capabilities.
func threadCaps() (uint64, error) {
	var data [2]unix.CapUserData
	err := unix.Capget(&unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}, &data[0])
	return uint64(data[1].Effective)<<32 | uint64(data[0].Effective), err
}

// dropSysAdmin takes CAP_SYS_ADMIN from the calling thread's effective set,
// and so takes from it the right to setns.
func dropSysAdmin() error {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return err
	}
	data[0].Effective &^= 1 << unix.CAP_SYS_ADMIN
	return unix.Capset(&hdr, &data[0])
}

// threadAlive reports whether thread tid of this process still exists.
func threadAlive(tid int) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid))
	return err == nil
}

// caller is what a goroutine calling Do saw of its own thread.
type caller struct {
	tid                   int
	nsBefore, nsAfter     uint64
	capsBefore, capsAfter uint64
	err                   error // from Do
	setup                 error // from looking at the thread
}

// callDo calls Do(path, fn) from a goroutine of its own, locked to its
// thread around the call so that the thread it looks at before and after is
// the one Do was called on, and returns what that goroutine saw once it has
// ended. The caller's thread is never the main thread, which the runtime
// parks rather than ends when a goroutine ends locked to it.
func callDo(path string, fn func() error) caller {
	var c caller
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if unix.Gettid() == unix.Getpid() {
			c = callDo(path, fn) // from another thread, while this goroutine holds the main one
			return
		}
		c.tid = unix.Gettid()
		var err1, err2, err3, err4 error
		c.nsBefore, err1 = threadNS()
		c.capsBefore, err2 = threadCaps()
		c.err = Do(path, fn)
		c.nsAfter, err3 = threadNS()
		c.capsAfter, err4 = threadCaps()
		c.setup = errors.Join(err1, err2, err3, err4)
	}()
	<-done
	return c
}

// checkCaller fails t if Do moved or changed the caller's thread, or left
// the caller's goroutine locked to it: a goroutine that ends locked takes
// its thread with it.
func checkCaller(t *testing.T, c caller) {
	t.Helper()
	if c.setup != nil {
		t.Fatal(c.setup)
	}
	if c.nsAfter != c.nsBefore || c.capsAfter != c.capsBefore {
		t.Errorf("caller's thread left in namespace %d with capabilities %#x; was in %d with %#x", c.nsAfter, c.capsAfter, c.nsBefore, c.capsBefore)
	}
	for range 20 {
		if !threadAlive(c.tid) {
			t.Fatalf("caller's thread %d ended with its goroutine: Do left the goroutine locked", c.tid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestIntegrationDo(t *testing.T) {
	_, path := netnstest.New(t)
	var want unix.Stat_t
	if err := unix.Stat(path, &want); err != nil {
		t.Fatal(err)
	}
	var inside uint64
	c := callDo(path, func() (err error) {
		inside, err = threadNS()
		return err
	})
	if c.err != nil {
		t.Fatal(c.err)
	}
	if inside != want.Ino || inside == c.nsBefore {
		t.Errorf("fn ran in namespace %d; want %s (%d), not the caller's %d", inside, path, want.Ino, c.nsBefore)
	}
	checkCaller(t, c)

	stop := errors.New("stop")
	if c := callDo(path, func() error { return stop }); c.err != stop {
		t.Errorf("Do = %v, want fn's error", c.err)
	}
}

// TestIntegrationDoSwitchBackFails takes from fn's thread the right to
// setns, so that it cannot switch back: the thread must be thrown away, and
// the caller must not notice.
func TestIntegrationDoSwitchBackFails(t *testing.T) {
	_, path := netnstest.New(t)
	// The main thread is parked, not ended, when its goroutine ends
	// locked: fn drops nothing there, and is tried again.
	errMainThread := errors.New("fn on the main thread")
	var fnTID int
	var inside uint64
	var c caller
	for range 100 {
		c = callDo(path, func() (err error) {
			if fnTID = unix.Gettid(); fnTID == unix.Getpid() {
				return errMainThread
			}
			if inside, err = threadNS(); err != nil {
				return err
			}
			return dropSysAdmin()
		})
		if c.err != errMainThread {
			break
		}
	}
	if c.err != nil {
		t.Fatalf("Do = %v; want fn's nil error", c.err)
	}
	if fnTID == c.tid || inside == c.nsBefore {
		t.Fatalf("fn ran on the caller's thread %d or in its namespace %d", fnTID, inside)
	}
	checkCaller(t, c)
	for deadline := time.Now().Add(5 * time.Second); threadAlive(fnTID); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("thread %d, stuck in namespace %d, still alive", fnTID, inside)
		}
	}
	// Threads the runtime hands out later are all back home.
	for range 10 {
		if next := callDo(path, func() error { return nil }); next.err != nil || next.nsBefore != c.nsBefore {
			t.Fatalf("Do after a discarded thread: %v; caller's thread in namespace %d, want %d", next.err, next.nsBefore, c.nsBefore)
		}
	}
}

func TestIntegrationDoPanicAndGoexit(t *testing.T) {
	_, path := netnstest.New(t)
	got := func() (v any) {
		defer func() { v = recover() }()
		Do(path, func() error { panic("boom") })
		return nil
	}()
	if got != "boom" {
		t.Errorf("panic in fn: caller recovered %v, want boom", got)
	}

	returned := make(chan bool, 1)
	go func() {
		ok := false
		defer func() { returned <- ok }()
		Do(path, func() error { runtime.Goexit(); return nil })
		ok = true
	}()
	select {
	case ok := <-returned:
		if ok {
			t.Errorf("runtime.Goexit in fn: Do returned")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("runtime.Goexit in fn: Do still waiting")
	}
}

func TestIntegrationNamespaceReplaced(t *testing.T) {
	_, pathA := netnstest.New(t)
	_, pathB := netnstest.New(t)
	var inB fdInfo
	if err := Do(pathB, func() error {
		fd, err := rawListen(unix.AF_INET, 9000, 1)
		if err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(fd) })
		inB = describeFD(t, "listenB", fd, StateListen)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "netns")
	if err := os.Symlink(pathA, link); err != nil {
		t.Fatal(err)
	}
	c := dialT(t, Options{NetNS: link})
	if n := len(dumpAll(t, c, Request{})); n != 0 {
		t.Fatalf("namespace A: %d sockets, want none", n)
	}
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(pathB, link); err != nil {
		t.Fatal(err)
	}
	got := dumpAll(t, c, Request{})
	if len(got) != 1 || got[0].Cookie != inB.cookie {
		t.Fatalf("after the path moved to namespace B: %+v, want its listener (cookie %d)", got, inB.cookie)
	}
}

func TestIntegrationCallerNamespace(t *testing.T) {
	_, path := netnstest.New(t)
	var c *Conn
	var ln fdInfo
	if err := Do(path, func() error {
		fd, err := rawListen(unix.AF_INET6, 9001, 1)
		if err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(fd) })
		ln = describeFD(t, "listen", fd, StateListen)
		c, err = Dial(Options{})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Dialled on a thread inside the namespace, c stays there.
	got := dumpAll(t, c, Request{})
	if len(got) != 1 || got[0].Cookie != ln.cookie {
		t.Fatalf("dump: %+v; want only the namespace's listener", got)
	}
	// Even when a broken dump makes it reopen from a thread outside.
	stop := errors.New("stop")
	if err := c.DumpTCP(context.Background(), Request{}, func(*Socket) error { return stop }); err != stop {
		t.Fatalf("DumpTCP with a failing callback: %v", err)
	}
	got = dumpAll(t, c, Request{})
	if len(got) != 1 || got[0].Cookie != ln.cookie {
		t.Fatalf("dump after reopening: %+v; want only the namespace's listener", got)
	}
}

// pairs connects n loopback pairs, alternating IPv4 and IPv6, inside the
// namespace at path, and returns every descriptor (listeners first).
func pairs(path string, n int) ([]int, error) {
	var fds []int
	err := Do(path, func() error {
		var lns, ports [2]int
		for i, family := range []int{unix.AF_INET, unix.AF_INET6} {
			fd, err := rawListen(family, 0, 4096)
			if err != nil {
				return err
			}
			fds = append(fds, fd)
			sa, err := unix.Getsockname(fd)
			if err != nil {
				return err
			}
			lns[i], ports[i] = fd, int(addrPort(sa).Port())
		}
		for i := range n {
			family := unix.AF_INET
			if i%2 == 1 {
				family = unix.AF_INET6
			}
			c, err := rawConnect(family, ports[i%2], false)
			if err != nil {
				return fmt.Errorf("connect %d: %w", i, err)
			}
			fds = append(fds, c)
			s, _, err := unix.Accept4(lns[i%2], unix.SOCK_CLOEXEC)
			if err != nil {
				return fmt.Errorf("accept %d: %w", i, err)
			}
			fds = append(fds, s)
		}
		return nil
	})
	if err != nil {
		closeAll(fds)
		return nil, err
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

func pairsT(t *testing.T, path string, n int) int {
	t.Helper()
	fds, err := pairs(path, n)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeAll(fds) })
	return len(fds)
}

func TestIntegrationBrokenDumpDoesNotPoisonNext(t *testing.T) {
	_, path := netnstest.New(t)
	want := pairsT(t, path, 1500) // several datagrams' worth
	c := dialT(t, Options{NetNS: path})
	count := func() int {
		t.Helper()
		n := 0
		if err := c.DumpTCP(context.Background(), Request{}, func(*Socket) error { n++; return nil }); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(); n != want {
		t.Fatalf("dump: %d sockets, want %d", n, want)
	}

	stop := errors.New("enough")
	n := 0
	err := c.DumpTCP(context.Background(), Request{}, func(*Socket) error {
		if n++; n == 10 {
			return stop
		}
		return nil
	})
	if err != stop {
		t.Fatalf("DumpTCP with a failing callback: %v, want its error", err)
	}
	if n := count(); n != want {
		t.Fatalf("dump after an abandoned one: %d sockets, want %d", n, want)
	}

	ctx, cancel := context.WithCancel(context.Background())
	n = 0
	err = c.DumpTCP(ctx, Request{PerFamily: true}, func(*Socket) error {
		if n++; n == 10 {
			cancel()
		}
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("DumpTCP cancelled part way: %v, want context.Canceled", err)
	}
	if err := c.DumpTCP(ctx, Request{}, func(*Socket) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("DumpTCP with a done context: %v", err)
	}
	if n := count(); n != want {
		t.Fatalf("dump after a cancelled one: %d sockets, want %d", n, want)
	}
}

func TestIntegrationClosedConn(t *testing.T) {
	_, path := netnstest.New(t)
	c, err := Dial(Options{NetNS: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.DumpTCP(context.Background(), Request{}, func(*Socket) error { return nil }); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("DumpTCP on a closed Conn: %v, want net.ErrClosed", err)
	}
}

func TestIntegrationDumpAllocs(t *testing.T) {
	_, path := netnstest.New(t)
	c := dialT(t, Options{NetNS: path})
	total := 0
	measure := func(req Request) (allocs float64, n int) {
		allocs = testing.AllocsPerRun(5, func() {
			n = 0
			if err := c.DumpTCP(context.Background(), req, func(*Socket) error { n++; return nil }); err != nil {
				t.Fatal(err)
			}
		})
		return allocs, n
	}
	var small, large float64
	for _, req := range []Request{{}, {PerFamily: true}} {
		total += pairsT(t, path, 100)
		a, n := measure(req)
		if n != total {
			t.Fatalf("%d sockets, want %d", n, total)
		}
		small = a
		total += pairsT(t, path, 2000)
		a, n = measure(req)
		if n != total {
			t.Fatalf("%d sockets, want %d", n, total)
		}
		large = a
		t.Logf("%+v: %v allocations for %d sockets, %v for ~200", req, large, n, small)
		if large > small || large > 4 {
			t.Errorf("%+v: %v allocations per dump of %d sockets (%v for ~200): want a small constant", req, large, n, small)
		}
	}
}

func TestIntegrationReceiveWaitsBounded(t *testing.T) {
	_, path := netnstest.New(t)
	c := dialT(t, Options{NetNS: path})

	// Nothing was asked, so nothing comes: the receive timeout ends the wait.
	c.c.timeout = 50 * time.Millisecond
	start := time.Now()
	_, err := c.c.recv(context.Background())
	if !errors.Is(err, os.ErrDeadlineExceeded) || time.Since(start) > 5*time.Second {
		t.Fatalf("receive with nothing queued: %v after %v; want a deadline error after 50ms", err, time.Since(start))
	}

	// The end of the context cuts a waiting receive short.
	c.c.timeout = recvTimeout
	ctx, cancel := context.WithCancel(context.Background())
	defer c.c.watch(ctx)()
	time.AfterFunc(50*time.Millisecond, cancel)
	start = time.Now()
	_, err = c.c.recv(ctx)
	if !errors.Is(err, context.Canceled) || time.Since(start) > 5*time.Second {
		t.Fatalf("receive cancelled while waiting: %v after %v; want context.Canceled after 50ms", err, time.Since(start))
	}
}

// TestIntegrationPortSettings reads a namespace's port sysctls after
// changing them there, and checks that the caller's are not what it read.
func TestIntegrationPortSettings(t *testing.T) {
	_, path := netnstest.New(t)
	write := func(name, v string) error {
		return os.WriteFile("/proc/sys/"+name, []byte(v), 0o644)
	}
	err := Do(path, func() error {
		return errors.Join(
			write(sysctlPortRange, "40000 40999"),
			write(sysctlReserved, "40010-40019"),
			write(sysctlTWReuse, "0"),
		)
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := Dial(Options{NetNS: path})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	got, err := c.PortSettings()
	if err != nil {
		t.Fatal(err)
	}
	if got.Low != 40000 || got.High != 40999 || got.Reserved != 10 || got.TWReuse != 0 || got.Ports() != 990 {
		t.Errorf("PortSettings() = %+v, want 40000-40999, 10 reserved, tw_reuse 0", got)
	}
	own, err := Dial(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	mine, err := own.PortSettings()
	if err != nil {
		t.Fatal(err)
	}
	if mine == got {
		t.Errorf("own namespace's settings %+v are the test namespace's", mine)
	}
	c.Close()
	if _, err := c.PortSettings(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("PortSettings after Close = %v, want net.ErrClosed", err)
	}
}
