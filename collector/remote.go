package collector

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// RemoteCount is one row of the remote breakdown: the client-side sockets
// (local port with no listener) toward one remote endpoint, or the
// endpoints past the limit summed.
type RemoteCount struct {
	Netns  string         // the namespace's name when observing every namespace, else ""
	Other  bool           // endpoints past the limit, summed; Remote, Ports and Range are zero
	Remote netip.AddrPort // the remote address (IPv4-mapped addresses unmapped) and port
	// Sockets toward Remote, by state.
	Sockets [NumStates]int
	// Ports is the most local ports held toward Remote from any one local
	// address that a connect() to it could not pick again: every socket
	// in a state from SYN_SEND to TIME_WAIT, less the TIME_WAIT sockets
	// that net.ipv4.tcp_tw_reuse lets connect() take over (see
	// PortHeld).
	Ports int
	// Range is how many local ports connect() picks from in the
	// namespace (ip_local_port_range less ip_local_reserved_ports); 0 when
	// the namespace's sysctls could not be read.
	Range int
}

// Usage is the share of the local port range used up toward the
// endpoint: Ports/Range, 1 when the next connect() to it fails. It
// reports false for an Other row and when the range is unknown.
func (r RemoteCount) Usage() (float64, bool) {
	if r.Other || r.Range <= 0 {
		return 0, false
	}
	return float64(r.Ports) / float64(r.Range), true
}

// RemoteBreakdown is the client side of one poll by remote endpoint: the
// endpoints with the most sockets, then the rest summed per namespace.
type RemoteBreakdown struct {
	Rows []RemoteCount
	// Folded counts the endpoints summed into Other rows because of the
	// limit; 0 means nothing was truncated.
	Folded int
}

// timeWaitLen is how long a socket stays in TIME_WAIT (TCP_TIMEWAIT_LEN).
const timeWaitLen = 60 * time.Second

// PortHeld reports whether a socket in state st from local to remote
// holds its local port against a new connect() to remote under the
// namespace's settings ps (nil when unknown); tw is how long the socket
// has left in TIME_WAIT (by its timer), for a TIME_WAIT socket.
//
// Every state from SYN_SEND to TIME_WAIT holds the port. A TIME_WAIT
// socket does not when connect() may take it over, as tcp_twsk_unique
// decides: tcp_tw_reuse is 1, or 2 and either end is a loopback
// address; tcp_timestamps is on (the old connection must have carried
// them); and tcp_tw_reuse_delay has passed since it entered TIME_WAIT.
func PortHeld(st State, local, remote netip.Addr, tw time.Duration, ps *netlinkdiag.PortSettings) bool {
	switch st {
	case Closed, Listen, SynRcvd:
		return false
	case TimeWait:
	default:
		return true
	}
	if ps == nil || !ps.Timestamps {
		return true
	}
	switch ps.TWReuse {
	case 1:
	case 2:
		if !local.Unmap().IsLoopback() && !remote.Unmap().IsLoopback() {
			return true
		}
	default:
		return true
	}
	return timeWaitLen-tw < ps.TWReuseDelay
}

// remoteTally counts client-side sockets by remote endpoint during one
// dump of one namespace. Its maps and slices are kept from dump to dump,
// so that a dump in a steady state allocates nothing.
//
// A socket is counted when its local port has no listener so far; should
// a listener on its port come later in the dump (see portTally), rows
// takes it out again, from what seen kept of it.
type remoteTally struct {
	index   map[netip.AddrPort]int32 // remote -> stats
	stats   []remoteStat
	pairs   map[localRemote]int32 // (local address, remote) -> held
	held    []int32               // ports held, by pair
	seen    []remoteSeen
	counted [1 << 16 / 64]uint64 // local ports of sockets counted
	late    bool                 // a listener came after sockets on its port
}

// remoteStat is one remote endpoint's tally. The ports held from the
// first local address seen toward it are counted here; only those from
// any other local address take a pairs entry, which most endpoints never
// need.
type remoteStat struct {
	remote  netip.AddrPort
	sockets [NumStates]int32
	local   netip.Addr // the first local address holding a port toward remote
	held    int32      // ports held from local
}

type localRemote struct {
	local  netip.Addr
	remote int32
}

type remoteSeen struct {
	port   uint16
	state  State
	remote int32
	pair   int32 // a pairs index; -1 when the socket holds no port, -2 when counted in its remoteStat
}

func (r *remoteTally) reset() {
	if r.index == nil {
		r.index = make(map[netip.AddrPort]int32)
		r.pairs = make(map[localRemote]int32)
	}
	clear(r.index)
	clear(r.pairs)
	r.stats, r.held, r.seen = r.stats[:0], r.held[:0], r.seen[:0]
	r.counted = [len(r.counted)]uint64{}
	r.late = false
}

// listen notes a listener on port.
func (r *remoteTally) listen(port uint16) {
	r.late = r.late || has(&r.counted, port)
}

// add counts a client-side socket in state st from local to remote; held
// says whether it holds its port against a new connect() (PortHeld).
func (r *remoteTally) add(local, remote netip.AddrPort, st State, held bool) {
	remote = netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port())
	i, ok := r.index[remote]
	if !ok {
		i = int32(len(r.stats))
		r.index[remote] = i
		r.stats = append(r.stats, remoteStat{remote: remote})
	}
	rs := &r.stats[i]
	rs.sockets[st]++
	pair := int32(-1)
	if held {
		addr := local.Addr().Unmap()
		if !rs.local.IsValid() {
			rs.local = addr
		}
		if addr == rs.local {
			rs.held++
			set(&r.counted, local.Port())
			r.seen = append(r.seen, remoteSeen{local.Port(), st, i, -2})
			return
		}
		k := localRemote{addr, i}
		j, ok := r.pairs[k]
		if !ok {
			j = int32(len(r.held))
			r.pairs[k] = j
			r.held = append(r.held, 0)
		}
		r.held[j]++
		pair = j
	}
	set(&r.counted, local.Port())
	r.seen = append(r.seen, remoteSeen{local.Port(), st, i, pair})
}

// rows turns the tally into one row per remote endpoint; listen holds the
// dump's listening ports, and ports the size of the namespace's range (0
// when unknown).
func (r *remoteTally) rows(netns string, listen *[1 << 16 / 64]uint64, ports int) []RemoteCount {
	if r.late {
		for _, x := range r.seen {
			if has(listen, x.port) {
				r.stats[x.remote].sockets[x.state]--
				switch {
				case x.pair == -2:
					r.stats[x.remote].held--
				case x.pair >= 0:
					r.held[x.pair]--
				}
			}
		}
	}
	most := make([]int32, len(r.stats))
	for i, s := range r.stats {
		most[i] = s.held
	}
	for k, j := range r.pairs {
		most[k.remote] = max(most[k.remote], r.held[j])
	}
	out := make([]RemoteCount, 0, len(r.stats))
	for i, s := range r.stats {
		row := RemoteCount{Netns: netns, Remote: s.remote, Ports: int(most[i]), Range: ports}
		for st, n := range s.sockets {
			row.Sockets[st] = int(n)
		}
		if total(row.Sockets) > 0 {
			out = append(out, row)
		}
	}
	return out
}

// topRemotes keeps the top endpoints by socket count (ties by namespace,
// then endpoint) and sums the rest into one Other row per namespace.
func topRemotes(rows []RemoteCount, top int) RemoteBreakdown {
	rows = slices.Clone(rows)
	slices.SortFunc(rows, func(a, b RemoteCount) int {
		if c := cmp.Compare(total(b.Sockets), total(a.Sockets)); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Netns, b.Netns); c != 0 {
			return c
		}
		return a.Remote.Compare(b.Remote)
	})
	top = max(top, 0)
	if len(rows) <= top {
		return RemoteBreakdown{Rows: rows}
	}
	out := RemoteBreakdown{Rows: rows[:top:top], Folded: len(rows) - top}
	other := map[string]int{}
	for _, r := range rows[top:] {
		i, ok := other[r.Netns]
		if !ok {
			i = len(out.Rows)
			other[r.Netns] = i
			out.Rows = append(out.Rows, RemoteCount{Netns: r.Netns, Other: true})
		}
		for st, n := range r.Sockets {
			out.Rows[i].Sockets[st] += n
		}
	}
	return out
}
