package collector

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// benchSizes are the tracked-socket counts the tracker benchmarks run at.
var benchSizes = []int{10_000, 100_000, 1_000_000}

// population returns n sockets as a busy host's dump shows them: 90%
// ESTABLISHED, 2.5% CLOSE_WAIT, 2.5% FIN_WAIT_2 and 5% TIME_WAIT (with the
// kernel's timer), a quarter IPv6; half on 20 listening ports, half on
// ephemeral ports (the client side); cookies allocated in order, as the
// kernel does, but reported in hash-bucket order, that is shuffled, after
// the listeners.
func population(n int) []netlinkdiag.Socket {
	rng := rand.New(rand.NewPCG(1, 2))
	socks := make([]netlinkdiag.Socket, n)
	const listeners = 20
	for i := range socks {
		s := &socks[i]
		s.Family = unix.AF_INET
		addr := netip.AddrFrom4([4]byte{127, 0, 0, 1})
		if i%4 == 3 {
			s.Family, addr = unix.AF_INET6, netip.IPv6Loopback()
		}
		port := uint16(8000 + i%listeners)
		if i%2 == 1 {
			port = uint16(32768 + (i*7919)%28232)
		}
		s.Src = netip.AddrPortFrom(addr, port)
		if i >= listeners {
			// Clients of the listeners come from many ports; the client
			// side goes to one of 64 upstreams.
			s.Dst = netip.AddrPortFrom(addr, uint16(32768+(i*104729)%28232))
			if i%2 == 1 {
				s.Dst = netip.AddrPortFrom(addr, uint16(9000+i%64))
			}
		}
		s.Cookie = uint64(4096 + i)
		switch p := i % 40; {
		case i < listeners:
			s.State = netlinkdiag.StateListen
		case p == 0:
			s.State = netlinkdiag.StateCloseWait
		case p == 1:
			s.State = netlinkdiag.StateFinWait2
		case p < 4:
			s.State = netlinkdiag.StateTimeWait
			s.Timer = netlinkdiag.TimerTimeWait
			s.Expires = uint32(rng.IntN(60_000))
		default:
			s.State = netlinkdiag.StateEstablished
		}
	}
	rest := socks[listeners:]
	rng.Shuffle(len(rest), func(i, j int) { rest[i], rest[j] = rest[j], rest[i] })
	return socks
}

// apply feeds one complete dump of socks, taken at now, to t, batched
// as the poller batches them.
func apply(t *Tracker, now int64, socks []netlinkdiag.Socket) PollResult {
	t.Begin(now)
	var obs [BatchLen]Observation
	var dup [BatchLen]bool
	for i := 0; i < len(socks); i += BatchLen {
		n := min(BatchLen, len(socks)-i)
		for k := range n {
			setObservation(&obs[k], &socks[i+k], now)
		}
		t.ObserveBatch(obs[:n], dup[:n])
	}
	return t.Commit()
}

// benchEpoch is a CLOCK_MONOTONIC reading to start benchmarks from.
const benchEpoch = int64(1_700_000) * int64(time.Second)

// BenchmarkTrackerSteady applies a dump in which every socket is already
// tracked in the state it was in: the tracker's cost on a quiet host. It
// must not allocate.
func BenchmarkTrackerSteady(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("sockets=%d", n), func(b *testing.B) {
			socks := population(n)
			tr := NewTracker(n, func(State, time.Duration) {})
			now := benchEpoch
			apply(tr, now, socks)
			b.ReportAllocs()
			for b.Loop() {
				now += int64(time.Second)
				if res := apply(tr, now, socks); res.Tracked != n {
					b.Fatalf("tracked %d, want %d", res.Tracked, n)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/socket")
		})
	}
}

// BenchmarkTrackerChurn replaces a tenth of the sockets at every poll: the
// replaced ones vanish (to CLOSED, once a second dump confirms it) and as
// many new ones appear.
func BenchmarkTrackerChurn(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("sockets=%d", n), func(b *testing.B) {
			socks := population(n)
			tr := NewTracker(n+n/5, func(State, time.Duration) {})
			now := benchEpoch
			apply(tr, now, socks)
			next, off, churn := uint64(4096+n), 0, n/10
			b.ReportAllocs()
			for b.Loop() {
				for i := range churn {
					socks[(off+i)%n].Cookie = next
					next++
				}
				off = (off + churn) % n
				now += int64(time.Second)
				// The sockets replaced a poll ago are missing, not yet closed.
				if res := apply(tr, now, socks); res.Tracked > n+churn || res.Missing > churn {
					b.Fatalf("tracked %d, missing %d; want at most %d and %d", res.Tracked, res.Missing, n+churn, churn)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/socket")
		})
	}
}

// BenchmarkTrackerMemory reports the memory a tracker holds per tracked
// socket, its heap and its mapped table, after the first poll and after
// twenty polls that each replaced a tenth of the sockets (the tenth
// replaced last still tracked, missing once).
func BenchmarkTrackerMemory(b *testing.B) {
	for _, n := range benchSizes[1:] {
		for _, polls := range []int{1, 20} {
			b.Run(fmt.Sprintf("sockets=%d/polls=%d", n, polls), func(b *testing.B) {
				socks := population(n)
				var perSocket float64
				for b.Loop() {
					before := heapAlloc()
					tr := NewTracker(n+n/5, nil)
					now := benchEpoch
					next := uint64(4096 + n)
					for p := range polls {
						if p > 0 {
							for i := range n / 10 {
								socks[(p*(n/10)+i)%n].Cookie = next
								next++
							}
						}
						apply(tr, now, socks)
						now += int64(time.Second)
					}
					after := heapAlloc()
					if want := n + min(polls-1, 1)*(n/10); tr.Len() != want {
						b.Fatalf("tracked %d, want %d", tr.Len(), want)
					}
					perSocket = float64(after-before+int64(tr.sockets.bytes())) / float64(tr.Len())
					runtime.KeepAlive(tr)
				}
				b.ReportMetric(perSocket, "B/socket")
			})
		}
	}
}

// heapAlloc returns the live heap after a full collection.
func heapAlloc() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}

// replayDumper hands the same dump to every poll.
type replayDumper struct{ socks []netlinkdiag.Socket }

func (d *replayDumper) DumpTCP(_ context.Context, _ netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	for i := range d.socks {
		if err := fn(&d.socks[i]); err != nil {
			return err
		}
	}
	return nil
}

// BenchmarkPollerSteady is a whole poll minus the kernel: the dump
// replayed from memory, the tracker and the port breakdown updated, a
// snapshot published. Its allocations are per poll, not per socket.
func BenchmarkPollerSteady(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("sockets=%d", n), func(b *testing.B) {
			p := NewPoller(&replayDumper{population(n)}, Config{Interval: time.Second, MaxTracked: n, PortTop: 20})
			ctx := context.Background()
			if err := p.Poll(ctx); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if err := p.Poll(ctx); err != nil {
					b.Fatal(err)
				}
			}
			if got := p.Snapshot().Tracked; got != n {
				b.Fatalf("tracked %d, want %d", got, n)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/socket")
		})
	}
}

// BenchmarkApplyEvents maps kernel state changes and applies them, as
// precise mode does between dumps: 100,000 standing sockets and a stream
// of short connections, each five events from connect to its TIME_WAIT
// hand-over, at 100,000 events a second of the events' own clock, with a
// Refresh (which expires the remnants) every second of it, as the
// exporter publishes. The remnants pile up to a minute of them, 1.2
// million, as on a host that busy. It must not allocate per event.
func BenchmarkApplyEvents(b *testing.B) {
	const standing = 100_000
	tr := NewTracker(1<<20, func(State, time.Duration) {})
	apply(tr, benchEpoch, population(standing))
	steps := [...][2]uint8{
		{netlinkdiag.StateClose, netlinkdiag.StateSynSent},
		{netlinkdiag.StateSynSent, netlinkdiag.StateEstablished},
		{netlinkdiag.StateEstablished, netlinkdiag.StateFinWait1},
		{netlinkdiag.StateFinWait1, netlinkdiag.StateFinWait2},
		{netlinkdiag.StateFinWait2, netlinkdiag.StateClose},
	}
	now := benchEpoch + int64(time.Second)
	cookie := uint64(1 << 40)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		st := steps[i%len(steps)]
		k := KernelTransition{At: now, Cookie: cookie, Family: unix.AF_INET, Old: st[0], New: st[1]}
		if t, ok := k.Transition(); ok {
			tr.Apply(t)
		}
		now += int64(10 * time.Microsecond) // 100,000 events a second
		if i++; i%len(steps) == 0 {
			cookie++
		}
		if i%100_000 == 0 {
			tr.Refresh(now)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/event")
}

// BenchmarkPreciseSecond is one second of precise mode between dumps, as
// the benchmark host sees it: 200,000 standing sockets and 1000 new
// connections a second, each ten events (client and server end, both on
// the host) that leave a TIME_WAIT remnant for a minute (60,000 of them,
// levelled off before timing starts), applied in the feed's batches and
// published once a second. ns/op is the CPU one second of it costs.
func BenchmarkPreciseSecond(b *testing.B) {
	const (
		standing = 200_000
		conns    = 1000
		batch    = 1024
	)
	now := benchEpoch
	p := NewPoller(&replayDumper{population(standing)}, Config{
		Interval: 30 * time.Second, MaxTracked: 1 << 20,
		Mono: func() int64 { return now }, Now: func() time.Time { return time.Unix(0, now) },
		ObserveStay: func(State, time.Duration) {},
	})
	if err := p.Poll(context.Background()); err != nil {
		b.Fatal(err)
	}
	src := netip.MustParseAddrPort("127.0.0.1:40000")
	dst := netip.MustParseAddrPort("127.0.0.1:8000")
	steps := [...]struct {
		old, new uint8
		server   bool
	}{
		{netlinkdiag.StateClose, netlinkdiag.StateSynSent, false},
		{netlinkdiag.StateListen, netlinkdiag.StateSynRecv, true},
		{netlinkdiag.StateSynSent, netlinkdiag.StateEstablished, false},
		{netlinkdiag.StateSynRecv, netlinkdiag.StateEstablished, true},
		{netlinkdiag.StateEstablished, netlinkdiag.StateFinWait1, false},
		{netlinkdiag.StateEstablished, netlinkdiag.StateCloseWait, true},
		{netlinkdiag.StateFinWait1, netlinkdiag.StateFinWait2, false},
		{netlinkdiag.StateCloseWait, netlinkdiag.StateLastAck, true},
		{netlinkdiag.StateFinWait2, netlinkdiag.StateClose, false}, // to its TIME_WAIT remnant
		{netlinkdiag.StateLastAck, netlinkdiag.StateClose, true},
	}
	events := make([]KernelTransition, 0, batch)
	cookie := uint64(1 << 40)
	second := func() {
		for c := range conns {
			at := now + int64(c)*int64(time.Second)/conns
			for i, st := range steps {
				k := KernelTransition{At: at + int64(i)*int64(time.Millisecond), Cookie: cookie, Family: unix.AF_INET,
					Old: st.old, New: st.new, Src: src, Dst: dst, FinReceived: st.new == netlinkdiag.StateClose}
				if st.server {
					k.Cookie++
					k.Src, k.Dst = dst, src
				}
				if events = append(events, k); len(events) == batch {
					p.ApplyEvents(events)
					events = events[:0]
				}
			}
			cookie += 2
		}
		p.ApplyEvents(events)
		events = events[:0]
		now += int64(time.Second)
		p.Publish()
	}
	for range 61 {
		second()
	}
	if tw := p.Snapshot().Sockets[IPv4][TimeWait]; tw < 60_000 {
		b.Fatalf("%d sockets in TIME_WAIT, want the remnants' 60,000 and more", tw)
	}
	b.ReportAllocs()
	for b.Loop() {
		second()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e7, "%core")
}
