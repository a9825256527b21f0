//go:build linux

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/internal/eventlock"
	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
)

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"--sockets=10000, 200000", "--runs=3"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.sizes) != 2 || o.sizes[0] != 10_000 || o.sizes[1] != 200_000 || o.cfg.runs != 3 {
		t.Errorf("sizes %v runs %d, want [10000 200000] and 3", o.sizes, o.cfg.runs)
	}
	// The load: 1000 connections a second while both modes are
	// measured, then 100,000 changes a second.
	if c := o.cfg; c.modeWindow != 30*time.Second || c.churn != 1000 || c.throughput != 100_000 || c.churnWarmup != time.Minute {
		t.Errorf("mode window %v, churn %d after %v, throughput %d; want 30s, 1000 after 1m, 100000", c.modeWindow, c.churn, c.churnWarmup, c.throughput)
	}
	for _, good := range [][]string{
		{"--mode-window=0", "--throughput=0", "--churn=0"},
		{"--churn=20000", "--throughput=200000", "--throughput-window=30s"},
		{"--sockets=0", "--namespaces=200"},
	} {
		if _, err := parseFlags(good, &bytes.Buffer{}); err != nil {
			t.Errorf("parseFlags(%q): %v", good, err)
		}
	}
	for _, bad := range [][]string{
		{"--sockets=lots"},
		{"--sockets=5"},
		{"--sockets=2000000"},
		{"--runs=0"},
		{"--ipv6-share=1.5"},
		{"--interval=1ms"},
		{"--cpu-window=100ms"},
		{"--timeout=0s"},
		{"--mode-window=500ms"},
		{"--mode-window=-1s"},
		{"--mode-runs=0"},
		{"--churn=-1"},
		{"--churn=20001"},
		{"--churn-warmup=-1s"},
		{"--throughput=-10"},
		{"--throughput=39"},
		{"--throughput=200001"},
		{"--throughput-window=500ms"},
		{"--throughput-window=31s"},
		{"--namespaces=-1"},
		{"--namespaces=1001"},
		{"--namespaces=5", "--mode-window=0"},
		{"--sockets=0"},
		{"extra"},
	} {
		if _, err := parseFlags(bad, &bytes.Buffer{}); err == nil {
			t.Errorf("parseFlags(%q) accepted", bad)
		}
	}
}

func TestPlan(t *testing.T) {
	for _, n := range []int{100, 2000, 10_000, 200_000, maxSockets} {
		p := newPlan(n, 0.25)
		total, est, half := 0, 0, 0
		for _, h := range p.holders {
			pairs := h.est[0] + h.est[1] + h.half[0] + h.half[1]
			if pairs > maxPairsPerHolder {
				t.Errorf("%d sockets: a holder of %d pairs, more than %d", n, pairs, maxPairsPerHolder)
			}
			est += h.est[0] + h.est[1]
			half += h.half[0] + h.half[1]
			total += 2*pairs + 2 // and its two listeners
		}
		total += p.tw[0] + p.tw[1] + 2
		if total < n*99/100 || total > n {
			t.Errorf("%d sockets: plan makes %d", n, total)
		}
		if est*2 < n*85/100 {
			t.Errorf("%d sockets: %d ESTABLISHED pairs, want about 90%% of the sockets", n, est)
		}
		if half == 0 || p.tw[0] == 0 || p.tw[1] == 0 {
			t.Errorf("%d sockets: %d half-closed pairs, TIME_WAIT %v; want some of each", n, half, p.tw)
		}
	}
}

// benchBinary builds this command, with the race detector when the tests
// run with it, as exportertest builds the exporter.
func benchBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "tcpstate_bench")
	args := []string{"build", "-o", bin}
	if raceEnabled {
		args = append(args, "-race")
	}
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", append(args, ".")...)
	cmd.Dir = filepath.Dir(file)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// leftovers lists the namespaces and processes a bench run left behind.
func leftovers(pid int, binaries ...string) []string {
	var left []string
	names, _ := filepath.Glob(fmt.Sprintf("/run/netns/tcpstate-bench-%d-*", pid))
	left = append(left, names...)
	exes, _ := filepath.Glob("/proc/[0-9]*/exe")
	for _, exe := range exes {
		target, err := os.Readlink(exe)
		if err != nil {
			continue
		}
		for _, b := range binaries {
			if target == b {
				left = append(left, fmt.Sprintf("process %s running %s", filepath.Base(filepath.Dir(exe)), b))
			}
		}
	}
	return left
}

// TestIntegrationBenchSmoke runs the benchmark at a tiny size and checks
// that it prints its table and leaves nothing behind.
func TestIntegrationBenchSmoke(t *testing.T) {
	netnstest.RequireRoot(t)
	eventlock.Churn(t) // its churn and throughput check
	exporter, bench := exportertest.Binary(t), benchBinary(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	statsBefore := bpfStats(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bench, "--sockets=2000", "--runs=2", "--exporter="+exporter,
		"--cpu-window=2s", "--overrun-window=1s", "--timeout=80s",
		"--mode-window=2s", "--mode-runs=1", "--churn=200", "--churn-warmup=1s", "--throughput=20000", "--throughput-window=2s",
		"--namespaces=5")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, stdout.String(), stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{
		"| sockets (requested) | 2,000 |",
		"| `ss -tan` > /dev/null | ",
		"| **our poll: dump + tracking** | ",
		"| **tcpstate_exporter scrape** (GET /metrics) | ",
		"| node_exporter tcpstat scrape | ",
		"overruns counted",
		"| churn while the modes are measured ",
		"| **poll mode** (`--poll.interval=1s`): CPU over 2s, share of a core | **",
		"| **precise mode** (`--mode=precise`): CPU, the exporter's + its BPF program's | **",
		"| **precise / poll CPU** | **",
		"| precise mode: events applied a second; lost (all causes) | ",
		"| precise mode: RSS, anonymous (with no sockets); tracked sockets | ",
		"| **throughput check**, precise mode: 20,000 changes a second asked for 2s | **",
		"| 5 empty network namespaces, `--netns=all` | poll, every 1s | precise | precise/poll |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if _, err := exec.LookPath("prometheus-node-exporter"); err != nil && !strings.Contains(out, "not installed") {
		t.Errorf("node_exporter is not installed but the table does not say so:\n%s", out)
	}
	// Precise mode was measured under churn, and lost nothing.
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`events applied a second; lost \(all causes\) \| [1-9][0-9,]*; 0 lost \|`),
		regexp.MustCompile(`BPF program's \| \*\*[0-9.]+%\*\* \([0-9.]+% \+ [0-9.]*[1-9][0-9.]*%`),
		regexp.MustCompile(`throughput check.*\| \*\*[1-9][0-9,]* a second applied\*\*, 0 lost`),
		regexp.MustCompile(`\| polls in 2s \(median; precise: seconds with a reconciling dump\) \| [1-9][0-9]* \| [0-9]+ \| \|`),
	} {
		if !want.MatchString(out) {
			t.Errorf("table does not match %s:\n%s", want, out)
		}
	}
	if left := leftovers(cmd.Process.Pid, bench, exporter); len(left) > 0 {
		t.Errorf("left behind: %v\nstderr:\n%s", left, stderr.String())
	}
	if after := bpfStats(t); after != statsBefore {
		t.Errorf("%s is %q after the run, was %q", bpfStatsSysctl, after, statsBefore)
	}
}

// bpfStats reads bpfStatsSysctl, which a bench run turns on and must put
// back.
func bpfStats(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(bpfStatsSysctl)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestIntegrationBenchInterrupted stops the benchmark with SIGTERM once its
// population is up and wants it gone within seconds, with everything it
// made.
func TestIntegrationBenchInterrupted(t *testing.T) {
	netnstest.RequireRoot(t)
	eventlock.Churn(t) // its churn and throughput check
	exporter, bench := exportertest.Binary(t), benchBinary(t)
	statsBefore := bpfStats(t)
	var stderr syncBuffer
	cmd := exec.Command(bench, "--sockets=20000", "--exporter="+exporter, "--timeout=80s")
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(stderr.String(), "population built") {
		select {
		case err := <-done:
			t.Fatalf("exited before its population was built: %v\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no population within a minute:\n%s", stderr.String())
		}
	}
	if got := bpfStats(t); got != "1" {
		t.Errorf("%s is %q while the benchmark runs, want 1", bpfStatsSysctl, got)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err == nil {
			t.Errorf("exit status 0 after SIGTERM, want a failure")
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("still running 20 s after SIGTERM:\n%s", stderr.String())
	}
	if left := leftovers(cmd.Process.Pid, bench, exporter); len(left) > 0 {
		t.Errorf("left behind: %v\nstderr:\n%s", left, stderr.String())
	}
	if after := bpfStats(t); after != statsBefore {
		t.Errorf("%s is %q after SIGTERM, was %q", bpfStatsSysctl, after, statsBefore)
	}
}
