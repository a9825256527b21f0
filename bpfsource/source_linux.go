//go:build linux && (386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfsource

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// IP protocols the program can be told to follow; only TCP outside tests.
const (
	ipprotoTCP   = unix.IPPROTO_TCP
	ipprotoMPTCP = unix.IPPROTO_MPTCP
)

// source is the Linux implementation of Source.
type source struct {
	prog     *ebpf.Program
	events   *ebpf.Map
	lossMap  *ebpf.Map
	link     link.Link
	rd       *ringbuf.Reader
	interval time.Duration

	// mu guards closed and the kernel objects against Close.
	mu     sync.Mutex
	closed bool

	// readMu lets one Read run at a time; batch and rec are its own.
	readMu sync.Mutex
	batch  []Event
	rec    ringbuf.Record

	malformed atomic.Uint64

	// syncs waits for Read to have drained the ring since they came.
	syncMu sync.Mutex
	syncs  []syncWaiter
	syncN  atomic.Uint64 // syncs ever asked for; a waiter's seq is its number
}

// syncWaiter is one Sync: closed once the ring was seen empty after it.
type syncWaiter struct {
	seq  uint64
	done chan struct{}
}

func (s *source) sync() <-chan struct{} {
	done := make(chan struct{})
	s.syncMu.Lock()
	n := s.syncN.Load() + 1
	s.syncs = append(s.syncs, syncWaiter{n, done})
	s.syncN.Store(n) // after the append: a reader that sees n finds it
	s.syncMu.Unlock()
	// A waiting ReadInto returns what the ring holds, then ErrFlushed.
	_ = s.rd.Flush()
	return done
}

// synced releases the Syncs asked for up to seq: the ring has since been
// seen empty, and every event read before was handed over.
func (s *source) synced(seq uint64) {
	s.syncMu.Lock()
	defer s.syncMu.Unlock()
	if len(s.syncs) == 0 {
		return
	}
	kept := s.syncs[:0]
	for _, w := range s.syncs {
		if w.seq <= seq {
			close(w.done)
			continue
		}
		kept = append(kept, w)
	}
	clear(s.syncs[len(kept):])
	s.syncs = kept
	if len(kept) > 0 {
		// Their flushes may have merged into the one just seen: flush
		// again, so that the next ReadInto ends the same way.
		_ = s.rd.Flush()
	}
}

// open loads the program, following sockets of the given IP protocol, and
// attaches it.
func open(opts Options, protocol uint16) (_ *source, err error) {
	// No RLIMIT_MEMLOCK to lift: the kernels this program loads on
	// (tp_btf with bpf_get_socket_cookie, 5.12 and later) charge BPF
	// memory to the memory cgroup since 5.11. cilium's rlimit package
	// would also create a probe map at every start of every binary that
	// links it, precise mode or not.
	if _, err := btf.LoadKernelSpec(); err != nil {
		return nil, openFailed("read the kernel's BTF", err)
	}
	if err := features.HaveMapType(ebpf.RingBuf); err != nil {
		return nil, openFailed("check for BPF ring buffers", err)
	}
	// No probe for tracing programs: cilium's loads an fentry program,
	// which kernels in lockdown refuse (EPERM) though tp_btf loads.

	spec, err := loadTcpstate()
	if err != nil {
		return nil, fmt.Errorf("bpfsource: parse the embedded BPF object: %w", err)
	}
	spec.Maps[tcpstateMapEvents].MaxEntries = uint32(opts.RingBytes)
	if err := spec.Variables[tcpstateVarWakeupBytes].Set(uint64(opts.WakeupBytes)); err != nil {
		return nil, fmt.Errorf("bpfsource: set the wakeup threshold: %w", err)
	}
	if err := spec.Variables[tcpstateVarProtocol].Set(protocol); err != nil {
		return nil, fmt.Errorf("bpfsource: set the protocol: %w", err)
	}

	var objs struct {
		tcpstatePrograms
		tcpstateMaps
	}
	if err := spec.LoadAndAssign(&objs, nil); err != nil {
		return nil, openFailed("load the BPF program", err)
	}
	s := &source{
		prog:     objs.InetSockSetState,
		events:   objs.Events,
		lossMap:  objs.Losses,
		interval: opts.ReadInterval,
		batch:    make([]Event, batchEvents),
	}
	defer func() {
		if err != nil {
			_ = s.release()
		}
	}()
	s.link, err = link.AttachTracing(link.TracingOptions{
		Program:    s.prog,
		AttachType: ebpf.AttachTraceRawTp,
	})
	if err != nil {
		return nil, openFailed("attach to the inet_sock_set_state tracepoint", err)
	}
	s.rd, err = ringbuf.NewReader(s.events)
	if err != nil {
		return nil, openFailed("open the ring buffer", err)
	}
	return s, nil
}

// openFailed says which step of open failed and classifies the cause: a
// missing kernel feature wraps ErrUnsupported, a refusal for privileges
// os.ErrPermission. The verifier's rejection of the program, which may
// carry EACCES, is neither: its errno is not passed on.
func openFailed(step string, err error) error {
	var verr *ebpf.VerifierError
	switch {
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, btf.ErrNotFound):
		return &openError{step: step, kind: ErrUnsupported, err: err}
	case errors.As(err, &verr) && len(verr.Log) > 0:
		return &openError{step: step, err: errors.New(verr.Error())}
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return &openError{step: step, kind: os.ErrPermission, err: err,
			hint: "; it needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN)"}
	}
	return &openError{step: step, err: err}
}

// openError is an error of open: the step that failed, its cause, and what
// kind of failure it is (ErrUnsupported, os.ErrPermission, or nil).
type openError struct {
	step string
	kind error
	err  error
	hint string
}

func (e *openError) Error() string {
	return "bpfsource: " + e.step + ": " + e.err.Error() + e.hint
}

func (e *openError) Unwrap() []error {
	if e.kind == nil {
		return []error{e.err}
	}
	return []error{e.kind, e.err}
}

func (s *source) read(ctx context.Context, fn func([]Event)) error {
	s.readMu.Lock()
	defer s.readMu.Unlock()
	// A flush makes a waiting ReadInto return what the ring holds, then
	// ErrFlushed, so that the loop sees ctx end at once.
	stop := context.AfterFunc(ctx, func() { _ = s.rd.Flush() })
	defer stop()

	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		// The deadline makes ReadInto return the records that are there
		// without a wakeup, then os.ErrDeadlineExceeded.
		s.rd.SetDeadline(time.Now().Add(s.interval))
		seq, err := s.readUntilDeadline(ctx, fn)
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, ringbuf.ErrFlushed):
			// The ring ran dry after every Sync up to seq.
			s.synced(seq)
		case err == nil:
		case errors.Is(err, os.ErrClosed):
			return fmt.Errorf("bpfsource: read: %w", os.ErrClosed)
		case ctx.Err() != nil:
			return err
		default:
			return fmt.Errorf("bpfsource: read the ring buffer: %w", err)
		}
	}
}

// readUntilDeadline hands batches to fn until ReadInto fails, as it does at
// the reader's deadline, or until ctx ends, and returns that error, with
// the latest Sync asked for before the ReadInto that failed. It hands over
// a batch when it is full and when the ring has run dry.
func (s *source) readUntilDeadline(ctx context.Context, fn func([]Event)) (uint64, error) {
	n := 0
	for {
		seq := s.syncN.Load()
		if err := s.rd.ReadInto(&s.rec); err != nil {
			if n > 0 {
				fn(s.batch[:n])
			}
			return seq, err
		}
		if !decodeRecord(s.rec.RawSample, &s.batch[n]) {
			s.malformed.Add(1)
			continue
		}
		n++
		if n == len(s.batch) || s.rec.Remaining == 0 {
			fn(s.batch[:n])
			n = 0
			// A busy ring may never run dry.
			if err := ctx.Err(); err != nil {
				return 0, err
			}
		}
	}
}

func (s *source) losses() (Losses, error) {
	l := Losses{Malformed: s.malformed.Load()}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return l, fmt.Errorf("bpfsource: losses: %w", os.ErrClosed)
	}
	var perCPU []uint64
	if err := s.lossMap.Lookup(uint32(0), &perCPU); err != nil {
		return l, fmt.Errorf("bpfsource: read the loss counters: %w", err)
	}
	for _, n := range perCPU {
		l.RingFull += n
	}
	stats, err := s.prog.Stats()
	if err != nil {
		return l, fmt.Errorf("bpfsource: read the program's statistics: %w", err)
	}
	l.RecursionMisses = stats.RecursionMisses
	return l, nil
}

func (s *source) close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	return s.release()
}

// release closes the reader (a Read in progress returns), then detaches the
// program and frees it and its maps.
func (s *source) release() error {
	var errs []error
	if s.rd != nil {
		errs = append(errs, s.rd.Close())
	}
	if s.link != nil {
		errs = append(errs, s.link.Close())
	}
	errs = append(errs, s.prog.Close(), s.events.Close(), s.lossMap.Close())
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("bpfsource: close: %w", err)
	}
	return nil
}
