//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// bpfStatsSysctl makes the kernel count every BPF program's runs and run
// time; off by default, because the counting costs a little per run.
const bpfStatsSysctl = "/proc/sys/kernel/bpf_stats_enabled"

// enableBPFStats turns bpfStatsSysctl on and returns what puts back the
// value it found. The sysctl is one switch for the whole host, which others
// may turn off meanwhile; a BPF_ENABLE_STATS descriptor, held until
// restore, keeps the counting on whatever they write.
func enableBPFStats() (restore func() error, err error) {
	old, err := os.ReadFile(bpfStatsSysctl)
	if err != nil {
		return nil, fmt.Errorf("BPF run time statistics: %w", err)
	}
	old = bytes.TrimSpace(old)
	if err := os.WriteFile(bpfStatsSysctl, []byte("1"), 0); err != nil {
		return nil, fmt.Errorf("enable BPF run time statistics: %w", err)
	}
	put := func() error {
		if err := os.WriteFile(bpfStatsSysctl, old, 0); err != nil {
			return fmt.Errorf("restore %s to %s: %w", bpfStatsSysctl, old, err)
		}
		return nil
	}
	hold, err := ebpf.EnableStats(unix.BPF_STATS_RUN_TIME)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("enable BPF run time statistics: %w", err), put())
	}
	return func() error { return errors.Join(hold.Close(), put()) }, nil
}

// preciseProgram is the name of the exporter's BPF program, as the kernel
// keeps it: truncated to 15 bytes.
const preciseProgram = "inet_sock_set_state"

// programIDs returns the BPF programs process pid holds, by descriptor or
// through a link, named as its precise mode's program is.
func programIDs(pid int) ([]ebpf.ProgramID, error) {
	paths, err := filepath.Glob(fmt.Sprintf("/proc/%d/fdinfo/*", pid))
	if err != nil || len(paths) == 0 {
		return nil, fmt.Errorf("process %d: no descriptors found", pid)
	}
	var ids []ebpf.ProgramID
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue // closed meanwhile
		}
		id, ok := fdinfoProgID(string(b))
		if !ok || slices.Contains(ids, id) {
			continue
		}
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		info, err := prog.Info()
		prog.Close()
		if err == nil && info.Name != "" && strings.HasPrefix(preciseProgram, info.Name) {
			ids = append(ids, id)
		}
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("process %d holds no BPF program named %s", pid, preciseProgram)
	}
	return ids, nil
}

// fdinfoProgID returns the program a descriptor's /proc/PID/fdinfo text
// names: a program's own descriptor and a BPF link's both have a prog_id
// line.
func fdinfoProgID(text string) (ebpf.ProgramID, bool) {
	for line := range strings.Lines(text) {
		key, value, ok := strings.Cut(line, ":")
		if !ok || key != "prog_id" {
			continue
		}
		id, err := strconv.ParseUint(strings.TrimSpace(value), 10, 32)
		if err != nil || id == 0 {
			return 0, false
		}
		return ebpf.ProgramID(id), true
	}
	return 0, false
}

// bpfRun is what the kernel counted of programs' runs, with
// bpfStatsSysctl on.
type bpfRun struct {
	time time.Duration
	runs uint64
}

// programRuns adds up the run statistics of the programs ids.
func programRuns(ids []ebpf.ProgramID) (bpfRun, error) {
	var r bpfRun
	for _, id := range ids {
		prog, err := ebpf.NewProgramFromID(id)
		if err != nil {
			return bpfRun{}, fmt.Errorf("BPF program %d: %w", id, err)
		}
		st, err := prog.Stats()
		prog.Close()
		if err != nil {
			return bpfRun{}, fmt.Errorf("BPF program %d: %w", id, err)
		}
		r.time += st.Runtime
		r.runs += st.RunCount
	}
	return r, nil
}

// usage is what a process and its BPF programs had used by a moment.
type usage struct {
	at  time.Time
	cpu time.Duration
	bpf bpfRun
}

// readUsage reads what process pid and its programs ids have used.
func readUsage(pid int, ids []ebpf.ProgramID) (usage, error) {
	cpu, err := processCPU(pid)
	if err != nil {
		return usage{}, err
	}
	bpf, err := programRuns(ids)
	if err != nil {
		return usage{}, err
	}
	return usage{time.Now(), cpu, bpf}, nil
}

// since returns the time from u0 to u, and what was used meanwhile.
func (u usage) since(u0 usage) (time.Duration, time.Duration, bpfRun) {
	return u.at.Sub(u0.at), u.cpu - u0.cpu, bpfRun{u.bpf.time - u0.bpf.time, u.bpf.runs - u0.bpf.runs}
}

// userHZ is the unit of /proc/PID/stat's CPU times: USER_HZ, 100 on every
// architecture Go runs Linux on.
const userHZ = 100

// processCPU returns the user and system CPU time process pid has used,
// its threads' that ended included, from /proc/PID/stat.
func processCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	d, err := statCPU(string(b))
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return d, nil
}

// statCPU returns utime+stime from a /proc/PID/stat line. The command name
// in parentheses may hold spaces and parentheses itself, so fields are
// counted from the last ')'.
func statCPU(line string) (time.Duration, error) {
	i := strings.LastIndexByte(line, ')')
	if i < 0 {
		return 0, errors.New("no command name")
	}
	// After the name: state (field 3) ... utime (14), stime (15).
	f := strings.Fields(line[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want at least 13", len(f))
	}
	var ticks uint64
	for _, s := range f[11:13] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("CPU time %q: %w", s, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}
