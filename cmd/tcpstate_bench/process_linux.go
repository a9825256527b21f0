//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// server is an exporter process running inside a namespace, and an HTTP
// client that reaches it from inside the namespace too.
type server struct {
	name   string
	url    string
	cmd    *exec.Cmd
	client *http.Client
	stderr *syncBuffer
	done   chan struct{}
}

// startServer starts argv in ns and waits until url answers.
func startServer(ctx context.Context, ns *namespace, name, url string, argv ...string) (*server, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	s := &server{
		name: name,
		url:  url,
		cmd:  cmd,
		client: &http.Client{
			Transport: &http.Transport{DialContext: ns.dial, MaxIdleConnsPerHost: 1},
			Timeout:   time.Minute,
		},
		stderr: &syncBuffer{},
		done:   make(chan struct{}),
	}
	cmd.Stdout, cmd.Stderr = io.Discard, s.stderr
	if err := ns.start(cmd); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		cmd.Wait()
		close(s.done)
	}()
	deadline := time.Now().Add(time.Minute)
	for {
		_, _, err := s.scrape(ctx)
		if err == nil {
			return s, nil
		}
		select {
		case <-s.done:
			return nil, fmt.Errorf("%s exited: %v\n%s", name, cmd.ProcessState, s.log())
		default:
		}
		if ctx.Err() != nil || time.Now().After(deadline) {
			s.stop()
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%s did not serve %s within a minute: %v\n%s", name, url, err, s.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *server) log() string {
	return strings.TrimSpace(s.stderr.String())
}

// scrape GETs the server's metrics and returns how long the whole response
// took and the body.
func (s *server) scrape(ctx context.Context) (time.Duration, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return 0, nil, err
	}
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	took := time.Since(start)
	if err != nil {
		return 0, nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, nil, fmt.Errorf("GET %s: %s", s.url, resp.Status)
	}
	return took, body, nil
}

// stop terminates the server: SIGTERM, then SIGKILL after 10 s.
func (s *server) stop() {
	s.client.CloseIdleConnections()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// memUse is a process's memory, from /proc/PID/status.
type memUse struct {
	rss  int64 // resident set: VmRSS
	peak int64 // highest resident set: VmHWM
	anon int64 // resident anonymous memory, the process's own (RssAnon); the rest of rss is mostly its binary's code, shared page cache
}

func memory(pid int) (memUse, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memUse{}, err
	}
	var m memUse
	fields := map[string]*int64{"VmRSS": &m.rss, "VmHWM": &m.peak, "RssAnon": &m.anon}
	for line := range strings.Lines(string(b)) {
		key, value, _ := strings.Cut(line, ":")
		dst, ok := fields[key]
		if !ok {
			continue
		}
		kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(value), " kB"), 10, 64)
		if err != nil {
			return memUse{}, fmt.Errorf("/proc/%d/status %s: %w", pid, key, err)
		}
		*dst = kb << 10
	}
	if m.rss == 0 {
		return memUse{}, fmt.Errorf("/proc/%d/status: no VmRSS", pid)
	}
	return m, nil
}

// cpuTime returns the CPU time a process's live threads have used, to the
// nanosecond (the sum of /proc/PID/task/*/schedstat).
func cpuTime(pid int) (time.Duration, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("process %d: no threads found", pid)
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // a thread that just ended
			}
			return 0, err
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			continue
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%s: %w", t, err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// syncBuffer collects a child's output while others read it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// metrics is one parsed scrape.
type metrics map[string]*dto.MetricFamily

func parseMetrics(body []byte) (metrics, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	return parser.TextToMetricFamilies(bytes.NewReader(body))
}

// sum adds up every series of a gauge or counter family.
func (m metrics) sum(name string) float64 {
	var v float64
	for _, x := range m[name].GetMetric() {
		v += value(x)
	}
	return v
}

// value is a gauge's, counter's or untyped series' value.
func value(x *dto.Metric) float64 {
	return x.GetGauge().GetValue() + x.GetCounter().GetValue() + x.GetUntyped().GetValue()
}

// byLabel lists a family's nonzero series by one label: {a=1 b=2}.
func (m metrics) byLabel(name, label string) string {
	var parts []string
	for _, x := range m[name].GetMetric() {
		v := value(x)
		if v == 0 {
			continue
		}
		for _, l := range x.GetLabel() {
			if l.GetName() == label {
				parts = append(parts, fmt.Sprintf("%s=%g", l.GetValue(), v))
			}
		}
	}
	return "{" + strings.Join(parts, " ") + "}"
}

// histogram returns a histogram's sample count and sum.
func (m metrics) histogram(name string) (uint64, float64) {
	for _, x := range m[name].GetMetric() {
		return x.GetHistogram().GetSampleCount(), x.GetHistogram().GetSampleSum()
	}
	return 0, 0
}
