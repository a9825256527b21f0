//go:build linux

package netlinkdiag

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"
	"time"
	"unsafe"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

const (
	// recvBufLen holds any single dump datagram: the kernel sizes them by
	// the reader's buffer but caps them near 32 KiB.
	recvBufLen = 64 << 10

	// recvTimeout bounds each wait for the kernel, so a dump never hangs.
	recvTimeout = 10 * time.Second
)

// conn is the Linux side of Conn.
type conn struct {
	path string         // namespace file; "" for the caller's namespace
	self netns.NsHandle // for path "": the namespace Dial ran in, to reopen there
	ns   nsID           // the namespace the socket was opened in
	// nsh is, for a path, the namespace the socket was opened in, held
	// as long as the socket, so that reading its sysctls opens nothing.
	nsh netns.NsHandle

	f      *os.File // nil between a failed dump and the next; pollable
	rc     syscall.RawConn
	portID uint32
	seq    uint32
	closed bool

	buf  []byte // the one receive buffer, parsed in place
	req  [nlmsgHdrLen + inetDiagReqLen]byte
	sock Socket // the one Socket passed to callbacks

	// State of the last recvmsg, kept here so a receive allocates nothing.
	msg     unix.Msghdr
	iov     unix.Iovec
	from    unix.RawSockaddrNetlink
	recvFn  func(fd uintptr) bool
	timeout time.Duration // longest wait for one datagram
	rn      int
	rerrno  unix.Errno
}

// nsID identifies a namespace by its nsfs file.
type nsID struct{ dev, ino uint64 }

func identify(h netns.NsHandle) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(h), &st); err != nil {
		return nsID{}, err
	}
	return nsID{st.Dev, st.Ino}, nil
}

func (c *conn) netnsInode() uint64 { return c.ns.ino }

func dial(path string) (*conn, error) {
	c := &conn{path: path, self: netns.None(), nsh: netns.None(), buf: make([]byte, recvBufLen), timeout: recvTimeout}
	c.recvFn = c.recvmsg
	if err := c.open(); err != nil {
		c.self.Close()
		return nil, err
	}
	return c, nil
}

func (c *conn) close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	c.self.Close()
	c.nsh.Close()
	c.nsh = netns.None()
	if c.f == nil {
		return nil
	}
	err := c.f.Close()
	c.f, c.rc = nil, nil
	return err
}

// drop closes the socket so that the next dump opens a fresh one.
func (c *conn) drop() {
	if c.f != nil {
		c.f.Close() // nothing to do about an error: the fd is gone either way
		c.f, c.rc = nil, nil
	}
	c.nsh.Close()
	c.nsh = netns.None()
}

// open opens, binds and registers a sock_diag socket in c's namespace.
func (c *conn) open() error {
	fd, err := c.socket()
	if err != nil {
		return err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("netlinkdiag: bind sock_diag socket: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("netlinkdiag: sock_diag socket name: %w", err)
	}
	nl, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		unix.Close(fd)
		return fmt.Errorf("netlinkdiag: sock_diag socket name is a %T", sa)
	}
	f := os.NewFile(uintptr(fd), "sock_diag")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return fmt.Errorf("netlinkdiag: sock_diag socket: %w", err)
	}
	c.f, c.rc, c.portID = f, rc, nl.Pid
	return nil
}

// socket creates a non-blocking NETLINK_SOCK_DIAG socket in c's namespace
// and records which namespace that is.
func (c *conn) socket() (int, error) {
	if c.path != "" {
		target, err := openNS(c.path)
		if err != nil {
			return -1, err
		}
		id, err := identify(target)
		if err != nil {
			target.Close()
			return -1, fmt.Errorf("netlinkdiag: stat network namespace %s: %w", c.path, err)
		}
		fd, err := socketIn(c.path, target)
		if err != nil {
			target.Close()
			return -1, err
		}
		c.nsh.Close()
		c.ns, c.nsh = id, target
		return fd, nil
	}
	// The caller's namespace is the one the dialling thread is in. Keep a
	// handle to it, so that a reopen from a thread elsewhere still lands
	// there.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	here, err := netns.Get()
	if err != nil {
		return -1, fmt.Errorf("netlinkdiag: open own network namespace: %w", err)
	}
	id, err := identify(here)
	if err != nil {
		here.Close()
		return -1, fmt.Errorf("netlinkdiag: stat own network namespace: %w", err)
	}
	if c.self.IsOpen() {
		here.Close()
	} else {
		c.self, c.ns = here, id
	}
	if id == c.ns {
		return newSocket()
	}
	return socketIn("of the dialling thread", c.self)
}

// socketIn creates a non-blocking NETLINK_SOCK_DIAG socket in the namespace
// target; name names it in errors.
func socketIn(name string, target netns.NsHandle) (int, error) {
	fd := -1
	err := doIn(name, target, func() (err error) {
		fd, err = newSocket()
		return err
	})
	return fd, err
}

// openNS opens the namespace file at path. A path that names nothing is
// ErrNamespaceGone.
func openNS(path string) (netns.NsHandle, error) {
	h, err := netns.GetFromPath(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return netns.None(), namespaceGone(path, err)
		}
		return netns.None(), fmt.Errorf("netlinkdiag: open network namespace %s: %w", path, err)
	}
	return h, nil
}

// namespaceGone is the error for a namespace path that names nothing: err,
// the file-not-found error, is wrapped as well.
func namespaceGone(path string, err error) error {
	return fmt.Errorf("%w: %s: %w", ErrNamespaceGone, path, err)
}

func do(path string, fn func() error) error {
	target, err := openNS(path)
	if err != nil {
		return err
	}
	defer target.Close()
	return doIn(path, target, fn)
}

// doIn is Do for a namespace already open; name names it in errors.
//
// fn runs on a fresh goroutine, locked to its thread for as long as that
// thread is out of its own namespace: a thread that cannot be switched back
// stays locked, and the runtime discards it when the goroutine ends. The
// caller's goroutine and thread are never touched.
func doIn(name string, target netns.NsHandle, fn func() error) error {
	type result struct {
		err      error
		panicked any  // what fn panicked with, if it did
		returned bool // false if fn called runtime.Goexit
	}
	ch := make(chan result, 1)
	go func() {
		var r result
		defer func() { ch <- r }() // runs after a runtime.Goexit in fn too
		r.panicked, r.err = runIn(name, target, fn)
		r.returned = true
	}()
	r := <-ch
	switch {
	case !r.returned:
		runtime.Goexit()
	case r.panicked != nil:
		panic(r.panicked)
	}
	return r.err
}

// runIn runs fn on the calling goroutine's thread switched into target,
// then switches the thread back, and returns what fn panicked with or
// returned. It leaves the goroutine locked to the thread unless the thread
// is back in its own namespace, so it must be called on a goroutine that
// ends afterwards.
func runIn(name string, target netns.NsHandle, fn func() error) (panicked any, err error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("netlinkdiag: open own network namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("netlinkdiag: enter network namespace %s: %w", name, err)
	}
	defer func() {
		// After a panic or runtime.Goexit in fn too. A thread that cannot
		// switch back stays locked, and is discarded; fn's work is done and
		// nothing of the caller is in the wrong namespace, so that is not
		// an error to report.
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	return call(fn)
}

// call calls fn and returns what it panicked with, if it did.
func call(fn func() error) (panicked any, err error) {
	defer func() { panicked = recover() }()
	return nil, fn()
}

func newSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return -1, fmt.Errorf("netlinkdiag: open sock_diag socket: %w", err)
	}
	return fd, nil
}

// ensure makes c ready for a dump: still open, its namespace path still
// there and naming the namespace the socket lives in, a socket open.
func (c *conn) ensure() error {
	if c.closed {
		return fmt.Errorf("netlinkdiag: dump on a closed Conn: %w", net.ErrClosed)
	}
	if c.path != "" {
		var st unix.Stat_t
		if err := unix.Stat(c.path, &st); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				// Our socket is what keeps the namespace alive now: let go.
				c.drop()
				return namespaceGone(c.path, err)
			}
			return fmt.Errorf("netlinkdiag: stat network namespace %s: %w", c.path, err)
		}
		if (nsID{st.Dev, st.Ino}) != c.ns {
			c.drop() // the path names another namespace now: follow it
		}
	}
	if c.f == nil {
		return c.open()
	}
	return nil
}

func (c *conn) dumpTCP(ctx context.Context, req Request, fn func(*Socket) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := c.ensure(); err != nil {
		return err
	}
	defer c.watch(ctx)()
	interrupted := false
	if req.PerFamily {
		for _, family := range [...]uint8{afInet, afInet6} {
			intr, err := c.dump(ctx, family, req, fn)
			if err != nil {
				return err
			}
			interrupted = interrupted || intr
		}
	} else {
		intr, err := c.dump(ctx, 0, req, fn)
		if err != nil {
			return err
		}
		interrupted = intr
	}
	if interrupted {
		return ErrDumpInterrupted
	}
	return nil
}

// watch makes the end of ctx cut a waiting receive short, until the
// returned function is called.
func (c *conn) watch(ctx context.Context) (stop func()) {
	if ctx.Done() == nil {
		return func() {}
	}
	f := c.f // not c.f at cancel time: that may be a later socket
	unwatch := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Unix(1, 0)) })
	return func() { unwatch() }
}

// dump sends one dump request (legacy when family is 0) and streams its
// replies through fn. On any error the socket is dropped, since unread parts
// of the dump would still be queued on it.
func (c *conn) dump(ctx context.Context, family uint8, req Request, fn func(*Socket) error) (interrupted bool, err error) {
	c.seq++
	if _, err := c.f.Write(appendRequest(c.req[:0], c.seq, family, req)); err != nil {
		c.drop()
		return false, fmt.Errorf("netlinkdiag: send dump request: %w", err)
	}
	for {
		n, err := c.recv(ctx)
		if err != nil {
			c.drop()
			return interrupted, err
		}
		done, intr, err := parse(c.buf[:n], c.seq, c.portID, &c.sock, fn)
		interrupted = interrupted || intr
		if err != nil {
			c.drop()
			return interrupted, err
		}
		if done {
			return interrupted, nil
		}
	}
}

// recv receives one datagram from the kernel into c.buf.
func (c *conn) recv(ctx context.Context) (int, error) {
	for {
		if err := c.f.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
			return 0, fmt.Errorf("netlinkdiag: set receive deadline: %w", err)
		}
		// Checked after setting the deadline: a cancellation from here on
		// sets its own deadline in the past, which wins.
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		if err := c.rc.Read(c.recvFn); err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return 0, cerr
			}
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return 0, fmt.Errorf("netlinkdiag: no reply from the kernel within %v: %w", c.timeout, err)
			}
			return 0, fmt.Errorf("netlinkdiag: receive: %w", err)
		}
		if c.rerrno != 0 {
			return 0, fmt.Errorf("netlinkdiag: receive: %w", c.rerrno)
		}
		if c.msg.Flags&unix.MSG_TRUNC != 0 {
			return 0, fmt.Errorf("netlinkdiag: receive: datagram truncated to the %d-byte buffer", len(c.buf))
		}
		if c.from.Pid != 0 {
			continue // sent by another process, not the kernel
		}
		return c.rn, nil
	}
}

// recvmsg is the RawConn read function: one recvmsg(2) into c.buf, false
// when the socket has nothing yet.
func (c *conn) recvmsg(fd uintptr) bool {
	for {
		c.iov = unix.Iovec{Base: &c.buf[0]}
		c.iov.SetLen(len(c.buf))
		c.from = unix.RawSockaddrNetlink{}
		c.msg = unix.Msghdr{
			Name:    (*byte)(unsafe.Pointer(&c.from)),
			Namelen: unix.SizeofSockaddrNetlink,
			Iov:     &c.iov,
		}
		c.msg.SetIovlen(1)
		n, _, errno := unix.Syscall(unix.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&c.msg)), unix.MSG_DONTWAIT)
		switch errno {
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			return false
		}
		c.rn, c.rerrno = int(n), errno
		return true
	}
}

// portSettings reads the port sysctls in c's namespace.
func (c *conn) portSettings() (PortSettings, error) {
	if c.closed {
		return PortSettings{}, fmt.Errorf("netlinkdiag: read sysctls on a closed Conn: %w", net.ErrClosed)
	}
	files := make(map[string]string, 5)
	read := func() error {
		for _, name := range []string{sysctlPortRange, sysctlReserved, sysctlTWReuse, sysctlTWReuseDelay, sysctlTimestamps} {
			b, err := os.ReadFile("/proc/sys/" + name)
			if err != nil {
				if name == sysctlTWReuseDelay && errors.Is(err, os.ErrNotExist) {
					continue // before Linux 6.13: a fixed second
				}
				return fmt.Errorf("netlinkdiag: read sysctl: %w", err)
			}
			files[name] = string(b)
		}
		return nil
	}
	var err error
	if c.path != "" {
		// In the namespace the socket is in, which the next dump reads.
		if err := c.ensure(); err != nil {
			return PortSettings{}, err
		}
		err = doIn(c.path, c.nsh, read)
	} else {
		err = c.inOwn(read)
	}
	if err != nil {
		return PortSettings{}, err
	}
	return parsePortSettings(files)
}

// inOwn runs fn in the namespace a Conn for the caller's namespace was
// dialled in: on this thread if it is there (which needs no privilege),
// else switched into it.
func (c *conn) inOwn(fn func() error) error {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	here, err := netns.Get()
	if err != nil {
		return fmt.Errorf("netlinkdiag: open own network namespace: %w", err)
	}
	id, err := identify(here)
	here.Close()
	if err != nil {
		return fmt.Errorf("netlinkdiag: stat own network namespace: %w", err)
	}
	if id == c.ns || !c.self.IsOpen() {
		return fn()
	}
	return doIn("of the dialling thread", c.self, fn)
}
