package collector_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/internal/loadtest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// The faults here reach a real Poller the way they reach it in production:
// as bytes from the kernel, decoded by netlinkdiag.Parse, or as the errors
// netlinkdiag.Conn returns. The properties checked after each fault:
//
//   - the poll is counted under the fault's reason;
//   - the snapshot keeps the gauges of the last complete poll (time,
//     counts, tracked sockets): a partial dump is never published as whole;
//   - nothing is inferred from a partial dump (no socket is declared gone);
//   - the next whole dump is published, with exact counts.

const (
	replySeq = 1
	replyPID = 4242
)

// Kernel reply encoding, as in the UAPI headers (native endian).
const (
	nlmsgError      = 2
	nlmsgDone       = 3
	tcpdiagGetsock  = 18
	nlmFMulti       = 0x2
	nlmFDumpIntr    = 0x10
	nlmsgHdrLen     = 16
	inetDiagMsgLen  = 72
	unknownState    = 14 // a state number no kernel had when this was written
	afInet, afInet6 = 2, 10
)

func header(typ, flags uint16, payloadLen int) []byte {
	h := make([]byte, nlmsgHdrLen, nlmsgHdrLen+payloadLen)
	ne := binary.NativeEndian
	ne.PutUint32(h[0:], uint32(nlmsgHdrLen+payloadLen))
	ne.PutUint16(h[4:], typ)
	ne.PutUint16(h[6:], flags)
	ne.PutUint32(h[8:], replySeq)
	ne.PutUint32(h[12:], replyPID)
	return h
}

// sock is one socket as the kernel reports it.
type sock struct {
	fam    uint8
	state  uint8
	cookie uint64
}

func diag(s sock, flags uint16) []byte {
	p := make([]byte, inetDiagMsgLen)
	p[0], p[1] = s.fam, s.state
	p[8], p[11] = 127, 1
	binary.BigEndian.PutUint16(p[4:], 40000+uint16(s.cookie))
	binary.NativeEndian.PutUint32(p[44:], uint32(s.cookie))
	binary.NativeEndian.PutUint32(p[48:], uint32(s.cookie>>32))
	return append(header(tcpdiagGetsock, nlmFMulti|flags, len(p)), p...)
}

func errnoMsg(typ uint16, errno syscall.Errno) []byte {
	p := make([]byte, 4+nlmsgHdrLen)
	binary.NativeEndian.PutUint32(p, uint32(-int32(errno)))
	return append(header(typ, nlmFMulti, len(p)), p...)
}

// datagram lays out a whole reply datagram holding socks and, if end is
// set, the final NLMSG_DONE, every message carrying flags.
func datagram(socks []sock, flags uint16, end bool) []byte {
	var b []byte
	for _, s := range socks {
		b = append(b, diag(s, flags)...)
	}
	if end {
		b = append(b, header(nlmsgDone, nlmFMulti|flags, 4)...)
		b = append(b, 0, 0, 0, 0) // the dump's status: success
	}
	return b
}

// reply is one scripted dump: the datagrams the kernel sends, and a
// receive error after them (the socket failing mid-dump), if any.
type reply struct {
	datagrams [][]byte
	recvErr   error
	took      time.Duration // clock advance during the dump
}

// whole is a complete, clean dump of socks, split over two datagrams.
func whole(socks ...sock) reply {
	h := len(socks) / 2
	return reply{datagrams: [][]byte{datagram(socks[:h], 0, false), datagram(socks[h:], 0, true)}}
}

// replayDumper plays replies through netlinkdiag.Parse the way
// netlinkdiag.Conn does: datagram by datagram until NLMSG_DONE, an error,
// or the end of the datagrams.
type replayDumper struct {
	mu      sync.Mutex
	replies []reply
	calls   int
	clock   *clock
}

func (d *replayDumper) DumpTCP(ctx context.Context, _ netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.calls >= len(d.replies) {
		return fmt.Errorf("script exhausted after %d dumps", d.calls)
	}
	r := d.replies[d.calls]
	d.calls++
	if d.clock != nil {
		d.clock.advance(r.took)
	}
	interrupted := false
	for _, b := range r.datagrams {
		done, intr, err := netlinkdiag.Parse(b, replySeq, replyPID, fn)
		interrupted = interrupted || intr
		if err != nil {
			return err
		}
		if done {
			if interrupted {
				return netlinkdiag.ErrDumpInterrupted
			}
			return nil
		}
	}
	if r.recvErr != nil {
		return r.recvErr
	}
	return errors.New("replay: datagrams ended before NLMSG_DONE")
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func est(cookie uint64) sock { return sock{afInet, netlinkdiag.StateEstablished, cookie} }

func est6(cookie uint64) sock { return sock{afInet6, netlinkdiag.StateEstablished, cookie} }

func TestFaults(t *testing.T) {
	before := []sock{est(1), est(2), est6(3), {afInet, netlinkdiag.StateListen, 4}}
	after := []sock{est(1), est(2), est6(3), {afInet, netlinkdiag.StateListen, 4}, est(5)}
	partial := []sock{est(1)}
	truncated := datagram(partial, 0, false)
	truncated = append(truncated, diag(est(2), 0)[:nlmsgHdrLen+20]...) // nlmsg_len says 88 bytes
	badType := append(datagram(partial, 0, false), header(77, nlmFMulti, 0)...)

	for _, c := range []struct {
		name   string
		fault  []reply // the faulty poll's dumps (two for a retried one)
		reason collector.Reason
		count  uint64
	}{
		{
			name:   "kernel refuses the dump (EPERM)",
			fault:  []reply{{datagrams: [][]byte{errnoMsg(nlmsgError, syscall.EPERM)}}},
			reason: collector.ReasonPermission, count: 1,
		},
		{
			name:   "ENOBUFS reported at the end of the dump",
			fault:  []reply{{datagrams: [][]byte{datagram(partial, 0, false), errnoMsg(nlmsgDone, syscall.ENOBUFS)}}},
			reason: collector.ReasonNoBuffer, count: 1,
		},
		{
			name:   "receive fails with ENOBUFS mid-dump",
			fault:  []reply{{datagrams: [][]byte{datagram(partial, 0, false)}, recvErr: fmt.Errorf("netlinkdiag: receive: %w", syscall.ENOBUFS)}},
			reason: collector.ReasonNoBuffer, count: 1,
		},
		{
			name:   "receive fails otherwise mid-dump",
			fault:  []reply{{datagrams: [][]byte{datagram(partial, 0, false)}, recvErr: fmt.Errorf("netlinkdiag: no reply from the kernel within 10s: %w", os.ErrDeadlineExceeded)}},
			reason: collector.ReasonDump, count: 1,
		},
		{
			name:   "kernel has no TCP diag handler (ENOENT)",
			fault:  []reply{{datagrams: [][]byte{errnoMsg(nlmsgError, syscall.ENOENT)}}},
			reason: collector.ReasonUnsupported, count: 1,
		},
		{
			name:   "kernel does not support the request (EOPNOTSUPP)",
			fault:  []reply{{datagrams: [][]byte{errnoMsg(nlmsgDone, syscall.EOPNOTSUPP)}}},
			reason: collector.ReasonUnsupported, count: 1,
		},
		{
			name:   "truncated message",
			fault:  []reply{{datagrams: [][]byte{truncated}}},
			reason: collector.ReasonMalformed, count: 1,
		},
		{
			name:   "unexpected message type",
			fault:  []reply{{datagrams: [][]byte{badType}}},
			reason: collector.ReasonMalformed, count: 1,
		},
		{
			name:   "observed namespace deleted",
			fault:  []reply{{recvErr: fmt.Errorf("netlinkdiag: network namespace /run/netns/x vanished: %w", netlinkdiag.ErrNamespaceGone)}},
			reason: collector.ReasonNamespace, count: 1,
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := &clock{now: time.Unix(1_700_000_000, 0)}
			script := []reply{whole(before...)}
			script = append(script, c.fault...)
			script = append(script, whole(after...))
			d := &replayDumper{replies: script, clock: clk}
			p := collector.NewPoller(d, collector.Config{Interval: time.Second, MaxTracked: 100, Now: clk.Now})
			ctx := context.Background()

			if err := p.Poll(ctx); err != nil {
				t.Fatal(err)
			}
			good := p.Snapshot()
			clk.advance(time.Second)
			err := p.Poll(ctx)
			if err == nil || collector.Classify(err) != c.reason {
				t.Fatalf("faulty poll returned %v, want an error classified %v", err, c.reason)
			}
			s := p.Snapshot()
			if s.Errors[c.reason] != c.count || sum(s.Errors) != c.count {
				t.Errorf("errors %v, want %d under %v only", s.Errors, c.count, c.reason)
			}
			if s.Polls != 2 {
				t.Errorf("polls = %d, want 2", s.Polls)
			}
			if !s.Time.Equal(good.Time) || s.PollResult != good.PollResult {
				t.Errorf("the faulty poll replaced the last complete one:\n got %v %+v\nwant %v %+v", s.Time, s.PollResult, good.Time, good.PollResult)
			}
			if n := gone(s); n != 0 {
				t.Errorf("%d sockets declared gone from a partial dump", n)
			}

			clk.advance(time.Second)
			if err := p.Poll(ctx); err != nil {
				t.Fatalf("poll after the fault went away: %v", err)
			}
			s = p.Snapshot()
			if !s.Time.After(good.Time) {
				t.Errorf("recovered poll not published: time %v, last good %v", s.Time, good.Time)
			}
			want := counts(after)
			if s.Sockets != want || s.Tracked != len(after) {
				t.Errorf("after recovery: sockets %v, tracked %d; want %v, %d", s.Sockets, s.Tracked, want, len(after))
			}
			if n := gone(s); n != 0 {
				t.Errorf("%d sockets declared gone although all stayed", n)
			}
			if n := s.Transitions[collector.Closed][collector.Established]; n != 1 {
				t.Errorf("CLOSED->ESTABLISHED = %d, want 1 (socket 5 only)", n)
			}
		})
	}
}

func sum(e [collector.NumReasons]uint64) uint64 {
	var n uint64
	for _, v := range e {
		n += v
	}
	return n
}

// gone counts transitions to CLOSED.
func gone(s *collector.Snapshot) uint64 {
	var n uint64
	for from := range s.Transitions {
		n += s.Transitions[from][collector.Closed]
	}
	return n
}

func counts(socks []sock) collector.Counts {
	var c collector.Counts
	for _, s := range socks {
		st, _ := collector.FromKernel(s.state)
		fam := collector.IPv4
		if s.fam == afInet6 {
			fam = collector.IPv6
		}
		c[fam][st]++
	}
	return c
}

// TestFaultFlaggedDumpIsUsed: Linux never flags TCP dumps NLM_F_DUMP_INTR,
// though they may be inconsistent; should a kernel flag one, it is used
// like any other (duplicates dropped, a miss not taken for a close) and
// the flag counted, not retried.
func TestFaultFlaggedDumpIsUsed(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	all := []sock{est(1), est(2), est6(3)}
	d := &replayDumper{clock: clk, replies: []reply{
		whole(all...),
		{datagrams: [][]byte{datagram(all[:1], 0, false), datagram(all[:2], nlmFDumpIntr, true)}},
	}}
	p := collector.NewPoller(d, collector.Config{MaxTracked: 100, Now: clk.Now})
	for range 2 {
		if err := p.Poll(context.Background()); err != nil {
			t.Fatalf("a flagged dump is whole: %v", err)
		}
		clk.advance(time.Second)
	}
	s := p.Snapshot()
	if s.Sockets != counts(all) || s.Missing != 1 || d.calls != 2 || gone(s) != 0 {
		t.Errorf("sockets %v, missing %d, dumps %d, gone %d; want %v, 1, 2, 0", s.Sockets, s.Missing, d.calls, gone(s), counts(all))
	}
	want := [collector.NumInconsistencies]uint64{collector.InconsistencyDuplicate: 1, collector.InconsistencyInterrupted: 1}
	if s.Inconsistencies != want {
		t.Errorf("inconsistencies %v, want %v", s.Inconsistencies, want)
	}
}

func TestFaultUnknownKernelState(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	odd := sock{afInet, unknownState, 9}
	known := []sock{est(1), est6(2)}
	d := &replayDumper{clock: clk, replies: []reply{
		whole(append([]sock{odd}, known...)...),
		whole(append([]sock{odd}, known...)...),
		whole(append([]sock{{afInet, netlinkdiag.StateCloseWait, 9}}, known...)...),
	}}
	p := collector.NewPoller(d, collector.Config{MaxTracked: 100, Now: clk.Now})
	for i := range 2 {
		if err := p.Poll(context.Background()); err != nil {
			t.Fatalf("a dump with a socket in an unknown state is whole, not a failure: %v", err)
		}
		s := p.Snapshot()
		if s.Sockets != counts(known) || s.Unknown != 1 || s.Tracked != 2 {
			t.Errorf("poll %d: sockets %v, unknown %d, tracked %d; want the known ones, 1, 2", i, s.Sockets, s.Unknown, s.Tracked)
		}
		if sum(s.Errors) != 0 {
			t.Errorf("poll %d: errors %v, want none: a socket in an unknown state fails no poll", i, s.Errors)
		}
		clk.advance(time.Second)
	}
	// The socket moves to a state we know: counted from then on.
	if err := p.Poll(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := p.Snapshot()
	want := counts(append([]sock{{afInet, netlinkdiag.StateCloseWait, 9}}, known...))
	if s.Sockets != want || s.Unknown != 0 || sum(s.Errors) != 0 {
		t.Errorf("after the state became known: sockets %v, unknown %d, errors %v", s.Sockets, s.Unknown, s.Errors)
	}
}

func TestFaultSlowPollCountedAsOverrun(t *testing.T) {
	clk := &clock{now: time.Unix(1_700_000_000, 0)}
	all := []sock{est(1)}
	slow := whole(all...)
	slow.took = 3 * time.Second
	d := &replayDumper{clock: clk, replies: []reply{whole(all...), slow, whole(all...)}}
	p := collector.NewPoller(d, collector.Config{Interval: time.Second, MaxTracked: 100, Now: clk.Now})
	for range 3 {
		if err := p.Poll(context.Background()); err != nil {
			t.Fatal(err)
		}
		clk.advance(time.Second)
	}
	s := p.Snapshot()
	if s.Overruns != 1 || sum(s.Errors) != 0 || s.Polls != 3 || s.Sockets != counts(all) {
		t.Errorf("overruns %d, errors %v, polls %d, sockets %v; want 1, none, 3, exact", s.Overruns, s.Errors, s.Polls, s.Sockets)
	}
}

// slowDumper delays the first socket of every dump while slow is set.
type slowDumper struct {
	collector.Dumper
	delay time.Duration
	slow  atomic.Bool
	dumps atomic.Int64
}

func (d *slowDumper) DumpTCP(ctx context.Context, req netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	d.dumps.Add(1)
	first := true
	return d.Dumper.DumpTCP(ctx, req, func(s *netlinkdiag.Socket) error {
		if first && d.slow.Load() {
			first = false
			time.Sleep(d.delay)
		}
		return fn(s)
	})
}

// TestFaultSlowPollSkipsTicks runs a real poll loop whose polls take five
// intervals: the ticks they overrun are dropped, never queued, and polls
// return to the interval when the slowness goes away.
func TestFaultSlowPollSkipsTicks(t *testing.T) {
	const interval = 20 * time.Millisecond
	d := &slowDumper{Dumper: &loopDumper{socks: []sock{est(1)}}, delay: 5 * interval}
	d.slow.Store(true)
	p := collector.NewPoller(d, collector.Config{Interval: interval, MaxTracked: 100})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.Run(ctx); close(done) }()

	time.Sleep(40 * interval)
	slowPolls := d.dumps.Load()
	d.slow.Store(false)
	time.Sleep(20 * interval)
	cancel()
	<-done
	fastPolls := d.dumps.Load() - slowPolls
	s := p.Snapshot()
	t.Logf("%d slow polls in 40 intervals, %d fast in 20; %d overruns", slowPolls, fastPolls, s.Overruns)
	// 40 intervals of 5-interval polls: 8 polls, give or take the one
	// tick queued behind each; never 40.
	if slowPolls > 10 || slowPolls < 4 {
		t.Errorf("%d polls in 40 intervals of 5-interval polls, want about 8: ticks queued or lost", slowPolls)
	}
	if s.Overruns < uint64(slowPolls)-1 {
		t.Errorf("%d overruns for %d slow polls", s.Overruns, slowPolls)
	}
	if fastPolls < 10 {
		t.Errorf("only %d polls in 20 intervals after the slowness went: not recovered", fastPolls)
	}
	if sum(s.Errors) != 0 || s.Sockets != counts([]sock{est(1)}) {
		t.Errorf("a slow poll is not a failed one: errors %v, sockets %v", s.Errors, s.Sockets)
	}
}

// loopDumper replays the same whole dump forever.
type loopDumper struct{ socks []sock }

func (d *loopDumper) DumpTCP(ctx context.Context, req netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	r := &replayDumper{replies: []reply{whole(d.socks...)}}
	return r.DumpTCP(ctx, req, fn)
}

// cancellingDumper cancels the poll's context part way through a dump, as
// SIGTERM does, and returns what netlinkdiag.Conn returns then.
type cancellingDumper struct {
	collector.Dumper
	cancel context.CancelFunc
	armed  bool
}

func (d *cancellingDumper) DumpTCP(ctx context.Context, req netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	if !d.armed {
		return d.Dumper.DumpTCP(ctx, req, fn)
	}
	err := d.Dumper.DumpTCP(ctx, req, func(s *netlinkdiag.Socket) error {
		d.cancel()
		return fn(s)
	})
	if err == nil {
		err = ctx.Err()
	}
	return err
}

// TestFaultShutdownMidPollIsNotAPollError: a poll cut short because the
// exporter is stopping is neither a poll error nor worth a warning, and
// publishes nothing.
func TestFaultShutdownMidPollIsNotAPollError(t *testing.T) {
	var log bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&log, nil))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d := &cancellingDumper{Dumper: &loopDumper{socks: []sock{est(1), est(2)}}, cancel: cancel}
	p := collector.NewPoller(d, collector.Config{MaxTracked: 100, Logger: logger})
	if err := p.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	d.armed = true
	if err := p.Poll(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("poll cut short: %v, want context.Canceled", err)
	}
	s := p.Snapshot()
	if sum(s.Errors) != 0 {
		t.Errorf("a poll cut short by shutdown counted as poll errors %v", s.Errors)
	}
	if strings.Contains(log.String(), "level=WARN") {
		t.Errorf("a poll cut short by shutdown logged a warning:\n%s", log.String())
	}
	if s.Sockets != counts([]sock{est(1), est(2)}) {
		t.Errorf("the cut-short poll replaced the last complete one: %v", s.Sockets)
	}
}

// failingDumper makes the callback of one dump of a real Conn fail part
// way, as a receive error would: the Conn must drop that socket and the
// next dump must be whole.
type failingDumper struct {
	collector.Dumper
	failAt atomic.Int64 // fail on this socket of the next dump; 0: never
}

func (d *failingDumper) DumpTCP(ctx context.Context, req netlinkdiag.Request, fn func(*netlinkdiag.Socket) error) error {
	at := d.failAt.Swap(0)
	n := int64(0)
	return d.Dumper.DumpTCP(ctx, req, func(s *netlinkdiag.Socket) error {
		if n++; n == at {
			return fmt.Errorf("netlinkdiag: receive: %w", syscall.ENOBUFS)
		}
		return fn(s)
	})
}

func TestIntegrationFaultMidDumpRealConn(t *testing.T) {
	_, path := netnstest.New(t)
	pop, err := loadtest.NewPopulation(path, 1500) // several datagrams
	if err != nil {
		t.Fatal(err)
	}
	defer pop.Close()
	conn, err := netlinkdiag.Dial(netlinkdiag.Options{NetNS: path})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	d := &failingDumper{Dumper: conn}
	p := collector.NewPoller(d, collector.Config{MaxTracked: 1 << 20})
	ctx := context.Background()
	if err := p.Poll(ctx); err != nil {
		t.Fatal(err)
	}
	good := p.Snapshot()
	if good.Tracked != pop.Sockets() {
		t.Fatalf("tracked %d, want %d", good.Tracked, pop.Sockets())
	}
	d.failAt.Store(700)
	if err := p.Poll(ctx); collector.Classify(err) != collector.ReasonNoBuffer {
		t.Fatalf("poll failing mid-dump: %v", err)
	}
	if s := p.Snapshot(); s.PollResult != good.PollResult || !s.Time.Equal(good.Time) || s.Errors[collector.ReasonNoBuffer] != 1 {
		t.Errorf("after a failure mid-dump: tracked %d at %v, errors %v; want the last good poll and one enobufs", s.Tracked, s.Time, s.Errors)
	}
	for range 3 {
		if err := p.Poll(ctx); err != nil {
			t.Fatalf("poll after the failure: %v", err)
		}
	}
	s := p.Snapshot()
	if s.PollResult.Sockets != good.PollResult.Sockets || s.Tracked != pop.Sockets() || gone(s) != 0 {
		t.Errorf("after recovery: sockets %v, tracked %d, %d gone; want those of the first poll", s.Sockets, s.Tracked, gone(s))
	}
}

// TestIntegrationRunLeavesNoGoroutine runs the real poll loop against a
// real socket table, stops it mid-poll, and checks that every goroutine it
// started has ended.
func TestIntegrationRunLeavesNoGoroutine(t *testing.T) {
	_, path := netnstest.New(t)
	pop, err := loadtest.NewPopulation(path, 2000)
	if err != nil {
		t.Fatal(err)
	}
	defer pop.Close()
	baseline := runtime.NumGoroutine()
	for i := range 5 {
		conn, err := netlinkdiag.Dial(netlinkdiag.Options{NetNS: path})
		if err != nil {
			t.Fatal(err)
		}
		p := collector.NewPoller(conn, collector.Config{Interval: time.Millisecond, MaxTracked: 1 << 20})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { p.Run(ctx); close(done) }()
		time.Sleep(time.Duration(30+7*i) * time.Millisecond)
		cancel()
		select {
		case <-done:
		case <-time.After(time.Second):
			t.Fatalf("Run still running 1 s after cancel")
		}
		if p.Snapshot().Polls == 0 {
			t.Fatalf("run %d: no poll", i)
		}
		conn.Close()
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > baseline && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline {
		buf := make([]byte, 1<<20)
		t.Errorf("%d goroutines, %d before the poll loops ran:\n%s", n, baseline, buf[:runtime.Stack(buf, true)])
	}
}
