package statezoo

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Listen opens a TCP socket in the calling thread's network namespace,
// binds it to the loopback address of family (unix.AF_INET or
// unix.AF_INET6) on an ephemeral port and listens with backlog. It
// returns the blocking, close-on-exec fd and the port.
func Listen(family int, backlog int) (fd int, port uint16, err error) {
	fd, err = bound(family)
	if err != nil {
		return -1, 0, err
	}
	if err := unix.Listen(fd, backlog); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("listen: %w", err)
	}
	port, err = localPort(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, err
	}
	return fd, port, nil
}

// Connect opens a TCP socket in the calling thread's network namespace and
// connects it to port on the loopback address of family, waiting as long
// as a blocking connect would for the handshake to complete. It returns
// the blocking, close-on-exec fd.
func Connect(family int, port uint16) (fd int, err error) {
	fd, err = startConnect(family, port, nil)
	if err != nil {
		return -1, err
	}
	if err := finishConnect(fd, port, -1); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Accept takes the next connection from the listening socket lfd, waiting
// for one if need be. The new fd is blocking and close-on-exec.
func Accept(lfd int) (int, error) {
	for {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("accept: %w", err)
		}
		return fd, nil
	}
}

// HalfClose shuts down the sending side of fd: the kernel sends a FIN
// after any queued data, and the socket can still receive.
func HalfClose(fd int) error {
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		return fmt.Errorf("shutdown(SHUT_WR): %w", err)
	}
	return nil
}

// FillAndHalfClose fills the peer's receive window from each fd, which
// must be connected to a peer that never reads, and half-closes it: its
// FIN then waits behind unsent data and reaches the peer only once the
// peer reads. The fds are left non-blocking. A small send buffer on the
// fds and a small receive buffer on their peers (SO_SNDBUF, SO_RCVBUF set
// before connecting) make it quick; it gives up at deadline.
func FillAndHalfClose(fds []int, deadline time.Time) error {
	for _, fd := range fds {
		if err := unix.SetNonblock(fd, true); err != nil {
			return fmt.Errorf("set non-blocking: %w", err)
		}
	}
	if err := fill(fds, deadline); err != nil {
		return err
	}
	for _, fd := range fds {
		if err := HalfClose(fd); err != nil {
			return err
		}
	}
	return nil
}

// newSocket opens a close-on-exec TCP socket of family.
func newSocket(family int) (int, error) {
	if family != unix.AF_INET && family != unix.AF_INET6 {
		return -1, fmt.Errorf("address family %d: want AF_INET or AF_INET6", family)
	}
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, fmt.Errorf("socket: %w", err)
	}
	return fd, nil
}

// bound opens a TCP socket bound to the loopback address of family on an
// ephemeral port.
func bound(family int) (int, error) {
	fd, err := newSocket(family)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, loopback(family, 0)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("bind: %w", err)
	}
	return fd, nil
}

// startConnect opens a non-blocking TCP socket, runs setup on it (for
// options that must be set before the handshake), and starts connecting
// it to port on loopback. It returns the fd mid-handshake.
func startConnect(family int, port uint16, setup func(fd int) error) (int, error) {
	fd, err := newSocket(family)
	if err != nil {
		return -1, err
	}
	if setup != nil {
		if err := setup(fd); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	// Connecting without blocking and waiting with poll means a signal
	// arriving mid-handshake cannot leave the outcome unknown.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("set non-blocking: %w", err)
	}
	err = unix.Connect(fd, loopback(family, port))
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		unix.Close(fd)
		return -1, fmt.Errorf("connect to port %d: %w", port, err)
	}
	return fd, nil
}

// finishConnect waits up to timeout (forever if negative) for the
// handshake startConnect began on fd to complete, and makes fd blocking.
func finishConnect(fd int, port uint16, timeout time.Duration) error {
	if err := waitFor(fd, unix.POLLOUT, timeout); err != nil {
		return fmt.Errorf("connect to port %d: %w", port, err)
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return fmt.Errorf("connect to port %d: read SO_ERROR: %w", port, err)
	}
	if soerr != 0 {
		return fmt.Errorf("connect to port %d: %w", port, unix.Errno(soerr))
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		return fmt.Errorf("set blocking: %w", err)
	}
	return nil
}

// waitFor polls fd for events for up to timeout, or forever if timeout is
// negative.
func waitFor(fd int, events int16, timeout time.Duration) error {
	end := time.Now().Add(timeout)
	for {
		ms := -1
		if timeout >= 0 {
			ms = int(max(time.Until(end), 0).Milliseconds())
		}
		fds := []unix.PollFd{{Fd: int32(fd), Events: events}}
		n, err := unix.Poll(fds, ms)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll: %w", err)
		}
		if n == 0 {
			return fmt.Errorf("timed out after %v", timeout)
		}
		return nil
	}
}

// fill writes to each of the non-blocking fds until its peer's receive
// window is closed with data still unsent, so that a FIN queued after the
// data cannot leave. The peers must not read.
//
// A full send buffer is not enough: the peer may still hold back a delayed
// ACK (about 40 ms on loopback) that frees buffer space and closes the
// window. So fill keeps writing until TCP_INFO shows a zero window, and
// it fills all fds at once so those waits overlap. (Kernels too old to
// report tcpi_snd_wnd leave it zero; there unsent data after a full send
// buffer is taken as enough.)
func fill(fds []int, deadline time.Time) error {
	buf := make([]byte, 64<<10)
	pending := slices.Clone(fds)
	for {
		var err error
		pending, err = fillStep(pending, buf)
		if err != nil || len(pending) == 0 {
			return err
		}
		if time.Now().After(deadline) {
			info, err := tcpInfo(pending[0])
			if err != nil {
				return err
			}
			return fmt.Errorf("fd %d: send buffer full but peer window still %d bytes with %d bytes unsent",
				pending[0], info.Snd_wnd, info.Notsent_bytes)
		}
		pfds := make([]unix.PollFd, len(pending))
		for i, fd := range pending {
			pfds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}
		}
		if _, err := unix.Poll(pfds, 5); err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll: %w", err)
		}
	}
}

// fillStep writes to each fd until it would block and returns the fds
// whose peer's window is still open.
func fillStep(fds []int, buf []byte) ([]int, error) {
	var open []int
	for _, fd := range fds {
		for {
			_, err := unix.Write(fd, buf)
			if err == nil || errors.Is(err, unix.EINTR) {
				continue
			}
			if !errors.Is(err, unix.EAGAIN) {
				return nil, fmt.Errorf("fd %d: write: %w", fd, err)
			}
			break
		}
		info, err := tcpInfo(fd)
		if err != nil {
			return nil, err
		}
		if info.Snd_wnd != 0 || info.Notsent_bytes == 0 {
			open = append(open, fd)
		}
	}
	return open, nil
}

func setInt(fd, level, opt int, value int, name string) error {
	if err := unix.SetsockoptInt(fd, level, opt, value); err != nil {
		return fmt.Errorf("set %s: %w", name, err)
	}
	return nil
}

func tcpInfo(fd int) (*unix.TCPInfo, error) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return nil, fmt.Errorf("read TCP_INFO: %w", err)
	}
	return info, nil
}

func loopback(family int, port uint16) unix.Sockaddr {
	if family == unix.AF_INET6 {
		return &unix.SockaddrInet6{Port: int(port), Addr: [16]byte{15: 1}}
	}
	return &unix.SockaddrInet4{Port: int(port), Addr: [4]byte{127, 0, 0, 1}}
}

func localPort(fd int) (uint16, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0, fmt.Errorf("getsockname: %w", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return uint16(sa.Port), nil
	case *unix.SockaddrInet6:
		return uint16(sa.Port), nil
	}
	return 0, fmt.Errorf("getsockname: unexpected address %T", sa)
}
