package bpfsource

import (
	"os"
	"strings"
	"testing"
	"time"
)

func TestOptionsDefaults(t *testing.T) {
	page := os.Getpagesize()
	for _, c := range []struct {
		in, want Options
	}{
		{Options{}, Options{RingBytes: 4 << 20, WakeupBytes: 256 << 10, ReadInterval: 100 * time.Millisecond}},
		{Options{RingBytes: 64 << 20}, Options{RingBytes: 64 << 20, WakeupBytes: 256 << 10, ReadInterval: 100 * time.Millisecond}},
		{Options{RingBytes: page}, Options{RingBytes: page, WakeupBytes: page / 4, ReadInterval: 100 * time.Millisecond}},
		{Options{RingBytes: 1 << 30, WakeupBytes: 1, ReadInterval: time.Millisecond}, Options{RingBytes: 1 << 30, WakeupBytes: 1, ReadInterval: time.Millisecond}},
		{Options{RingBytes: page, WakeupBytes: page, ReadInterval: time.Hour}, Options{RingBytes: page, WakeupBytes: page, ReadInterval: time.Hour}},
	} {
		got, err := c.in.withDefaults()
		if err != nil || got != c.want {
			t.Errorf("%+v.withDefaults() = %+v, %v; want %+v", c.in, got, err, c.want)
		}
	}
}

func TestOptionsInvalid(t *testing.T) {
	page := os.Getpagesize()
	for _, c := range []struct {
		in   Options
		want string
	}{
		{Options{RingBytes: -1}, "ring buffer size -1 bytes"},
		{Options{RingBytes: page / 2}, "want a power of two"},
		{Options{RingBytes: 3 * page}, "want a power of two"},
		{Options{RingBytes: 2 << 30}, "want a power of two"},
		{Options{WakeupBytes: -1}, "wakeup threshold -1 bytes"},
		{Options{RingBytes: page, WakeupBytes: page + 1}, "want 1 to the ring buffer's size"},
		{Options{ReadInterval: -time.Second}, "read interval -1s"},
		{Options{ReadInterval: time.Microsecond}, "want at least 1ms"},
	} {
		_, err := c.in.withDefaults()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v.withDefaults(): error %v, want one saying %q", c.in, err, c.want)
		}
		if _, err := Open(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%+v): error %v, want one saying %q", c.in, err, c.want)
		}
	}
}
