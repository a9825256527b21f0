//go:build linux

package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Capabilities kept after start-up, when the process has them:
//
//   - CAP_SYS_ADMIN, only when the exporter observes another namespace:
//     netlinkdiag re-enters it (setns) to reopen its socket after a failed
//     dump or when the namespace's path comes to name a new namespace.
//   - CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH: to open /proc/PID/ns/net and
//     read /proc/PID/fd of other users' processes, for per-process
//     attribution and namespaces named by /proc paths. CAP_DAC_READ_SEARCH
//     also keeps the web config and TLS files readable, which are re-read
//     on every connection.
//
// Everything else goes from the effective, permitted, inheritable, ambient
// and bounding sets, and no_new_privs is set, so that nothing the process
// runs later can gain a capability back.
const keptAlways = 1<<unix.CAP_SYS_PTRACE | 1<<unix.CAP_DAC_READ_SEARCH

// dropPrivileges drops every capability the exporter does not need after
// start-up, on every thread of the process, and sets no_new_privs. Call it
// after the first poll and before serving.
//
// Linux keeps credentials per thread and the Go runtime runs many threads,
// so each change is made on all of them at once with AllThreadsSyscall.
// That is impossible in a binary linked with cgo (the runtime cannot see
// threads C code made): there dropPrivileges changes nothing, warns if
// there was something to drop, and returns nil. Release builds are
// CGO_ENABLED=0.
func dropPrivileges(keepNetNSEntry bool, logger *slog.Logger) error {
	keep := uint64(keptAlways)
	if keepNetNSEntry {
		keep |= 1 << unix.CAP_SYS_ADMIN
	}
	before, err := readCaps()
	if err != nil {
		return err
	}
	bounding, err := boundingSet()
	if err != nil {
		return err
	}
	ambient := before.ambient

	_, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0)
	if errno == unix.ENOTSUP {
		if (before.permitted|before.inheritable|ambient)&^keep != 0 {
			logger.Warn("capabilities not dropped: this binary is built with cgo, which hides threads from the runtime; build with CGO_ENABLED=0 to drop them",
				"permitted", capNames(before.permitted))
		}
		return nil
	}
	if errno != 0 {
		return fmt.Errorf("set no_new_privs: %w", errno)
	}

	// The bounding set first: dropping from it takes CAP_SETPCAP, which
	// the capset below removes.
	if bounding&^keep != 0 && before.effective&(1<<unix.CAP_SETPCAP) != 0 {
		for c := 0; c <= lastCap(); c++ {
			if bounding&(1<<c) == 0 || keep&(1<<c) != 0 {
				continue
			}
			if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); errno != 0 {
				return fmt.Errorf("drop %s from the bounding set: %w", capName(c), errno)
			}
		}
	}
	if ambient != 0 {
		if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); errno != 0 {
			return fmt.Errorf("clear the ambient set: %w", errno)
		}
	}
	want := caps{effective: before.permitted & keep, permitted: before.permitted & keep}
	if before.effective != want.effective || before.permitted != want.permitted || before.inheritable != 0 {
		hdr := &unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		data := want.userData()
		if _, _, errno := syscall.AllThreadsSyscall(unix.SYS_CAPSET, uintptr(unsafe.Pointer(hdr)), uintptr(unsafe.Pointer(&data[0])), 0); errno != 0 {
			return fmt.Errorf("set capabilities: %w", errno)
		}
	}

	after, err := readCaps()
	if err != nil {
		return err
	}
	if after.permitted != want.permitted || after.effective != want.effective || after.inheritable != 0 || after.ambient != 0 {
		return fmt.Errorf("capabilities after dropping: permitted %s, effective %s; want %s",
			capNames(after.permitted), capNames(after.effective), capNames(want.permitted))
	}
	if before.permitted != after.permitted {
		logger.Info("dropped capabilities", "kept", capNames(after.permitted), "dropped", capNames(before.permitted&^after.permitted))
	}
	return nil
}

// canBindPrivilegedPorts says whether the process may now bind ports below
// 1024: whether CAP_NET_BIND_SERVICE is in its effective set.
func canBindPrivilegedPorts() bool {
	c, err := readCaps()
	return err == nil && c.effective&(1<<unix.CAP_NET_BIND_SERVICE) != 0
}

// caps is a thread's capability sets, bit n for capability n.
type caps struct {
	effective, permitted, inheritable, ambient uint64
}

func (c caps) userData() [2]unix.CapUserData {
	return [2]unix.CapUserData{
		{Effective: uint32(c.effective), Permitted: uint32(c.permitted), Inheritable: uint32(c.inheritable)},
		{Effective: uint32(c.effective >> 32), Permitted: uint32(c.permitted >> 32), Inheritable: uint32(c.inheritable >> 32)},
	}
}

// readCaps reads the calling thread's capability sets.
func readCaps() (caps, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return caps{}, fmt.Errorf("read capabilities: %w", err)
	}
	c := caps{
		effective:   uint64(data[0].Effective) | uint64(data[1].Effective)<<32,
		permitted:   uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32,
		inheritable: uint64(data[0].Inheritable) | uint64(data[1].Inheritable)<<32,
	}
	for n := 0; n <= lastCap(); n++ {
		on, err := unix.PrctlRetInt(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_IS_SET, uintptr(n), 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break // a kernel without ambient capabilities, or past its last
		}
		if err != nil {
			return caps{}, fmt.Errorf("read ambient capability %s: %w", capName(n), err)
		}
		if on == 1 {
			c.ambient |= 1 << n
		}
	}
	return c, nil
}

// boundingSet reads the calling thread's capability bounding set.
func boundingSet() (uint64, error) {
	var set uint64
	for n := 0; n <= lastCap(); n++ {
		on, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, uintptr(n), 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break
		}
		if err != nil {
			return 0, fmt.Errorf("read bounding capability %s: %w", capName(n), err)
		}
		if on == 1 {
			set |= 1 << n
		}
	}
	return set, nil
}

// lastCap is the highest capability the running kernel knows.
func lastCap() int {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err == nil {
		if n, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && n >= 0 && n < 64 {
			return n
		}
	}
	return unix.CAP_LAST_CAP
}

// capNamesByNumber names the capabilities of include/uapi/linux/capability.h
// by number, for logs.
var capNamesByNumber = [...]string{
	"cap_chown", "cap_dac_override", "cap_dac_read_search", "cap_fowner", "cap_fsetid", "cap_kill",
	"cap_setgid", "cap_setuid", "cap_setpcap", "cap_linux_immutable", "cap_net_bind_service",
	"cap_net_broadcast", "cap_net_admin", "cap_net_raw", "cap_ipc_lock", "cap_ipc_owner",
	"cap_sys_module", "cap_sys_rawio", "cap_sys_chroot", "cap_sys_ptrace", "cap_sys_pacct",
	"cap_sys_admin", "cap_sys_boot", "cap_sys_nice", "cap_sys_resource", "cap_sys_time",
	"cap_sys_tty_config", "cap_mknod", "cap_lease", "cap_audit_write", "cap_audit_control",
	"cap_setfcap", "cap_mac_override", "cap_mac_admin", "cap_syslog", "cap_wake_alarm",
	"cap_block_suspend", "cap_audit_read", "cap_perfmon", "cap_bpf", "cap_checkpoint_restore",
}

func capName(n int) string {
	if n >= 0 && n < len(capNamesByNumber) {
		return capNamesByNumber[n]
	}
	return "cap_" + strconv.Itoa(n)
}

// capNames renders a capability set for logs: its names, comma separated.
func capNames(set uint64) string {
	if set == 0 {
		return "none"
	}
	var names []string
	for n := range 64 {
		if set&(1<<n) != 0 {
			names = append(names, capName(n))
		}
	}
	return strings.Join(names, ",")
}
