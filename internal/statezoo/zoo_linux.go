package statezoo

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// The documented TCP state names.
const (
	closed      = "CLOSED"
	listen      = "LISTEN"
	synRcvd     = "SYN_RCVD"
	synSend     = "SYN_SEND"
	established = "ESTABLISHED"
	finWait1    = "FIN_WAIT_1"
	finWait2    = "FIN_WAIT_2"
	timeWait    = "TIME_WAIT"
	closing     = "CLOSING"
	closeWait   = "CLOSE_WAIT"
	lastAck     = "LAST_ACK"
)

var documented = []string{closed, listen, synRcvd, synSend, established, finWait1, finWait2, timeWait, closing, closeWait, lastAck}

// kernelState names a kernel TCP state (include/net/tcp_states.h).
// NEW_SYN_RECV and BOUND_INACTIVE never show in tcpi_state; they are here
// so any state number gets its documented name.
type kernelState struct {
	kernel     string
	documented string
}

var kernelStates = map[uint8]kernelState{
	1:  {"ESTABLISHED", established},
	2:  {"SYN_SENT", synSend},
	3:  {"SYN_RECV", synRcvd},
	4:  {"FIN_WAIT1", finWait1},
	5:  {"FIN_WAIT2", finWait2},
	6:  {"TIME_WAIT", timeWait},
	7:  {"CLOSE", closed},
	8:  {"CLOSE_WAIT", closeWait},
	9:  {"LAST_ACK", lastAck},
	10: {"LISTEN", listen},
	11: {"CLOSING", closing},
	12: {"NEW_SYN_RECV", synRcvd},
	13: {"BOUND_INACTIVE", closed},
}

const (
	tcpEstablished uint8 = 1
	tcpSynSent     uint8 = 2
	tcpFinWait1    uint8 = 4
	tcpFinWait2    uint8 = 5
	tcpClose       uint8 = 7
	tcpCloseWait   uint8 = 8
	tcpLastAck     uint8 = 9
	tcpListen      uint8 = 10
	tcpClosing     uint8 = 11
)

func stateName(s uint8) string {
	if k, ok := kernelStates[s]; ok {
		return fmt.Sprintf("%s (kernel %s)", k.documented, k.kernel)
	}
	return fmt.Sprintf("unknown state %d", s)
}

// settleTimeout bounds how long Build waits for its sockets to reach the
// states it wants.
const settleTimeout = 5 * time.Second

// smallBuffer is the socket buffer size, in bytes, that lets one side fill
// its peer's receive window quickly. The kernel doubles it.
const smallBuffer = 4096

// deferAccept is how long, in seconds, a listener with TCP_DEFER_ACCEPT
// keeps a handshake that carries no data in SYN_RECV.
const deferAccept = 60

// Zoo is a set of live loopback TCP sockets in every documented TCP state,
// built inside one network namespace by Build. Expected says how many
// sockets of each state the namespace holds while the Zoo is open; Close
// releases them.
type Zoo struct {
	socks    []sock
	expected map[string]map[string]int
}

// sock is a socket the Zoo holds an fd for.
type sock struct {
	fd     int
	what   string // for errors, e.g. "ipv4 FIN_WAIT_1 client 2"
	want   uint8  // tcpi_state it should settle in
	queued int    // for listeners: connections left in the accept queue
}

// Options says what Build makes.
type Options struct {
	// Families lists the address families to build for, unix.AF_INET
	// and unix.AF_INET6; nil means both.
	Families []int
	// PerState is how many sockets each recipe makes in its target
	// state; 0 means 1.
	PerState int
}

type family struct {
	af   int
	name string
}

var families = []family{{unix.AF_INET, "ipv4"}, {unix.AF_INET6, "ipv6"}}

// recipe makes n sockets in one or two target states, plus whatever
// listeners and peers that takes, and records all of them.
type recipe struct {
	name string
	make func(b *builder, n int) error
}

var recipes = []recipe{
	{closed, (*builder).closed},
	{listen, (*builder).listen},
	{established, (*builder).established},
	{synSend, (*builder).synSend},
	{synRcvd, (*builder).synRcvd},
	{finWait1, (*builder).finWait1},
	{finWait2 + "+" + closeWait, (*builder).finWait2},
	{timeWait, (*builder).timeWait},
	{closing, (*builder).closing},
	{lastAck, (*builder).lastAck},
}

// Build makes every recipe's sockets for every family inside the network
// namespace at nsPath, waits until each socket it holds has reached the
// state it wants, and returns the Zoo. On error it closes what it made.
//
// Per family and PerState n, the namespace then holds:
//
//	recipe                 target          side effects
//	CLOSED (bind only)     CLOSED n        -
//	LISTEN                 LISTEN n        -
//	ESTABLISHED            ESTABLISHED 2n  LISTEN 1
//	SYN_SEND               SYN_SEND n      LISTEN 1, ESTABLISHED 2
//	SYN_RCVD               SYN_RCVD n      LISTEN 1, ESTABLISHED n (clients)
//	FIN_WAIT_1             FIN_WAIT_1 n    LISTEN 1, ESTABLISHED n (servers)
//	FIN_WAIT_2+CLOSE_WAIT  FIN_WAIT_2 n,   LISTEN 1
//	                       CLOSE_WAIT n
//	TIME_WAIT              TIME_WAIT n     LISTEN 1
//	CLOSING                CLOSING n       LISTEN 1, FIN_WAIT_2 n (servers)
//	LAST_ACK               LAST_ACK n      LISTEN 1, FIN_WAIT_2 n (clients)
//
// which totals CLOSED n, LISTEN n+8, SYN_RCVD n, SYN_SEND n, ESTABLISHED
// 4n+2, FIN_WAIT_1 n, FIN_WAIT_2 3n, and n of each other state.
//
// SYN_SEND sockets retry their SYN for about two minutes and TIME_WAIT
// sockets last 60 seconds, so a Zoo is meant to be inspected right away.
func Build(nsPath string, opts Options) (*Zoo, error) {
	fams, err := pickFamilies(opts.Families)
	if err != nil {
		return nil, err
	}
	n := opts.PerState
	switch {
	case n < 0:
		return nil, fmt.Errorf("statezoo: PerState %d is negative", n)
	case n == 0:
		n = 1
	}
	z := &Zoo{expected: map[string]map[string]int{}}
	for _, f := range fams {
		z.expected[f.name] = map[string]int{}
		for _, s := range documented {
			z.expected[f.name][s] = 0
		}
	}
	deadline := time.Now().Add(settleTimeout)
	err = netlinkdiag.Do(nsPath, func() error {
		for _, f := range fams {
			b := &builder{z: z, fam: f, deadline: deadline}
			for _, r := range recipes {
				if err := r.make(b, n); err != nil {
					return fmt.Errorf("%s %s: %w", f.name, r.name, err)
				}
			}
		}
		return nil
	})
	if err == nil {
		err = z.settle(deadline)
	}
	if err != nil {
		if cerr := z.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		return nil, fmt.Errorf("statezoo: %w", err)
	}
	return z, nil
}

func pickFamilies(afs []int) ([]family, error) {
	if afs == nil {
		return families, nil
	}
	var fams []family
	for _, af := range afs {
		i := slices.IndexFunc(families, func(f family) bool { return f.af == af })
		if i < 0 {
			return nil, fmt.Errorf("statezoo: address family %d: want unix.AF_INET or unix.AF_INET6", af)
		}
		if slices.Contains(fams, families[i]) {
			return nil, fmt.Errorf("statezoo: address family %s given twice", families[i].name)
		}
		fams = append(fams, families[i])
	}
	return fams, nil
}

// Expected returns, per family ("ipv4", "ipv6") and documented state, the
// exact number of sockets the namespace holds because of this Zoo. Every
// documented state is present for every family built. The map is the
// caller's.
func (z *Zoo) Expected() map[string]map[string]int {
	out := make(map[string]map[string]int, len(z.expected))
	for f, m := range z.expected {
		out[f] = make(map[string]int, len(m))
		for s, c := range m {
			out[f][s] = c
		}
	}
	return out
}

// Close closes every fd the Zoo holds. Sockets that outlive their fds in
// the kernel (TIME_WAIT, connections reset or closing) and the namespace
// itself are the caller's concern. Close is safe to call more than once.
func (z *Zoo) Close() error {
	var errs []error
	for i := len(z.socks) - 1; i >= 0; i-- {
		s := z.socks[i]
		if err := unix.Close(s.fd); err != nil {
			errs = append(errs, fmt.Errorf("close %s (fd %d): %w", s.what, s.fd, err))
		}
	}
	z.socks = nil
	return errors.Join(errs...)
}

// settle waits until every held socket is in the state it wants and every
// listener holds the connections it should in its accept queue.
func (z *Zoo) settle(deadline time.Time) error {
	for _, s := range z.socks {
		if err := s.settle(deadline); err != nil {
			return err
		}
	}
	return nil
}

func (s sock) settle(deadline time.Time) error {
	for {
		info, err := tcpInfo(s.fd)
		if err != nil {
			return fmt.Errorf("%s (fd %d): %w", s.what, s.fd, err)
		}
		// For a listener the kernel reports its accept queue's length
		// in tcpi_unacked.
		queued := int(info.Unacked)
		ok := info.State == s.want && (s.want != tcpListen || queued == s.queued)
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			if info.State == s.want {
				return fmt.Errorf("%s (fd %d): %d connections in the accept queue, want %d, after %v",
					s.what, s.fd, queued, s.queued, settleTimeout)
			}
			return fmt.Errorf("%s (fd %d): state %s, want %s, after %v",
				s.what, s.fd, stateName(info.State), stateName(s.want), settleTimeout)
		}
		time.Sleep(time.Millisecond)
	}
}

// builder runs the recipes for one family inside the target namespace.
type builder struct {
	z        *Zoo
	fam      family
	deadline time.Time
}

// hold records fd as a socket of the Zoo that should settle in state want.
func (b *builder) hold(fd int, want uint8, what string, i int) {
	b.z.socks = append(b.z.socks, sock{fd: fd, want: want, what: fmt.Sprintf("%s %s %d", b.fam.name, what, i)})
}

// count adds k sockets in the documented state to what the Zoo expects.
func (b *builder) count(state string, k int) {
	b.z.expected[b.fam.name][state] += k
}

// listener opens a listener held by the Zoo that should end with queued
// connections in its accept queue, and counts it.
func (b *builder) listener(recipe string, backlog, queued int) (int, uint16, error) {
	fd, port, err := Listen(b.fam.af, backlog)
	if err != nil {
		return -1, 0, err
	}
	b.z.socks = append(b.z.socks, sock{fd: fd, want: tcpListen, queued: queued,
		what: fmt.Sprintf("%s %s listener", b.fam.name, recipe)})
	b.count(listen, 1)
	return fd, port, nil
}

// pair connects a client to the listener lfd and accepts the server side.
// The client's options are set by setup before it connects. The caller
// must hold both fds.
func (b *builder) pair(lfd int, port uint16, setup func(fd int) error) (client, server int, err error) {
	client, err = b.connect(port, setup)
	if err != nil {
		return -1, -1, err
	}
	server, err = b.accept(lfd)
	if err != nil {
		unix.Close(client)
		return -1, -1, err
	}
	return client, server, nil
}

// remaining is the time left until the deadline, never negative.
func (b *builder) remaining() time.Duration {
	return max(time.Until(b.deadline), 0)
}

// connect is Connect with setup, giving up at the deadline.
func (b *builder) connect(port uint16, setup func(fd int) error) (int, error) {
	fd, err := startConnect(b.fam.af, port, setup)
	if err != nil {
		return -1, err
	}
	if err := finishConnect(fd, port, b.remaining()); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// accept is Accept, giving up at the deadline.
func (b *builder) accept(lfd int) (int, error) {
	if err := waitFor(lfd, unix.POLLIN, b.remaining()); err != nil {
		return -1, fmt.Errorf("accept: %w", err)
	}
	return Accept(lfd)
}

// waitState waits until fd is in state want.
func (b *builder) waitState(fd int, want uint8, what string) error {
	return sock{fd: fd, want: want, what: b.fam.name + " " + what}.settle(b.deadline)
}

// closed makes n sockets that are bound but neither listening nor
// connected: the kernel's bound-inactive sockets, documented as CLOSED.
func (b *builder) closed(n int) error {
	for i := range n {
		fd, err := bound(b.fam.af)
		if err != nil {
			return err
		}
		b.hold(fd, tcpClose, "CLOSED bound socket", i)
		b.count(closed, 1)
	}
	return nil
}

// listen makes n listeners with empty accept queues.
func (b *builder) listen(n int) error {
	for range n {
		if _, _, err := b.listener(listen, 1, 0); err != nil {
			return err
		}
	}
	return nil
}

// established makes n connected pairs: 2n ESTABLISHED sockets.
func (b *builder) established(n int) error {
	lfd, port, err := b.listener(established, unix.SOMAXCONN, 0)
	if err != nil {
		return err
	}
	for i := range n {
		c, s, err := b.pair(lfd, port, nil)
		if err != nil {
			return err
		}
		b.hold(c, tcpEstablished, "ESTABLISHED client", i)
		b.hold(s, tcpEstablished, "ESTABLISHED server", i)
		b.count(established, 2)
	}
	return nil
}

// synSend makes n clients stuck in SYN_SENT. A listener with backlog 0
// takes one connection into its accept queue and never accepts it; with
// the queue full it drops every further SYN, and the clients keep
// retrying. The first client and its unaccepted server side are both
// ESTABLISHED. (With backlog 0 the kernel still admits one connection,
// on older kernels by way of a SYN cookie, which every new namespace
// allows.)
func (b *builder) synSend(n int) error {
	lfd, port, err := b.listener(synSend, 0, 1)
	if err != nil {
		return err
	}
	first, err := b.connect(port, nil)
	if err != nil {
		return err
	}
	b.hold(first, tcpEstablished, "SYN_SEND queue-filling client", 0)
	b.count(established, 2)
	// Only once the first connection sits in the accept queue are the
	// next SYNs sure to be dropped.
	if err := (sock{fd: lfd, want: tcpListen, queued: 1, what: b.fam.name + " SYN_SEND listener"}).settle(b.deadline); err != nil {
		return err
	}
	for i := range n {
		fd, err := startConnect(b.fam.af, port, nil)
		if err != nil {
			return err
		}
		b.hold(fd, tcpSynSent, "SYN_SEND client", i)
		b.count(synSend, 1)
	}
	return nil
}

// synRcvd makes n server sides stuck in SYN_RECV. With TCP_DEFER_ACCEPT
// the listener drops the handshake's final ACK while no data comes with
// it, so its request sockets stay in SYN_RECV while the clients, which
// send nothing, are ESTABLISHED. The Zoo holds no fd for the request
// sockets; an ESTABLISHED client and an empty accept queue vouch for each.
func (b *builder) synRcvd(n int) error {
	lfd, port, err := b.listener(synRcvd, unix.SOMAXCONN, 0)
	if err != nil {
		return err
	}
	if err := setInt(lfd, unix.IPPROTO_TCP, unix.TCP_DEFER_ACCEPT, deferAccept, "TCP_DEFER_ACCEPT"); err != nil {
		return err
	}
	for i := range n {
		fd, err := b.connect(port, nil)
		if err != nil {
			return err
		}
		b.hold(fd, tcpEstablished, "SYN_RCVD client", i)
		b.count(established, 1)
		b.count(synRcvd, 1)
	}
	return nil
}

// fillAndHalfClose is FillAndHalfClose by the builder's deadline.
func (b *builder) fillAndHalfClose(fds []int) error {
	return FillAndHalfClose(fds, b.deadline)
}

// smallSendBuffer gives a client a small send buffer before it connects.
func smallSendBuffer(fd int) error {
	return setInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, smallBuffer, "SO_SNDBUF")
}

// smallReceiveBuffer gives a client a small receive buffer, and so a small
// window, before it connects.
func smallReceiveBuffer(fd int) error {
	return setInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, smallBuffer, "SO_RCVBUF")
}

// smallWindowListener opens a listener whose connections get a small
// receive buffer, and so a small window.
func (b *builder) smallWindowListener(recipe string) (int, uint16, error) {
	lfd, port, err := b.listener(recipe, unix.SOMAXCONN, 0)
	if err != nil {
		return -1, 0, err
	}
	if err := smallReceiveBuffer(lfd); err != nil {
		return -1, 0, err
	}
	return lfd, port, nil
}

// finWait1 makes n clients in FIN_WAIT_1 whose servers are ESTABLISHED:
// each client, with a small send buffer, fills its server's small receive
// window (the server never reads) and half-closes, so its FIN waits
// behind unsent data and the server never sees it.
func (b *builder) finWait1(n int) error {
	lfd, port, err := b.smallWindowListener(finWait1)
	if err != nil {
		return err
	}
	var clients []int
	for i := range n {
		c, s, err := b.pair(lfd, port, smallSendBuffer)
		if err != nil {
			return err
		}
		b.hold(c, tcpFinWait1, "FIN_WAIT_1 client", i)
		b.hold(s, tcpEstablished, "FIN_WAIT_1 server", i)
		b.count(finWait1, 1)
		b.count(established, 1)
		clients = append(clients, c)
	}
	return b.fillAndHalfClose(clients)
}

// finWait2 makes n half-closed connections: the client, whose FIN was
// acknowledged, in FIN_WAIT_2 and the server, which never closes, in
// CLOSE_WAIT.
func (b *builder) finWait2(n int) error {
	lfd, port, err := b.listener(finWait2, unix.SOMAXCONN, 0)
	if err != nil {
		return err
	}
	for i := range n {
		c, s, err := b.pair(lfd, port, nil)
		if err != nil {
			return err
		}
		b.hold(c, tcpFinWait2, "FIN_WAIT_2 client", i)
		b.hold(s, tcpCloseWait, "CLOSE_WAIT server", i)
		if err := HalfClose(c); err != nil {
			return err
		}
		b.count(finWait2, 1)
		b.count(closeWait, 1)
	}
	return nil
}

// timeWait makes n clients in TIME_WAIT: the client closes first, then
// the server. The server half-closes rather than closes, so that its fd
// can show the final ACK arrived (state CLOSE), which means the client is
// in TIME_WAIT; then its fd is closed. TIME_WAIT sockets have no fd.
func (b *builder) timeWait(n int) error {
	lfd, port, err := b.listener(timeWait, unix.SOMAXCONN, 0)
	if err != nil {
		return err
	}
	for range n {
		c, s, err := b.pair(lfd, port, nil)
		if err != nil {
			return err
		}
		err = b.closeActively(c, s)
		if cerr := unix.Close(s); err == nil && cerr != nil {
			err = fmt.Errorf("close TIME_WAIT server: %w", cerr)
		}
		if err != nil {
			return err
		}
		b.count(timeWait, 1)
	}
	return nil
}

// closeActively closes client, then half-closes server and waits for the
// handshake to end.
func (b *builder) closeActively(client, server int) error {
	if err := unix.Close(client); err != nil {
		return fmt.Errorf("close TIME_WAIT client: %w", err)
	}
	if err := b.waitState(server, tcpCloseWait, "TIME_WAIT server"); err != nil {
		return err
	}
	if err := HalfClose(server); err != nil {
		return err
	}
	return b.waitState(server, tcpClose, "TIME_WAIT server")
}

// closing makes n clients in CLOSING: as for FIN_WAIT_1, then the server
// half-closes too. The client gets the server's FIN while its own FIN
// still waits to leave (CLOSING); the server, whose FIN is acknowledged
// but which never gets the client's, is in FIN_WAIT_2.
func (b *builder) closing(n int) error {
	lfd, port, err := b.smallWindowListener(closing)
	if err != nil {
		return err
	}
	var clients, servers []int
	for i := range n {
		c, s, err := b.pair(lfd, port, smallSendBuffer)
		if err != nil {
			return err
		}
		b.hold(c, tcpClosing, "CLOSING client", i)
		b.hold(s, tcpFinWait2, "CLOSING server", i)
		b.count(closing, 1)
		b.count(finWait2, 1)
		clients = append(clients, c)
		servers = append(servers, s)
	}
	if err := b.fillAndHalfClose(clients); err != nil {
		return err
	}
	for _, s := range servers {
		if err := HalfClose(s); err != nil {
			return err
		}
	}
	return nil
}

// lastAck makes n servers in LAST_ACK. The client, with a small receive
// buffer, half-closes and never reads; the server, once in CLOSE_WAIT,
// fills the client's window and half-closes, so its FIN waits behind
// unsent data. The client, whose FIN was acknowledged, stays in
// FIN_WAIT_2.
func (b *builder) lastAck(n int) error {
	lfd, port, err := b.listener(lastAck, unix.SOMAXCONN, 0)
	if err != nil {
		return err
	}
	var servers []int
	for i := range n {
		c, s, err := b.pair(lfd, port, smallReceiveBuffer)
		if err != nil {
			return err
		}
		b.hold(c, tcpFinWait2, "LAST_ACK client", i)
		b.hold(s, tcpLastAck, "LAST_ACK server", i)
		b.count(lastAck, 1)
		b.count(finWait2, 1)
		if err := HalfClose(c); err != nil {
			return err
		}
		servers = append(servers, s)
	}
	for i, s := range servers {
		if err := b.waitState(s, tcpCloseWait, fmt.Sprintf("LAST_ACK server %d", i)); err != nil {
			return err
		}
		if err := smallSendBuffer(s); err != nil {
			return err
		}
	}
	return b.fillAndHalfClose(servers)
}
