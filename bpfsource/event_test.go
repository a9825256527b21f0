package bpfsource

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// encode builds a record as the BPF program writes it.
func encode(e Event) []byte {
	b := make([]byte, recordSize)
	le := binary.LittleEndian
	le.PutUint64(b[offTime:], uint64(e.Time))
	le.PutUint64(b[offCookie:], e.Cookie)
	le.PutUint32(b[offNetns:], e.Netns)
	le.PutUint16(b[offSrcPort:], e.SrcPort)
	le.PutUint16(b[offDstPort:], e.DstPort)
	if e.Src.IsValid() {
		copy(b[offSrc:], e.Src.AsSlice())
	}
	if e.Dst.IsValid() {
		copy(b[offDst:], e.Dst.AsSlice())
	}
	b[offFamily] = e.Family
	b[offOldState] = e.OldState
	b[offNewState] = e.NewState
	le.PutUint16(b[offErr:], e.Err)
	if e.Orphan {
		b[offFlags] |= flagOrphan
	}
	if e.FinReceived {
		b[offFlags] |= flagFinReceived
	}
	return b
}

func TestDecodeRecord(t *testing.T) {
	for _, want := range []Event{
		{Time: 8117815178648, Cookie: 2146139, Netns: 4026532173, Family: afInet, OldState: 2, NewState: 1,
			SrcPort: 46588, DstPort: 47565, Src: netip.MustParseAddr("127.0.0.1"), Dst: netip.MustParseAddr("10.1.2.3")},
		{Time: 1<<63 - 1, Cookie: 1<<64 - 1, Netns: 1<<32 - 1, Family: afInet6, OldState: 1, NewState: 7,
			DstPort: 65535, Src: netip.MustParseAddr("fe80::1"), Dst: netip.MustParseAddr("::ffff:192.0.2.1"), Err: 104},
		{Family: 1, OldState: 5, NewState: 7, Orphan: true},
		{Family: 1, OldState: 5, NewState: 7, Orphan: true, FinReceived: true},
		{Family: 1, OldState: 1, NewState: 7, FinReceived: true},
		{Time: 1, Cookie: 2, Netns: 3, Family: 1, OldState: 7, NewState: 10, SrcPort: 80}, // no addresses for other families
	} {
		var got Event
		if !decodeRecord(encode(want), &got) {
			t.Fatalf("decodeRecord(%+v) failed", want)
		}
		if d := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
			t.Errorf("(-want +got)\n%s", d)
		}
	}
}

func TestDecodeRecordMalformed(t *testing.T) {
	good := encode(Event{Cookie: 1, Family: afInet6})
	for _, b := range [][]byte{nil, good[:1], good[:recordSize-1], append(good, 0, 0, 0, 0, 0, 0, 0, 0)} {
		e := Event{Cookie: 42}
		if decodeRecord(b, &e) {
			t.Errorf("decodeRecord of %d bytes succeeded", len(b))
		}
		if e.Cookie != 42 {
			t.Errorf("decodeRecord of %d bytes changed the event: %+v", len(b), e)
		}
	}
}

func FuzzDecodeRecord(f *testing.F) {
	f.Add(encode(Event{Family: afInet, Src: netip.MustParseAddr("127.0.0.1"), Dst: netip.MustParseAddr("127.0.0.1")}))
	f.Add(encode(Event{Family: afInet6, Src: netip.MustParseAddr("::1"), Dst: netip.MustParseAddr("::1")}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Event
		ok := decodeRecord(b, &e)
		if ok != (len(b) == recordSize) {
			t.Fatalf("decodeRecord of %d bytes: %v", len(b), ok)
		}
		if !ok {
			return
		}
		// What decodes encodes to a record that decodes the same.
		var again Event
		if !decodeRecord(encode(e), &again) || again != e {
			t.Fatalf("%+v decodes, re-encoded, as %+v", e, again)
		}
	})
}

// BenchmarkDecode decodes a batch of records as Read does, and reports the
// time per event; it allocates nothing.
func BenchmarkDecode(b *testing.B) {
	const n = batchEvents
	buf := make([][]byte, n)
	for i := range buf {
		e := Event{Time: int64(i), Cookie: uint64(i), Netns: 4026531840, Family: afInet, OldState: 1, NewState: 4,
			SrcPort: 40000, DstPort: 443, Src: netip.MustParseAddr("10.0.0.1"), Dst: netip.MustParseAddr("10.0.0.2")}
		if i%4 == 0 {
			e.Family, e.Src, e.Dst = afInet6, netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
		}
		buf[i] = encode(e)
	}
	events := make([]Event, n)
	b.ReportAllocs()
	for b.Loop() {
		for i, r := range buf {
			if !decodeRecord(r, &events[i]) {
				b.Fatal("malformed")
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
}
