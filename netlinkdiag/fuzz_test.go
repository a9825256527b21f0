package netlinkdiag

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// fuzzSeeds are valid, error and truncated replies; the committed corpus
// under testdata/fuzz holds the same kinds of input, and one for every
// branch of the decoders (see TestFuzzCorpus).
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
		encode(testMsg{typ: nlmsgError, payload: errnoPayload(-errnoENOENT)}),
		encode(testMsg{typ: nlmsgDone, payload: errnoPayload(-errnoEOPNOTSUPP)[:4]}),
		encode(testMsg{typ: tcpdiagGetsock, seq: 1, payload: diagMsg(sock4)}, done),
		full[:len(full)/2],
		full[:nlmsgHdrLen+10],
	}
}

// errStop is what the fuzz callbacks return to stop a walk early, for
// sockets and attributes a fuzzer can make: it must come back unchanged.
var errStop = errors.New("stop")

// flat is a Socket, Attrs included, as a comparable value.
type flat struct {
	Family, State, Timer, Retrans uint8
	Src, Dst                      netip.AddrPort
	IfIndex                       uint32
	Cookie                        uint64
	Expires, RQueue, WQueue       uint32
	UID, Inode                    uint32
	Attrs                         string
}

func flatten(s *Socket) flat {
	return flat{s.Family, s.State, s.Timer, s.Retrans, s.Src, s.Dst, s.IfIndex, s.Cookie,
		s.Expires, s.RQueue, s.WQueue, s.UID, s.Inode, string(s.Attrs)}
}

// delivered is what Parse handed the callback, and what it returned.
type delivered struct {
	sockets []flat
	done    bool
	intr    bool
	err     string
}

func parseCopy(b []byte, s *Socket) delivered {
	var d delivered
	var err error
	d.done, d.intr, err = parse(b, testSeq, testPID, s, func(s *Socket) error {
		d.sockets = append(d.sockets, flatten(s))
		if s.Retrans == 0xee {
			return errStop
		}
		return nil
	})
	if err != nil {
		d.err = err.Error()
	}
	return d
}

func (d delivered) equal(o delivered) bool {
	return slices.Equal(d.sockets, o.sockets) && d.done == o.done && d.intr == o.intr && d.err == o.err
}

// dirty is a Socket as a previous message might have left it.
func dirty() *Socket {
	s := sock6
	s.Attrs = []byte{1, 2, 3, 4, 5, 6, 7, 8}
	return &s
}

func FuzzParse(f *testing.F) {
	for _, b := range fuzzSeeds() {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var n int
		done, _, err := Parse(b, testSeq, testPID, func(s *Socket) error {
			n++
			if s.Family != afInet && s.Family != afInet6 {
				t.Fatalf("delivered family %d", s.Family)
			}
			if s.Src.Addr().Is4() != (s.Family == afInet) || s.Dst.Addr().Is4() != (s.Family == afInet) {
				t.Fatalf("family %d with addresses %v %v", s.Family, s.Src, s.Dst)
			}
			if len(s.Attrs) > len(b) || cap(s.Attrs) != len(s.Attrs) {
				t.Fatalf("Attrs of %d bytes (cap %d) from a %d-byte buffer: may reach into the next message", len(s.Attrs), cap(s.Attrs), len(b))
			}
			Attributes(s.Attrs, func(_ uint16, data []byte) error {
				if len(data) > len(s.Attrs) {
					t.Fatalf("attribute of %d bytes in %d", len(data), len(s.Attrs))
				}
				return nil
			})
			if s.Retrans == 0xee {
				return errStop
			}
			return nil
		})
		// Every socket takes a header and an inet_diag_msg: a reply cannot
		// make the parser deliver (or allocate for) more than its bytes hold.
		if n*(nlmsgHdrLen+inetDiagMsgLen) > len(b) {
			t.Fatalf("%d sockets from %d bytes", n, len(b))
		}
		var errno syscall.Errno
		switch {
		case err == nil, errors.Is(err, ErrMalformed), errors.Is(err, ErrUnsupported), errors.As(err, &errno):
		case err == errStop:
			if done {
				t.Fatal("done with the callback's error")
			}
		default:
			t.Fatalf("error %v (%T) is neither ErrMalformed, ErrUnsupported, an errno nor the callback's", err, err)
		}
		// No reply makes the namespace look gone.
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrNamespaceGone) {
			t.Fatalf("error %v says the namespace is gone", err)
		}

		// Nothing of one message leaks into the next: a Socket left dirty
		// by earlier messages decodes the same as a fresh one.
		whole := parseCopy(b, &Socket{})
		if again := parseCopy(b, dirty()); !whole.equal(again) {
			t.Fatalf("a reused Socket changes what is delivered:\n%+v\nfresh:\n%+v", again, whole)
		}

		// A reply cut short is an error or what a shorter reply would
		// deliver: never a socket the whole reply does not have.
		for _, cut := range []int{len(b) - 1, len(b) / 2, nlmsgHdrLen + inetDiagMsgLen - 1} {
			if cut <= 0 || cut >= len(b) {
				continue
			}
			part := parseCopy(b[:cut], &Socket{})
			if part.err != "" {
				continue
			}
			if len(part.sockets) > len(whole.sockets) || !slices.Equal(part.sockets, whole.sockets[:len(part.sockets)]) {
				t.Fatalf("cut at %d of %d bytes: delivered %d sockets not a prefix of the whole reply's %d", cut, len(b), len(part.sockets), len(whole.sockets))
			}
			if part.done && !whole.done {
				t.Fatalf("cut at %d of %d bytes: done, the whole reply is not", cut, len(b))
			}
		}
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
		stopped := false
		err := Attributes(b, func(typ uint16, data []byte) error {
			if stopped {
				t.Fatal("called after returning an error")
			}
			total += 4 + len(data)
			if cap(data) != len(data) {
				t.Fatalf("value cap %d past its length %d", cap(data), len(data))
			}
			if typ > nlaTypeMask {
				t.Fatalf("type %#x with flag bits", typ)
			}
			if typ == nlaTypeMask {
				stopped = true
				return errStop
			}
			return nil
		})
		if total > len(b) {
			t.Fatalf("attributes of %d bytes from %d", total, len(b))
		}
		switch {
		case stopped && err != errStop:
			t.Fatalf("callback's error came back as %v", err)
		case !stopped && err != nil && !errors.Is(err, ErrMalformed):
			t.Fatalf("error %v is not ErrMalformed", err)
		case err == nil && len(b) > 0 && total == 0:
			t.Fatalf("nil error for %d bytes and no attribute", len(b))
		}
	})
}

// readCorpus returns the []byte inputs committed under
// testdata/fuzz/<target>, by file name.
func readCorpus(t *testing.T, target string) map[string][]byte {
	t.Helper()
	dir := filepath.Join("testdata", "fuzz", target)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		lit, ok := strings.CutPrefix(lines[len(lines)-1], "[]byte(")
		lit, ok2 := strings.CutSuffix(lit, ")")
		if len(lines) != 2 || lines[0] != "go test fuzz v1" || !ok || !ok2 {
			t.Fatalf("%s: not a one-value []byte corpus file", e.Name())
		}
		s, err := strconv.Unquote(lit)
		if err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		out[e.Name()] = []byte(s)
	}
	return out
}

// TestFuzzCorpus replays the committed corpus with the allocation bound
// fuzzing cannot check cheaply: decoding allocates nothing, whatever the
// input, except the one error it returns.
func TestFuzzCorpus(t *testing.T) {
	if testing.Short() {
		t.Skip("allocation counts")
	}
	for name, b := range readCorpus(t, "FuzzParse") {
		var s Socket
		allocs := testing.AllocsPerRun(5, func() {
			parse(b, testSeq, testPID, &s, func(*Socket) error { return nil })
		})
		// An error is built with fmt.Errorf: a handful of allocations, a
		// few more under the race detector; never in proportion to the
		// input.
		if allocs > 16 {
			t.Errorf("FuzzParse/%s: %v allocations per parse of %d bytes", name, allocs, len(b))
		}
	}
	for name, b := range readCorpus(t, "FuzzAttributes") {
		allocs := testing.AllocsPerRun(5, func() {
			Attributes(b, func(uint16, []byte) error { return nil })
		})
		if allocs > 16 {
			t.Errorf("FuzzAttributes/%s: %v allocations per walk of %d bytes", name, allocs, len(b))
		}
	}
}
