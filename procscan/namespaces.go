package procscan

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
)

// Namespace is one network namespace found on the host.
type Namespace struct {
	// Inode is the namespace's nsfs inode, its identity while it lives
	// (the number lsns and `readlink /proc/PID/ns/net` show). The kernel
	// may reuse it once the namespace is gone.
	Inode uint64
	// Dev is the device of the nsfs file the namespace was found through.
	Dev uint64
	// Name is the namespace's /run/netns name (`ip netns` names) when it
	// has one, the lexically first if several; otherwise "<comm>:<inode>"
	// from the command name of its oldest process (earliest start time,
	// then lowest PID), e.g. "nginx:4026532281". A name of the second
	// kind is fixed the first time it is needed and kept, whoever exits,
	// while the namespace keeps being discovered.
	Name string
	// Path opens the namespace now: <runNetns>/<name>, or
	// <procRoot>/<pid>/ns/net of one of its processes, kept the same
	// while that process lives.
	Path string
}

// DiscoverStats counts what the last Discover looked at.
type DiscoverStats struct {
	// Processes is the number of processes whose network namespace was
	// looked up.
	Processes int
	// Denied is the number of processes whose namespace we may not look
	// up. /proc/PID/ns/net needs ptrace read access to the process, as
	// its fd links do (see ScanStats.Denied); the namespaces of processes
	// we may not look into are found only through runNetns. It is not an
	// error.
	Denied int
	// StatReads is the number of /proc/PID/stat files read to name
	// namespaces that had no name yet.
	StatReads int
}

// Discoverer finds the host's network namespaces, remembering the names it
// made up between calls so that a namespace's name is stable for its life.
// It is not safe for concurrent use.
type Discoverer struct {
	procRoot, runNetns string

	gen   uint64             // Discover calls so far
	known map[fileID]*nsMemo // namespaces discovered by the last call
	index map[fileID]int     // this call: namespace -> found[i]
	found []nsFound          // this call's namespaces
	devs  []uint64           // this call: devices of namespaces under procRoot
	stats DiscoverStats      // this call's counts
	buf   []byte             // getdents
	path  []byte             // NUL-terminated paths
	stat  [statBufSize]byte  // /proc/PID/stat
}

// statBufSize holds /proc/PID/stat through field 22 whatever the command
// name: at most 64 bytes of name (escaped kernel thread names included)
// and 21 numeric fields.
const statBufSize = 1024

// nsMemo is what the Discoverer keeps about a namespace between calls.
type nsMemo struct {
	seen      uint64 // the last call that found it
	generated string // "<comm>:<inode>", set the first time it was needed
	runName   string // last /run/netns name and its path, to reuse the strings
	runPath   string
	pid       int // the process procPath goes through
	procPath  string
}

// nsFound is a namespace as one Discover call finds it.
type nsFound struct {
	id      fileID
	memo    *nsMemo
	runName string // lexically first /run/netns name, "" if none
	pid     int    // lowest PID in it, 0 if none
	keepPID bool   // memo.pid is still in it
	// The oldest process so far, when the namespace needs a generated name.
	oldestStart uint64
	oldestPID   int
	oldestComm  string
}

// NewDiscoverer returns a Discoverer of the namespaces reachable through
// procRoot (usually /proc) and runNetns (usually /run/netns).
func NewDiscoverer(procRoot, runNetns string) *Discoverer {
	return &Discoverer{
		procRoot: procRoot,
		runNetns: runNetns,
		known:    map[fileID]*nsMemo{},
		index:    map[fileID]int{},
		buf:      make([]byte, direntBufSize),
		path:     make([]byte, 0, 32),
	}
}

// Stats returns the counts of the last Discover.
func (d *Discoverer) Stats() DiscoverStats { return d.stats }

// Discover returns every network namespace reachable through an entry of
// runNetns (the bind mounts `ip netns add` makes) or through
// <procRoot>/PID/ns/net of a process, each once (by the device and inode
// its path stats to), sorted by Name.
//
// An entry of runNetns counts only if it is on the same device as the
// namespaces found under procRoot (nsfs): a file left behind without its
// bind mount is not a namespace. Namespaces and processes that vanish
// while Discover looks are skipped silently, as is a namespace whose
// processes all exit before it could be named. Processes we may not look
// into are counted in Stats().Denied. Discover returns an error only when
// procRoot, or runNetns if it exists, cannot be read.
//
// Each call reads procRoot and runNetns and stats one file per process and
// per runNetns entry; it reads /proc/PID/stat only for the processes of a
// namespace that needs a name it does not have yet (seen for the first
// time, or it lost its runNetns name). The slice returned is new each call.
//
// Namespaces entered by a single thread, or kept alive only by an open
// file, are not found. The kernel reuses the inodes of freed namespaces: a
// namespace created between two calls with the inode of one that vanished
// between them keeps the vanished one's name.
func (d *Discoverer) Discover() ([]Namespace, error) {
	d.gen++
	d.stats = DiscoverStats{}
	clear(d.index)
	d.found = d.found[:0]
	d.devs = d.devs[:0]

	if err := d.readRunNetns(); err != nil {
		return nil, err
	}
	if err := d.readProc(); err != nil {
		return nil, err
	}

	out := make([]Namespace, 0, len(d.found))
	for i := range d.found {
		f := &d.found[i]
		if f.pid == 0 && len(d.devs) > 0 && !slices.Contains(d.devs, f.id.dev) {
			continue // a runNetns entry that is not a namespace
		}
		m := f.memo
		if m == nil {
			m = &nsMemo{}
		}
		ns := Namespace{Inode: f.id.ino, Dev: f.id.dev}
		switch {
		case f.runName != "":
			if m.runName != f.runName {
				m.runName, m.runPath = f.runName, filepath.Join(d.runNetns, f.runName)
			}
			ns.Name, ns.Path = m.runName, m.runPath
		case m.generated == "" && f.oldestPID == 0:
			continue // every process in it exited before we read its stat
		default:
			if m.generated == "" {
				m.generated = f.oldestComm + ":" + strconv.FormatUint(f.id.ino, 10)
			}
			if !f.keepPID {
				m.pid = f.pid
				m.procPath = filepath.Join(d.procRoot, strconv.Itoa(f.pid), "ns", "net")
			}
			ns.Name, ns.Path = m.generated, m.procPath
		}
		m.seen = d.gen
		if f.memo == nil {
			d.known[f.id] = m
		}
		out = append(out, ns)
	}
	for id, m := range d.known {
		if m.seen != d.gen {
			delete(d.known, id)
		}
	}
	slices.SortFunc(out, func(a, b Namespace) int {
		if c := cmp.Compare(a.Name, b.Name); c != 0 {
			return c
		}
		return cmp.Compare(a.Inode, b.Inode)
	})
	return out, nil
}

// lookup returns this call's record of the namespace id, adding it.
func (d *Discoverer) lookup(id fileID) *nsFound {
	if i, ok := d.index[id]; ok {
		return &d.found[i]
	}
	d.index[id] = len(d.found)
	d.found = append(d.found, nsFound{id: id, memo: d.known[id]})
	return &d.found[len(d.found)-1]
}

// readRunNetns records the namespaces bind-mounted in runNetns under their
// names. A missing runNetns has no namespaces.
func (d *Discoverer) readRunNetns() error {
	dir, err := openRoot(d.runNetns)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("procscan: open %s: %w", d.runNetns, err)
	}
	defer closeFD(dir)
	err = eachDirent(dir, d.buf, func(name []byte) bool {
		base := name[:len(name)-1]
		if len(base) == 0 || string(base) == "." || string(base) == ".." {
			return true
		}
		id, err := statAt(dir, name)
		if err != nil {
			return true // deleted since listed, or a dangling link
		}
		f := d.lookup(id)
		if f.runName != "" && string(base) >= f.runName {
			return true // bind-mounted under several names: keep the first
		}
		if f.memo != nil && f.memo.runName == string(base) {
			f.runName = f.memo.runName // no new string for a known name
		} else {
			f.runName = string(base)
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("procscan: list %s: %w", d.runNetns, err)
	}
	return nil
}

// readProc records the namespace of every process under procRoot, and the
// oldest process of each namespace that still needs a generated name.
func (d *Discoverer) readProc() error {
	root, err := openRoot(d.procRoot)
	if err != nil {
		return fmt.Errorf("procscan: open %s: %w", d.procRoot, err)
	}
	defer closeFD(root)
	err = eachDirent(root, d.buf, func(name []byte) bool {
		if pid, ok := parsePID(name[:len(name)-1]); ok {
			d.process(root, pid)
		}
		return true
	})
	if err != nil {
		return fmt.Errorf("procscan: list %s: %w", d.procRoot, err)
	}
	return nil
}

// process records the namespace of one process.
func (d *Discoverer) process(root, pid int) {
	d.stats.Processes++
	d.path = appendPIDPath(d.path[:0], pid, "/ns/net")
	id, err := statAt(root, d.path)
	if err != nil {
		if denied(err) {
			d.stats.Denied++
		}
		return // exited, or a zombie (no namespaces left)
	}
	if !slices.Contains(d.devs, id.dev) {
		d.devs = append(d.devs, id.dev)
	}
	f := d.lookup(id)
	if f.pid == 0 || pid < f.pid {
		f.pid = pid
	}
	if f.memo != nil && f.memo.pid == pid {
		f.keepPID = true
	}
	if f.runName != "" || (f.memo != nil && f.memo.generated != "") {
		return // named already
	}
	d.path = appendPIDPath(d.path[:0], pid, "/stat")
	sn, err := readAt(root, d.path, d.stat[:])
	d.stats.StatReads++
	if err != nil {
		return
	}
	comm, start, ok := parseStat(d.stat[:sn])
	if !ok {
		return
	}
	if f.oldestPID == 0 || start < f.oldestStart || (start == f.oldestStart && pid < f.oldestPID) {
		f.oldestStart, f.oldestPID, f.oldestComm = start, pid, commString(comm)
	}
}
