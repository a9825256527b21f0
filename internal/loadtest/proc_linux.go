package loadtest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ProcSample is what /proc says about a process at one moment.
type ProcSample struct {
	FDs     int            // open file descriptors
	FDKinds map[string]int // the same descriptors by kind, as FDKinds names them
	Threads int            // OS threads
	RSS     int64          // resident memory, bytes
}

// SampleProc reads the descriptors, threads and resident memory of pid.
func SampleProc(pid int) (ProcSample, error) {
	kinds, err := FDKinds(pid)
	if err != nil {
		return ProcSample{}, err
	}
	st, err := Status(pid, 0)
	if err != nil {
		return ProcSample{}, err
	}
	s := ProcSample{FDKinds: kinds}
	for _, n := range kinds {
		s.FDs += n
	}
	if s.Threads, err = strconv.Atoi(st["Threads"]); err != nil {
		return ProcSample{}, fmt.Errorf("loadtest: /proc/%d/status Threads %q", pid, st["Threads"])
	}
	kb, ok := strings.CutSuffix(st["VmRSS"], " kB")
	n, err := strconv.ParseInt(kb, 10, 64)
	if !ok || err != nil {
		return ProcSample{}, fmt.Errorf("loadtest: /proc/%d/status VmRSS %q", pid, st["VmRSS"])
	}
	s.RSS = n << 10
	return s, nil
}

// FDKinds counts the open descriptors of pid by what they are: "socket:"
// and the protocol for a socket ("socket:TCP", "socket:MPTCP",
// "socket:NETLINK"); "/proc" for /proc or any file under it; the type of
// any other inode-only file, such as "pipe", or "net" for a network
// namespace handle; the link otherwise ("/dev/null",
// "anon_inode:[eventpoll]"). A descriptor closed while they are read is not
// counted.
func FDKinds(pid int) (map[string]int, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	kinds := map[string]int{}
	for _, e := range ents {
		if k, ok := fdKind(filepath.Join(dir, e.Name())); ok {
			kinds[k]++
		}
	}
	return kinds, nil
}

// fdKind says what the descriptor at path, such as /proc/PID/fd/3, is, as
// FDKinds names it; ok is false when the descriptor is gone.
func fdKind(path string) (kind string, ok bool) {
	link, err := os.Readlink(path)
	if err != nil {
		return "", false
	}
	if link == "/proc" || strings.HasPrefix(link, "/proc/") {
		return "/proc", true
	}
	typ, id, found := strings.Cut(link, ":[")
	if !found || !strings.HasSuffix(id, "]") {
		return link, true
	}
	if _, err := strconv.ParseUint(strings.TrimSuffix(id, "]"), 10, 64); err != nil {
		return link, true
	}
	if typ != "socket" {
		return typ, true
	}
	var buf [32]byte
	n, err := unix.Getxattr(path, "system.sockprotoname", buf[:])
	if err != nil {
		// Closed since, its number perhaps taken by another file: not the
		// socket we saw, nothing to count. Else a socket that does not
		// say its protocol.
		if again, err := os.Readlink(path); err != nil || again != link {
			return "", false
		}
		return "socket", true
	}
	return "socket:" + strings.TrimRight(string(buf[:n]), "\x00"), true
}

// Status returns the fields of /proc/PID/status, or of
// /proc/PID/task/TID/status when tid is not 0, by name, values trimmed.
func Status(pid, tid int) (map[string]string, error) {
	path := filepath.Join("/proc", strconv.Itoa(pid), "status")
	if tid != 0 {
		path = filepath.Join("/proc", strconv.Itoa(pid), "task", strconv.Itoa(tid), "status")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m, nil
}

// Threads returns the thread ids of pid.
func Threads(pid int) ([]int, error) {
	ents, err := os.ReadDir(filepath.Join("/proc", strconv.Itoa(pid), "task"))
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	var tids []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}
