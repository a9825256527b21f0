package collector

import (
	"math/bits"
	"unsafe"
)

// table maps socket cookies to entries: open addressing with linear
// probing over 24-byte slots kept 40-80% full, so that a lookup is about
// one cache miss and a socket costs 30-60 bytes (a million sockets, 48 MB).
// Go's map took 52-105 bytes a socket here, and two lookups, each with two
// or three cache misses, per socket and poll.
type table struct {
	slots []slot // power-of-two length, or nil while empty
	slab  *slab  // the mapping slots live in; nil for none or on the heap
	shift uint   // 64 - log2(len(slots))
	n     int    // occupied slots

	// The kernel never reports cookie 0, which marks empty slots; should
	// one come, it lives here.
	zero    slot
	hasZero bool

	sink uint64 // keeps touch's loads from being optimised away
}

// slot is one entry in 24 bytes: the state and flags ride in the low bits
// of lastSeen.
type slot struct {
	cookie  uint64
	entered int64
	meta    int64 // lastSeen<<metaBits | misses<<7 | family<<6 | exact<<5 | unknown<<4 | state
}

const (
	metaBits = 9 // 4 for the state, 1 each for unknown, exact and family, 2 for misses

	// maxTime bounds the times a slot holds, in ns either side of the
	// epoch: 2^53 ns, about 104 days, leaving headroom below the 2^54 that
	// fit in the 55 bits left for lastSeen. The tracker moves its epoch
	// before reaching it.
	maxTime = 1 << 53

	// maxMisses is the most misses a slot counts.
	maxMisses = 3

	// Where the fields sit in meta's low bits.
	stateMask   = 0xf
	unknownBit  = 1 << 4
	exactBit    = 1 << 5
	familyShift = 6
	familyMask  = 1 << familyShift
	missesShift = 7
	missesMask  = maxMisses << missesShift

	minSlots = 64
)

func (s *slot) entry() entry {
	m := s.meta
	return entry{
		entered:  s.entered,
		lastSeen: m >> metaBits,
		state:    State(m & stateMask),
		unknown:  m&unknownBit != 0,
		exact:    m&exactBit != 0,
		family:   Family(m>>familyShift) & 1,
		misses:   uint8(m>>missesShift) & maxMisses,
	}
}

func (s *slot) set(e entry) {
	s.entered = e.entered
	m := e.lastSeen<<metaBits | int64(e.state&stateMask) | int64(e.family&1)<<familyShift | int64(min(e.misses, maxMisses))<<missesShift
	if e.unknown {
		m |= unknownBit
	}
	if e.exact {
		m |= exactBit
	}
	s.meta = m
}

// home is where a cookie's probe starts: Fibonacci hashing, which spreads
// the kernel's sequential cookies evenly.
func (t *table) home(cookie uint64) int {
	return int((cookie * 0x9e3779b97f4a7c15) >> t.shift)
}

func (t *table) len() int {
	if t.hasZero {
		return t.n + 1
	}
	return t.n
}

// find returns the slot holding cookie, or the empty slot where it would
// go and false. The table must have slots.
func (t *table) find(cookie uint64) (int, bool) {
	mask := len(t.slots) - 1
	for i := t.home(cookie); ; i = (i + 1) & mask {
		switch t.slots[i].cookie {
		case cookie:
			return i, true
		case 0:
			return i, false
		}
	}
}

// touch loads the home slot of every observation, independently of one
// another, so that their cache misses overlap.
func (t *table) touch(obs []Observation) {
	if len(t.slots) == 0 {
		return
	}
	var sum uint64
	for i := range obs {
		sum += t.slots[t.home(obs[i].Cookie)].cookie
	}
	t.sink += sum
}

// lookup returns cookie's entry and where it is, for update.
func (t *table) lookup(cookie uint64) (at int, e entry, ok bool) {
	switch {
	case cookie == 0:
		return -1, t.zero.entry(), t.hasZero
	case len(t.slots) == 0:
		return 0, entry{}, false
	}
	i, ok := t.find(cookie)
	if !ok {
		return 0, entry{}, false
	}
	return i, t.slots[i].entry(), true
}

// get returns the slot holding cookie, or nil.
func (t *table) get(cookie uint64) *slot {
	switch {
	case cookie == 0:
		if t.hasZero {
			return &t.zero
		}
		return nil
	case len(t.slots) == 0:
		return nil
	}
	if i, ok := t.find(cookie); ok {
		return &t.slots[i]
	}
	return nil
}

// update stores e where lookup found an entry.
func (t *table) update(at int, e entry) {
	if at < 0 {
		t.zero.set(e)
		return
	}
	t.slots[at].set(e)
}

// removeAt removes the entry lookup found at at.
func (t *table) removeAt(at int) {
	if at < 0 {
		t.zero, t.hasZero = slot{}, false
		return
	}
	t.remove(at)
}

// put inserts an entry for a cookie not in the table.
func (t *table) put(cookie uint64, e entry) {
	if cookie == 0 {
		t.zero.set(e)
		t.hasZero = true
		return
	}
	if (t.n+1)*5 > len(t.slots)*4 { // keep the load at or under 80%
		t.resize(max(minSlots, 2*len(t.slots)))
	}
	i, _ := t.find(cookie)
	t.slots[i].cookie = cookie
	t.slots[i].set(e)
	t.n++
}

// each calls fn with every entry and stores back the entry fn returns, or
// removes it if fn returns false. Entries are visited once each.
func (t *table) each(fn func(entry) (entry, bool)) {
	t.sweep(func(s *slot) bool {
		e, keep := fn(s.entry())
		if keep {
			s.set(e)
		}
		return keep
	})
}

// sweep calls fn with every occupied slot, which fn may change in place
// (but for its cookie), and removes the slot if fn returns false. Slots
// are visited once each.
func (t *table) sweep(fn func(*slot) bool) {
	if t.hasZero && !fn(&t.zero) {
		t.zero, t.hasZero = slot{}, false
	}
	if t.n == 0 {
		return
	}
	// Start just past an empty slot: no run of occupied slots then wraps
	// past the start, so removing one never moves an entry already
	// visited to where it is visited again.
	mask := len(t.slots) - 1
	start := 0
	for t.slots[start].cookie != 0 {
		start++
	}
	for k := 1; k <= len(t.slots); {
		i := (start + k) & mask
		s := &t.slots[i]
		if s.cookie == 0 || fn(s) {
			k++
			continue
		}
		t.remove(i) // slot i now holds an entry from further on, or nothing
	}
}

// remove empties slot i, moving back the entries after it that would
// otherwise no longer be found (backward-shift deletion).
func (t *table) remove(i int) {
	mask := len(t.slots) - 1
	for j := (i + 1) & mask; t.slots[j].cookie != 0; j = (j + 1) & mask {
		// The entry at j may fill the hole at i if its probe passed i,
		// that is if i lies in [home, j) going round the table.
		if (j-t.home(t.slots[j].cookie))&mask >= (j-i)&mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = slot{}
	t.n--
}

// shrink returns most of a table that emptied after a peak: once under
// 1/8 full it halves, or more, to about 40% full.
func (t *table) shrink() {
	if len(t.slots) > minSlots && t.n*8 < len(t.slots) {
		t.resize(max(minSlots, 1<<bits.Len(uint(t.n*5/2))))
	}
}

// release returns the table's memory; it is left empty and usable.
func (t *table) release() {
	t.slab.free()
	*t = table{}
}

// bytes is the memory the slots take, mapped or on the heap.
func (t *table) bytes() int {
	return len(t.slots) * int(unsafe.Sizeof(slot{}))
}

// resize rehashes into size slots, a power of two.
func (t *table) resize(size int) {
	old, oldSlab := t.slots, t.slab
	t.slots, t.slab = allocSlots(size)
	defer oldSlab.free()
	t.shift = uint(64 - bits.TrailingZeros(uint(size)))
	mask := size - 1
	for k := range old {
		s := &old[k]
		if s.cookie == 0 {
			continue
		}
		i := t.home(s.cookie)
		for t.slots[i].cookie != 0 {
			i = (i + 1) & mask
		}
		t.slots[i] = *s
	}
}
