package main

import (
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/internal/statezoo"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// tmux runs tmux on a server of the test's own, which the test ends.
type tmux struct {
	t      *testing.T
	socket string
}

func newTmux(t *testing.T) *tmux {
	t.Helper()
	if _, err := exec.LookPath("tmux"); err != nil {
		t.Fatalf("tmux is needed (apt-get install tmux): %v", err)
	}
	// A server of our own, on a socket in the test's directory: nobody
	// else's sessions are touched, and the socket goes with the directory.
	x := &tmux{t: t, socket: filepath.Join(t.TempDir(), "tmux")}
	t.Cleanup(func() { exec.Command("tmux", "-S", x.socket, "kill-server").Run() })
	return x
}

func (x *tmux) run(args ...string) (string, error) {
	out, err := exec.Command("tmux", append([]string{"-S", x.socket}, args...)...).CombinedOutput()
	return string(out), err
}

// waitPane captures the pane until ok holds, for at most d.
func (x *tmux) waitPane(d time.Duration, ok func(string) bool) (string, bool) {
	x.t.Helper()
	var pane string
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		var err error
		if pane, err = x.run("capture-pane", "-p", "-t", "watch"); err != nil {
			x.t.Fatalf("tmux capture-pane: %v\n%s", err, pane)
		}
		if ok(pane) {
			return pane, true
		}
	}
	return pane, false
}

// paneRow returns the counts a state's row shows on the pane.
func paneRow(pane, state string) []string {
	for _, line := range strings.Split(pane, "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == state {
			return f[1:4]
		}
	}
	return nil
}

// TestIntegrationWatch runs --watch in a detached tmux session: the pane
// shows the table, a count changes when the namespace gets more sockets,
// and q ends it.
func TestIntegrationWatch(t *testing.T) {
	_, path, want := zoo(t, 1)
	bin := exportertest.Build(t, "tcpstate", nil, "build", "./cmd/tcpstate")
	x := newTmux(t)
	if out, err := x.run("new-session", "-d", "-s", "watch", "-x", "120", "-y", "40",
		bin+" --watch --interval=200ms --netns="+path); err != nil {
		t.Fatalf("tmux new-session: %v\n%s", err, out)
	}
	listen := strconv.Itoa(want["ipv4"]["LISTEN"])
	pane, ok := x.waitPane(5*time.Second, func(p string) bool {
		return cmp.Equal(paneRow(p, "LISTEN"), []string{listen, strconv.Itoa(want["ipv6"]["LISTEN"]), strconv.Itoa(want["ipv4"]["LISTEN"] + want["ipv6"]["LISTEN"])}) &&
			strings.Contains(p, "transitions/s")
	})
	if !ok {
		t.Fatalf("the pane does not show the zoo's LISTEN sockets (ipv4 %s):\n%s", listen, pane)
	}
	for _, st := range collector.States() {
		if paneRow(pane, st.String()) == nil {
			t.Errorf("the pane has no row for %s:\n%s", st, pane)
		}
	}

	// A server that leaks: three connections its clients closed, which it
	// never closes, in CLOSE_WAIT.
	for _, c := range connect(t, path, 3) {
		unix.Close(c)
	}
	more := strconv.Itoa(want["ipv4"]["CLOSE_WAIT"] + 3)
	if pane, ok = x.waitPane(5*time.Second, func(p string) bool {
		r := paneRow(p, "CLOSE_WAIT")
		return len(r) > 0 && r[0] == more
	}); !ok {
		t.Fatalf("the pane does not show the new CLOSE_WAIT sockets (ipv4 %s):\n%s", more, pane)
	}
	t.Logf("the pane:\n%s", pane)

	if out, err := x.run("send-keys", "-t", "watch", "q"); err != nil {
		t.Fatalf("tmux send-keys: %v\n%s", err, out)
	}
	for end := time.Now().Add(5 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if _, err := x.run("has-session", "-t", "watch"); err != nil {
			break
		}
		if time.Now().After(end) {
			pane, _ := x.run("capture-pane", "-p", "-t", "watch")
			t.Fatalf("q did not end --watch:\n%s", pane)
		}
	}
	if out, err := x.run("list-sessions"); err == nil {
		t.Errorf("the tmux server still has sessions:\n%s", out)
	}
}

// TestIntegrationWatchStays: successive polls of --watch give stays and
// rates: connections made after the view started and then closed by one
// side leave ESTABLISHED, their stays there measured.
func TestIntegrationWatchStays(t *testing.T) {
	_, path := netnstest.New(t)
	o := &options{netns: path, interval: 100 * time.Millisecond, top: 5}
	r, err := open(o)
	if err != nil {
		t.Fatal(err)
	}
	defer r.close()
	ctx := t.Context()
	first, err := r.first(ctx)
	if err != nil {
		t.Fatal(err)
	}
	w := newWatcher(ctx, o.interval, r, first)
	clients := connect(t, path, 2)
	time.Sleep(o.interval)
	if p := w.poll(); p.err != nil || p.table.States[collector.Established].IPv4 != 4 {
		t.Fatalf("poll: %v; ESTABLISHED %+v, want 4 IPv4", p.err, p.table.States[collector.Established])
	}
	time.Sleep(300 * time.Millisecond)
	for _, c := range clients {
		unix.Close(c)
	}
	var p polled
	for end := time.Now().Add(3 * time.Second); time.Now().Before(end); time.Sleep(o.interval) {
		if p = w.poll(); p.err != nil {
			t.Fatal(p.err)
		}
		if p.table.States[collector.CloseWait].IPv4 == 2 {
			break
		}
	}
	est := p.table.States[collector.Established]
	// Both ends of both connections left ESTABLISHED after about 300ms
	// there, measured to the poll interval.
	if est.Stays != 4 || est.StayMedianSeconds == nil || est.StayP99Seconds == nil ||
		*est.StayMedianSeconds < 0.1 || *est.StayP99Seconds > 1 {
		t.Errorf("ESTABLISHED stays: %d, median %v, p99 %v; want 4 of about 0.3s", est.Stays, est.StayMedianSeconds, est.StayP99Seconds)
	}
	if est.EnteredPerSecond == nil || *est.EnteredPerSecond <= 0 || est.LeftPerSecond == nil || *est.LeftPerSecond <= 0 {
		t.Errorf("ESTABLISHED rates in %v, out %v; want both above 0", est.EnteredPerSecond, est.LeftPerSecond)
	}
	if p.table.TransitionsPerSecond == nil || *p.table.TransitionsPerSecond <= 0 {
		t.Errorf("transitions/s %v, want above 0", p.table.TransitionsPerSecond)
	}
	if text := p.table.Text(); !strings.Contains(text, "STAY P50") || !strings.Contains(text, "transitions/s since start") {
		t.Errorf("the watch table lacks its columns:\n%s", text)
	}
}

// connect opens n IPv4 connections on loopback in the namespace at path,
// to a listener of their own, and returns the clients' fds. The listener
// and the accepted sockets stay open until the test ends.
func connect(t *testing.T, path string, n int) []int {
	t.Helper()
	var clients []int
	err := netlinkdiag.Do(path, func() error {
		lfd, port, err := statezoo.Listen(unix.AF_INET, 8)
		if err != nil {
			return err
		}
		t.Cleanup(func() { unix.Close(lfd) })
		for range n {
			c, err := statezoo.Connect(unix.AF_INET, port)
			if err != nil {
				return err
			}
			s, err := statezoo.Accept(lfd)
			if err != nil {
				unix.Close(c)
				return err
			}
			t.Cleanup(func() { unix.Close(s) })
			clients = append(clients, c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return clients
}
