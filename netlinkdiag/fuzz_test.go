package netlinkdiag

import (
	"testing"
)

// fuzzSeeds are valid, error and truncated replies; the committed corpus
// under testdata/fuzz holds the same kinds of input.
func fuzzSeeds() [][]byte {
	intr := sockMsg(sock4)
	intr.flags |= nlmFDumpIntr
	full := encode(sockMsg(sock4), sockMsg(sock6), done)
	return [][]byte{
		full,
		encode(sockMsg(sock6)),
		encode(intr, done),
		encode(testMsg{typ: nlmsgError, payload: errnoPayload(-1)}),
		encode(testMsg{typ: nlmsgDone, payload: errnoPayload(-105)[:4]}),
		encode(testMsg{typ: tcpdiagGetsock, seq: 1, payload: diagMsg(sock4)}, done),
		full[:len(full)/2],
		full[:nlmsgHdrLen+10],
	}
}

func FuzzParse(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		done, _, err := Parse(b, testSeq, testPID, func(s *Socket) error {
			n++
			if s.Family != afInet && s.Family != afInet6 {
				t.Fatalf("delivered family %d", s.Family)
			}
			if s.Src.Addr().Is4() != (s.Family == afInet) {
				t.Fatalf("family %d with address %v", s.Family, s.Src)
			}
			if len(s.Attrs) > len(b) {
				t.Fatalf("Attrs of %d bytes from a %d-byte buffer", len(s.Attrs), len(b))
			}
			Attributes(s.Attrs, func(_ uint16, data []byte) error {
				if len(data) > len(s.Attrs) {
					t.Fatalf("attribute of %d bytes in %d", len(data), len(s.Attrs))
				}
				return nil
			})
			return nil
		})
		if err == nil && n*(nlmsgHdrLen+inetDiagMsgLen) > len(b) {
			t.Fatalf("%d sockets from %d bytes", n, len(b))
		}
		_ = done
	})
}

func FuzzAttributes(f *testing.F) {
	f.Add([]byte(nil))
	f.Add(sock6.Attrs)
	f.Add(attr(AttrShutdown, []byte{1})[:5])
	f.Add(append(attr(AttrInfo, make([]byte, 232)), attr(AttrCong, []byte("cubic\x00"))...))
	f.Add([]byte{3, 0, 1, 0})
	f.Add([]byte{255, 255, 1, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		total := 0
		err := Attributes(b, func(_ uint16, data []byte) error {
			total += 4 + len(data)
			if cap(data) != len(data) {
				t.Fatalf("value cap %d past its length %d", cap(data), len(data))
			}
			return nil
		})
		if total > len(b) {
			t.Fatalf("attributes of %d bytes from %d", total, len(b))
		}
		if err == nil && len(b) > 0 && total == 0 {
			t.Fatalf("nil error for %d bytes and no attribute", len(b))
		}
	})
}
