//go:build linux

package netlinkdiag

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
)

// benchPairs connected pairs make the benchmark population: 5002 sockets
// with the two listeners.
const benchPairs = 2500

// bench is the socket population BenchmarkDumpTCP and BenchmarkSS share, so
// that their numbers can be compared. It outlives any one benchmark, so
// TestMain, not a benchmark's cleanup, tears it down.
var bench struct {
	once       sync.Once
	name, path string
	fds        []int
	err        error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bench.name != "" {
		closeAll(bench.fds)
		if err := netns.DeleteNamed(bench.name); err != nil {
			fmt.Fprintf(os.Stderr, "delete network namespace %s: %v\n", bench.name, err)
		}
	}
	os.Exit(code)
}

// benchPopulation returns the name of the benchmark namespace and how many
// sockets it holds, building it on first use.
func benchPopulation(b *testing.B) (name string, sockets int) {
	netnstest.RequireRoot(b)
	bench.once.Do(func() {
		bench.name, bench.err = newNamespace(fmt.Sprintf("tcpstate-bench-%d", os.Getpid()))
		if bench.err != nil {
			return
		}
		bench.path = filepath.Join("/run/netns", bench.name)
		bench.fds, bench.err = pairs(bench.path, benchPairs)
	})
	if bench.err != nil {
		b.Fatalf("benchmark population: %v", bench.err)
	}
	return bench.name, len(bench.fds)
}

// newNamespace creates a named namespace with loopback up, as netnstest.New
// does but without a test to tie its life to.
func newNamespace(name string) (string, error) {
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread stays in the new namespace and ends
		// with this goroutine.
		runtime.LockOSThread()
		ns, err := netns.NewNamed(name)
		if err != nil {
			errc <- err
			return
		}
		ns.Close()
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		netns.DeleteNamed(name)
		return "", fmt.Errorf("create network namespace %s: %w", name, err)
	}
	return name, nil
}

func BenchmarkDumpTCP(b *testing.B) {
	name, want := benchPopulation(b)
	// A poller's context can be cancelled, which costs the dump a few
	// allocations (the watch that cuts a receive short), none per socket.
	cancellable, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, bc := range []struct {
		name string
		req  Request
		ctx  context.Context
	}{
		{"legacy", Request{}, context.Background()},
		{"legacy/cancellable-context", Request{}, cancellable},
		{"per-family", Request{PerFamily: true}, context.Background()},
		{"legacy+tcp_info", Request{Extensions: ExtInfo}, context.Background()},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c, err := Dial(Options{NetNS: name})
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			n, runs := 0, 0
			count := func(*Socket) error { n++; return nil }
			b.ReportAllocs()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for b.Loop() {
				n = 0
				if err := c.DumpTCP(bc.ctx, bc.req, count); err != nil {
					b.Fatal(err)
				}
				if n != want {
					b.Fatalf("%d sockets, want %d", n, want)
				}
				runs++
			}
			runtime.ReadMemStats(&after)
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(runs*want), "ns/socket")
			b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(runs*want), "allocs/socket")
			b.ReportMetric(float64(want), "sockets")
		})
	}
}

// BenchmarkSS times `ip netns exec <ns> ss -tan` on the population
// BenchmarkDumpTCP dumps, as the yardstick for it.
func BenchmarkSS(b *testing.B) {
	name, want := benchPopulation(b)
	if _, err := exec.LookPath("ss"); err != nil {
		b.Skip("ss not installed")
	}
	runs := 0
	for b.Loop() {
		argv := netnstest.Exec(name, "ss", "-tan")
		if err := exec.Command(argv[0], argv[1:]...).Run(); err != nil { // output to /dev/null
			b.Fatal(err)
		}
		runs++
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(runs*want), "ns/socket")
	b.ReportMetric(float64(want), "sockets")
}
