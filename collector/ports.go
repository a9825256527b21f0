package collector

import (
	"cmp"
	"slices"
)

// PortKind says what a row of the port breakdown stands for.
type PortKind uint8

// The kinds of rows in a PortBreakdown.
const (
	PortListening PortKind = iota // one local port with a LISTEN socket
	PortOther                     // listening ports past the limit, summed
	PortNone                      // sockets whose local port has no listener (the client side), summed
)

// PortCount is one row of the port breakdown.
type PortCount struct {
	Netns   string // the namespace's name when observing every namespace, else ""
	Kind    PortKind
	Port    uint16         // for PortListening
	Sockets [NumStates]int // sockets with this local port, by state
	Queue   int            // accept queue now, summed over the port's listeners
	Limit   int            // accept queue limit, summed over the port's listeners
}

// PortBreakdown is the per-service-port view of one poll: the busiest
// listening ports, then the rest summed.
type PortBreakdown struct {
	Rows []PortCount
	// Folded counts the listening ports summed into PortOther rows because
	// of the limit; 0 means nothing was truncated.
	Folded int
}

// portStat accumulates one local port during a dump.
type portStat struct {
	sockets   [NumStates]int32
	listening bool
	queue     int32
	limit     int32
}

// portTally counts sockets by local port during one dump of one namespace.
//
// Only ports known to listen (now, or at the previous dump) get a map
// entry; every other socket, the client side of connections with its
// ephemeral port, is counted straight into none, which costs a bitmap test
// instead of a map update over tens of thousands of ports. Should a
// listener show up after sockets on its port were counted into none
// (kernels dump listeners first, but nothing promises it), those sockets
// are found again in seen and moved to the port's row.
type portTally struct {
	listen, prev, counted [1 << 16 / 64]uint64 // bitmaps by port
	ports                 map[uint16]portStat
	none                  [NumStates]int32
	seen                  []portState // sockets counted into none, in case
	late                  bool        // a listener came after sockets on its port
}

type portState struct {
	port  uint16
	state State
}

func has(b *[1 << 16 / 64]uint64, port uint16) bool { return b[port>>6]&(1<<(port&63)) != 0 }
func set(b *[1 << 16 / 64]uint64, port uint16)      { b[port>>6] |= 1 << (port & 63) }

func (p *portTally) reset() {
	if p.ports == nil {
		p.ports = make(map[uint16]portStat)
	}
	clear(p.ports)
	p.prev = p.listen
	p.listen = [len(p.listen)]uint64{}
	p.counted = [len(p.counted)]uint64{}
	p.none = [NumStates]int32{}
	p.seen = p.seen[:0]
	p.late = false
}

// add counts a socket on local port in state st; rq and wq are a
// listener's accept queue and its limit.
func (p *portTally) add(port uint16, st State, rq, wq uint32) {
	if st == Listen {
		set(&p.listen, port)
		p.late = p.late || has(&p.counted, port)
	} else if !has(&p.listen, port) && !has(&p.prev, port) {
		p.none[st]++
		set(&p.counted, port)
		p.seen = append(p.seen, portState{port, st})
		return
	}
	ps := p.ports[port]
	ps.sockets[st]++
	if st == Listen {
		ps.listening = true
		ps.queue += int32(rq)
		ps.limit += int32(wq)
	}
	p.ports[port] = ps
}

// rows turns the tally into rows: one per listening port, plus one PortNone
// row for everything else (omitted when empty).
func (p *portTally) rows(netns string) []PortCount {
	if p.late {
		for _, x := range p.seen {
			if has(&p.listen, x.port) {
				p.none[x.state]--
				ps := p.ports[x.port]
				ps.sockets[x.state]++
				p.ports[x.port] = ps
			}
		}
	}
	out := make([]PortCount, 0, 8)
	none := PortCount{Netns: netns, Kind: PortNone}
	hasNone := len(p.seen) > 0
	for st, n := range p.none {
		none.Sockets[st] += int(n)
	}
	for port, ps := range p.ports {
		if !ps.listening {
			for st, n := range ps.sockets {
				none.Sockets[st] += int(n)
			}
			hasNone = true
			continue
		}
		r := PortCount{Netns: netns, Kind: PortListening, Port: port, Queue: int(ps.queue), Limit: int(ps.limit)}
		for st, n := range ps.sockets {
			r.Sockets[st] = int(n)
		}
		out = append(out, r)
	}
	if hasNone && none.Sockets != ([NumStates]int{}) {
		out = append(out, none)
	}
	return out
}

func total(a [NumStates]int) int {
	n := 0
	for _, v := range a {
		n += v
	}
	return n
}

// topPorts keeps the top listening ports by socket count (ties by
// namespace, then port) and sums the rest into one PortOther row per
// namespace. PortNone rows pass through, merged per namespace.
func topPorts(rows []PortCount, top int) PortBreakdown {
	var listening, rest []PortCount
	for _, r := range rows {
		if r.Kind == PortListening {
			listening = append(listening, r)
		} else {
			rest = append(rest, r)
		}
	}
	slices.SortFunc(listening, func(a, b PortCount) int {
		if c := cmp.Compare(total(b.Sockets), total(a.Sockets)); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Netns, b.Netns); c != 0 {
			return c
		}
		return cmp.Compare(a.Port, b.Port)
	})
	var out PortBreakdown
	if top < 0 {
		top = 0
	}
	if len(listening) > top {
		for _, r := range listening[top:] {
			rest = append(rest, PortCount{Netns: r.Netns, Kind: PortOther, Sockets: r.Sockets, Queue: r.Queue, Limit: r.Limit})
		}
		out.Folded = len(listening) - top
		listening = listening[:top]
	}
	out.Rows = append(out.Rows, listening...)
	// Merge the summed rows per (namespace, kind).
	type key struct {
		netns string
		kind  PortKind
	}
	merged := map[key]int{}
	for _, r := range rest {
		k := key{r.Netns, r.Kind}
		i, ok := merged[k]
		if !ok {
			merged[k] = len(out.Rows)
			out.Rows = append(out.Rows, PortCount{Netns: r.Netns, Kind: r.Kind})
			i = len(out.Rows) - 1
		}
		for st, n := range r.Sockets {
			out.Rows[i].Sockets[st] += n
		}
		out.Rows[i].Queue += r.Queue
		out.Rows[i].Limit += r.Limit
	}
	return out
}
