// Package exportertest builds the tcpstate_exporter binary (and the other
// programs of this module its tests run), runs it, and scrapes it, for tests
// that exercise the real program end to end. A package that uses it calls
// Main from its TestMain, which removes the builds when its tests are done.
package exportertest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// builds holds one *build per distinct Build call.
var builds sync.Map

type build struct {
	once sync.Once
	path string
	err  error
}

var (
	// mainRuns is set once Main runs the package's tests.
	mainRuns atomic.Bool

	// buildRoot is the directory, named exportertest-*, that holds every
	// build of this test process; "" until the first.
	buildRoot   string
	buildRootMu sync.Mutex
)

// Main runs the tests of a package that uses exportertest, then removes
// whatever Build built for them, and exits with the tests' status. Every
// such package calls it from its TestMain:
//
//	func TestMain(m *testing.M) { exportertest.Main(m) }
//
// The tests of a process share each build, so no single test's Cleanup may
// remove it; Build fails any test of a package that does not call Main.
func Main(m *testing.M) {
	mainRuns.Store(true)
	code := m.Run()
	if err := removeBuilds(); err != nil {
		fmt.Fprintf(os.Stderr, "exportertest: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// removeBuilds removes the directory holding this process's builds.
func removeBuilds() error {
	buildRootMu.Lock()
	defer buildRootMu.Unlock()
	if buildRoot == "" {
		return nil
	}
	err := os.RemoveAll(buildRoot)
	buildRoot = ""
	return err
}

// buildDir makes a directory for one build, under this process's
// exportertest-* directory. Both are open to every user.
func buildDir(name string) (string, error) {
	buildRootMu.Lock()
	defer buildRootMu.Unlock()
	if buildRoot == "" {
		dir, err := os.MkdirTemp("", "exportertest-")
		if err != nil {
			return "", err
		}
		if err := os.Chmod(dir, 0o755); err != nil {
			os.Remove(dir)
			return "", err
		}
		buildRoot = dir
	}
	dir, err := os.MkdirTemp(buildRoot, name+"-")
	if err != nil {
		return "", err
	}
	return dir, os.Chmod(dir, 0o755)
}

// Build builds a program of this module once per test process and returns
// its path. It runs `go args[0] -o PATH args[1:]...` from the module's root
// with env added to the environment, for instance ("build",
// "./internal/sockholder") or ("test", "-c", "./cmd/tcpstate_exporter"). The
// program, named name, lands in a directory every user may enter, so that
// tests can also run it as an unprivileged user. Main removes it once the
// package's tests are done.
func Build(t testing.TB, name string, env []string, args ...string) string {
	t.Helper()
	if !mainRuns.Load() {
		t.Fatal("exportertest.Build: the package's TestMain must call exportertest.Main, which removes the builds once the tests are done")
	}
	key := strings.Join(append(append([]string{name}, env...), args...), "\x00")
	v, _ := builds.LoadOrStore(key, new(build))
	b := v.(*build)
	b.once.Do(func() { b.path, b.err = goBuild(name, env, args) })
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

func goBuild(name string, env, args []string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("exportertest.Build: no go command")
	}
	dir, err := buildDir(name)
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", append([]string{args[0], "-o", path}, args[1:]...)...)
	cmd.Dir = filepath.Join(filepath.Dir(file), "..", "..")
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return path, nil
}

// Binary builds ./cmd/tcpstate_exporter once per test process, with the race
// detector when the tests run with it, and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	args := []string{"build"}
	if raceEnabled {
		args = append(args, "-race")
	}
	return Build(t, "tcpstate_exporter", nil, append(args, "./cmd/tcpstate_exporter")...)
}

// Options say how StartWith and RunWith run the exporter.
type Options struct {
	// Command is the exporter and whatever comes before its flags: Binary
	// when empty, or for instance a test binary that serves as the exporter
	// and the arguments that make it do so.
	Command []string
	// Wrapper is a command prefix that runs Command, such as
	// `ip netns exec NS` or `setpriv ...`. It must exec Command in place, so
	// that the process started is the exporter and PID is its own.
	Wrapper []string
	// Env is added to the exporter's environment.
	Env []string
}

// command returns the command that runs the exporter with args.
func (o Options) command(t testing.TB, ctx context.Context, args []string) *exec.Cmd {
	t.Helper()
	exe := o.Command
	if len(exe) == 0 {
		exe = []string{Binary(t)}
	}
	argv := append(append(append([]string{}, o.Wrapper...), exe...), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	// A race build otherwise sleeps a second at exit.
	cmd.Env = append(append(os.Environ(), "GORACE=atexit_sleep_ms=0"), o.Env...)
	return cmd
}

// Process is a running exporter.
type Process struct {
	Addr string // host:port it listens on, such as 127.0.0.1:41234
	URL  string // base URL, such as http://127.0.0.1:41234

	cmd       *exec.Cmd
	stderr    *syncBuffer
	done      chan struct{}
	err       error
	signalled atomic.Bool
}

var listening = regexp.MustCompile(`msg="?Listening on"? .*address=\[?([0-9.:a-f\]]+)`)

// Start runs the exporter with a loopback listen address on a free port and
// args, waits until it serves, and stops it when the test ends.
func Start(t testing.TB, args ...string) *Process {
	t.Helper()
	return StartWith(t, Options{}, args...)
}

// StartWith is Start with the exporter run as opts say. When the test ends
// it also fails the test if the exporter exited by itself, unsignalled.
func StartWith(t testing.TB, opts Options, args ...string) *Process {
	t.Helper()
	cmd := opts.command(t, context.Background(), append([]string{"--web.listen-address=127.0.0.1:0", "--log.format=logfmt"}, args...))
	p := &Process{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = cmd.Wait()
		pw.Close()
		close(p.done)
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			line := sc.Text()
			p.stderr.WriteString(line + "\n")
			if m := listening.FindStringSubmatch(line); m != nil {
				select {
				case addr <- m[1]:
				default:
				}
			}
		}
		// Never leave the exporter blocked on a full pipe.
		_, _ = io.Copy(io.Discard, pr)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
			if !p.signalled.Load() {
				t.Errorf("exporter exited during the test: %v", p.err)
			}
		default:
			p.Stop(t)
		}
		if t.Failed() {
			t.Logf("exporter log:\n%s", p.Log())
		}
	})
	select {
	case a := <-addr:
		p.Addr = a
		p.URL = "http://" + a
	case <-p.done:
		t.Fatalf("exporter exited before listening: %v\n%s", p.err, p.Log())
	case <-time.After(20 * time.Second):
		t.Fatalf("exporter did not listen within 20 s\n%s", p.Log())
	}
	return p
}

// PID returns the exporter's process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Log returns what the exporter has logged so far.
func (p *Process) Log() string { return p.stderr.String() }

// Signal sends sig to the exporter.
func (p *Process) Signal(sig os.Signal) error {
	p.signalled.Store(true)
	return p.cmd.Process.Signal(sig)
}

// Wait waits up to d for the exporter to exit, and says whether it did and
// its exit error (nil for status 0).
func (p *Process) Wait(d time.Duration) (exited bool, err error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

// Stop terminates the exporter if it still runs.
func (p *Process) Stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.Signal(syscall.SIGTERM)
	if exited, _ := p.Wait(10 * time.Second); !exited {
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("exporter ignored SIGTERM for 10 s")
	}
}

// Run runs the exporter with args to completion (bounded by 20 s) and
// returns its exit code and stderr.
func Run(t testing.TB, args ...string) (int, string) {
	t.Helper()
	return RunWith(t, Options{}, args...)
}

// RunWith is Run with the exporter run as opts say.
func RunWith(t testing.TB, opts Options, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := opts.command(t, ctx, args)
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("exporter %v did not exit within 20 s\n%s", cmd.Args, stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), stderr.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, stderr.String()
}

// WriteCert writes a self-signed certificate for 127.0.0.1 and localhost,
// and its key, into dir as tls.crt and tls.key, and returns the
// certificate.
func WriteCert(t testing.TB, dir string) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "tcpstate_exporter test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:              []string{"localhost"},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, b []byte) {
		if err := os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("tls.crt", "CERTIFICATE", der)
	write("tls.key", "PRIVATE KEY", keyDER)
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// Metrics is one scrape, by metric family name.
type Metrics map[string]*dto.MetricFamily

// Fetch GETs url and returns the body; anything but 200 fails the test.
func Fetch(t testing.TB, url string) []byte {
	t.Helper()
	return FetchWith(t, http.DefaultClient, url)
}

// FetchWith is Fetch through client.
func FetchWith(t testing.TB, client *http.Client, url string) []byte {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return b
}

// Scrape fetches and parses url (text format).
func Scrape(t testing.TB, url string) Metrics {
	t.Helper()
	return ScrapeWith(t, http.DefaultClient, url)
}

// ScrapeWith is Scrape through client.
func ScrapeWith(t testing.TB, client *http.Client, url string) Metrics {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := parser.TextToMetricFamilies(bytes.NewReader(FetchWith(t, client, url)))
	if err != nil {
		t.Fatalf("parse scrape of %s: %v", url, err)
	}
	return mf
}

// Find returns the metric of family name whose labels include all of
// labels ("k=v" pairs), or nil.
func (m Metrics) Find(name string, labels ...string) *dto.Metric {
	if all := m.All(name, labels...); len(all) > 0 {
		return all[0]
	}
	return nil
}

// All returns every metric of family name whose labels include all of
// labels ("k=v" pairs).
func (m Metrics) All(name string, labels ...string) []*dto.Metric {
	f := m[name]
	if f == nil {
		return nil
	}
	var out []*dto.Metric
next:
	for _, x := range f.GetMetric() {
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			if !slices.ContainsFunc(x.GetLabel(), func(lp *dto.LabelPair) bool { return lp.GetName() == k && lp.GetValue() == v }) {
				continue next
			}
		}
		out = append(out, x)
	}
	return out
}

// Value returns the value of a gauge or counter (or -1 when absent).
func (m Metrics) Value(name string, labels ...string) float64 {
	if x := m.Find(name, labels...); x != nil {
		return value(x)
	}
	return -1
}

// Values returns the values of every gauge or counter All returns.
func (m Metrics) Values(name string, labels ...string) []float64 {
	var out []float64
	for _, x := range m.All(name, labels...) {
		if v := value(x); v != -1 {
			out = append(out, v)
		}
	}
	return out
}

// value is a gauge's or counter's value, -1 for anything else.
func value(x *dto.Metric) float64 {
	switch {
	case x.Gauge != nil:
		return x.Gauge.GetValue()
	case x.Counter != nil:
		return x.Counter.GetValue()
	case x.Untyped != nil:
		return x.Untyped.GetValue()
	}
	return -1
}

// Histogram returns a histogram's sample count and sum and its cumulative
// bucket counts by upper bound (zero values when absent).
func (m Metrics) Histogram(name string, labels ...string) (count uint64, sum float64, buckets map[float64]uint64) {
	x := m.Find(name, labels...)
	if x == nil || x.Histogram == nil {
		return 0, 0, nil
	}
	buckets = map[float64]uint64{}
	for _, b := range x.Histogram.GetBucket() {
		buckets[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	return x.Histogram.GetSampleCount(), x.Histogram.GetSampleSum(), buckets
}

// syncBuffer is a bytes.Buffer safe for one writer and many readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) WriteString(x string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.WriteString(x)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
