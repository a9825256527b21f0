package loadtest

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ProcSample is what /proc says about a process at one moment.
type ProcSample struct {
	FDs     int   // open file descriptors
	Threads int   // OS threads
	RSS     int64 // resident memory, bytes
}

// SampleProc reads the descriptors, threads and resident memory of pid.
func SampleProc(pid int) (ProcSample, error) {
	dir := filepath.Join("/proc", strconv.Itoa(pid))
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return ProcSample{}, fmt.Errorf("loadtest: %w", err)
	}
	st, err := Status(pid, 0)
	if err != nil {
		return ProcSample{}, err
	}
	s := ProcSample{FDs: len(fds)}
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
