package collector

import (
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A table's slots live in anonymous memory mapped outside the Go heap. The
// table is most of what the exporter holds, and on the heap it would count
// twice: the garbage collector lets the heap grow to twice what is live
// before it collects, so each tracked socket kept about twice its slot in
// RSS. Mapped memory costs the pages written, goes back to the kernel the
// moment a resize unmaps it, and holds no pointers for the collector to
// scan.

// slab is one mapping of slots. Its cleanup unmaps it should its table be
// dropped without release.
type slab struct {
	mem     []byte
	cleanup runtime.Cleanup
}

// allocSlots returns n zeroed slots and the slab holding them, or slots on
// the heap and a nil slab if the kernel will not map more memory.
func allocSlots(n int) ([]slot, *slab) {
	size := n * int(unsafe.Sizeof(slot{}))
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return make([]slot, n), nil
	}
	s := &slab{mem: mem}
	s.cleanup = runtime.AddCleanup(s, unmap, mem)
	return unsafe.Slice((*slot)(unsafe.Pointer(unsafe.SliceData(mem))), n), s
}

// free unmaps the slab at once; its slots must no longer be used.
func (s *slab) free() {
	if s == nil {
		return
	}
	s.cleanup.Stop()
	unmap(s.mem)
	s.mem = nil
}

func unmap(mem []byte) { _ = unix.Munmap(mem) }
