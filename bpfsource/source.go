package bpfsource

import (
	"context"
	"errors"
	"fmt"
)

// ErrUnsupported is wrapped by the error of Open when the kernel or the
// platform lacks something the program needs: BTF, BTF-enabled tracepoint
// programs (tp_btf), BPF ring buffers, the inet_sock_set_state tracepoint,
// or Linux itself. errors.Is(ErrUnsupported, errors.ErrUnsupported) holds.
var ErrUnsupported = fmt.Errorf("bpfsource: not supported: %w", errors.ErrUnsupported)

// Source is the BPF program attached to the inet_sock_set_state tracepoint,
// its ring buffer, and a reader of it. It sees the TCP sockets of every
// network namespace on the host. Its methods are safe for concurrent use.
type Source struct {
	s *source
}

// Open loads the program with the options' ring buffer size and wakeup
// threshold and attaches it: from then on every TCP state change on the host
// is recorded until Close. It needs CAP_BPF and CAP_PERFMON (or
// CAP_SYS_ADMIN) and a kernel with BTF, tp_btf programs and ring buffers
// (Linux 5.12 or later, for the socket cookie in tracing programs).
//
// The error says which step failed. It wraps ErrUnsupported when the kernel
// lacks a feature, and answers errors.Is(err, os.ErrPermission) when the
// kernel refused for lack of privileges (EPERM or EACCES outside the
// verifier's own rejection of the program). An invalid Options is reported
// before anything is loaded.
func Open(opts Options) (*Source, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	s, err := open(opts, ipprotoTCP)
	if err != nil {
		return nil, err
	}
	return &Source{s: s}, nil
}

// Read hands the events to fn in batches, in the order they leave the ring
// buffer, until ctx ends or Close is called. The batch and its Events are
// reused: fn must copy what it keeps past its return. Read waits for a
// batch at most Options.ReadInterval, or less when enough events pend to
// wake it.
//
// Events of one socket arrive in the order they happened; events of
// different sockets changing state at once on different CPUs may arrive
// slightly out of time order (order by Event.Time where it matters). A record that does not decode is
// skipped and counted in Losses.Malformed.
//
// Read returns ctx.Err() when ctx ends, an error wrapping os.ErrClosed when
// the Source is closed (also when it already was), and any other error of
// the ring buffer. Only one Read runs at a time: a second one waits for the
// first to return.
func (s *Source) Read(ctx context.Context, fn func([]Event)) error {
	return s.s.read(ctx, fn)
}

// Sync returns a channel that is closed once Read has handed fn every event
// recorded before the call: a consumer that applies the batches fn gets,
// and then reads the kernel's tables, sees nothing twice. It wakes a
// waiting Read; without a Read running, the channel is never closed.
func (s *Source) Sync() <-chan struct{} {
	return s.s.sync()
}

// Losses are the events the Source could not deliver, counted since Open.
// In a healthy run they stay zero; any increase means state changes were
// missed and whoever builds state from the events must repair it another
// way (a sock_diag dump).
type Losses struct {
	// RingFull counts state changes the program saw but could not record,
	// because the ring buffer had no room (the reader fell behind by more
	// than Options.RingBytes), summed over CPUs.
	RingFull uint64
	// RecursionMisses counts runs of the program the kernel skipped
	// because the program was already running on that CPU (a state change
	// inside an interrupt of another one); each is a state change never
	// seen. It is the program's recursion_misses, as bpftool prog show
	// reports it.
	RecursionMisses uint64
	// Malformed counts records that Read could not decode and skipped. It
	// is zero unless the program and the decoder disagree.
	Malformed uint64
}

// Losses returns the losses counted since Open. It fails only if the
// kernel's counters cannot be read, and after Close.
func (s *Source) Losses() (Losses, error) {
	return s.s.losses()
}

// Close detaches the program and frees the program, its maps and the
// reader; a Read in progress returns. Closing again does nothing and returns
// nil.
func (s *Source) Close() error {
	return s.s.close()
}
