package loadtest

import (
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// ChurnOptions says how hard a Churn works.
type ChurnOptions struct {
	// Rate caps the connections opened per second, across all workers;
	// 0 means as fast as the workers go.
	Rate int
	// Workers is how many goroutines open connections at once, each on its
	// own listener, alternating IPv4 and IPv6; 0 means 4.
	Workers int
	// GracefulEvery makes every Nth connection of a worker close with a FIN
	// handshake, which leaves one side in TIME_WAIT for 60 seconds. The
	// others are reset (SO_LINGER 0), which leaves nothing behind. 0 means
	// every connection is reset.
	GracefulEvery int
}

// ChurnStats counts what a Churn did.
type ChurnStats struct {
	Connections uint64        // connections opened, accepted and closed
	Graceful    uint64        // of those, closed with a FIN handshake
	Errors      uint64        // connections that failed
	FirstError  error         // the first failure, if any
	Elapsed     time.Duration // from start to now, or to Stop
}

// Rate returns the connections per second achieved.
func (s ChurnStats) Rate() float64 {
	if s.Elapsed <= 0 {
		return 0
	}
	return float64(s.Connections) / s.Elapsed.Seconds()
}

// Churn opens and closes loopback TCP connections inside one network
// namespace until stopped.
type Churn struct {
	opts    ChurnOptions
	start   time.Time
	stop    atomic.Bool
	wg      sync.WaitGroup
	lns     []int
	conns   atomic.Uint64
	grace   atomic.Uint64
	errs    atomic.Uint64
	err     atomic.Pointer[error] // the first failure
	elapsed time.Duration
}

// StartChurn starts churning connections inside the network namespace at
// nsPath. Stop ends it and releases every socket it made.
func StartChurn(nsPath string, opts ChurnOptions) (*Churn, error) {
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.Rate < 0 || opts.GracefulEvery < 0 {
		return nil, fmt.Errorf("loadtest: negative churn option %+v", opts)
	}
	target, err := netns.GetFromPath(nsPath)
	if err != nil {
		return nil, fmt.Errorf("loadtest: open network namespace %s: %w", nsPath, err)
	}
	c := &Churn{opts: opts}
	ports := make([]uint16, opts.Workers)
	err = netlinkdiag.Do(nsPath, func() error {
		for i := range opts.Workers {
			fd, port, err := listen(family(i))
			if err != nil {
				return err
			}
			c.lns = append(c.lns, fd)
			ports[i] = port
		}
		return nil
	})
	if err != nil {
		target.Close()
		closeFDs(c.lns)
		return nil, err
	}
	c.start = time.Now()
	ready := make(chan error, opts.Workers)
	for i := range opts.Workers {
		c.wg.Add(1)
		go c.worker(target, i, c.lns[i], ports[i], ready)
	}
	for range opts.Workers {
		if err := <-ready; err != nil {
			c.Stop()
			target.Close()
			return nil, err
		}
	}
	target.Close()
	return c, nil
}

func family(worker int) int {
	if worker%2 == 1 {
		return unix.AF_INET6
	}
	return unix.AF_INET
}

// worker runs on its own OS thread moved into the namespace for good: the
// thread is never switched back, and the runtime discards it when the
// goroutine returns still locked.
func (c *Churn) worker(target netns.NsHandle, i, lfd int, port uint16, ready chan<- error) {
	defer c.wg.Done()
	runtime.LockOSThread()
	if err := netns.Set(target); err != nil {
		ready <- fmt.Errorf("loadtest: worker %d: enter network namespace: %w", i, err)
		return
	}
	ready <- nil
	fam := family(i)
	var per time.Duration
	if c.opts.Rate > 0 {
		per = time.Duration(float64(time.Second) * float64(c.opts.Workers) / float64(c.opts.Rate))
	}
	next := time.Now()
	for n := 1; !c.stop.Load(); n++ {
		graceful := c.opts.GracefulEvery > 0 && n%c.opts.GracefulEvery == 0
		if err := cycle(fam, lfd, port, graceful); err != nil {
			err = fmt.Errorf("worker %d connection %d: %w", i, n, err)
			c.err.CompareAndSwap(nil, &err)
			c.errs.Add(1)
			time.Sleep(time.Millisecond) // a failing worker must not spin
		} else {
			c.conns.Add(1)
			if graceful {
				c.grace.Add(1)
			}
		}
		if per > 0 {
			next = next.Add(per)
			if ahead := time.Until(next); ahead > 2*time.Millisecond {
				time.Sleep(ahead)
			} else if ahead < -time.Second {
				next = time.Now() // far behind: do not burst to catch up
			}
		}
	}
}

// cycle opens one connection to the listener, accepts it and closes both
// ends: with a FIN from the client first if graceful, else with a reset.
func cycle(fam, lfd int, port uint16, graceful bool) error {
	fd, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer func() {
		if fd >= 0 {
			unix.Close(fd)
		}
	}()
	if err := retryEINTR(func() error { return unix.Connect(fd, loopback(fam, port)) }); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	var sfd int
	if err := retryEINTR(func() (err error) {
		sfd, _, err = unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		return err
	}); err != nil {
		return fmt.Errorf("accept: %w", err)
	}
	if !graceful {
		// Reset the client, then close the server, which the reset
		// has already torn down: no socket lingers in TIME_WAIT.
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
			unix.Close(sfd)
			return fmt.Errorf("set SO_LINGER: %w", err)
		}
		unix.Close(fd)
		fd = -1
		unix.Close(sfd)
		return nil
	}
	// The client closes first and ends in TIME_WAIT; the server, having
	// read the FIN, closes from CLOSE_WAIT through LAST_ACK.
	if err := unix.Shutdown(fd, unix.SHUT_WR); err != nil {
		unix.Close(sfd)
		return fmt.Errorf("shutdown: %w", err)
	}
	var buf [1]byte
	if err := retryEINTR(func() error { _, err := unix.Read(sfd, buf[:]); return err }); err != nil {
		unix.Close(sfd)
		return fmt.Errorf("read FIN: %w", err)
	}
	unix.Close(sfd)
	return nil
}

func retryEINTR(f func() error) error {
	for {
		if err := f(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

// Stats returns what the churn has done so far.
func (c *Churn) Stats() ChurnStats {
	s := ChurnStats{
		Connections: c.conns.Load(),
		Graceful:    c.grace.Load(),
		Errors:      c.errs.Load(),
		Elapsed:     c.elapsed,
	}
	if s.Elapsed == 0 {
		s.Elapsed = time.Since(c.start)
	}
	if err := c.err.Load(); err != nil {
		s.FirstError = *err
	}
	return s
}

// Stop ends the churn, waits for its workers and closes its listeners. It
// returns the final counts. Calling it again does nothing more.
func (c *Churn) Stop() ChurnStats {
	if c.stop.Swap(true) {
		return c.Stats()
	}
	c.wg.Wait()
	c.elapsed = time.Since(c.start)
	closeFDs(c.lns)
	return c.Stats()
}

// listen opens a listener on the loopback address of fam, on an ephemeral
// port, in the calling thread's namespace.
func listen(fam int) (fd int, port uint16, err error) {
	fd, err = unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return -1, 0, fmt.Errorf("socket: %w", err)
	}
	if err := unix.Bind(fd, loopback(fam, 0)); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("listen: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("getsockname: %w", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return fd, uint16(sa.Port), nil
	case *unix.SockaddrInet6:
		return fd, uint16(sa.Port), nil
	}
	unix.Close(fd)
	return -1, 0, fmt.Errorf("getsockname: unexpected %T", sa)
}

func loopback(fam int, port uint16) unix.Sockaddr {
	if fam == unix.AF_INET6 {
		return &unix.SockaddrInet6{Port: int(port), Addr: [16]byte{15: 1}}
	}
	return &unix.SockaddrInet4{Port: int(port), Addr: [4]byte{127, 0, 0, 1}}
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
