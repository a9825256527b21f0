// Package exportertest builds the tcpstate_exporter binary, runs it, and
// scrapes it, for tests that exercise the real program end to end.
package exportertest

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// Binary builds ./cmd/tcpstate_exporter once per test process, with the race
// detector when the tests run with it, and returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tcpstate-exporter-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "tcpstate_exporter")
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..", "..")
		args := []string{"build", "-o", binPath}
		if raceEnabled {
			args = append(args, "-race")
		}
		cmd := exec.Command("go", append(args, "./cmd/tcpstate_exporter")...)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// Process is a running exporter.
type Process struct {
	URL    string // base URL, such as http://127.0.0.1:41234
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

var listening = regexp.MustCompile(`msg="?Listening on"? .*address=\[?([0-9.:a-f\]]+)`)

// Start runs the exporter with args plus a loopback listen address on a
// free port, waits until it serves, and stops it when the test ends.
func Start(t testing.TB, args ...string) *Process {
	t.Helper()
	cmd := exec.Command(Binary(t), append([]string{"--web.listen-address=127.0.0.1:0", "--log.format=logfmt"}, args...)...)
	// A race build otherwise sleeps a second at exit.
	cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0")
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
	}()
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			t.Logf("exporter log:\n%s", p.Log())
		}
	})
	select {
	case a := <-addr:
		p.URL = "http://" + a
	case <-p.done:
		t.Fatalf("exporter exited before listening: %v\n%s", p.err, p.Log())
	case <-time.After(15 * time.Second):
		t.Fatalf("exporter did not listen within 15 s\n%s", p.Log())
	}
	return p
}

// PID returns the exporter's process id.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// Log returns what the exporter has logged so far.
func (p *Process) Log() string { return p.stderr.String() }

// Signal sends sig to the exporter.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Wait waits up to d for the exporter to exit and returns its exit error
// (nil for status 0); it fails the test on timeout.
func (p *Process) Wait(t testing.TB, d time.Duration) error {
	t.Helper()
	select {
	case <-p.done:
		return p.err
	case <-time.After(d):
		t.Fatalf("exporter still running after %v", d)
		return nil
	}
}

// Stop terminates the exporter if it still runs.
func (p *Process) Stop(t testing.TB) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Errorf("exporter ignored SIGTERM for 10 s")
	}
}

// Run runs the exporter with args to completion (bounded by 20 s) and
// returns its exit code and stderr.
func Run(t testing.TB, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, Binary(t), args...)
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("exporter %v did not exit within 20 s\n%s", args, stderr.String())
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), stderr.String()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0, stderr.String()
}

// Metrics is one scrape, by metric family name.
type Metrics map[string]*dto.MetricFamily

// Fetch GETs url and returns the body; anything but 200 fails the test.
func Fetch(t testing.TB, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
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
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mf, err := parser.TextToMetricFamilies(bytes.NewReader(Fetch(t, url)))
	if err != nil {
		t.Fatalf("parse scrape of %s: %v", url, err)
	}
	return mf
}

// Find returns the metric of family name whose labels include all of
// labels ("k=v" pairs), or nil.
func (m Metrics) Find(name string, labels ...string) *dto.Metric {
	f := m[name]
	if f == nil {
		return nil
	}
next:
	for _, x := range f.GetMetric() {
		for _, l := range labels {
			k, v, _ := strings.Cut(l, "=")
			found := false
			for _, lp := range x.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return x
	}
	return nil
}

// Value returns the value of a gauge or counter (or -1 when absent).
func (m Metrics) Value(name string, labels ...string) float64 {
	x := m.Find(name, labels...)
	switch {
	case x == nil:
		return -1
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
