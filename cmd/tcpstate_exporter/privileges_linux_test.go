package main

import (
	"bufio"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/loadtest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// helperEnv selects what TestHelperProcess does in a child process.
const helperEnv = "TCPSTATE_EXPORTER_HELPER"

// TestHelperProcess is not a test: run as a child by the tests below, it
// drops privileges ("drop-keep", "drop") and then answers commands on
// stdin, or runs the exporter with the arguments after "--" ("serve"). It
// does nothing when run as part of the suite.
func TestHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	if mode == "serve" {
		os.Exit(run(flag.Args(), os.Stderr))
	}
	// Threads made before the drop must lose their capabilities too.
	var park sync.WaitGroup
	stop := make(chan struct{})
	lockThreads(&park, stop, 8)
	logger := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := dropPrivileges(mode == "drop-keep", logger); err != nil {
		fmt.Printf("drop: %v\n", err)
		os.Exit(1)
	}
	lockThreads(&park, stop, 4)
	fmt.Println("ready")
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		path, ok := strings.CutPrefix(sc.Text(), "enter ")
		if !ok {
			break
		}
		fmt.Println(enterFromManyThreads(path))
	}
	close(stop)
	park.Wait()
	os.Exit(0)
}

// lockThreads parks n goroutines each on an OS thread of its own until
// stop is closed, so the process has threads the runtime made at that
// point.
func lockThreads(wg *sync.WaitGroup, stop <-chan struct{}, n int) {
	started := make(chan struct{})
	for range n {
		wg.Go(func() {
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			started <- struct{}{}
			<-stop
		})
	}
	for range n {
		<-started
	}
}

// enterFromManyThreads opens sock_diag in the namespace at path from
// several goroutines at once, which run on different threads, and says how
// that went: "ok" if every one could, else the first error.
func enterFromManyThreads(path string) string {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() {
			c, err := netlinkdiag.Dial(netlinkdiag.Options{NetNS: path})
			if err == nil {
				c.Close()
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return "error: " + err.Error()
		}
	}
	return "ok"
}

// helperBinary builds this package's tests without cgo, the way release
// binaries are built (the race detector needs cgo, and a cgo binary cannot
// change the credentials of all its threads), into a directory anyone may
// enter.
func helperBinary(t testing.TB) string {
	t.Helper()
	return exportertest.Build(t, "tcpstate_exporter.test", []string{"CGO_ENABLED=0"}, "test", "-c", "./cmd/tcpstate_exporter")
}

// threadCaps reads the capability sets and no_new_privs of every thread
// of pid, and fails the test unless all threads agree. Masks are hex as
// in /proc.
type threadCaps struct {
	Eff, Prm, Inh, Bnd, Amb string
	NoNewPrivs              string
}

func capsOfAllThreads(t *testing.T, pid int) threadCaps {
	t.Helper()
	tids, err := loadtest.Threads(pid)
	if err != nil {
		t.Fatal(err)
	}
	var first threadCaps
	for i, tid := range tids {
		st, err := loadtest.Status(pid, tid)
		if err != nil {
			t.Fatal(err)
		}
		c := threadCaps{st["CapEff"], st["CapPrm"], st["CapInh"], st["CapBnd"], st["CapAmb"], st["NoNewPrivs"]}
		if i == 0 {
			first = c
		} else if c != first {
			t.Fatalf("thread %d of %d: %+v, thread %d: %+v; credentials differ between threads", tid, pid, c, tids[0], first)
		}
	}
	t.Logf("%d threads, each %+v", len(tids), first)
	return first
}

func mask(caps ...int) string {
	var m uint64
	for _, c := range caps {
		m |= 1 << c
	}
	return fmt.Sprintf("%016x", m)
}

// TestIntegrationDropPrivileges runs dropPrivileges in a child that starts
// with every capability, and checks from the outside, thread by thread,
// what it kept, and from the inside that entering a namespace still works
// exactly when it was asked to keep that.
func TestIntegrationDropPrivileges(t *testing.T) {
	_, nsPath := netnstest.New(t)
	bin := helperBinary(t)
	for _, c := range []struct {
		mode  string
		want  string
		enter string
	}{
		{"drop-keep", mask(unix.CAP_DAC_READ_SEARCH, unix.CAP_SYS_PTRACE, unix.CAP_SYS_ADMIN), "ok"},
		{"drop", mask(unix.CAP_DAC_READ_SEARCH, unix.CAP_SYS_PTRACE), "operation not permitted"},
	} {
		t.Run(c.mode, func(t *testing.T) {
			pid, enter := startHelper(t, bin, c.mode, nil)
			got := capsOfAllThreads(t, pid)
			want := threadCaps{Eff: c.want, Prm: c.want, Inh: mask(), Bnd: c.want, Amb: mask(), NoNewPrivs: "1"}
			if got != want {
				t.Errorf("after dropPrivileges: %+v, want %+v", got, want)
			}
			if res := enter(nsPath); !strings.Contains(res, c.enter) {
				t.Errorf("entering a namespace after the drop: %q, want %q", res, c.enter)
			}
		})
	}
	t.Run("unprivileged", func(t *testing.T) {
		// Nothing to drop: no error, and no_new_privs still set.
		pid, enter := startHelper(t, bin, "drop", nobody())
		got := capsOfAllThreads(t, pid)
		want := threadCaps{Eff: mask(), Prm: mask(), Inh: mask(), Bnd: mask(), Amb: mask(), NoNewPrivs: "1"}
		if got != want {
			t.Errorf("unprivileged after dropPrivileges: %+v, want %+v", got, want)
		}
		if res := enter(nsPath); !strings.Contains(res, "operation not permitted") {
			t.Errorf("entering a namespace unprivileged: %q", res)
		}
	})
}

// startHelper starts the helper binary in mode under wrapper, waits until
// it has dropped privileges, and returns its PID and a function that asks
// it to enter a namespace.
func startHelper(t *testing.T, bin, mode string, wrapper []string) (int, func(path string) string) {
	t.Helper()
	h := startChild(t, "helper "+mode, []string{helperEnv + "=" + mode}, append(wrapper, bin, "-test.run=^TestHelperProcess$")...)
	if l := h.await(t, ""); l != "ready" {
		t.Fatalf("helper %s: %q\n%s", mode, l, h.log())
	}
	return h.pid, func(path string) string {
		h.send(t, "enter "+path)
		return h.await(t, "")
	}
}

// TestIntegrationPrivilegesDroppedAfterStartup runs the exporter, built as
// releases are, as root with every capability, and reads what it holds
// once it serves: with --netns, CAP_SYS_ADMIN (to re-enter the namespace),
// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH; without, only the last two; and
// no_new_privs. The namespace is then deleted and made anew under the same
// name, which the exporter can only follow if it kept CAP_SYS_ADMIN. In
// precise mode CAP_BPF and CAP_PERFMON go too, and the events still come.
func TestIntegrationPrivilegesDroppedAfterStartup(t *testing.T) {
	name, path := netnstest.New(t)
	bin := helperBinary(t)
	serve := func(args ...string) *exportertest.Process {
		return exportertest.StartWith(t, exportertest.Options{
			Command: []string{bin, "-test.run=^TestHelperProcess$", "--"},
			Env:     []string{helperEnv + "=serve"},
		}, args...)
	}

	p := serve("--netns="+name, "--mode=poll", "--poll.interval=100ms")
	exportertest.Scrape(t, p.URL+"/metrics")
	want := mask(unix.CAP_DAC_READ_SEARCH, unix.CAP_SYS_PTRACE, unix.CAP_SYS_ADMIN)
	got := capsOfAllThreads(t, p.PID())
	if got != (threadCaps{Eff: want, Prm: want, Inh: mask(), Bnd: want, Amb: mask(), NoNewPrivs: "1"}) {
		t.Errorf("serving --netns: %+v, want CapEff=CapPrm=CapBnd=%s and NoNewPrivs 1", got, want)
	}
	recreateNamespace(t, name, path)
	listener := listenIn(t, path)
	if _, ok := eventually(t, p.URL+"/metrics", 10*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_sockets", "family=ipv4", "state=LISTEN") == 1
	}); !ok {
		t.Errorf("after its namespace was made anew, the exporter did not follow it\n%s", p.Log())
	}
	unix.Close(listener)
	p.Stop(t)

	p = serve("--mode=poll", "--poll.interval=100ms")
	exportertest.Scrape(t, p.URL+"/metrics")
	want = mask(unix.CAP_DAC_READ_SEARCH, unix.CAP_SYS_PTRACE)
	if got := capsOfAllThreads(t, p.PID()); got != (threadCaps{Eff: want, Prm: want, Inh: mask(), Bnd: want, Amb: mask(), NoNewPrivs: "1"}) {
		t.Errorf("serving its own namespace: %+v, want CapEff=CapPrm=CapBnd=%s and NoNewPrivs 1", got, want)
	}
	p.Stop(t)

	// Precise mode, with no dump after the first for an hour: a listener
	// can only show through the events, read without CAP_BPF.
	p = serve("--netns="+name, "--mode=precise", "--precise.dump-interval=1h")
	if m := exportertest.Scrape(t, p.URL+"/metrics"); m.Value("tcpstate_mode", "mode=precise") != 1 {
		t.Fatalf("not in precise mode\n%s", p.Log())
	}
	want = mask(unix.CAP_DAC_READ_SEARCH, unix.CAP_SYS_PTRACE, unix.CAP_SYS_ADMIN)
	if got := capsOfAllThreads(t, p.PID()); got != (threadCaps{Eff: want, Prm: want, Inh: mask(), Bnd: want, Amb: mask(), NoNewPrivs: "1"}) {
		t.Errorf("serving in precise mode: %+v, want CapEff=CapPrm=CapBnd=%s and NoNewPrivs 1", got, want)
	}
	listener = listenIn(t, path)
	defer unix.Close(listener)
	if _, ok := eventually(t, p.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_sockets", "family=ipv4", "state=LISTEN") == 1 && m.Value("tcpstate_events_total") >= 1
	}); !ok {
		t.Errorf("a new listener did not show through the events after the drop\n%s", p.Log())
	}
}

// TestIntegrationPrivilegedPortSaysWhy: a listen port below 1024 is refused
// by the kernel once the exporter has dropped CAP_NET_BIND_SERVICE (as
// root, built as releases are), or when it never had it (as nobody); the
// one-line reason says so and what to do instead. The kernel checks the
// port's privilege before whether it is in use, so any low port will do.
func TestIntegrationPrivilegedPortSaysWhy(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, c := range []struct {
		name string
		opts exportertest.Options
		want string
	}{
		{"root, capabilities dropped", exportertest.Options{
			Command: []string{helperBinary(t), "-test.run=^TestHelperProcess$", "--"},
			Env:     []string{helperEnv + "=serve"},
		}, "drops"},
		{"nobody", exportertest.Options{Wrapper: nobody()}, "does not have"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, stderr := exportertest.RunWith(t, c.opts, "--mode=poll", "--web.listen-address=127.0.0.1:99")
			last := lastLine(stderr)
			if code != 1 || !strings.HasPrefix(last, "tcpstate_exporter: ") {
				t.Errorf("exit %d, last line %q: want 1 and the one-line reason\n%s", code, last, stderr)
			}
			for _, want := range []string{"bind: permission denied", "CAP_NET_BIND_SERVICE", c.want, "--web.systemd-socket", "1024 or more"} {
				if !strings.Contains(last, want) {
					t.Errorf("reason %q does not say %q", last, want)
				}
			}
		})
	}
}

// TestIntegrationCgoBuildWarnsCapabilitiesKept: a binary built with cgo
// (the race detector's, here) cannot drop capabilities on all threads; it
// must say so rather than drop them on some.
func TestIntegrationCgoBuildWarnsCapabilitiesKept(t *testing.T) {
	netnstest.RequireRoot(t)
	out, err := exec.Command("go", "version", "-m", exportertest.Binary(t)).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "CGO_ENABLED=1") {
		t.Skip("the test binary is built without cgo; TestIntegrationPrivilegesDroppedAfterStartup covers it")
	}
	p := exportertest.Start(t, "--poll.interval=100ms")
	exportertest.Scrape(t, p.URL+"/metrics")
	if !strings.Contains(p.Log(), "capabilities not dropped") {
		t.Errorf("no warning that capabilities were kept:\n%s", p.Log())
	}
	ours, err := loadtest.Status(os.Getpid(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if got := capsOfAllThreads(t, p.PID()); got.NoNewPrivs != "0" || got.Eff != ours["CapEff"] || got.Bnd != ours["CapBnd"] {
		t.Errorf("a cgo build changed some credentials: %+v, started with CapEff %s CapBnd %s", got, ours["CapEff"], ours["CapBnd"])
	}
}

func TestCapNames(t *testing.T) {
	for n, want := range map[int]string{
		unix.CAP_CHOWN: "cap_chown", unix.CAP_NET_ADMIN: "cap_net_admin", unix.CAP_SYS_PTRACE: "cap_sys_ptrace",
		unix.CAP_SYS_ADMIN: "cap_sys_admin", unix.CAP_BPF: "cap_bpf", unix.CAP_CHECKPOINT_RESTORE: "cap_checkpoint_restore",
		63: "cap_63",
	} {
		if got := capName(n); got != want {
			t.Errorf("capName(%d) = %q, want %q", n, got, want)
		}
	}
	if got := capNames(1<<unix.CAP_SYS_PTRACE | 1<<unix.CAP_DAC_READ_SEARCH); got != "cap_dac_read_search,cap_sys_ptrace" {
		t.Errorf("capNames = %q", got)
	}
}
