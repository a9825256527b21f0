package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/loadtest"
)

// proc is an exporter started through an optional wrapper command (such as
// ip netns exec and setpriv, which exec it in place), so that its PID is
// the exporter's and /proc can be read from the outside.
type proc struct {
	Addr string // host:port it listens on
	PID  int

	cmd  *exec.Cmd
	log  *lockedBuffer
	done chan struct{}
	err  error
}

var listeningOn = regexp.MustCompile(`msg="?Listening on"? .*address=\[?([0-9.:a-f\]]+)`)

// startProc runs argv (a wrapper and the exporter, or the exporter alone)
// with a loopback listen address on a free port appended, waits until it
// listens, and stops it when the test ends.
func startProc(t testing.TB, env []string, argv ...string) *proc {
	t.Helper()
	argv = append(argv, "--web.listen-address=127.0.0.1:0", "--log.format=logfmt")
	p := &proc{log: &lockedBuffer{}, done: make(chan struct{})}
	addr, err := p.start(env, argv)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("%s log:\n%s", filepath.Base(argv[0]), p.Log())
		}
	})
	select {
	case a := <-addr:
		p.Addr = a
	case <-p.done:
		t.Fatalf("%v exited before listening: %v\n%s", argv, p.err, p.Log())
	case <-time.After(20 * time.Second):
		t.Fatalf("%v did not listen within 20 s\n%s", argv, p.Log())
	}
	return p
}

func (p *proc) start(env, argv []string) (<-chan string, error) {
	p.cmd = exec.Command(argv[0], argv[1:]...)
	// A race-enabled build sleeps a second at exit unless told not to.
	p.cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), env...)
	pr, pw := io.Pipe()
	p.cmd.Stderr = pw
	if err := p.cmd.Start(); err != nil {
		return nil, err
	}
	p.PID = p.cmd.Process.Pid
	go func() {
		p.err = p.cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			p.log.WriteString(line + "\n")
			if m := listeningOn.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		io.Copy(io.Discard, pr)
	}()
	return addr, nil
}

// URL returns the http URL of path.
func (p *proc) URL(path string) string { return "http://" + p.Addr + path }

// Log returns what the exporter has logged so far.
func (p *proc) Log() string { return p.log.String() }

// Signal sends sig to the exporter.
func (p *proc) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Wait waits up to d for the exporter to exit and returns its exit status
// error (nil for 0) and whether it exited.
func (p *proc) Wait(d time.Duration) (error, bool) {
	select {
	case <-p.done:
		return p.err, true
	case <-time.After(d):
		return nil, false
	}
}

// Stop terminates the exporter if it still runs.
func (p *proc) Stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	if _, ok := p.Wait(10 * time.Second); !ok {
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("exporter ignored SIGTERM for 10 s")
	}
}

// sample reads the exporter's descriptors, threads and memory from /proc.
func (p *proc) sample(t testing.TB) loadtest.ProcSample {
	t.Helper()
	s, err := loadtest.SampleProc(p.PID)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type lockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuffer) WriteString(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.WriteString(s)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// sharedBinary returns a copy of the exporter binary in a directory every
// user may enter, for running it as an unprivileged user.
func sharedBinary(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tcpstate-exporter-shared-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exportertest.Binary(t))
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "tcpstate_exporter")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// nobody is the argument list that runs argv as user and group 65534 with
// no capability at all, in any set, and no way to gain one.
func nobody(argv ...string) []string {
	return append([]string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"}, argv...)
}

// requireTool fails the test when a command it needs is missing: CI
// installs them all, so a missing one is a broken machine, not a skip.
func requireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is needed: %v", name, err)
	}
}

func metricsURL(p *proc) string { return p.URL("/metrics") }
