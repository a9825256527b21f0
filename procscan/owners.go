package procscan

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
)

// Owner is a process holding a socket.
type Owner struct {
	PID int
	// Comm is the process's command name as the kernel keeps it in
	// /proc/PID/comm (at most 15 bytes, usually the executable's base
	// name), with bytes that are not UTF-8 replaced by U+FFFD.
	Comm string
	// FD is the descriptor the socket was found at, so that Recheck can
	// look at that one link again instead of walking every process.
	FD int
}

// ScanStats counts what one Owners walk looked at.
type ScanStats struct {
	// Processes is the number of processes whose fds were looked at; a
	// walk that ends early because every wanted socket was found does not
	// count the processes it never reached.
	Processes int
	// FDs is the number of fd entries read.
	FDs int
	// Denied is the number of processes whose fds we may not read
	// (EACCES or EPERM). Reading another process's fd links needs ptrace
	// read access to it: the same user and no capabilities we lack, or
	// CAP_SYS_PTRACE. It is not an error.
	Denied int
}

// Buffer sizes for the walk. A socket link is at most "socket:[4294967295]"
// (19 bytes); a longer link target is not a socket, so a short buffer that
// fills up is enough to tell.
const (
	direntBufSize = 32 << 10
	linkBufSize   = 64
	commBufSize   = 64
)

// Owners walks <procRoot>/PID/fd of every process and sets into[inode], for
// each socket inode in want that some process holds, to that process. It
// first clears into, so a caller may reuse one map across walks; inodes no
// process holds (closed since, or held only by a process we may not read)
// are left out.
//
// A socket held by several processes (after fork, or passed over a Unix
// socket) is attributed to the one with the lowest PID: processes are
// walked in increasing PID order and the first holder wins. The walk stops
// as soon as every wanted inode has an owner.
//
// A process that exits during the walk is skipped silently, and one whose
// fds we may not read is skipped and counted in ScanStats.Denied. Owners
// returns an error only when procRoot itself cannot be read.
//
// Only the fd tables of thread-group leaders (the PID directories /proc
// lists) are walked: sockets of a thread that unshared its fd table, or of
// threads that outlive their leader, are not found.
func Owners(procRoot string, want map[uint32]struct{}, into map[uint32]Owner) (ScanStats, error) {
	clear(into)
	var st ScanStats
	if len(want) == 0 {
		return st, nil
	}
	root, err := openRoot(procRoot)
	if err != nil {
		return st, fmt.Errorf("procscan: open %s: %w", procRoot, err)
	}
	defer closeFD(root)
	w := ownerWalk{
		root: root,
		want: want,
		into: into,
		buf:  make([]byte, direntBufSize),
		path: make([]byte, 0, 32),
	}
	pids, err := listPIDs(root, w.buf, nil)
	if err != nil {
		return st, fmt.Errorf("procscan: list %s: %w", procRoot, err)
	}
	// /proc lists processes in PID order already, so this costs one pass.
	slices.Sort(pids)
	for _, pid := range pids {
		if len(into) == len(want) {
			break
		}
		w.process(pid, &st)
	}
	return st, nil
}

// ownerWalk is the state of one Owners walk, its buffers reused for every
// process.
type ownerWalk struct {
	root int
	want map[uint32]struct{}
	into map[uint32]Owner
	buf  []byte // getdents
	path []byte
	link [linkBufSize]byte
	comm [commBufSize]byte
}

// process looks through the fds of one process.
func (w *ownerWalk) process(pid int, st *ScanStats) {
	st.Processes++
	w.path = appendPIDPath(w.path[:0], pid, "/fd")
	dir, err := openDir(w.root, w.path)
	if err != nil {
		if denied(err) {
			st.Denied++
		}
		return // gone, or a PID directory without fd/
	}
	defer closeFD(dir)
	var comm string
	haveComm := false
	_ = eachDirent(dir, w.buf, func(name []byte) bool { // an error: the process exited under us
		if name[0] < '0' || name[0] > '9' {
			return true // "." and ".."
		}
		st.FDs++
		ln, err := readlinkAt(dir, name, w.link[:])
		if err != nil {
			if denied(err) {
				// The directory opened but its links need ptrace
				// access: so will every other fd here.
				st.Denied++
				return false
			}
			return true // closed since the directory was read
		}
		ino, ok := parseSocketLink(w.link[:ln])
		if !ok {
			return true
		}
		fd, ok := parseUint64(name[:len(name)-1])
		if !ok || fd > 1<<31-1 {
			return true
		}
		if _, ok := w.want[ino]; !ok {
			return true
		}
		if _, ok := w.into[ino]; ok {
			return true // a lower PID, or another fd of this one, has it
		}
		if !haveComm {
			w.path = appendPIDPath(w.path[:0], pid, "/comm")
			cn, err := readAt(w.root, w.path, w.comm[:])
			if err != nil {
				return false // exited: its sockets may yet be found elsewhere
			}
			comm, haveComm = commString(trimComm(w.comm[:cn])), true
		}
		w.into[ino] = Owner{PID: pid, Comm: comm, FD: int(fd)}
		return len(w.into) < len(w.want)
	})
}

// listPIDs appends to pids the process IDs among the entries of the
// directory root, using buf for getdents.
func listPIDs(root int, buf []byte, pids []int) ([]int, error) {
	err := eachDirent(root, buf, func(name []byte) bool {
		if pid, ok := parsePID(name[:len(name)-1]); ok {
			pids = append(pids, pid)
		}
		return true
	})
	return pids, err
}

// Recheck looks again at each owner in owners, as an earlier Owners walk
// found it, and deletes those that no longer hold their socket: the
// process exited, or changed its command name (exec, prctl), or the
// descriptor it was found at no longer links to the socket. It reads one
// link per socket and one comm per process, not every process's fds, so a
// caller can keep owners between walks and walk only for sockets it has
// not resolved yet.
//
// What it cannot see is a lower PID coming to hold a socket (fd passing):
// the owner stays the process found first for as long as it holds the
// socket. Recheck returns how many owners it deleted, and an error only
// when procRoot itself cannot be read.
func Recheck(procRoot string, owners map[uint32]Owner) (int, error) {
	if len(owners) == 0 {
		return 0, nil
	}
	root, err := openRoot(procRoot)
	if err != nil {
		return 0, fmt.Errorf("procscan: open %s: %w", procRoot, err)
	}
	defer closeFD(root)
	held := make([]heldSocket, 0, len(owners))
	for ino, o := range owners {
		held = append(held, heldSocket{ino, o})
	}
	// By process: one comm and one fd directory each.
	slices.SortFunc(held, func(a, b heldSocket) int { return cmp.Compare(a.owner.PID, b.owner.PID) })
	var (
		path  = make([]byte, 0, 32)
		name  = make([]byte, 0, 16)
		link  [linkBufSize]byte
		cbuf  [commBufSize]byte
		dir   = -1
		alive bool
	)
	dropped := 0
	for i, h := range held {
		if i == 0 || h.owner.PID != held[i-1].owner.PID {
			if dir >= 0 {
				closeFD(dir)
				dir = -1
			}
			path = appendPIDPath(path[:0], h.owner.PID, "/comm")
			n, err := readAt(root, path, cbuf[:])
			alive = err == nil && commString(trimComm(cbuf[:n])) == h.owner.Comm
			if alive {
				path = appendPIDPath(path[:0], h.owner.PID, "/fd")
				dir, err = openDir(root, path)
				alive = err == nil
			}
		}
		ok := alive
		if ok {
			name = append(strconv.AppendInt(name[:0], int64(h.owner.FD), 10), 0)
			n, err := readlinkAt(dir, name, link[:])
			ino, isSocket := parseSocketLink(link[:n])
			ok = err == nil && isSocket && ino == h.ino
		}
		if !ok {
			delete(owners, h.ino)
			dropped++
		}
	}
	if dir >= 0 {
		closeFD(dir)
	}
	return dropped, nil
}

// heldSocket is a socket and the owner an earlier walk found for it.
type heldSocket struct {
	ino   uint32
	owner Owner
}
