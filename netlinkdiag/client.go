package netlinkdiag

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// ErrNamespaceGone is wrapped by the error when the network namespace a Conn
// observes, or was asked to open, no longer exists: its path names nothing.
// Such an error also satisfies errors.Is(err, os.ErrNotExist), as a missing
// file; a kernel error never wraps ErrNamespaceGone.
var ErrNamespaceGone = errors.New("netlinkdiag: no such network namespace")

// Conn is one NETLINK_SOCK_DIAG socket in one network namespace. It is not
// safe for concurrent use.
//
// A dump that fails part way closes the socket, and the next DumpTCP opens a
// fresh one in the same namespace, so a broken dump never leaks into the
// next.
type Conn struct {
	c *conn
}

// Dial opens a sock_diag socket in the network namespace opts names. If the
// namespace does not exist, the error wraps ErrNamespaceGone (and
// os.ErrNotExist) and names its path.
func Dial(opts Options) (*Conn, error) {
	path, err := nsPath(opts.NetNS)
	if err != nil {
		return nil, err
	}
	c, err := dial(path)
	if err != nil {
		return nil, err
	}
	return &Conn{c: c}, nil
}

// Close closes the socket. DumpTCP fails after it.
func (c *Conn) Close() error {
	return c.c.close()
}

// NetnsInode returns the inode of the network namespace the socket was
// last opened in (as stat(2) of /proc/PID/ns/net shows it): the one its
// last dump read. A Conn whose namespace path comes to name a new
// namespace follows it at the next dump.
func (c *Conn) NetnsInode() uint64 { return c.c.netnsInode() }

// DumpTCP dumps the TCP sockets req selects and calls fn for each, in the
// order the kernel reports them. The Socket passed to fn, Attrs included, is
// overwritten by the next one: copy what must outlive the call. An error from
// fn ends the dump and is returned.
//
// DumpTCP returns an error wrapping ErrDumpInterrupted, after every socket
// was delivered, if the kernel flagged the dump as inconsistent; one
// wrapping ErrNamespaceGone (and os.ErrNotExist) if the namespace's path has
// disappeared; one wrapping ErrUnsupported if the kernel answered ENOENT or
// EOPNOTSUPP, having no sock_diag handler for TCP in the namespace; one
// wrapping syscall.Errno for any other kernel error (errors.Is(err,
// os.ErrPermission) for EPERM and EACCES); ErrMalformed for a reply that
// does not decode; and ctx.Err() when ctx ends first. A single receive waits
// at most 10 seconds.
//
// When the Conn was opened for a namespace path, DumpTCP checks the path
// first: if it now names another namespace, the dump runs there.
func (c *Conn) DumpTCP(ctx context.Context, req Request, fn func(*Socket) error) error {
	return c.c.dumpTCP(ctx, req, fn)
}

// Do runs fn on a goroutine of its own whose OS thread is switched into the
// network namespace at path (such as /run/netns/NAME or /proc/PID/ns/net),
// waits for it, and returns fn's error. Sockets fn opens belong to that
// namespace for their whole life, whichever thread uses them later. The
// caller's goroutine and thread never change namespace. After fn the thread
// is switched back for reuse; should that fail, the runtime discards the
// thread when fn's goroutine ends, and the caller is not told, as nothing
// of it is affected.
//
// A panic in fn is raised again on the caller's goroutine, and a
// runtime.Goexit in fn (such as testing.T.FailNow) ends the caller's
// goroutine too. Goroutines fn starts do not inherit the namespace.
//
// If path does not exist, the error wraps ErrNamespaceGone (and
// os.ErrNotExist) and fn does not run.
func Do(path string, fn func() error) error { return do(path, fn) }

// nsPath turns Options.NetNS into the path of a namespace file, "" for the
// caller's namespace.
func nsPath(netns string) (string, error) {
	switch {
	case netns == "":
		return "", nil
	case strings.Contains(netns, "/"):
		return netns, nil
	case netns == "." || netns == "..":
		return "", fmt.Errorf("netlinkdiag: invalid network namespace name %q", netns)
	}
	return filepath.Join("/run/netns", netns), nil
}

// PortSettings reads the sysctls of the Conn's network namespace that
// decide which local ports connect() can pick (see PortSettings). It
// enters the namespace on a thread of its own, as dumps do, since
// /proc/sys/net shows the namespace of the thread that opens it.
func (c *Conn) PortSettings() (PortSettings, error) { return c.c.portSettings() }
