package procscan

import (
	"bytes"
	"encoding/binary"
	"strconv"
	"strings"
	"unicode/utf8"
)

// fileID is what a path stats to: the device and inode of the file.
type fileID struct {
	dev, ino uint64
}

// direntHeader is the size of linux_dirent64 up to d_name: d_ino (8),
// d_off (8), d_reclen (2), d_type (1).
const direntHeader = 19

// nextDirent decodes the linux_dirent64 record at the start of buf. It
// returns the entry's name including its terminating NUL (ready to hand
// back to the kernel as a path), and the rest of buf. ok is false when buf
// is empty or its first record is malformed, which ends the batch.
func nextDirent(buf []byte) (name, rest []byte, ok bool) {
	if len(buf) < direntHeader {
		return nil, nil, false
	}
	reclen := int(binary.NativeEndian.Uint16(buf[16:18]))
	if reclen <= direntHeader || reclen > len(buf) {
		return nil, nil, false
	}
	name = buf[direntHeader:reclen]
	end := bytes.IndexByte(name, 0)
	if end < 0 {
		return nil, nil, false
	}
	return name[:end+1], buf[reclen:], true
}

// eachDirent reads the directory fd to its end with getdents into buf and
// calls fn with each entry's name (NUL-terminated, "." and ".." included).
// fn returns false to stop early. It returns getdents' error, if any.
func eachDirent(fd int, buf []byte, fn func(name []byte) bool) error {
	for {
		n, err := readDirents(fd, buf)
		if err != nil || n <= 0 {
			return err
		}
		for b := buf[:n]; ; {
			name, rest, ok := nextDirent(b)
			if !ok {
				break
			}
			b = rest
			if !fn(name) {
				return nil
			}
		}
	}
}

// parsePID returns the process ID a /proc entry name (without its NUL)
// spells, or false if it is not a PID (self, sys, net, ...).
func parsePID(name []byte) (int, bool) {
	n, ok := parseUint64(name)
	if !ok || n == 0 || n > 1<<31-1 {
		return 0, false
	}
	return int(n), true
}

// parseSocketLink returns the inode of a "socket:[12345]" fd link target,
// or false for any other target or an inode that does not fit in 32 bits
// (sock_diag reports socket inodes as 32-bit).
func parseSocketLink(link []byte) (uint32, bool) {
	const prefix = "socket:["
	if len(link) < len(prefix)+2 || string(link[:len(prefix)]) != prefix || link[len(link)-1] != ']' {
		return 0, false
	}
	n, ok := parseUint64(link[len(prefix) : len(link)-1])
	if !ok || n > 1<<32-1 {
		return 0, false
	}
	return uint32(n), true
}

// parseStat returns the command name and the start time (field 22, in
// clock ticks since boot) from the contents of /proc/PID/stat. The name sits
// in parentheses and may hold anything but NUL, spaces and ')' included, so
// it runs to the last ')': the fields after it are all numbers or a state
// letter.
func parseStat(b []byte) (comm []byte, start uint64, ok bool) {
	open := bytes.IndexByte(b, '(')
	closing := bytes.LastIndexByte(b, ')')
	if open < 0 || closing < open {
		return nil, 0, false
	}
	comm = b[open+1 : closing]
	// Fields 3 (state) onward follow ") ", one space apart; starttime is
	// the 20th of them.
	rest := b[closing+1:]
	for field := 2; field < 22; field++ {
		if len(rest) == 0 || rest[0] != ' ' {
			return nil, 0, false
		}
		rest = rest[1:]
		if field < 21 {
			i := bytes.IndexByte(rest, ' ')
			if i <= 0 {
				return nil, 0, false
			}
			rest = rest[i:]
		}
	}
	end := bytes.IndexAny(rest, " \n")
	if end < 0 {
		end = len(rest)
	}
	start, ok = parseUint64(rest[:end])
	if !ok {
		return nil, 0, false
	}
	return comm, start, true
}

// parseUint64 parses a non-empty run of decimal digits.
func parseUint64(digits []byte) (uint64, bool) {
	if len(digits) == 0 || len(digits) > 20 {
		return 0, false
	}
	var n uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// trimComm strips the newline /proc/PID/comm ends with.
func trimComm(b []byte) []byte {
	return bytes.TrimSuffix(b, []byte("\n"))
}

// commString turns a command name into a string, replacing bytes that are
// not UTF-8 (the kernel keeps whatever bytes the process set) with U+FFFD so
// the name is usable as a label value.
func commString(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

// appendPIDPath appends "<pid><suffix>\x00" to p: a NUL-terminated path
// relative to the proc root.
func appendPIDPath(p []byte, pid int, suffix string) []byte {
	p = strconv.AppendInt(p, int64(pid), 10)
	p = append(p, suffix...)
	return append(p, 0)
}
