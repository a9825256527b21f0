//go:build linux

package procscan

import (
	"maps"
	"math"
	"testing"
)

// benchSockets is how many sockets BenchmarkOwners holds open in the test
// process, on top of whatever the host's processes hold.
const benchSockets = 5000

// BenchmarkOwners walks the real /proc with benchSockets sockets open here.
// "ours" wants those sockets, so the walk ends once it has read our fds;
// "nobody" wants a socket no process holds, so it reads every fd on the
// host. ns/fd is the cost of one fd entry, walk overhead included.
func BenchmarkOwners(b *testing.B) {
	_, inodes := openSockets(b, benchSockets)
	for _, bc := range []struct {
		name string
		want map[uint32]struct{}
	}{
		{"ours", wantSet(inodes...)},
		{"nobody", wantSet(math.MaxUint32)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			into := make(map[uint32]Owner, len(bc.want))
			var st ScanStats
			b.ReportAllocs()
			for b.Loop() {
				var err error
				if st, err = Owners("/proc", bc.want, into); err != nil {
					b.Fatal(err)
				}
			}
			if bc.name == "ours" && len(into) != len(inodes) {
				b.Fatalf("found %d of our %d sockets", len(into), len(inodes))
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(st.FDs), "ns/fd")
			b.ReportMetric(float64(st.FDs), "fds/op")
			b.ReportMetric(float64(st.Processes), "procs/op")
		})
	}
}

// BenchmarkDiscover runs Discover on the real /proc and /run/netns.
// "steady" is the every-poll case, every namespace known; "first" is a
// fresh Discoverer, which reads /proc/PID/stat to name every namespace.
func BenchmarkDiscover(b *testing.B) {
	b.Run("steady", func(b *testing.B) {
		d := NewDiscoverer("/proc", "/run/netns")
		if _, err := d.Discover(); err != nil {
			b.Fatal(err)
		}
		benchDiscover(b, func() *Discoverer { return d })
	})
	b.Run("first", func(b *testing.B) {
		benchDiscover(b, func() *Discoverer { return NewDiscoverer("/proc", "/run/netns") })
	})
}

func benchDiscover(b *testing.B, discoverer func() *Discoverer) {
	var d *Discoverer
	var n int
	b.ReportAllocs()
	for b.Loop() {
		d = discoverer()
		nss, err := d.Discover()
		if err != nil {
			b.Fatal(err)
		}
		n = len(nss)
	}
	st := d.Stats()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(st.Processes), "ns/process")
	b.ReportMetric(float64(st.Processes), "procs/op")
	b.ReportMetric(float64(n), "netns/op")
}

// BenchmarkRecheck rechecks the owners of benchSockets sockets held here,
// as an Attributor does at every pass once it has found them.
func BenchmarkRecheck(b *testing.B) {
	_, inodes := openSockets(b, benchSockets)
	found := make(map[uint32]Owner, len(inodes))
	if _, err := Owners("/proc", wantSet(inodes...), found); err != nil {
		b.Fatal(err)
	}
	owners := make(map[uint32]Owner, len(found))
	b.ReportAllocs()
	for b.Loop() {
		maps.Copy(owners, found)
		if n, err := Recheck("/proc", owners); err != nil || n != 0 {
			b.Fatalf("Recheck = %d, %v; want 0, nil", n, err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(found)), "ns/socket")
}
