//go:build linux

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// holdCommand is the hidden subcommand a holder process runs.
const holdCommand = "hold"

// maxPairsPerHolder keeps a holder under 9000 descriptors, well inside a
// 20000 hard RLIMIT_NOFILE: both ends of each pair count.
const maxPairsPerHolder = 4400

// twPerListener bounds the TIME_WAIT sockets towards one listening port, so
// that connect finds a free ephemeral port at once.
const twPerListener = 20_000

// plan is the socket population of one size.
type plan struct {
	holders []holderPlan
	tw      [2]int // TIME_WAIT sockets made at build time, IPv4 and IPv6
	churn   float64
}

// holderPlan is one holder process's share: connected pairs held open.
type holderPlan struct {
	est  [2]int // ESTABLISHED pairs, IPv4 and IPv6
	half [2]int // half-closed pairs (FIN_WAIT_2 + CLOSE_WAIT), IPv4 and IPv6
}

func (h holderPlan) args() []string {
	return []string{holdCommand, strconv.Itoa(h.est[0]), strconv.Itoa(h.est[1]), strconv.Itoa(h.half[0]), strconv.Itoa(h.half[1])}
}

// newPlan divides about n sockets into 90% ESTABLISHED, 5% TIME_WAIT (kept
// up by churn: as many new ones per second as expire), 2.5% FIN_WAIT_2 and
// 2.5% CLOSE_WAIT, a share v6 of them IPv6, plus the holders' listeners.
func newPlan(n int, v6 float64) plan {
	split := func(k int) [2]int {
		six := int(math.Round(float64(k) * v6))
		return [2]int{k - six, six}
	}
	tw := n / 20
	half := n / 40
	pairs := (n - tw) / 2
	holders := (pairs + maxPairsPerHolder - 1) / maxPairsPerHolder
	pairs -= holders + 1 // room for the holders' listeners and churn's
	est := pairs - half
	p := plan{tw: split(tw), churn: float64(tw) / 60}
	for h := range holders {
		share := func(total int) int { return total*(h+1)/holders - total*h/holders }
		var hp holderPlan
		hp.est = split(share(est))
		hp.half = split(share(half))
		p.holders = append(p.holders, hp)
	}
	return p
}

// holder is a running holder process.
type holder struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *syncBuffer
	done   chan struct{}
}

// population is a built socket population: holders plus TIME_WAIT churn.
type population struct {
	holders   []*holder
	stopChurn context.CancelFunc
	churned   chan struct{}
	churnErr  error
}

// build starts the holders (a few at a time) and the TIME_WAIT churn in ns.
func build(ctx context.Context, ns *namespace, p plan, self string, logf func(string, ...any)) (*population, error) {
	pop := &population{}
	var mu sync.Mutex
	sem := make(chan struct{}, 4)
	errc := make(chan error, len(p.holders))
	var wg sync.WaitGroup
	for _, hp := range p.holders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				errc <- ctx.Err()
				return
			}
			defer func() { <-sem }()
			h, err := startHolder(ctx, ns, self, hp)
			if h != nil {
				mu.Lock()
				pop.holders = append(pop.holders, h)
				mu.Unlock()
			}
			errc <- err
		}()
	}
	wg.Wait()
	close(errc)
	var errs []error
	for err := range errc {
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return pop, err
	}
	logf("%d holder processes ready", len(pop.holders))

	churnCtx, cancel := context.WithCancel(ctx)
	pop.stopChurn, pop.churned = cancel, make(chan struct{})
	ready := make(chan error, 1)
	go func() {
		defer close(pop.churned)
		pop.churnErr = churn(churnCtx, ns, p, ready)
	}()
	select {
	case err := <-ready:
		if err != nil {
			return pop, err
		}
	case <-pop.churned:
		return pop, pop.churnErr
	}
	logf("%d TIME_WAIT sockets made; churning %.1f per second", p.tw[0]+p.tw[1], p.churn)
	return pop, nil
}

func startHolder(ctx context.Context, ns *namespace, self string, hp holderPlan) (*holder, error) {
	cmd := exec.Command(self, hp.args()...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	h := &holder{cmd: cmd, stdin: stdin, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = h.stderr
	if err := ns.start(cmd); err != nil {
		return nil, fmt.Errorf("start holder: %w", err)
	}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(stdout).ReadString('\n')
		line <- s
		io.Copy(io.Discard, stdout)
		cmd.Wait()
		close(h.done)
	}()
	select {
	case s := <-line:
		if !strings.HasPrefix(s, "ready") {
			<-h.done
			return h, fmt.Errorf("holder %v: %v: %s", hp.args()[1:], cmd.ProcessState, strings.TrimSpace(h.stderr.String()))
		}
		return h, nil
	case <-ctx.Done():
		return h, ctx.Err()
	}
}

// stop ends the churn and the holders, closing every socket they hold.
func (pop *population) stop() error {
	var errs []error
	if pop.stopChurn != nil {
		pop.stopChurn()
		<-pop.churned
		if pop.churnErr != nil && !errors.Is(pop.churnErr, context.Canceled) && !errors.Is(pop.churnErr, context.DeadlineExceeded) {
			errs = append(errs, fmt.Errorf("TIME_WAIT churn: %w", pop.churnErr))
		}
	}
	for _, h := range pop.holders {
		h.stdin.Close() // a holder exits when its input ends
	}
	for _, h := range pop.holders {
		select {
		case <-h.done:
		case <-time.After(5 * time.Second):
			h.cmd.Process.Kill()
			<-h.done
		}
	}
	return errors.Join(errs...)
}

// churn makes p.tw TIME_WAIT sockets at once, reports on ready, then keeps
// making p.churn a second until ctx ends: as many as expire, once the
// first ones do. It runs on a thread inside ns.
func churn(ctx context.Context, ns *namespace, p plan, ready chan<- error) error {
	fail := func(err error) error {
		ready <- err
		return err
	}
	if err := ns.enter(); err != nil {
		return fail(err)
	}
	var lns [2][]listener
	defer func() {
		for _, ls := range lns {
			for _, l := range ls {
				unix.Close(l.fd)
			}
		}
	}()
	var made [2]int
	next := func(fam int) error {
		made[fam]++
		return timeWait(lns[fam][made[fam]%len(lns[fam])])
	}
	for fam, n := range p.tw {
		for range max(1, (n+twPerListener-1)/twPerListener) {
			l, err := listen(families[fam])
			if err != nil {
				return fail(err)
			}
			lns[fam] = append(lns[fam], l)
		}
		for range n {
			if err := next(fam); err != nil {
				return fail(err)
			}
		}
	}
	ready <- nil

	const tick = 100 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	var owed [2]float64
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		for fam := range owed {
			owed[fam] += p.churn * tick.Seconds() * float64(p.tw[fam]) / float64(max(1, p.tw[0]+p.tw[1]))
			for ; owed[fam] >= 1; owed[fam]-- {
				if err := next(fam); err != nil {
					return err
				}
			}
		}
	}
}

// timeWait opens a connection to l and closes it from the client side
// first, which leaves the client's socket in TIME_WAIT for 60 s.
func timeWait(l listener) error {
	c, s, err := pair(l)
	if err != nil {
		return err
	}
	unix.Close(c)
	unix.Close(s)
	return nil
}

var families = [2]int{unix.AF_INET, unix.AF_INET6}

// listener is a listening socket on a loopback address.
type listener struct {
	fd   int
	addr unix.Sockaddr
}

func listen(family int) (listener, error) {
	fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_TCP)
	if err != nil {
		return listener{}, fmt.Errorf("socket: %w", err)
	}
	var addr unix.Sockaddr = &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}
	if family == unix.AF_INET6 {
		addr = &unix.SockaddrInet6{Addr: [16]byte{15: 1}}
	}
	if err := unix.Bind(fd, addr); err != nil {
		unix.Close(fd)
		return listener{}, fmt.Errorf("bind: %w", err)
	}
	if err := unix.Listen(fd, 4096); err != nil {
		unix.Close(fd)
		return listener{}, fmt.Errorf("listen: %w", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		unix.Close(fd)
		return listener{}, fmt.Errorf("getsockname: %w", err)
	}
	return listener{fd: fd, addr: sa}, nil
}

// pair connects a new socket to l and accepts it: client and server fds.
// The sockets are blocking and have no keepalive.
func pair(l listener) (client, server int, err error) {
	family := unix.AF_INET
	if _, ok := l.addr.(*unix.SockaddrInet6); ok {
		family = unix.AF_INET6
	}
	c, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.IPPROTO_TCP)
	if err != nil {
		return -1, -1, fmt.Errorf("socket: %w", err)
	}
	if err := connect(c, l.addr); err != nil {
		unix.Close(c)
		return -1, -1, err
	}
	for {
		// accept4(2) without asking for the peer's address: unix.Accept4
		// allocates one, and the churn must not allocate while our polls
		// count their allocations.
		s, _, errno := unix.Syscall6(unix.SYS_ACCEPT4, uintptr(l.fd), 0, 0, unix.SOCK_CLOEXEC, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			unix.Close(c)
			return -1, -1, fmt.Errorf("accept: %w", errno)
		}
		return c, int(s), nil
	}
}

// connect connects the non-blocking fd to addr, waiting up to 10 s for the
// handshake.
func connect(fd int, addr unix.Sockaddr) error {
	err := unix.Connect(fd, addr)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.EINPROGRESS) && !errors.Is(err, unix.EINTR) {
		return fmt.Errorf("connect: %w", err)
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		n, err := unix.Poll(pfd, 10_000)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("poll connecting socket: %w", err)
		}
		if n == 0 {
			return errors.New("connect: no handshake within 10 s")
		}
		break
	}
	soerr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return fmt.Errorf("connect: SO_ERROR: %w", err)
	}
	if soerr != 0 {
		return fmt.Errorf("connect: %w", unix.Errno(soerr))
	}
	return nil
}

// hold is the holder process: it opens the pairs its arguments ask for in
// its own network namespace, says "ready", and holds them until its input
// ends.
func hold(args []string) int {
	var n [4]int
	if len(args) != len(n) {
		fmt.Fprintf(os.Stderr, "%s: want 4 counts, got %q\n", holdCommand, args)
		return 2
	}
	for i, a := range args {
		v, err := strconv.Atoi(a)
		if err != nil || v < 0 {
			fmt.Fprintf(os.Stderr, "%s: bad count %q\n", holdCommand, a)
			return 2
		}
		n[i] = v
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < lim.Max {
		lim.Cur = lim.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &lim)
	}
	sockets := 0
	for fam, family := range families {
		est, half := n[fam], n[2+fam]
		if est+half == 0 {
			continue
		}
		l, err := listen(family)
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", holdCommand, err)
			return 1
		}
		sockets++
		for i := range est + half {
			c, _, err := pair(l) // both ends stay open until the process exits
			if err != nil {
				fmt.Fprintf(os.Stderr, "%s: pair %d of %d: %v\n", holdCommand, i+1, est+half, err)
				return 1
			}
			sockets += 2
			if i >= est {
				// The client half-closes: FIN_WAIT_2 here, CLOSE_WAIT there,
				// for as long as both descriptors stay open.
				if err := unix.Shutdown(c, unix.SHUT_WR); err != nil {
					fmt.Fprintf(os.Stderr, "%s: shutdown: %v\n", holdCommand, err)
					return 1
				}
			}
		}
	}
	fmt.Printf("ready %d\n", sockets)
	io.Copy(io.Discard, os.Stdin)
	return 0
}
