package exporter

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// replay hands the same dump to every poll.
type replay struct{ socks []netlinkdiag.Socket }

func (r *replay) DumpTCP(_ context.Context, _ netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	for i := range r.socks {
		if err := fn(&r.socks[i]); err != nil {
			return err
		}
	}
	return nil
}

// server returns n sockets of a busy server: 50 listening ports, the
// connections to them, and as many client-side sockets on ephemeral ports.
func server(n int) []netlinkdiag.Socket {
	lo := netip.AddrFrom4([4]byte{127, 0, 0, 1})
	socks := make([]netlinkdiag.Socket, n)
	for i := range socks {
		s := &socks[i]
		s.Family, s.Cookie, s.State = unix.AF_INET, uint64(i+1), netlinkdiag.StateEstablished
		port := uint16(10_000 + i%50)
		switch {
		case i < 50:
			s.State = netlinkdiag.StateListen
		case i%2 == 1:
			port = uint16(32768 + i%28_000)
		case i%40 == 0:
			s.State = netlinkdiag.StateCloseWait
		}
		s.Src = netip.AddrPortFrom(lo, port)
	}
	return socks
}

// polled returns an Exporter over a Poller that has tracked n sockets
// through two polls.
func polled(b *testing.B, n int) *Exporter {
	hist := NewHistograms()
	p := collector.NewPoller(&replay{server(n)}, collector.Config{
		Interval:    time.Second,
		MaxTracked:  n,
		PortTop:     20,
		ObserveStay: hist.ObserveStay,
		ObservePoll: hist.ObservePoll,
	})
	for range 2 {
		if err := p.Poll(context.Background()); err != nil {
			b.Fatal(err)
		}
	}
	if got := p.Snapshot().Tracked; got != n {
		b.Fatalf("tracked %d, want %d", got, n)
	}
	return New(p, hist)
}

// BenchmarkCollect is the exporter's share of a scrape: it reads the latest
// snapshot only, so its cost must not grow with the sockets tracked.
func BenchmarkCollect(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("tracked=%d", n), func(b *testing.B) {
			e := polled(b, n)
			ch := make(chan prometheus.Metric, 1<<14)
			metrics := 0
			b.ReportAllocs()
			for b.Loop() {
				e.Collect(ch)
				if len(ch) == cap(ch) {
					b.Fatal("Collect may have blocked: the channel is full")
				}
				metrics = len(ch)
				for len(ch) > 0 {
					<-ch
				}
			}
			b.ReportMetric(float64(metrics), "metrics")
		})
	}
}

// BenchmarkScrape is a whole scrape minus HTTP: gather the registry and
// encode it as text.
func BenchmarkScrape(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		b.Run(fmt.Sprintf("tracked=%d", n), func(b *testing.B) {
			reg := prometheus.NewRegistry()
			reg.MustRegister(polled(b, n))
			b.ReportAllocs()
			for b.Loop() {
				mfs, err := reg.Gather()
				if err != nil {
					b.Fatal(err)
				}
				enc := expfmt.NewEncoder(io.Discard, expfmt.NewFormat(expfmt.TypeTextPlain))
				for _, mf := range mfs {
					if err := enc.Encode(mf); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}
