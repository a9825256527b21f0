package netlinkdiag

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

const (
	testSeq = 7
	testPID = 0x4242
)

// testMsg is one netlink message for the test encoder.
type testMsg struct {
	typ     uint16
	flags   uint16
	seq     uint32 // 0 means testSeq
	pid     uint32 // 0 means testPID
	payload []byte
	rawLen  int // nlmsg_len to write instead of the real one, if non-zero
}

// encode lays msgs out as the kernel does: native-endian headers, each
// message padded to 4 bytes.
func encode(msgs ...testMsg) []byte {
	ne := binary.NativeEndian
	var b []byte
	for _, m := range msgs {
		n := nlmsgHdrLen + len(m.payload)
		h := make([]byte, nlmsgHdrLen)
		l := n
		if m.rawLen != 0 {
			l = m.rawLen
		}
		seq, pid := m.seq, m.pid
		if seq == 0 {
			seq = testSeq
		}
		if pid == 0 {
			pid = testPID
		}
		ne.PutUint32(h[0:], uint32(l))
		ne.PutUint16(h[4:], m.typ)
		ne.PutUint16(h[6:], m.flags)
		ne.PutUint32(h[8:], seq)
		ne.PutUint32(h[12:], pid)
		b = append(b, h...)
		b = append(b, m.payload...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b
}

// diagMsg encodes s as a struct inet_diag_msg followed by s.Attrs.
func diagMsg(s Socket) []byte {
	ne := binary.NativeEndian
	p := make([]byte, inetDiagMsgLen)
	p[0], p[1], p[2], p[3] = s.Family, s.State, s.Timer, s.Retrans
	binary.BigEndian.PutUint16(p[4:], s.Src.Port())
	binary.BigEndian.PutUint16(p[6:], s.Dst.Port())
	if s.Family == afInet {
		a, d := s.Src.Addr().As4(), s.Dst.Addr().As4()
		copy(p[8:], a[:])
		copy(p[24:], d[:])
	} else {
		a, d := s.Src.Addr().As16(), s.Dst.Addr().As16()
		copy(p[8:], a[:])
		copy(p[24:], d[:])
	}
	ne.PutUint32(p[40:], s.IfIndex)
	ne.PutUint32(p[44:], uint32(s.Cookie))
	ne.PutUint32(p[48:], uint32(s.Cookie>>32))
	ne.PutUint32(p[52:], s.Expires)
	ne.PutUint32(p[56:], s.RQueue)
	ne.PutUint32(p[60:], s.WQueue)
	ne.PutUint32(p[64:], s.UID)
	ne.PutUint32(p[68:], s.Inode)
	return append(p, s.Attrs...)
}

// attr encodes one rtattr, padded.
func attr(typ uint16, data []byte) []byte {
	b := make([]byte, 4, 4+len(data)+3)
	binary.NativeEndian.PutUint16(b[0:], uint16(4+len(data)))
	binary.NativeEndian.PutUint16(b[2:], typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func errnoPayload(code int32) []byte {
	p := make([]byte, 4+nlmsgHdrLen) // errno and the request's header
	binary.NativeEndian.PutUint32(p, uint32(code))
	return p
}

func sockMsg(s Socket) testMsg {
	return testMsg{typ: tcpdiagGetsock, flags: 0x2, payload: diagMsg(s)}
}

var done = testMsg{typ: nlmsgDone, flags: 0x2, payload: []byte{0, 0, 0, 0}}

var (
	sock4 = Socket{
		Family: afInet, State: StateEstablished, Timer: TimerKeepalive, Retrans: 3,
		Src:     netip.MustParseAddrPort("127.0.0.1:40000"),
		Dst:     netip.MustParseAddrPort("10.1.2.3:443"),
		IfIndex: 1, Cookie: 0x1122334455667788,
		Expires: 7000, RQueue: 11, WQueue: 22, UID: 1000, Inode: 123456,
	}
	sock6 = Socket{
		Family: afInet6, State: StateListen, Timer: TimerNone,
		Src:     netip.MustParseAddrPort("[2001:db8::1]:8080"),
		Dst:     netip.MustParseAddrPort("[::]:0"),
		IfIndex: 0, Cookie: 0xffffffff00000001,
		Expires: 0, RQueue: 0, WQueue: 4096, UID: 0, Inode: 0xfffffffe,
		Attrs: append(attr(AttrShutdown, []byte{3}), attr(AttrCong, []byte("cubic\x00"))...),
	}
)

// collect parses b and returns copies of the sockets it delivered.
func collect(t *testing.T, b []byte) ([]Socket, bool, bool, error) {
	t.Helper()
	var got []Socket
	done, intr, err := Parse(b, testSeq, testPID, func(s *Socket) error {
		c := *s
		c.Attrs = append([]byte(nil), s.Attrs...)
		got = append(got, c)
		return nil
	})
	return got, done, intr, err
}

var cmpSocket = cmp.Options{
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
	cmpopts.EquateEmpty(),
}

func TestParseSockets(t *testing.T) {
	wantAttrs6 := sock6.Attrs
	tests := []struct {
		name     string
		in       []byte
		want     []Socket
		wantDone bool
	}{
		{"ipv4", encode(sockMsg(sock4)), []Socket{sock4}, false},
		{"ipv6 with attributes", encode(sockMsg(sock6)), []Socket{sock6}, false},
		{"several then done", encode(sockMsg(sock4), sockMsg(sock6), sockMsg(sock4), done), []Socket{sock4, sock6, sock4}, true},
		{"by-family reply type", encode(testMsg{typ: sockDiagByFamily, payload: diagMsg(sock4)}, done), []Socket{sock4}, true},
		{"done without error field", encode(sockMsg(sock4), testMsg{typ: nlmsgDone}), []Socket{sock4}, true},
		{"stops at done", encode(sockMsg(sock4), done, sockMsg(sock6)), []Socket{sock4}, true},
		{"noop skipped", encode(testMsg{typ: nlmsgNoop}, sockMsg(sock6)), []Socket{sock6}, false},
		{"ack ends", encode(sockMsg(sock4), testMsg{typ: nlmsgError, payload: errnoPayload(0)}), []Socket{sock4}, true},
		{"empty buffer", nil, nil, false},
		{
			"foreign seq and port skipped",
			encode(
				testMsg{typ: tcpdiagGetsock, seq: testSeq + 1, payload: diagMsg(sock6)},
				testMsg{typ: tcpdiagGetsock, pid: testPID + 1, payload: diagMsg(sock6)},
				testMsg{typ: nlmsgError, seq: testSeq - 1, payload: errnoPayload(-int32(syscall.EPERM))},
				testMsg{typ: nlmsgDone, pid: 1, payload: []byte{0, 0, 0, 0}},
				testMsg{typ: 99, seq: 1}, // would be malformed if it were ours
				sockMsg(sock4),
				done,
			),
			[]Socket{sock4}, true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, done, intr, err := collect(t, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if done != tt.wantDone || intr {
				t.Errorf("done, interrupted = %v, %v; want %v, false", done, intr, tt.wantDone)
			}
			if d := cmp.Diff(tt.want, got, cmpSocket); d != "" {
				t.Errorf("(-want +got)\n%s", d)
			}
		})
	}
	if d := cmp.Diff(wantAttrs6, sock6.Attrs); d != "" {
		t.Fatalf("test fixture changed (-want +got)\n%s", d)
	}
}

// TestParseLayout pins the decoder to hand-written kernel bytes, so that the
// test encoder cannot share a mistake with it.
func TestParseLayout(t *testing.T) {
	p := make([]byte, inetDiagMsgLen)
	copy(p, []byte{afInet6, StateSynSent, TimerRetrans, 2, 0x1f, 0x90, 0x00, 0x50})
	copy(p[8:], netip.MustParseAddr("fe80::1").AsSlice())
	copy(p[24:], netip.MustParseAddr("fe80::2").AsSlice())
	ne := binary.NativeEndian
	for i, v := range []uint32{5, 0xdeadbeef, 0x01, 1500, 1, 2, 65534, 99} { // if, cookie[2], expires, rqueue, wqueue, uid, inode
		ne.PutUint32(p[40+4*i:], v)
	}
	got, _, _, err := collect(t, encode(testMsg{typ: tcpdiagGetsock, payload: p}))
	if err != nil {
		t.Fatal(err)
	}
	want := []Socket{{
		Family: afInet6, State: StateSynSent, Timer: TimerRetrans, Retrans: 2,
		Src:     netip.MustParseAddrPort("[fe80::1]:8080"),
		Dst:     netip.MustParseAddrPort("[fe80::2]:80"),
		IfIndex: 5, Cookie: 0x1_deadbeef, Expires: 1500, RQueue: 1, WQueue: 2, UID: 65534, Inode: 99,
	}}
	if d := cmp.Diff(want, got, cmpSocket); d != "" {
		t.Fatalf("(-want +got)\n%s", d)
	}
}

func TestParseIPv4UsesFirstFourBytes(t *testing.T) {
	m := diagMsg(sock4)
	for i := 12; i < 24; i++ { // the unused tail of the IPv4 source
		m[i] = 0xff
	}
	got, _, _, err := collect(t, encode(testMsg{typ: tcpdiagGetsock, payload: m}))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Src != sock4.Src || !got[0].Src.Addr().Is4() {
		t.Fatalf("got %+v, want source %v", got, sock4.Src)
	}
}

func TestParseAttrsAliasMessage(t *testing.T) {
	b := encode(sockMsg(sock6), sockMsg(sock4))
	var attrs [][]byte
	_, _, err := Parse(b, testSeq, testPID, func(s *Socket) error {
		attrs = append(attrs, s.Attrs)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(attrs[0]) != len(sock6.Attrs) || &attrs[0][0] != &b[nlmsgHdrLen+inetDiagMsgLen] {
		t.Errorf("Attrs of the first message do not alias its bytes after the header")
	}
	if cap(attrs[0]) != len(attrs[0]) {
		t.Errorf("Attrs cap %d reaches past the message (len %d)", cap(attrs[0]), len(attrs[0]))
	}
	if len(attrs[1]) != 0 {
		t.Errorf("Attrs of a message without attributes = %x, want empty", attrs[1])
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name     string
		in       []byte
		is       []error
		wantDone bool
		wantN    int // sockets delivered before the error
	}{
		{"EPERM", encode(testMsg{typ: nlmsgError, payload: errnoPayload(-int32(syscall.EPERM))}), []error{os.ErrPermission, syscall.EPERM}, true, 0},
		{"EACCES", encode(testMsg{typ: nlmsgError, payload: errnoPayload(-int32(syscall.EACCES))}), []error{os.ErrPermission}, true, 0},
		{"ENOBUFS", encode(testMsg{typ: nlmsgError, payload: errnoPayload(-int32(syscall.ENOBUFS))}), []error{syscall.ENOBUFS}, true, 0},
		{"errno without request header", encode(testMsg{typ: nlmsgError, payload: errnoPayload(-int32(syscall.EINVAL))[:4]}), []error{syscall.EINVAL}, true, 0},
		{"done with error", encode(sockMsg(sock4), testMsg{typ: nlmsgDone, payload: errnoPayload(-int32(syscall.EINTR))[:4]}), []error{syscall.EINTR}, true, 1},
		{"error after sockets", encode(sockMsg(sock4), sockMsg(sock6), testMsg{typ: nlmsgError, payload: errnoPayload(-int32(syscall.ENOBUFS))}), []error{syscall.ENOBUFS}, true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, done, _, err := collect(t, tt.in)
			for _, target := range tt.is {
				if !errors.Is(err, target) {
					t.Errorf("error %v is not %v", err, target)
				}
			}
			if errors.Is(err, ErrMalformed) {
				t.Errorf("error %v wraps ErrMalformed", err)
			}
			if done != tt.wantDone || len(got) != tt.wantN {
				t.Errorf("done = %v after %d sockets; want %v after %d", done, len(got), tt.wantDone, tt.wantN)
			}
		})
	}
}

// TestParseUnsupported checks that a kernel without a TCP handler is
// ErrUnsupported, and never mistaken for a namespace that is gone.
func TestParseUnsupported(t *testing.T) {
	for _, tt := range []struct {
		name  string
		in    []byte
		errno string
		wantN int
	}{
		{"ENOENT in NLMSG_ERROR", encode(testMsg{typ: nlmsgError, payload: errnoPayload(-errnoENOENT)}), "ENOENT", 0},
		{"EOPNOTSUPP in NLMSG_ERROR", encode(testMsg{typ: nlmsgError, payload: errnoPayload(-errnoEOPNOTSUPP)}), "EOPNOTSUPP", 0},
		{"ENOENT in NLMSG_DONE", encode(testMsg{typ: nlmsgDone, payload: errnoPayload(-errnoENOENT)[:4]}), "ENOENT", 0},
		{"EOPNOTSUPP in NLMSG_DONE after a socket", encode(sockMsg(sock4), testMsg{typ: nlmsgDone, payload: errnoPayload(-errnoEOPNOTSUPP)[:4]}), "EOPNOTSUPP", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, done, _, err := collect(t, tt.in)
			if !errors.Is(err, ErrUnsupported) || !errors.Is(err, errors.ErrUnsupported) {
				t.Errorf("error %v is not ErrUnsupported and errors.ErrUnsupported", err)
			}
			for _, not := range []error{os.ErrNotExist, ErrNamespaceGone, ErrMalformed} {
				if errors.Is(err, not) {
					t.Errorf("error %v is %v", err, not)
				}
			}
			if err != nil && !strings.Contains(err.Error(), tt.errno) {
				t.Errorf("error %q does not name %s", err, tt.errno)
			}
			if !done || len(got) != tt.wantN {
				t.Errorf("done = %v after %d sockets; want true after %d", done, len(got), tt.wantN)
			}
		})
	}
	if !errors.Is(ErrUnsupported, errors.ErrUnsupported) {
		t.Errorf("ErrUnsupported is not errors.ErrUnsupported")
	}
}

func TestParseDumpInterrupted(t *testing.T) {
	intr := sockMsg(sock6)
	intr.flags |= nlmFDumpIntr
	for _, tt := range []struct {
		name string
		in   []byte
		want bool
	}{
		{"none", encode(sockMsg(sock4), done), false},
		{"on a socket", encode(sockMsg(sock4), intr, done), true},
		{"on done", encode(sockMsg(sock4), testMsg{typ: nlmsgDone, flags: nlmFDumpIntr, payload: make([]byte, 4)}), true},
		{"on a foreign message", encode(testMsg{typ: tcpdiagGetsock, flags: nlmFDumpIntr, seq: 99, payload: diagMsg(sock4)}, sockMsg(sock4), done), false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, done, interrupted, err := collect(t, tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !done || interrupted != tt.want {
				t.Errorf("done, interrupted = %v, %v; want true, %v", done, interrupted, tt.want)
			}
			if len(got) == 0 {
				t.Errorf("no sockets delivered")
			}
		})
	}
}

func TestParseMalformed(t *testing.T) {
	valid := encode(sockMsg(sock4))
	withLen := func(b []byte, l uint32) []byte {
		b = append([]byte(nil), b...)
		binary.NativeEndian.PutUint32(b, l)
		return b
	}
	badFamily := diagMsg(sock4)
	badFamily[0] = 7
	tests := []struct {
		name, in string
		b        []byte
		wantOff  string
	}{
		{name: "short header", b: valid[:nlmsgHdrLen-1], wantOff: "offset 0"},
		{name: "one byte", b: []byte{1}, wantOff: "offset 0"},
		{name: "trailing bytes after a message", b: append(append([]byte(nil), valid...), 1, 2, 3, 4), wantOff: "offset 88"},
		{name: "nlmsg_len zero", b: withLen(valid, 0)},
		{name: "nlmsg_len below header", b: withLen(valid, nlmsgHdrLen-1)},
		{name: "nlmsg_len beyond buffer", b: withLen(valid, uint32(len(valid)+1))},
		{name: "nlmsg_len huge", b: withLen(valid, 0xffffffff)},
		{name: "truncated message", b: valid[:len(valid)-1]},
		{name: "short inet_diag_msg", b: encode(testMsg{typ: tcpdiagGetsock, payload: diagMsg(sock4)[:inetDiagMsgLen-1]}), wantOff: "offset 16"},
		{name: "empty inet_diag_msg", b: encode(testMsg{typ: tcpdiagGetsock})},
		{name: "bad family", b: encode(testMsg{typ: tcpdiagGetsock, payload: badFamily})},
		{name: "unspec family", b: encode(testMsg{typ: sockDiagByFamily, payload: make([]byte, inetDiagMsgLen)})},
		{name: "unexpected type", b: encode(testMsg{typ: 17, payload: diagMsg(sock4)})},
		{name: "overrun", b: encode(testMsg{typ: 4})},
		{name: "error without errno", b: encode(testMsg{typ: nlmsgError, payload: []byte{1, 2}})},
		{name: "error with positive errno", b: encode(testMsg{typ: nlmsgError, payload: errnoPayload(5)})},
		{name: "done with positive error", b: encode(testMsg{typ: nlmsgDone, payload: errnoPayload(1)[:4]})},
		{name: "second message bad", b: append(append([]byte(nil), valid...), withLen(valid, 3)...), wantOff: "offset 88"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, _, err := collect(t, tt.b)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), "offset") || !strings.Contains(err.Error(), tt.wantOff) {
				t.Errorf("error %q does not name the offset (%q)", err, tt.wantOff)
			}
		})
	}
}

func TestParseCallbackError(t *testing.T) {
	stop := errors.New("stop")
	n := 0
	done, _, err := Parse(encode(sockMsg(sock4), sockMsg(sock6), done), testSeq, testPID, func(*Socket) error {
		n++
		return stop
	})
	if err != stop || done || n != 1 {
		t.Fatalf("Parse = done %v, %v after %d callbacks; want false, the callback's error, after 1", done, err, n)
	}
}

func TestParseAllocs(t *testing.T) {
	var msgs []testMsg
	for i := range 1000 {
		s := sock4
		if i%2 == 1 {
			s = sock6
		}
		msgs = append(msgs, sockMsg(s))
	}
	b := encode(append(msgs, done)...)
	n := 0
	fn := func(*Socket) error { n++; return nil }
	allocs := testing.AllocsPerRun(10, func() {
		if _, _, err := Parse(b, testSeq, testPID, fn); err != nil {
			t.Fatal(err)
		}
	})
	if n == 0 || allocs > 1 {
		t.Fatalf("Parse of 1000 sockets: %v allocations, want at most 1 (the Socket)", allocs)
	}
}

func TestAttributes(t *testing.T) {
	type kv struct {
		Typ  uint16
		Data string
	}
	tests := []struct {
		name string
		in   []byte
		want []kv
	}{
		{"none", nil, nil},
		{"padded", append(attr(AttrShutdown, []byte{3}), attr(AttrCong, []byte("bbr\x00"))...), []kv{{AttrShutdown, "\x03"}, {AttrCong, "bbr\x00"}}},
		{"empty value", attr(AttrTOS, nil), []kv{{AttrTOS, ""}}},
		{"last unpadded", attr(AttrShutdown, []byte{1})[:5], []kv{{AttrShutdown, "\x01"}}},
		{"flag bits masked", attr(AttrMark|0x8000, []byte{1, 0, 0, 0}), []kv{{AttrMark, "\x01\x00\x00\x00"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []kv
			err := Attributes(tt.in, func(typ uint16, data []byte) error {
				got = append(got, kv{typ, string(data)})
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got); d != "" {
				t.Errorf("(-want +got)\n%s", d)
			}
		})
	}
}

func TestAttributesMalformed(t *testing.T) {
	good := attr(AttrCong, []byte("cubic"))
	withLen := func(l uint16) []byte {
		b := append([]byte(nil), good...)
		binary.NativeEndian.PutUint16(b, l)
		return b
	}
	for _, tt := range []struct {
		name string
		in   []byte
	}{
		{"short header", []byte{8, 0, 1}},
		{"length zero", withLen(0)},
		{"length below header", withLen(3)},
		{"length beyond buffer", withLen(uint16(len(good) + 1))},
		{"length huge", withLen(0xffff)},
		{"leftover bytes", append(append([]byte(nil), good...), 4, 0)},
		{"second bad", append(append([]byte(nil), good...), 2, 0, 1, 0)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := Attributes(tt.in, func(uint16, []byte) error { return nil })
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "offset") {
				t.Fatalf("error %v, want ErrMalformed with an offset", err)
			}
		})
	}
}

func TestAttributesCallbackError(t *testing.T) {
	stop := errors.New("stop")
	n := 0
	err := Attributes(append(attr(1, nil), attr(2, nil)...), func(uint16, []byte) error { n++; return stop })
	if err != stop || n != 1 {
		t.Fatalf("Attributes = %v after %d callbacks, want the callback's error after 1", err, n)
	}
}

func TestAppendRequest(t *testing.T) {
	ne := binary.NativeEndian
	legacy := appendRequest(nil, 9, 0, Request{Extensions: ExtInfo | ExtCong})
	if len(legacy) != nlmsgHdrLen+inetDiagReqLen || ne.Uint32(legacy) != uint32(len(legacy)) {
		t.Fatalf("legacy request of %d bytes, nlmsg_len %d; want %d", len(legacy), ne.Uint32(legacy), nlmsgHdrLen+inetDiagReqLen)
	}
	if typ, flags, seq := ne.Uint16(legacy[4:]), ne.Uint16(legacy[6:]), ne.Uint32(legacy[8:]); typ != 18 || flags != 0x301 || seq != 9 {
		t.Errorf("legacy header type %d flags %#x seq %d", typ, flags, seq)
	}
	p := legacy[nlmsgHdrLen:]
	if p[3] != ExtInfo|ExtCong || ne.Uint32(p[52:]) != AllStates || ne.Uint32(p[56:]) != 0 {
		t.Errorf("legacy payload ext %#x states %#x dbs %d", p[3], ne.Uint32(p[52:]), ne.Uint32(p[56:]))
	}

	v2 := appendRequest(nil, 10, afInet6, Request{States: 1 << StateListen})
	if len(v2) != nlmsgHdrLen+inetDiagReqV2Len || ne.Uint16(v2[4:]) != 20 {
		t.Fatalf("by-family request of %d bytes type %d", len(v2), ne.Uint16(v2[4:]))
	}
	p = v2[nlmsgHdrLen:]
	if p[0] != 10 || p[1] != 6 || p[2] != 0 || ne.Uint32(p[4:]) != 1<<StateListen {
		t.Errorf("by-family payload % x", p[:8])
	}
	if AllStates>>StateBoundInactive&1 != 1 || AllStates&1 != 0 {
		t.Errorf("AllStates %#x", AllStates)
	}
}

func TestNSPath(t *testing.T) {
	for in, want := range map[string]string{
		"":                 "",
		"blue":             "/run/netns/blue",
		"/proc/1/ns/net":   "/proc/1/ns/net",
		"./relative/netns": "./relative/netns",
	} {
		if got, err := nsPath(in); got != want || err != nil {
			t.Errorf("nsPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{".", ".."} {
		if _, err := nsPath(bad); err == nil {
			t.Errorf("nsPath(%q) succeeded", bad)
		}
	}
}

func BenchmarkParse(b *testing.B) {
	var msgs []testMsg
	for i := range 400 { // about one 32 KiB datagram, as the kernel sends
		s := sock4
		if i%2 == 1 {
			s = sock6
			s.Attrs = nil
		}
		msgs = append(msgs, sockMsg(s))
	}
	buf := encode(msgs...)
	var s Socket
	n := 0
	fn := func(*Socket) error { n++; return nil }
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := parse(buf, testSeq, testPID, &s, fn); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/socket")
}
