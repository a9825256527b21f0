package exporter

import (
	"bytes"
	"cmp"
	"embed"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

// The page marks a state in trouble with the thresholds of the shipped
// alerts (deploy/prometheus/rules.yml), so that what stands out on it is
// what would page someone.
const (
	// CloseWaitLeakAfter: TCPStateCloseWaitLeak, the oldest CLOSE_WAIT
	// socket's age.
	CloseWaitLeakAfter = 600 * time.Second
	// SynSendStuckAfter: TCPStateSynSendStuck, the oldest SYN_SEND
	// socket's age.
	SynSendStuckAfter = 30 * time.Second
	// SynRcvdPileUp: TCPStateSynRecvPileUp, half-open incoming
	// connections.
	SynRcvdPileUp = 256
)

//go:embed page/states.html page/states.css page/states.js
var pageFiles embed.FS

var pageTemplate = template.Must(template.New("states.html").Funcs(template.FuncMap{
	"duration": formatSeconds,
	"stays":    formatStays,
	"rate":     formatRate,
	"width":    arrowWidth,
	"add":      func(a, b float64) float64 { return a + b },
	"css":      func() template.CSS { return template.CSS(mustRead("page/states.css")) },
	"js":       func() template.JS { return template.JS(mustRead("page/states.js")) },
}).ParseFS(pageFiles, "page/states.html"))

func mustRead(name string) string {
	b, err := pageFiles.ReadFile(name)
	if err != nil {
		panic(err) // embedded: cannot be missing
	}
	return string(b)
}

// point is a place on the diagram.
type point struct{ X, Y float64 }

// The diagram: each state's box, centred on its place.
const (
	boxW, boxH   = 190, 80
	diagramW     = 1000
	diagramH     = 860
	extraCurve   = 40 // how far an arrow the standard diagram lacks bows out
	arrowHeadGap = 3  // room left between an arrow's head and the box
)

var statePlaces = [collector.NumStates]point{
	collector.Closed:      {500, 60},
	collector.Listen:      {500, 195},
	collector.SynRcvd:     {200, 340},
	collector.SynSend:     {800, 340},
	collector.Established: {500, 470},
	collector.FinWait1:    {160, 610},
	collector.Closing:     {440, 610},
	collector.CloseWait:   {810, 610},
	collector.FinWait2:    {160, 760},
	collector.TimeWait:    {440, 760},
	collector.LastAck:     {810, 760},
}

// edge is a transition of the standard diagram: what causes it, and how
// its arrow runs (through Via, or bowed by Curve when there is none).
type edge struct {
	From, To collector.State
	Cause    string
	Via      []point
	Curve    float64
	Label    point // for a path through Via
}

// standardEdges are the transitions of the standard TCP state diagram
// (RFC 793 figure 6, as Stevens draws it), labelled "received / sent".
var standardEdges = []edge{
	{From: collector.Closed, To: collector.Listen, Cause: "listen()", Curve: -40},
	{From: collector.Listen, To: collector.Closed, Cause: "close()", Curve: -40},
	{From: collector.Closed, To: collector.SynSend, Cause: "connect() / SYN", Via: []point{{800, 45}}, Label: point{700, 37}},
	{From: collector.Listen, To: collector.SynRcvd, Cause: "SYN / SYN+ACK", Curve: -20},
	{From: collector.SynRcvd, To: collector.Listen, Cause: "RST", Curve: -20},
	{From: collector.Listen, To: collector.SynSend, Cause: "send() / SYN"},
	{From: collector.SynSend, To: collector.SynRcvd, Cause: "SYN / SYN+ACK (simultaneous open)"},
	{From: collector.SynSend, To: collector.Closed, Cause: "close(), timeout", Curve: -60},
	{From: collector.SynRcvd, To: collector.Established, Cause: "ACK"},
	{From: collector.SynSend, To: collector.Established, Cause: "SYN+ACK / ACK"},
	{From: collector.SynRcvd, To: collector.FinWait1, Cause: "close() / FIN"},
	{From: collector.Established, To: collector.FinWait1, Cause: "close() / FIN"},
	{From: collector.Established, To: collector.CloseWait, Cause: "FIN / ACK"},
	{From: collector.FinWait1, To: collector.FinWait2, Cause: "ACK"},
	{From: collector.FinWait1, To: collector.Closing, Cause: "FIN / ACK"},
	{From: collector.FinWait1, To: collector.TimeWait, Cause: "FIN+ACK / ACK"},
	{From: collector.FinWait2, To: collector.TimeWait, Cause: "FIN / ACK"},
	{From: collector.Closing, To: collector.TimeWait, Cause: "ACK"},
	{From: collector.TimeWait, To: collector.Closed, Cause: "2MSL timeout", Via: []point{{440, 838}, {22, 838}, {22, 75}}, Label: point{30, 520}},
	{From: collector.CloseWait, To: collector.LastAck, Cause: "close() / FIN"},
	{From: collector.LastAck, To: collector.Closed, Cause: "ACK", Via: []point{{975, 760}, {975, 80}}, Label: point{968, 470}},
}

// arrow is one transition as the page draws it.
type arrow struct {
	ID        string // t-FROM-TO
	From, To  string
	Cause     string
	Path      string
	LabelX    float64
	LabelY    float64
	Anchor    string // the label's text-anchor
	Extra     bool   // not in the standard diagram
	Total     uint64
	PerSecond float64
}

// stateBox is one state as the page draws it.
type stateBox struct {
	APIState
	X, Y    float64 // top left
	CX, CY  float64 // centre
	Trouble string  // why it stands out; "" when it does not
}

// diagramArrows returns every arrow: the standard transitions, then every
// other pair of states (drawn only when the host makes that transition).
func diagramArrows() []arrow {
	var out []arrow
	standard := map[[2]collector.State]bool{}
	for _, e := range standardEdges {
		standard[[2]collector.State{e.From, e.To}] = true
		out = append(out, layout(e, false))
	}
	for _, from := range collector.States() {
		for _, to := range collector.States() {
			if from == to || standard[[2]collector.State{from, to}] {
				continue
			}
			out = append(out, layout(edge{From: from, To: to, Curve: extraCurve}, true))
		}
	}
	return out
}

var arrows = diagramArrows()

// layout works out an arrow's path and where its label goes.
func layout(e edge, extra bool) arrow {
	a := arrow{
		ID:    "t-" + e.From.String() + "-" + e.To.String(),
		From:  e.From.String(),
		To:    e.To.String(),
		Cause: e.Cause,
		Extra: extra,
	}
	from, to := statePlaces[e.From], statePlaces[e.To]
	if len(e.Via) > 0 {
		start := clip(from, e.Via[0], 0)
		end := clip(to, e.Via[len(e.Via)-1], arrowHeadGap)
		var b strings.Builder
		fmt.Fprintf(&b, "M%.0f,%.0f", start.X, start.Y)
		for _, v := range e.Via {
			fmt.Fprintf(&b, " L%.0f,%.0f", v.X, v.Y)
		}
		fmt.Fprintf(&b, " L%.0f,%.0f", end.X, end.Y)
		a.Path, a.LabelX, a.LabelY = b.String(), e.Label.X, e.Label.Y
		a.Anchor = "middle"
		if e.Label.X < 100 {
			a.Anchor = "start"
		} else if e.Label.X > 900 {
			a.Anchor = "end"
		}
		return a
	}
	// A quadratic curve bowed Curve to the left of the way it runs.
	dx, dy := to.X-from.X, to.Y-from.Y
	n := math.Hypot(dx, dy)
	c := point{(from.X+to.X)/2 + e.Curve*dy/n, (from.Y+to.Y)/2 - e.Curve*dx/n}
	start, end := clip(from, c, 0), clip(to, c, arrowHeadGap)
	a.Path = fmt.Sprintf("M%.0f,%.0f Q%.0f,%.0f %.0f,%.0f", start.X, start.Y, c.X, c.Y, end.X, end.Y)
	a.LabelX = 0.25*start.X + 0.5*c.X + 0.25*end.X
	a.LabelY = 0.25*start.Y + 0.5*c.Y + 0.25*end.Y
	// A label beside a bowed arrow runs away from it.
	switch bow := e.Curve * dy / n; {
	case bow < -10:
		a.Anchor, a.LabelX = "end", a.LabelX-4
	case bow > 10:
		a.Anchor, a.LabelX = "start", a.LabelX+4
	default:
		a.Anchor = "middle"
	}
	return a
}

// clip returns where the line from the centre c of a state's box towards
// p leaves the box, gap further on.
func clip(c, p point, gap float64) point {
	dx, dy := p.X-c.X, p.Y-c.Y
	if dx == 0 && dy == 0 {
		return c
	}
	t := math.Inf(1)
	if dx != 0 {
		t = (boxW/2 + gap) / math.Abs(dx)
	}
	if dy != 0 {
		t = min(t, (boxH/2+gap)/math.Abs(dy))
	}
	return point{c.X + t*dx, c.Y + t*dy}
}

// pageData is what the page's template renders.
type pageData struct {
	Snap       *APISnapshot
	Boxes      []stateBox
	Arrows     []arrow
	LeakAfter  float64
	StuckAfter float64
	PileUp     int
	Width      int
	Height     int
	Ports      []portRow
	Processes  []processRow
}

// portRow is a row of the page's table of service ports.
type portRow struct {
	APIPort
	Full bool // its accept queue is full
}

// processRow is a row of the page's table of processes.
type processRow struct {
	Process string
	Summary string // sockets by state, such as "CLOSE_WAIT 40"
}

// sideRows is how many rows the page's side tables show.
const sideRows = 10

func newPageData(v *APISnapshot) pageData {
	d := pageData{
		Snap: v, Width: diagramW, Height: diagramH,
		LeakAfter: CloseWaitLeakAfter.Seconds(), StuckAfter: SynSendStuckAfter.Seconds(), PileUp: SynRcvdPileUp,
	}
	full := false
	for _, p := range v.Ports.Rows {
		r := portRow{APIPort: p, Full: p.QueueLimit > 0 && p.QueueLength >= p.QueueLimit}
		full = full || r.Full
		d.Ports = append(d.Ports, r)
	}
	// The ports holding the most CLOSE_WAIT sockets first, then the
	// busiest.
	slices.SortStableFunc(d.Ports, func(a, b portRow) int {
		return cmp.Or(cmp.Compare(b.Sockets["CLOSE_WAIT"], a.Sockets["CLOSE_WAIT"]), cmp.Compare(sum(b.Sockets), sum(a.Sockets)))
	})
	d.Ports = d.Ports[:min(len(d.Ports), sideRows)]
	if v.Processes != nil {
		for _, p := range v.Processes.Rows {
			var parts []string
			for _, st := range collector.States() {
				if n := p.Sockets[st.String()]; n > 0 {
					parts = append(parts, fmt.Sprintf("%s %d", st, n))
				}
			}
			d.Processes = append(d.Processes, processRow{Process: p.Process, Summary: strings.Join(parts, ", ")})
		}
		d.Processes = d.Processes[:min(len(d.Processes), sideRows)]
	}
	for i, s := range v.States {
		c := statePlaces[i]
		b := stateBox{APIState: s, X: c.X - boxW/2, Y: c.Y - boxH/2, CX: c.X, CY: c.Y}
		b.Trouble = trouble(s, full)
		d.Boxes = append(d.Boxes, b)
	}
	rates := map[string]APITransition{}
	for _, t := range v.Transitions {
		rates["t-"+t.From+"-"+t.To] = t
	}
	for _, a := range arrows {
		if t, ok := rates[a.ID]; ok {
			a.Total, a.PerSecond = t.Total, t.PerSecond
		}
		d.Arrows = append(d.Arrows, a)
	}
	return d
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// trouble says why a state stands out, or "" when it does not; full is
// whether a listening port's accept queue is full.
func trouble(s APIState, full bool) string {
	switch s.State {
	case "CLOSE_WAIT":
		if s.OldestSeconds > CloseWaitLeakAfter.Seconds() {
			return fmt.Sprintf("a socket has been in CLOSE_WAIT for over %s: a leak", formatSeconds(CloseWaitLeakAfter.Seconds()))
		}
	case "SYN_SEND":
		if s.OldestSeconds > SynSendStuckAfter.Seconds() {
			return fmt.Sprintf("a connect() has waited over %s for an answer", formatSeconds(SynSendStuckAfter.Seconds()))
		}
	case "SYN_RCVD":
		if s.Sockets.IPv4+s.Sockets.IPv6 > SynRcvdPileUp {
			return fmt.Sprintf("over %d half-open incoming connections", SynRcvdPileUp)
		}
	case "LISTEN":
		if full {
			return "a listening port's accept queue is full"
		}
	}
	return ""
}

// formatSeconds writes a duration in seconds shortly: 850µs, 12ms, 3.4s,
// 5m07s, 2h05m, 3d04h; "–" for 0.
func formatSeconds(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case s <= 0:
		return "–"
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1fms", s*1e3)
	case d < time.Second:
		return fmt.Sprintf("%.0fms", s*1e3)
	case d < time.Minute:
		return fmt.Sprintf("%.1fs", s)
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d.Minutes()), int(d.Seconds())%60)
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// formatStays writes a state's stay percentiles.
func formatStays(s *APIStays) string {
	if s == nil || s.MedianSeconds == nil || s.P99Seconds == nil {
		return "stay p50 – p99 –"
	}
	return "stay p50 " + formatSeconds(*s.MedianSeconds) + " p99 " + formatSeconds(*s.P99Seconds)
}

// formatRate writes transitions per second.
func formatRate(r float64) string {
	switch {
	case r <= 0:
		return "0/s"
	case r < 0.1:
		return fmt.Sprintf("%.2f/s", r)
	case r < 10:
		return fmt.Sprintf("%.1f/s", r)
	}
	return fmt.Sprintf("%.0f/s", r)
}

// arrowWidth is an arrow's stroke width for a rate: 1.2 at rest, growing
// with the logarithm of the rate, at most 10.
func arrowWidth(r float64) string {
	return fmt.Sprintf("%.1f", min(10, 1.2+2.2*math.Log10(1+10*max(r, 0))))
}

// ServePage serves /states: the TCP state diagram with the latest
// snapshot's numbers on it, which its script keeps live from
// /api/v1/events. Without the script it still shows them, as of the
// request.
func (a *API) ServePage(w http.ResponseWriter, r *http.Request) {
	if !readOnly(w, r) {
		return
	}
	v, _ := a.Latest()
	var b bytes.Buffer
	if err := pageTemplate.Execute(&b, newPageData(v)); err != nil {
		http.Error(w, "render the page: "+err.Error(), http.StatusInternalServerError)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// Nothing on the page comes from elsewhere, and nothing may.
	h.Set("Content-Security-Policy", "default-src 'none'; connect-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:; base-uri 'none'; form-action 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	w.Write(b.Bytes())
}
