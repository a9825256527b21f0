package netlinkdiag

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// PortSettings are the sysctls of a network namespace that decide which
// local ports connect() can pick for a connection.
type PortSettings struct {
	// Low and High bound net.ipv4.ip_local_port_range (both included);
	// it applies to IPv6 as well.
	Low, High uint16
	// Reserved counts the ports of that range listed in
	// net.ipv4.ip_local_reserved_ports, which connect() never picks.
	Reserved int
	// TWReuse is net.ipv4.tcp_tw_reuse: 0 off, 1 on, 2 on for loopback
	// connections only.
	TWReuse int
	// TWReuseDelay is net.ipv4.tcp_tw_reuse_delay: how long after the
	// last segment a TIME_WAIT socket becomes reusable (1s on kernels
	// older than 6.13, which have no such sysctl).
	TWReuseDelay time.Duration
	// Timestamps is net.ipv4.tcp_timestamps != 0: reuse of a TIME_WAIT
	// port needs the old connection to have carried timestamps.
	Timestamps bool
}

// Ports is how many local ports connect() can pick from: the range less
// the reserved ports in it.
func (s PortSettings) Ports() int {
	if s.High < s.Low {
		return 0
	}
	return max(int(s.High)-int(s.Low)+1-s.Reserved, 0)
}

// The files under /proc/sys that PortSettings come from.
const (
	sysctlPortRange    = "net/ipv4/ip_local_port_range"
	sysctlReserved     = "net/ipv4/ip_local_reserved_ports"
	sysctlTWReuse      = "net/ipv4/tcp_tw_reuse"
	sysctlTWReuseDelay = "net/ipv4/tcp_tw_reuse_delay"
	sysctlTimestamps   = "net/ipv4/tcp_timestamps"
)

// parsePortSettings builds PortSettings from the contents of the sysctl
// files, keyed by the names above; a missing tcp_tw_reuse_delay means the
// kernel's fixed second.
func parsePortSettings(files map[string]string) (PortSettings, error) {
	var s PortSettings
	f := strings.Fields(files[sysctlPortRange])
	if len(f) != 2 {
		return s, fmt.Errorf("netlinkdiag: malformed ip_local_port_range %q", files[sysctlPortRange])
	}
	low, err1 := strconv.ParseUint(f[0], 10, 16)
	high, err2 := strconv.ParseUint(f[1], 10, 16)
	if err := errors.Join(err1, err2); err != nil {
		return s, fmt.Errorf("netlinkdiag: malformed ip_local_port_range %q: %w", files[sysctlPortRange], err)
	}
	s.Low, s.High = uint16(low), uint16(high)
	if s.Reserved, err1 = reservedIn(files[sysctlReserved], s.Low, s.High); err1 != nil {
		return s, err1
	}
	var err error
	if s.TWReuse, err = strconv.Atoi(strings.TrimSpace(files[sysctlTWReuse])); err != nil {
		return s, fmt.Errorf("netlinkdiag: malformed tcp_tw_reuse %q: %w", files[sysctlTWReuse], err)
	}
	s.TWReuseDelay = time.Second
	if v, ok := files[sysctlTWReuseDelay]; ok {
		ms, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil {
			return s, fmt.Errorf("netlinkdiag: malformed tcp_tw_reuse_delay %q: %w", v, err)
		}
		s.TWReuseDelay = time.Duration(ms) * time.Millisecond
	}
	ts, err := strconv.Atoi(strings.TrimSpace(files[sysctlTimestamps]))
	if err != nil {
		return s, fmt.Errorf("netlinkdiag: malformed tcp_timestamps %q: %w", files[sysctlTimestamps], err)
	}
	s.Timestamps = ts != 0
	return s, nil
}

// reservedIn counts the ports of list (ip_local_reserved_ports: "" or
// comma-separated ports and ranges such as "8080,9000-9010") in
// [low, high].
func reservedIn(list string, low, high uint16) (int, error) {
	n := 0
	for item := range strings.SplitSeq(strings.TrimSpace(list), ",") {
		if item == "" {
			continue
		}
		a, b, isRange := strings.Cut(item, "-")
		from, err1 := strconv.ParseUint(a, 10, 16)
		to := from
		var err2 error
		if isRange {
			to, err2 = strconv.ParseUint(b, 10, 16)
		}
		if err := errors.Join(err1, err2); err != nil || to < from {
			return 0, fmt.Errorf("netlinkdiag: malformed ip_local_reserved_ports %q", list)
		}
		from, to = max(from, uint64(low)), min(to, uint64(high))
		if to >= from {
			n += int(to - from + 1)
		}
	}
	return n, nil
}
