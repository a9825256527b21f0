package loadtest

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// Population is a standing set of established loopback connections in one
// network namespace, for a socket table big enough to make a dump take a
// while.
type Population struct {
	fds []int
}

// NewPopulation opens n connections inside the network namespace at nsPath,
// alternating IPv4 and IPv6, and keeps both ends open: 2n ESTABLISHED
// sockets plus two listeners. It holds 2n+2 descriptors until Close.
// Mind RLIMIT_NOFILE: the test process must be allowed that many.
func NewPopulation(nsPath string, n int) (*Population, error) {
	p := &Population{}
	err := netlinkdiag.Do(nsPath, func() error {
		var lns [2]int
		var ports [2]uint16
		for i := range lns {
			fd, port, err := listen(family(i))
			if err != nil {
				return err
			}
			p.fds = append(p.fds, fd)
			lns[i], ports[i] = fd, port
		}
		for i := range n {
			fam := family(i)
			c, err := unix.Socket(fam, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
			if err != nil {
				return fmt.Errorf("connection %d: socket: %w", i, err)
			}
			p.fds = append(p.fds, c)
			if err := retryEINTR(func() error { return unix.Connect(c, loopback(fam, ports[i%2])) }); err != nil {
				return fmt.Errorf("connection %d: connect: %w", i, err)
			}
			var s int
			if err := retryEINTR(func() (err error) {
				s, _, err = unix.Accept4(lns[i%2], unix.SOCK_CLOEXEC)
				return err
			}); err != nil {
				return fmt.Errorf("connection %d: accept: %w", i, err)
			}
			p.fds = append(p.fds, s)
		}
		return nil
	})
	if err != nil {
		p.Close()
		return nil, fmt.Errorf("loadtest: population of %d connections: %w", n, err)
	}
	return p, nil
}

// Sockets returns how many sockets the population holds, listeners
// included.
func (p *Population) Sockets() int { return len(p.fds) }

// Close resets and closes every connection of the population, so none is
// left in TIME_WAIT, and closes the listeners.
func (p *Population) Close() {
	for _, fd := range p.fds {
		unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
		unix.Close(fd)
	}
	p.fds = nil
}
