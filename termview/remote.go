package termview

import (
	"strconv"

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/exporter"
)

// FromAPI returns the table of a running exporter's snapshot, as its JSON
// API (/api/v1/snapshot) serves it: the exporter's counts and ages (exact
// to the event in precise mode, to the poll interval in poll mode), the
// stays it has seen since it started, and its transition rates over the
// last minute. netns says where the view comes from. States and label
// values the API names that this table does not know are left out.
func FromAPI(s *exporter.APISnapshot, netns string, top int) Table {
	t := Table{
		Netns:         netns,
		Exporter:      true,
		States:        make([]StateRow, collector.NumStates),
		Total:         StateRow{State: "TOTAL"},
		UnknownStates: s.Exporter.Unknown,
		Ports:         []PortRow{},
		Processes:     []ProcessRow{},
	}
	if s.Time != nil {
		t.Time = *s.Time
	}
	for _, st := range collector.States() {
		t.States[st] = StateRow{State: st.String()}
	}
	for _, a := range s.States {
		st, ok := documented(a.State)
		if !ok {
			continue
		}
		r := &t.States[st]
		r.IPv4, r.IPv6 = a.Sockets.IPv4, a.Sockets.IPv6
		r.Total = r.IPv4 + r.IPv6
		if r.Total > 0 && a.OldestSeconds > 0 {
			r.Oldest = &Age{Seconds: a.OldestSeconds}
		}
		if a.Stays != nil {
			r.Stays, r.StayMedianSeconds, r.StayP99Seconds = int(a.Stays.Count), a.Stays.MedianSeconds, a.Stays.P99Seconds
		}
		t.Total.IPv4 += r.IPv4
		t.Total.IPv6 += r.IPv6
		t.Total.Total += r.Total
	}
	// Rates, from the exporter's last minute.
	var in, out [collector.NumStates]float64
	var all float64
	for _, tr := range s.Transitions {
		from, ok1 := documented(tr.From)
		to, ok2 := documented(tr.To)
		if !ok1 || !ok2 {
			continue
		}
		out[from] += tr.PerSecond
		in[to] += tr.PerSecond
		all += tr.PerSecond
	}
	for st := range t.States {
		t.States[st].EnteredPerSecond, t.States[st].LeftPerSecond = &in[st], &out[st]
	}
	t.TransitionsPerSecond = &all

	ports := make([]collector.PortCount, 0, len(s.Ports.Rows))
	for _, p := range s.Ports.Rows {
		r := collector.PortCount{Netns: p.Netns, Kind: collector.PortListening}
		switch p.Port {
		case "other":
			r.Kind = collector.PortOther
		case "none":
			r.Kind = collector.PortNone
		default:
			n, err := strconv.ParseUint(p.Port, 10, 16)
			if err != nil {
				continue
			}
			r.Port = uint16(n)
		}
		r.Sockets = stateCounts(p.Sockets)
		ports = append(ports, r)
	}
	t.Ports, t.PortsOmitted = closeWaitPorts(ports, top)

	if s.Processes != nil {
		procs := make([]collector.ProcessCount, 0, len(s.Processes.Rows))
		for _, p := range s.Processes.Rows {
			r := collector.ProcessCount{Kind: collector.ProcessNamed, Process: p.Process, Sockets: stateCounts(p.Sockets)}
			switch p.Process {
			case "other":
				r.Kind, r.Process = collector.ProcessOther, ""
			case "none":
				r.Kind, r.Process = collector.ProcessNone, ""
			case "unknown":
				r.Kind, r.Process = collector.ProcessUnknown, ""
			}
			procs = append(procs, r)
		}
		t.Processes = closeWaitProcesses(procs, top)
		t.ProcessesUnreadable = s.Processes.Denied
	}
	return t
}

// documented is the state with the documented name, and whether there is
// one: the API speaks only in those names.
func documented(name string) (collector.State, bool) {
	for _, st := range collector.States() {
		if st.String() == name {
			return st, true
		}
	}
	return 0, false
}

// stateCounts turns counts by state name into counts by state.
func stateCounts(m map[string]int) [collector.NumStates]int {
	var c [collector.NumStates]int
	for name, n := range m {
		if st, ok := documented(name); ok {
			c[st] = n
		}
	}
	return c
}
