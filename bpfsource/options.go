package bpfsource

import (
	"fmt"
	"os"
	"time"
)

// Defaults for the zero fields of Options.
const (
	// DefaultRingBytes is the default size of the ring buffer: room for
	// about 58,000 events.
	DefaultRingBytes = 4 << 20
	// DefaultWakeupBytes is the most that DefaultRingBytes-sized and larger
	// rings let pend before they wake the reader; smaller rings wake it at
	// a quarter full.
	DefaultWakeupBytes = 256 << 10
	// DefaultReadInterval is how often the reader looks at the ring buffer
	// when nothing wakes it.
	DefaultReadInterval = 100 * time.Millisecond
)

// Bounds checked by Options.
const (
	maxRingBytes    = 1 << 30
	minReadInterval = time.Millisecond
)

// RecordBytes is how much of the ring buffer one event takes: the record
// and the kernel's 8-byte header.
const RecordBytes = recordSize + 8

// Options configures a Source. The zero value is the default.
type Options struct {
	// RingBytes is the size of the ring buffer the program writes events
	// to: a power of two, at least one memory page (4096 bytes on most
	// hosts), at most 1 GiB. 0 means DefaultRingBytes. Each event takes
	// RecordBytes; an event that finds the ring full is lost and counted
	// (Losses.RingFull).
	RingBytes int
	// WakeupBytes is how many bytes of events may pend in the ring before
	// the program wakes the reader; below that, events wait for the next
	// ReadInterval tick. Waking the reader for every event costs several
	// times more CPU than the event itself. Between 1 and RingBytes; 0
	// means a quarter of RingBytes, at most DefaultWakeupBytes.
	WakeupBytes int
	// ReadInterval is how often Read looks for events that did not wake
	// it, and so the longest an event waits before Read hands it on. At
	// least a millisecond; 0 means DefaultReadInterval.
	ReadInterval time.Duration
}

// withDefaults returns o with the defaults filled in, or an error that says
// which field is wrong.
func (o Options) withDefaults() (Options, error) {
	page := os.Getpagesize()
	switch {
	case o.RingBytes == 0:
		o.RingBytes = DefaultRingBytes
	case o.RingBytes < page || o.RingBytes > maxRingBytes || o.RingBytes&(o.RingBytes-1) != 0:
		return o, fmt.Errorf("bpfsource: ring buffer size %d bytes: want a power of two from %d (a page) to %d", o.RingBytes, page, maxRingBytes)
	}
	switch {
	case o.WakeupBytes == 0:
		o.WakeupBytes = min(o.RingBytes/4, DefaultWakeupBytes)
	case o.WakeupBytes < 0 || o.WakeupBytes > o.RingBytes:
		return o, fmt.Errorf("bpfsource: wakeup threshold %d bytes: want 1 to the ring buffer's size, %d", o.WakeupBytes, o.RingBytes)
	}
	switch {
	case o.ReadInterval == 0:
		o.ReadInterval = DefaultReadInterval
	case o.ReadInterval < minReadInterval:
		return o, fmt.Errorf("bpfsource: read interval %v: want at least %v", o.ReadInterval, minReadInterval)
	}
	return o, nil
}
