package termview

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Text renders the table as plain text, one line each, for a terminal 80
// columns wide. Watching (SinceSeconds > 0), or an exporter's view, adds
// the rate and stay columns.
func (t Table) Text() string {
	var b strings.Builder
	watch := t.SinceSeconds > 0 || t.Exporter
	head := fmt.Sprintf("%-12s %8s %8s %8s  %-8s", "STATE", "IPV4", "IPV6", "TOTAL", "OLDEST")
	if watch {
		head += fmt.Sprintf(" %7s %7s %8s %8s", "IN/S", "OUT/S", "STAY P50", "STAY P99")
	}
	b.WriteString(strings.TrimRight(head, " ") + "\n")
	row := func(r StateRow, total bool) {
		line := fmt.Sprintf("%-12s %8d %8d %8d", r.State, r.IPv4, r.IPv6, r.Total)
		if !total {
			line += fmt.Sprintf("  %-8s", ageText(r.Oldest))
		}
		if watch && !total {
			line += fmt.Sprintf(" %7s %7s %8s %8s", rateText(r.EnteredPerSecond), rateText(r.LeftPerSecond),
				secondsText(r.StayMedianSeconds), secondsText(r.StayP99Seconds))
		}
		b.WriteString(strings.TrimRight(line, " ") + "\n")
	}
	for _, r := range t.States {
		row(r, false)
	}
	row(t.Total, true)
	if t.UnknownStates > 0 {
		fmt.Fprintf(&b, "%-12s %26d  (kernel states with no documented name)\n", "UNKNOWN", t.UnknownStates)
	}
	switch {
	case t.Exporter:
		fmt.Fprintf(&b, "\n%s transitions/s over the exporter's last minute; stays since it started\n", rateText(t.TransitionsPerSecond))
	case watch:
		fmt.Fprintf(&b, "\n%s transitions/s since start (%s ago)\n", rateText(t.TransitionsPerSecond), durationText(t.SinceSeconds))
	default:
		b.WriteString("\nOLDEST: TIME_WAIT's from the kernel's timer; one dump cannot date the others (--watch can).\n")
	}

	ports := make([]labelled, len(t.Ports))
	for i, p := range t.Ports {
		ports[i] = labelled{portText(p), p.CloseWait}
	}
	section(&b, "CLOSE_WAIT by service port", "PORT", ports, t.PortsOmitted)
	procs := make([]labelled, len(t.Processes))
	for i, p := range t.Processes {
		procs[i] = labelled{processText(p), p.CloseWait}
	}
	section(&b, "CLOSE_WAIT by process", "PROCESS", procs, 0)
	if t.ProcessesUnreadable > 0 {
		if t.ProcessesUnreadable == 1 {
			b.WriteString("  (1 process's open files could not be read)\n")
		} else {
			fmt.Fprintf(&b, "  (%d processes' open files could not be read)\n", t.ProcessesUnreadable)
		}
	}
	return b.String()
}

// labelled is a row of a breakdown: what holds the sockets, how many.
type labelled struct {
	label string
	n     int
}

// section writes a breakdown under its title, or "none".
func section(b *strings.Builder, title, column string, rows []labelled, omitted int) {
	b.WriteString("\n" + title)
	if len(rows) == 0 {
		b.WriteString(": none\n")
		return
	}
	fmt.Fprintf(b, "\n  %-26s %10s\n", column, "CLOSE_WAIT")
	for _, r := range rows {
		fmt.Fprintf(b, "  %-26s %10d\n", r.label, r.n)
	}
	if omitted > 0 {
		fmt.Fprintf(b, "  (%d more)\n", omitted)
	}
}

func portText(p PortRow) string {
	var s string
	switch {
	case p.Port != nil:
		s = strconv.Itoa(*p.Port)
	case p.Kind == "other":
		s = "(other ports)"
	default:
		s = "(no listener)"
	}
	if p.Netns != "" {
		s = p.Netns + " " + s
	}
	return s
}

func processText(p ProcessRow) string {
	switch p.Kind {
	case "named":
		return p.Process
	case "other":
		return "(other processes)"
	case "no_owner":
		return "(no owner)"
	}
	return "(owner not found)"
}

func ageText(a *Age) string {
	if a == nil {
		return "-"
	}
	if a.AtLeast {
		return ">=" + durationText(a.Seconds)
	}
	return durationText(a.Seconds)
}

func rateText(r *float64) string {
	if r == nil {
		return "-"
	}
	if *r >= 100 {
		return strconv.FormatFloat(*r, 'f', 0, 64)
	}
	return strconv.FormatFloat(*r, 'f', 1, 64)
}

func secondsText(s *float64) string {
	if s == nil {
		return "-"
	}
	return durationText(*s)
}

// durationText writes seconds as a short duration: 340ms, 4.5s, 42s,
// 3m07s, 2h05m, 3d04h.
func durationText(s float64) string {
	d := time.Duration(math.Round(s*1e3) * float64(time.Millisecond))
	switch {
	case d < time.Second:
		return fmt.Sprintf("%dms", d.Milliseconds())
	case d < 10*time.Second:
		return fmt.Sprintf("%.1fs", d.Seconds())
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}
