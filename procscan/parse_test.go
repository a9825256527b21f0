package procscan

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseSocketLink(t *testing.T) {
	for _, tc := range []struct {
		link string
		want uint32
		ok   bool
	}{
		{"socket:[12345]", 12345, true},
		{"socket:[0]", 0, true},
		{"socket:[4294967295]", 4294967295, true},
		{"socket:[4294967296]", 0, false}, // wider than sock_diag's inode
		{"socket:[99999999999999999999999]", 0, false},
		{"socket:[]", 0, false},
		{"socket:[12a]", 0, false},
		{"socket:[12", 0, false},
		{"socket:12]", 0, false},
		{"pipe:[12345]", 0, false},
		{"anon_inode:[eventfd]", 0, false},
		{"/dev/null", 0, false},
		{"", 0, false},
	} {
		got, ok := parseSocketLink([]byte(tc.link))
		if got != tc.want || ok != tc.ok {
			t.Errorf("parseSocketLink(%q) = %d, %t; want %d, %t", tc.link, got, ok, tc.want, tc.ok)
		}
	}
}

func TestParsePID(t *testing.T) {
	for _, tc := range []struct {
		name string
		want int
		ok   bool
	}{
		{"1", 1, true},
		{"4194304", 4194304, true},
		{"2147483647", 2147483647, true},
		{"2147483648", 0, false},
		{"0", 0, false},
		{"self", 0, false},
		{"thread-self", 0, false},
		{"1a", 0, false},
		{"", 0, false},
	} {
		got, ok := parsePID([]byte(tc.name))
		if got != tc.want || ok != tc.ok {
			t.Errorf("parsePID(%q) = %d, %t; want %d, %t", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// statLine builds a /proc/PID/stat line with the given comm and starttime.
func statLine(pid int, comm string, start uint64) string {
	// Fields 3..21 as a real line has them, then starttime and the rest.
	return strconv.Itoa(pid) + " (" + comm + ") S 1 1 1 0 -1 4194560 3530 2871 12 3 5 7 1 0 20 0 1 0 " +
		strconv.FormatUint(start, 10) + " 23453696 2817 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		desc  string
		line  string
		comm  string
		start uint64
		ok    bool
	}{
		{"plain", statLine(1, "systemd", 7), "systemd", 7, true},
		{"space in name", statLine(42, "web server", 1234567), "web server", 1234567, true},
		{"parens in name", statLine(42, "a) 1 (b", 99), "a) 1 (b", 99, true},
		{"name looks like fields", statLine(42, ") S 1 1 1 0 -1 9 9 9 9 9 9 9 9 9 9 9 9 9 5 (", 3), ") S 1 1 1 0 -1 9 9 9 9 9 9 9 9 9 9 9 9 9 5 (", 3, true},
		{"newline in name", statLine(42, "a\nb", 5), "a\nb", 5, true},
		{"empty name", statLine(42, "", 5), "", 5, true},
		{"kernel thread", "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 0 0 0", "kthreadd", 0, true},
		{"starttime last, no newline", "2 (k) S 0 0 0 0 -1 2 0 0 0 0 0 0 0 0 20 0 1 0 77", "k", 77, true},
		{"truncated before starttime", "2 (k) S 0 0 0 0 -1 2 0 0 0 0 0 0 0 0 20 0 1 0", "", 0, false},
		{"empty field", "2 (k) S 0 0  0 -1 2 0 0 0 0 0 0 0 0 20 0 1 0 77 1", "", 0, false},
		{"starttime not a number", "2 (k) S 0 0 0 0 -1 2 0 0 0 0 0 0 0 0 20 0 1 0 7x 1", "", 0, false},
		{"no parens", "2 k S 0 0 0 0 -1 2 0 0 0 0 0 0 0 0 20 0 1 0 77 1", "", 0, false},
		{"close before open", "2 )k( S 0 0 0 0 -1 2 0 0 0 0 0 0 0 0 20 0 1 0 77 1", "", 0, false},
		{"empty", "", "", 0, false},
	} {
		comm, start, ok := parseStat([]byte(tc.line))
		if string(comm) != tc.comm || start != tc.start || ok != tc.ok {
			t.Errorf("%s: parseStat(%q) = %q, %d, %t; want %q, %d, %t", tc.desc, tc.line, comm, start, ok, tc.comm, tc.start, tc.ok)
		}
	}
}

func TestCommString(t *testing.T) {
	for in, want := range map[string]string{
		"nginx":      "nginx",
		"web server": "web server",
		"\xffbad":    "\uFFFDbad",
		"caf\xc3":    "caf\uFFFD",
	} {
		if got := commString([]byte(in)); got != want {
			t.Errorf("commString(%q) = %q, want %q", in, got, want)
		}
	}
}

// dirent encodes one linux_dirent64 record, padded to 8 bytes as the
// kernel does.
func dirent(name string) []byte {
	reclen := (direntHeader + len(name) + 1 + 7) &^ 7
	b := make([]byte, reclen)
	binary.NativeEndian.PutUint64(b[0:], 1234)
	binary.NativeEndian.PutUint16(b[16:], uint16(reclen))
	b[18] = 10 // DT_LNK
	copy(b[direntHeader:], name)
	return b
}

func TestNextDirent(t *testing.T) {
	var buf []byte
	want := []string{".", "..", "0", "1", "12345", "a-much-longer-name"}
	for _, n := range want {
		buf = append(buf, dirent(n)...)
	}
	var got []string
	for b := buf; ; {
		name, rest, ok := nextDirent(b)
		if !ok {
			break
		}
		if name[len(name)-1] != 0 {
			t.Fatalf("name %q is not NUL-terminated", name)
		}
		got = append(got, string(name[:len(name)-1]))
		b = rest
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}

	bad := dirent("x")
	binary.NativeEndian.PutUint16(bad[16:], 200) // longer than the buffer
	if _, _, ok := nextDirent(bad); ok {
		t.Error("record longer than the buffer decoded")
	}
	binary.NativeEndian.PutUint16(bad[16:], 8) // shorter than the header
	if _, _, ok := nextDirent(bad); ok {
		t.Error("record shorter than its header decoded")
	}
	noNUL := dirent("abcd") // 24 bytes: the name fills it exactly without a NUL
	copy(noNUL[direntHeader:], "abcde")
	if _, _, ok := nextDirent(noNUL); ok {
		t.Error("name without NUL decoded")
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte(statLine(1, "systemd", 7)))
	f.Add([]byte(statLine(42, "a) 1 (b", 99)))
	f.Add([]byte("2 (k) S 0 0 0 0 -1 2 0 0 0 0 0 0 0 0 20 0 1 0 77"))
	f.Add([]byte("2 (k) S"))
	f.Fuzz(func(t *testing.T, b []byte) {
		comm, _, ok := parseStat(b)
		if ok && !bytes.Contains(b, comm) {
			t.Fatalf("comm %q is not in the input", comm)
		}
	})
}

func FuzzParseSocketLink(f *testing.F) {
	f.Add([]byte("socket:[12345]"))
	f.Add([]byte("socket:[4294967296]"))
	f.Add([]byte("pipe:[1]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, ok := parseSocketLink(b)
		if !ok {
			return
		}
		digits := bytes.TrimSuffix(bytes.TrimPrefix(b, []byte("socket:[")), []byte("]"))
		want, err := strconv.ParseUint(string(digits), 10, 32)
		if err != nil || uint32(want) != n || digits[0] == '+' {
			t.Fatalf("parseSocketLink(%q) = %d, but strconv says %d, %v", b, n, want, err)
		}
	})
}

func FuzzNextDirent(f *testing.F) {
	f.Add(append(dirent("."), dirent("12")...))
	f.Add(dirent("socket")[:20])
	f.Fuzz(func(t *testing.T, b []byte) {
		for len(b) > 0 {
			name, rest, ok := nextDirent(b)
			if !ok {
				return
			}
			if len(name) == 0 || name[len(name)-1] != 0 || bytes.IndexByte(name, 0) != len(name)-1 {
				t.Fatalf("name %q is not one NUL-terminated string", name)
			}
			if len(rest) >= len(b) {
				t.Fatal("no progress")
			}
			b = rest
		}
	})
}
