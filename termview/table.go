package termview

import (
	"cmp"
	"slices"
	"time"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

// Table is one refresh of the terminal view. Its JSON field names are
// stable: a value that is not known is null, never left out.
type Table struct {
	// Time is when the dump the table shows started.
	Time time.Time `json:"time"`
	// Netns is the network namespace as --netns named it; "" is the
	// command's own.
	Netns string `json:"netns"`
	// SinceSeconds is how long the view has been watching: 0 for a
	// single dump, and for an exporter's view.
	SinceSeconds float64 `json:"since_seconds"`
	// Exporter says the table is a running exporter's view (--from): its
	// rates are over its last minute, its stays since it started, and its
	// ages as it knows them.
	Exporter bool `json:"exporter"`
	// States has one row per documented state, in the documented order.
	States []StateRow `json:"states"`
	// Total sums the states; its ages and stays are null.
	Total StateRow `json:"total"`
	// UnknownStates counts sockets in a kernel state with no documented
	// name (not in States).
	UnknownStates int `json:"unknown_state_sockets"`
	// TransitionsPerSecond is the rate of every state change seen since
	// the view started; null for a single dump.
	TransitionsPerSecond *float64 `json:"transitions_per_second"`
	// Ports are the service ports holding the most CLOSE_WAIT sockets.
	Ports []PortRow `json:"close_wait_ports"`
	// PortsOmitted counts the rows with CLOSE_WAIT sockets past the top.
	PortsOmitted int `json:"close_wait_ports_omitted"`
	// Processes are the processes holding the most CLOSE_WAIT sockets.
	Processes []ProcessRow `json:"close_wait_processes"`
	// ProcessesUnreadable counts processes whose open files could not be
	// read (run as root to see them).
	ProcessesUnreadable int `json:"processes_unreadable"`
}

// StateRow is one documented state's line of the table.
type StateRow struct {
	State string `json:"state"`
	IPv4  int    `json:"ipv4"`
	IPv6  int    `json:"ipv6"`
	Total int    `json:"total"`
	// Oldest is the age of the state's longest-standing socket; null when
	// the state is empty or the age cannot be known (see Age).
	Oldest *Age `json:"oldest"`
	// EnteredPerSecond and LeftPerSecond are the rates of changes into
	// and out of the state since the view started; null for a single dump.
	EnteredPerSecond *float64 `json:"entered_per_second"`
	LeftPerSecond    *float64 `json:"left_per_second"`
	// Stays counts the completed stays in the state seen since the view
	// started (entry and exit both seen); StayMedianSeconds and
	// StayP99Seconds are their percentiles (to within 9%, from the
	// snapshot's log-bucketed stays), null when there are none.
	Stays             int      `json:"stays"`
	StayMedianSeconds *float64 `json:"stay_median_seconds"`
	StayP99Seconds    *float64 `json:"stay_p99_seconds"`
}

// Age is how long a socket has been in its state.
//
// A dump says which state a socket is in, not since when; only a TIME_WAIT
// socket's kernel timer pins its entry. Other sockets' entries are seen
// between two polls of the view (exact to the poll interval), and a socket
// that was already in its state when the view started has been there at
// least as long as the view has run: AtLeast.
type Age struct {
	Seconds float64 `json:"seconds"`
	AtLeast bool    `json:"at_least"`
}

// PortRow is a service port and its CLOSE_WAIT sockets.
type PortRow struct {
	// Netns names the port's namespace with --netns=all; "" otherwise.
	Netns string `json:"netns"`
	// Kind is "listening" (Port is a local port with a listener),
	// "other" (listening ports summed) or "no_listener" (sockets whose
	// local port has no listener: the client side, summed).
	Kind      string `json:"kind"`
	Port      *int   `json:"port"`
	CloseWait int    `json:"close_wait"`
}

// ProcessRow is a process name and its CLOSE_WAIT sockets.
type ProcessRow struct {
	// Kind is "named" (Process is an executable name, its processes
	// summed), "other" (names past the top, summed), "no_owner" (sockets
	// no process holds) or "owner_not_found" (the holder exited or could
	// not be read).
	Kind      string `json:"kind"`
	Process   string `json:"process"`
	CloseWait int    `json:"close_wait"`
}

// Options say what a View shows.
type Options struct {
	Netns string
	// Interval is the time between the view's polls.
	Interval time.Duration
	// Top is how many ports and processes to name.
	Top int
}

// View turns successive snapshots of one Poller into tables, measuring
// rates and ages from the first snapshot it was given.
type View struct {
	opts  Options
	first *collector.Snapshot
}

// NewView returns a View with opts.
func NewView(opts Options) *View { return &View{opts: opts} }

// Table returns the table of snap, whose process breakdown is attr (nil
// if none). The first snapshot with a poll in it starts the view.
func (v *View) Table(snap *collector.Snapshot, attr *collector.Attribution) Table {
	if v.first == nil && !snap.Time.IsZero() {
		v.first = snap
	}
	first := v.first
	if first == nil {
		first = snap
	}
	since := snap.Time.Sub(first.Time)
	t := Table{
		Time:          snap.Time,
		Netns:         v.opts.Netns,
		SinceSeconds:  since.Seconds(),
		States:        make([]StateRow, 0, collector.NumStates),
		Total:         StateRow{State: "TOTAL"},
		UnknownStates: snap.Unknown,
		Ports:         []PortRow{},
		Processes:     []ProcessRow{},
	}
	watching := since > 0
	var all uint64
	for _, st := range collector.States() {
		r := StateRow{
			State: st.String(),
			IPv4:  snap.Sockets[collector.IPv4][st],
			IPv6:  snap.Sockets[collector.IPv6][st],
		}
		r.Total = r.IPv4 + r.IPv6
		r.Oldest = v.age(st, r.Total, snap.Oldest[st], since)
		if watching {
			var in, out uint64
			for o := range collector.NumStates {
				in += snap.Transitions[o][st] - first.Transitions[o][st]
				out += snap.Transitions[st][o] - first.Transitions[st][o]
			}
			all += in
			r.EnteredPerSecond = rate(in, since)
			r.LeftPerSecond = rate(out, since)
		}
		if n := snap.Stays.Count[st]; n > 0 {
			r.Stays = int(n)
			r.StayMedianSeconds, r.StayP99Seconds = quantile(&snap.Stays, st, 0.5), quantile(&snap.Stays, st, 0.99)
		}
		t.Total.IPv4 += r.IPv4
		t.Total.IPv6 += r.IPv6
		t.Total.Total += r.Total
		t.States = append(t.States, r)
	}
	if watching {
		t.TransitionsPerSecond = rate(all, since)
	}
	t.Ports, t.PortsOmitted = closeWaitPorts(snap.Ports.Rows, v.opts.Top)
	if attr != nil {
		t.Processes = closeWaitProcesses(attr.Rows, v.opts.Top)
		t.ProcessesUnreadable = attr.Denied
	}
	return t
}

// age says how old the oldest of n sockets in st is, from the age the
// tracker gives, since the view started.
func (v *View) age(st collector.State, n int, oldest, since time.Duration) *Age {
	switch {
	case n == 0:
		return nil
	case st == collector.TimeWait:
		// The kernel's timer pins a TIME_WAIT socket's entry.
		return &Age{Seconds: oldest.Seconds()}
	case oldest >= since-v.opts.Interval/4:
		// The tracker dates a socket it found at the first poll from
		// that poll; a socket that entered later, from a midpoint at
		// least half an interval after it.
		if since <= 0 {
			return nil
		}
		return &Age{Seconds: since.Seconds(), AtLeast: true}
	}
	return &Age{Seconds: oldest.Seconds()}
}

// quantile is the q-quantile of the stays in st, in seconds (within 9%:
// see collector.Stays), nil if there are none.
func quantile(s *collector.Stays, st collector.State, q float64) *float64 {
	d, ok := s.Quantile(st, q)
	if !ok {
		return nil
	}
	v := d.Seconds()
	return &v
}

func rate(n uint64, d time.Duration) *float64 {
	r := float64(n) / d.Seconds()
	return &r
}

// closeWaitPorts returns the top rows by CLOSE_WAIT sockets, and how many
// more rows have some.
func closeWaitPorts(rows []collector.PortCount, top int) ([]PortRow, int) {
	out := []PortRow{}
	for _, r := range rows {
		n := r.Sockets[collector.CloseWait]
		if n == 0 {
			continue
		}
		pr := PortRow{Netns: r.Netns, CloseWait: n}
		switch r.Kind {
		case collector.PortListening:
			pr.Kind = "listening"
			port := int(r.Port)
			pr.Port = &port
		case collector.PortOther:
			pr.Kind = "other"
		default:
			pr.Kind = "no_listener"
		}
		out = append(out, pr)
	}
	slices.SortStableFunc(out, func(a, b PortRow) int {
		if c := cmp.Compare(b.CloseWait, a.CloseWait); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Netns, b.Netns); c != 0 {
			return c
		}
		return cmp.Compare(portOrder(a), portOrder(b))
	})
	if len(out) > top {
		return out[:top], len(out) - top
	}
	return out, 0
}

// portOrder puts named ports first, in order, then the summed rows.
func portOrder(r PortRow) int {
	if r.Port != nil {
		return *r.Port
	}
	return 1 << 16
}

var processKinds = map[collector.ProcessKind]string{
	collector.ProcessNamed:   "named",
	collector.ProcessOther:   "other",
	collector.ProcessNone:    "no_owner",
	collector.ProcessUnknown: "owner_not_found",
}

// closeWaitProcesses returns the rows holding CLOSE_WAIT sockets, the most
// first; the attribution already keeps only the top names.
func closeWaitProcesses(rows []collector.ProcessCount, top int) []ProcessRow {
	out := []ProcessRow{}
	for _, r := range rows {
		if n := r.Sockets[collector.CloseWait]; n > 0 {
			out = append(out, ProcessRow{Kind: processKinds[r.Kind], Process: r.Process, CloseWait: n})
		}
	}
	slices.SortStableFunc(out, func(a, b ProcessRow) int {
		if c := cmp.Compare(b.CloseWait, a.CloseWait); c != 0 {
			return c
		}
		return cmp.Compare(a.Process, b.Process)
	})
	// The summed rows do not count against the top.
	named := 0
	return slices.DeleteFunc(out, func(r ProcessRow) bool {
		if r.Kind != "named" {
			return false
		}
		named++
		return named > top
	})
}
