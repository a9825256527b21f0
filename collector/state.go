package collector

import (
	"fmt"
	"strings"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// State is one of the eleven documented TCP states.
type State uint8

// The documented TCP states. Their String values are the label values the
// exporter publishes.
const (
	Closed State = iota
	Listen
	SynRcvd
	SynSend
	Established
	FinWait1
	FinWait2
	TimeWait
	Closing
	CloseWait
	LastAck

	// NumStates is the number of documented states.
	NumStates = 11
)

var stateNames = [NumStates]string{
	Closed:      "CLOSED",
	Listen:      "LISTEN",
	SynRcvd:     "SYN_RCVD",
	SynSend:     "SYN_SEND",
	Established: "ESTABLISHED",
	FinWait1:    "FIN_WAIT_1",
	FinWait2:    "FIN_WAIT_2",
	TimeWait:    "TIME_WAIT",
	Closing:     "CLOSING",
	CloseWait:   "CLOSE_WAIT",
	LastAck:     "LAST_ACK",
}

// kernelStates maps idiag_state (include/net/tcp_states.h) to the documented
// state; index 0 and anything past the table are unknown.
var kernelStates = [...]struct {
	state State
	known bool
}{
	netlinkdiag.StateEstablished:   {Established, true},
	netlinkdiag.StateSynSent:       {SynSend, true},
	netlinkdiag.StateSynRecv:       {SynRcvd, true},
	netlinkdiag.StateFinWait1:      {FinWait1, true},
	netlinkdiag.StateFinWait2:      {FinWait2, true},
	netlinkdiag.StateTimeWait:      {TimeWait, true},
	netlinkdiag.StateClose:         {Closed, true},
	netlinkdiag.StateCloseWait:     {CloseWait, true},
	netlinkdiag.StateLastAck:       {LastAck, true},
	netlinkdiag.StateListen:        {Listen, true},
	netlinkdiag.StateClosing:       {Closing, true},
	netlinkdiag.StateNewSynRecv:    {SynRcvd, true},
	netlinkdiag.StateBoundInactive: {Closed, true},
}

// kernelAliases are the kernel's names (as ss and /proc/net/tcp users know
// them) that differ from the documented ones.
var kernelAliases = map[string]State{
	"SYN_SENT":       SynSend,
	"SYN_RECV":       SynRcvd,
	"NEW_SYN_RECV":   SynRcvd,
	"FIN_WAIT1":      FinWait1,
	"FIN_WAIT2":      FinWait2,
	"CLOSE":          Closed,
	"BOUND_INACTIVE": Closed,
}

// String returns the documented name, such as "CLOSE_WAIT".
func (s State) String() string {
	if s < NumStates {
		return stateNames[s]
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// States returns every documented state in order.
func States() []State {
	out := make([]State, NumStates)
	for i := range out {
		out[i] = State(i)
	}
	return out
}

// FromKernel maps a kernel idiag_state onto a documented state. It reports
// false for a state the kernel did not have when this was written.
func FromKernel(k uint8) (State, bool) {
	if int(k) >= len(kernelStates) {
		return 0, false
	}
	e := kernelStates[k]
	return e.state, e.known
}

// ParseState accepts a documented state name or a kernel alias (SYN_SENT,
// SYN_RECV, NEW_SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSE, BOUND_INACTIVE),
// case-insensitively, with '-' accepted for '_'.
func ParseState(name string) (State, error) {
	n := strings.ToUpper(strings.ReplaceAll(strings.TrimSpace(name), "-", "_"))
	for i, s := range stateNames {
		if s == n {
			return State(i), nil
		}
	}
	if s, ok := kernelAliases[n]; ok {
		return s, nil
	}
	return 0, fmt.Errorf("unknown TCP state %q (want one of %s)", name, strings.Join(stateNames[:], " "))
}

// Family is an address family, IPv4 or IPv6.
type Family uint8

// The address families a dump reports.
const (
	IPv4 Family = iota
	IPv6

	// NumFamilies is the number of families.
	NumFamilies = 2
)

// String returns "ipv4" or "ipv6", the exporter's label values.
func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return fmt.Sprintf("Family(%d)", uint8(f))
}

// label returns the label value names holds for v, or "unknown" for a
// value past them: the String of the exporter's small enumerations.
func label[T ~uint8](names []string, v T) string {
	if int(v) < len(names) {
		return names[v]
	}
	return "unknown"
}
