package collector

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rssAnon reads this process's anonymous resident memory, in bytes.
func rssAnon(t *testing.T) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RssAnon:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("RssAnon %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatal("no RssAnon in /proc/self/status")
	return 0
}

func fill(tb *table, n int) {
	for c := range uint64(n) {
		tb.put(c+1, entry{entered: int64(c), lastSeen: int64(c), state: Established})
	}
}

// TestTableLivesOffHeap checks that the slots are mapped rather than on
// the Go heap, where the collector's headroom would double them, and that
// the memory goes back to the kernel on release.
func TestTableLivesOffHeap(t *testing.T) {
	const n = 200_000
	before := heapAlloc()
	var tb table
	fill(&tb, n)
	grown := heapAlloc() - before
	if tb.slab == nil {
		t.Fatal("slots are on the heap: the mapping failed")
	}
	if tb.bytes() < n*24 {
		t.Fatalf("table of %d bytes for %d sockets", tb.bytes(), n)
	}
	// The heap holds only the slabs' small headers, nowhere near the table.
	if grown > int64(tb.bytes())/10 {
		t.Errorf("heap grew %d bytes for a %d-byte table", grown, tb.bytes())
	}
	for c := range uint64(n) {
		if _, e, ok := tb.lookup(c + 1); !ok || e.entered != int64(c) {
			t.Fatalf("cookie %d: %+v, %v", c+1, e, ok)
		}
	}

	resident := rssAnon(t)
	size := tb.bytes()
	tb.release()
	if freed := resident - rssAnon(t); freed < int64(size)*9/10 {
		t.Errorf("release returned %d bytes of a %d-byte table", freed, size)
	}
	if tb.len() != 0 || tb.bytes() != 0 {
		t.Fatalf("released table holds %d sockets in %d bytes", tb.len(), tb.bytes())
	}
	fill(&tb, 10) // still usable
	if tb.len() != 10 {
		t.Fatalf("refilled table holds %d, want 10", tb.len())
	}
	tb.release()
}

// TestTableDroppedIsUnmapped checks that a tracker dropped without release
// does not leak its mapping.
func TestTableDroppedIsUnmapped(t *testing.T) {
	const n = 200_000
	tr := NewTracker(n, nil)
	fill(&tr.sockets, n)
	size := tr.sockets.bytes()
	resident := rssAnon(t)
	tr = nil
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		freed := resident - rssAnon(t)
		if freed >= int64(size)*9/10 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("a dropped tracker's %d-byte table still resident: %d bytes freed after 10 s", size, freed)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
