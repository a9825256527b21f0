package exporter

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

// The JSON of /api/v1/snapshot, and of each "snapshot" event of
// /api/v1/events. Names are those the metrics use as label values: the
// documented state names, ipv4/ipv6, reasons and kinds. Durations are in
// seconds.

// APISnapshot is the latest snapshot, as the JSON API serves it.
type APISnapshot struct {
	// Time is when the latest complete poll started (RFC 3339); null
	// before the first.
	Time *time.Time `json:"time"`
	// Mode is "poll" or "precise".
	Mode string `json:"mode"`
	// PollIntervalSeconds is the time between dumps: --poll.interval, or
	// --precise.dump-interval in precise mode.
	PollIntervalSeconds float64 `json:"poll_interval_seconds"`
	// States holds every documented state, in the documented order.
	States []APIState `json:"states"`
	// Transitions holds every (from, to) pair seen at least once.
	Transitions []APITransition `json:"transitions"`
	// Ports is the service-port breakdown (tcpstate_port_sockets).
	Ports APIPorts `json:"ports"`
	// Remotes is the client side by remote endpoint
	// (tcpstate_remote_sockets, tcpstate_remote_port_usage_ratio).
	Remotes APIRemotes `json:"remotes"`
	// Processes is the process breakdown (tcpstate_process_sockets); null
	// when attribution is off.
	Processes *APIProcesses `json:"processes"`
	// Namespaces holds each network namespace with --netns=all; null
	// otherwise.
	Namespaces []APINamespace `json:"namespaces"`
	// Exporter holds the exporter's own counters.
	Exporter APIExporter `json:"exporter"`
}

// APIState is one documented state.
type APIState struct {
	State string `json:"state"`
	// Sockets now, by family.
	Sockets APIFamilies `json:"sockets"`
	// OldestSeconds is how long the longest-standing socket now in the
	// state has been in it; 0 when none is.
	OldestSeconds float64 `json:"oldest_seconds"`
	// Stays are the completed stays since the exporter started; left out
	// of a namespace's states.
	Stays *APIStays `json:"stays,omitempty"`
}

// APIFamilies is a count by address family.
type APIFamilies struct {
	IPv4 int `json:"ipv4"`
	IPv6 int `json:"ipv6"`
}

// APIStays summarises the completed stays in a state: their number, and
// their median and 99th percentile (null while there are none), to within
// 9% (see collector.Stays).
type APIStays struct {
	Count         uint64   `json:"count"`
	MedianSeconds *float64 `json:"median_seconds"`
	P99Seconds    *float64 `json:"p99_seconds"`
}

// APITransition is the transitions from one state to another.
type APITransition struct {
	From  string `json:"from"`
	To    string `json:"to"`
	Total uint64 `json:"total"`
	// PerSecond is the rate over the last minute (over what the API has
	// seen of it, shortly after start); 0 until two snapshots were seen.
	PerSecond float64 `json:"per_second"`
}

// APIPorts is the service-port breakdown.
type APIPorts struct {
	Rows []APIPort `json:"rows"`
	// Folded counts the listening ports summed into "other" rows.
	Folded int `json:"folded"`
}

// APIPort is one row of the port breakdown.
type APIPort struct {
	// Port is a port number, "other" (listening ports past --port.top) or
	// "none" (sockets whose local port has no listener).
	Port string `json:"port"`
	// Netns is the namespace's name with --netns=all; left out otherwise.
	Netns string `json:"netns,omitempty"`
	// Sockets by state name; states with none are left out.
	Sockets map[string]int `json:"sockets"`
	// QueueLength and QueueLimit are the accept queue of the port's LISTEN
	// sockets and its limit, summed over them; 0 for "none".
	QueueLength int `json:"queue_length"`
	QueueLimit  int `json:"queue_limit"`
}

// APIRemotes is the client side by remote endpoint.
type APIRemotes struct {
	Rows []APIRemote `json:"rows"`
	// Folded counts the endpoints summed into "other" rows.
	Folded int `json:"folded"`
}

// APIRemote is one row of the remote breakdown.
type APIRemote struct {
	// Remote is an endpoint, IP:PORT or [IPv6]:PORT, or "other"
	// (endpoints past --remote.top).
	Remote string `json:"remote"`
	// Netns is the namespace's name with --netns=all; left out otherwise.
	Netns string `json:"netns,omitempty"`
	// Sockets by state name; states with none are left out.
	Sockets map[string]int `json:"sockets"`
	// PortsHeld is the most local ports held toward the endpoint from any
	// one local address that a connect() could not reuse; PortRange the
	// ports connect() picks from. Both 0 for "other".
	PortsHeld int `json:"ports_held"`
	PortRange int `json:"port_range"`
	// UsageRatio is PortsHeld/PortRange; null for "other" and when the
	// range is unknown.
	UsageRatio *float64 `json:"usage_ratio"`
}

// APIProcesses is the process breakdown.
type APIProcesses struct {
	// Time is when the attribution ran; null before the first.
	Time        *time.Time   `json:"time"`
	TookSeconds float64      `json:"took_seconds"`
	Rows        []APIProcess `json:"rows"`
	// Folded counts the names summed into "other".
	Folded int `json:"folded"`
	// Denied counts processes whose open files could not be read.
	Denied int `json:"denied"`
}

// APIProcess is one row of the process breakdown.
type APIProcess struct {
	// Process is an executable name (comm), "other", "none" (no owner) or
	// "unknown" (an owner that could not be found).
	Process string `json:"process"`
	// Sockets by state name; states with none are left out.
	Sockets map[string]int `json:"sockets"`
}

// APINamespace is one network namespace with --netns=all.
type APINamespace struct {
	Name        string     `json:"name"`
	Inode       uint64     `json:"inode"`
	Time        *time.Time `json:"time"`
	TookSeconds float64    `json:"took_seconds"`
	// States holds every documented state, without stays.
	States []APIState `json:"states"`
}

// APIExporter holds the exporter's own counters and gauges. Maps are keyed
// by the label values of the metric named beside each.
type APIExporter struct {
	Polls           uint64            `json:"polls"`                 // tcpstate_polls_total
	Overruns        uint64            `json:"overruns"`              // tcpstate_poll_overruns_total
	Errors          map[string]uint64 `json:"errors"`                // tcpstate_poll_errors_total, by reason
	Events          uint64            `json:"events"`                // tcpstate_events_total
	EventsLost      map[string]uint64 `json:"events_lost"`           // tcpstate_events_lost_total, by reason
	Corrections     map[string]uint64 `json:"corrections"`           // tcpstate_reconcile_corrections_total, by kind
	Inconsistencies map[string]uint64 `json:"dump_inconsistencies"`  // tcpstate_dump_inconsistencies_total, by kind
	Tracked         int               `json:"tracked_sockets"`       // tcpstate_tracked_sockets
	Untracked       int               `json:"untracked_sockets"`     // tcpstate_untracked_sockets
	Unknown         int               `json:"unknown_state_sockets"` // tcpstate_unknown_state_sockets
	Missing         int               `json:"missing_sockets"`       // tcpstate_missing_sockets
}

// APIConfig configures an API.
type APIConfig struct {
	Mode         string        // "poll" or "precise"
	PollInterval time.Duration // between dumps
	// MaxViewers bounds the concurrent /api/v1/events streams; more get
	// 503. 0 means 16.
	MaxViewers int
	// Check is how often the event streams look for a new snapshot; 0
	// means 100ms.
	Check time.Duration
	// Heartbeat is how often an idle event stream sends a comment, so
	// that proxies keep it open; 0 means 15s.
	Heartbeat time.Duration
}

// rateWindow is what transition rates are taken over.
const rateWindow = time.Minute

// rateSample is the transition totals as of one snapshot.
type rateSample struct {
	at    time.Time
	total [collector.NumStates][collector.NumStates]uint64
}

// API serves the JSON API and the live event stream from the snapshots of
// a SnapshotSource. It keeps what the poll loop does not: a minute of
// transition totals, to give rates, and the encoded latest view. Reading
// the source's atomic pointer is all it asks of the poll loop.
type API struct {
	src  SnapshotSource
	attr AttributionSource
	cfg  APIConfig

	viewers chan struct{} // a slot per concurrent event stream

	mu      sync.Mutex
	samples [80]rateSample // a second or more apart, a ring: over a minute
	head, n int
	seen    *collector.Snapshot
	seenA   *collector.Attribution
	view    *APISnapshot
	encoded []byte
	changed chan struct{} // closed, and replaced, when a new snapshot is seen
	done    chan struct{} // closed when Run returns
}

// NewAPI returns an API of src's snapshots and a's attributions (a may be
// nil).
func NewAPI(src SnapshotSource, a AttributionSource, cfg APIConfig) *API {
	if cfg.MaxViewers <= 0 {
		cfg.MaxViewers = 16
	}
	if cfg.Check <= 0 {
		cfg.Check = 100 * time.Millisecond
	}
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = 15 * time.Second
	}
	return &API{src: src, attr: a, cfg: cfg,
		viewers: make(chan struct{}, cfg.MaxViewers),
		changed: make(chan struct{}),
		done:    make(chan struct{}),
	}
}

// Run looks for new snapshots every Check until ctx is done, keeping the
// transition totals that rates come from and waking the event streams; it
// then ends the streams. Without Run, /api/v1/snapshot still answers, and
// event streams only send their first snapshot.
func (a *API) Run(ctx context.Context) {
	defer close(a.done)
	t := time.NewTicker(a.cfg.Check)
	defer t.Stop()
	for {
		a.Latest()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Latest returns the view of the latest snapshot and its JSON encoding,
// building them when the snapshot (or the attribution) is new.
func (a *API) Latest() (*APISnapshot, []byte) {
	s := a.src.Snapshot()
	var attr *collector.Attribution
	if a.attr != nil {
		attr = a.attr.Snapshot()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if s == a.seen && attr == a.seenA && a.view != nil {
		return a.view, a.encoded
	}
	if s != a.seen {
		a.sample(s)
	}
	a.seen, a.seenA = s, attr
	a.view = a.build(s, attr)
	b, err := json.Marshal(a.view)
	if err != nil {
		// The view holds no value encoding/json refuses (no NaN: rates
		// are taken over positive spans).
		b = []byte(`{"error":` + strconv.Quote(err.Error()) + `}`)
	}
	a.encoded = b
	close(a.changed)
	a.changed = make(chan struct{})
	return a.view, a.encoded
}

// sample keeps s's transition totals: samples a second or more apart,
// and the latest, which replaces the one before it while that one is
// less than a second after its own predecessor.
func (a *API) sample(s *collector.Snapshot) {
	if s.Time.IsZero() {
		return
	}
	if a.n > 0 {
		last := &a.samples[(a.head+a.n-1)%len(a.samples)]
		switch {
		case !s.Time.After(last.at):
			return // no newer than what we have
		case a.n > 1 && last.at.Sub(a.samples[(a.head+a.n-2)%len(a.samples)].at) < time.Second:
			last.at, last.total = s.Time, s.Transitions
			return
		}
	}
	if a.n == len(a.samples) {
		a.head = (a.head + 1) % len(a.samples)
		a.n--
	}
	a.samples[(a.head+a.n)%len(a.samples)] = rateSample{at: s.Time, total: s.Transitions}
	a.n++
}

// base returns the sample rates are taken from: the newest a minute or
// more before the latest, else the oldest; nil with fewer than two.
func (a *API) base() (base, latest *rateSample) {
	if a.n < 2 {
		return nil, nil
	}
	latest = &a.samples[(a.head+a.n-1)%len(a.samples)]
	base = &a.samples[a.head]
	for i := 1; i < a.n-1; i++ {
		c := &a.samples[(a.head+i)%len(a.samples)]
		if latest.at.Sub(c.at) < rateWindow {
			break
		}
		base = c
	}
	return base, latest
}

func (a *API) build(s *collector.Snapshot, attr *collector.Attribution) *APISnapshot {
	v := &APISnapshot{
		Time:                optionalTime(s.Time),
		Mode:                a.cfg.Mode,
		PollIntervalSeconds: a.cfg.PollInterval.Seconds(),
		States:              apiStates(s.PollResult, &s.Stays),
		Transitions:         []APITransition{},
		Ports:               APIPorts{Rows: []APIPort{}, Folded: s.Ports.Folded},
		Remotes:             APIRemotes{Rows: []APIRemote{}, Folded: s.Remotes.Folded},
		Exporter: APIExporter{
			Polls:           s.Polls,
			Overruns:        s.Overruns,
			Errors:          byLabel(s.Errors[:], collector.Reason.String),
			Events:          s.Events,
			EventsLost:      byLabel(s.EventsLost[:], collector.Loss.String),
			Corrections:     byLabel(s.Corrections[:], collector.Correction.String),
			Inconsistencies: byLabel(s.Inconsistencies[:], collector.Inconsistency.String),
			Tracked:         s.Tracked,
			Untracked:       s.Untracked,
			Unknown:         s.Unknown,
			Missing:         s.Missing,
		},
	}
	base, latest := a.base()
	for from := range s.Transitions {
		for to, n := range s.Transitions[from] {
			if n == 0 {
				continue
			}
			t := APITransition{From: collector.State(from).String(), To: collector.State(to).String(), Total: n}
			if base != nil {
				if l, b := latest.total[from][to], base.total[from][to]; l > b {
					t.PerSecond = float64(l-b) / latest.at.Sub(base.at).Seconds()
				}
			}
			v.Transitions = append(v.Transitions, t)
		}
	}
	for _, r := range s.Ports.Rows {
		v.Ports.Rows = append(v.Ports.Rows, APIPort{
			Port:        portLabel(r),
			Netns:       r.Netns,
			Sockets:     stateMap(r.Sockets),
			QueueLength: r.Queue,
			QueueLimit:  r.Limit,
		})
	}
	for _, r := range s.Remotes.Rows {
		row := APIRemote{Remote: remoteLabel(r), Netns: r.Netns, Sockets: stateMap(r.Sockets), PortsHeld: r.Ports, PortRange: r.Range}
		if u, ok := r.Usage(); ok {
			row.UsageRatio = &u
		}
		v.Remotes.Rows = append(v.Remotes.Rows, row)
	}
	if a.attr != nil && attr != nil {
		p := &APIProcesses{Time: optionalTime(attr.Time), TookSeconds: attr.Took.Seconds(), Rows: []APIProcess{}, Folded: attr.Folded, Denied: attr.Denied}
		for _, r := range attr.Rows {
			p.Rows = append(p.Rows, APIProcess{Process: processLabel(r), Sockets: stateMap(r.Sockets)})
		}
		v.Processes = p
	}
	for _, ns := range s.Namespaces {
		v.Namespaces = append(v.Namespaces, APINamespace{
			Name:        ns.Name,
			Inode:       ns.Inode,
			Time:        optionalTime(ns.Time),
			TookSeconds: ns.Took.Seconds(),
			States:      apiStates(ns.PollResult, nil),
		})
	}
	return v
}

// apiStates lists r's states; with the stays when stays is not nil.
func apiStates(r collector.PollResult, stays *collector.Stays) []APIState {
	out := make([]APIState, 0, collector.NumStates)
	for _, st := range collector.States() {
		s := APIState{
			State:         st.String(),
			Sockets:       APIFamilies{IPv4: r.Sockets[collector.IPv4][st], IPv6: r.Sockets[collector.IPv6][st]},
			OldestSeconds: r.Oldest[st].Seconds(),
		}
		if stays != nil {
			s.Stays = &APIStays{Count: stays.Count[st]}
			if d, ok := stays.Quantile(st, 0.5); ok {
				s.Stays.MedianSeconds = seconds(d)
			}
			if d, ok := stays.Quantile(st, 0.99); ok {
				s.Stays.P99Seconds = seconds(d)
			}
		}
		out = append(out, s)
	}
	return out
}

func seconds(d time.Duration) *float64 {
	s := d.Seconds()
	return &s
}

func optionalTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// byLabel maps each counter to its label value.
func byLabel[T ~uint8](counts []uint64, name func(T) string) map[string]uint64 {
	m := make(map[string]uint64, len(counts))
	for i, n := range counts {
		m[name(T(i))] = n
	}
	return m
}

// stateMap maps the states with sockets to their number.
func stateMap(counts [collector.NumStates]int) map[string]int {
	m := map[string]int{}
	for st, n := range counts {
		if n > 0 {
			m[collector.State(st).String()] = n
		}
	}
	return m
}

// portLabel is the port label value of a row of the port breakdown, in
// the metrics and the API alike.
func portLabel(r collector.PortCount) string {
	switch r.Kind {
	case collector.PortListening:
		return strconv.Itoa(int(r.Port))
	case collector.PortOther:
		return "other"
	}
	return "none"
}

// remoteLabel is the remote label value of a row of the remote
// breakdown, in the metrics and the API alike.
func remoteLabel(r collector.RemoteCount) string {
	if r.Other {
		return "other"
	}
	return r.Remote.String()
}

// processLabel is the process label value of a row of the process
// breakdown.
func processLabel(r collector.ProcessCount) string {
	switch r.Kind {
	case collector.ProcessOther:
		return "other"
	case collector.ProcessNone:
		return "none"
	case collector.ProcessUnknown:
		return "unknown"
	}
	return r.Process
}

// readOnly answers a request other than GET or HEAD with 405, and
// reports whether it was one.
func readOnly(w http.ResponseWriter, r *http.Request) bool {
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	return false
}

// ServeSnapshot serves /api/v1/snapshot: the latest snapshot as JSON.
func (a *API) ServeSnapshot(w http.ResponseWriter, r *http.Request) {
	if !readOnly(w, r) {
		return
	}
	_, b := a.Latest()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Write(append(b, '\n'))
}

// ServeEvents serves /api/v1/events: server-sent events, a "snapshot"
// event with the latest snapshot's JSON at once and another each time a
// new snapshot is published, and a comment every Heartbeat in between.
// At most MaxViewers streams run at once; more are answered 503.
func (a *API) ServeEvents(w http.ResponseWriter, r *http.Request) {
	select {
	case a.viewers <- struct{}{}:
		defer func() { <-a.viewers }()
	default:
		w.Header().Set("Retry-After", "10")
		http.Error(w, "too many viewers of the live events; try again later", http.StatusServiceUnavailable)
		return
	}
	rc := http.NewResponseController(w)
	// The server's read and write timeouts are for requests, not for a
	// stream: lift the first, and push the second on before each write.
	_ = rc.SetReadDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)

	heartbeat := time.NewTicker(a.cfg.Heartbeat)
	defer heartbeat.Stop()
	var sent []byte
	for {
		a.mu.Lock()
		changed := a.changed
		a.mu.Unlock()
		_, b := a.Latest()
		_ = rc.SetWriteDeadline(time.Now().Add(a.cfg.Heartbeat + 10*time.Second))
		var err error
		if sent == nil || &b[0] != &sent[0] {
			sent = b
			err = writeEvent(w, b)
		}
		if err == nil {
			err = rc.Flush()
		}
		if err != nil {
			return // the viewer went away
		}
		select {
		case <-r.Context().Done():
			return
		case <-a.done:
			return
		case <-changed:
		case <-heartbeat.C:
			_ = rc.SetWriteDeadline(time.Now().Add(a.cfg.Heartbeat + 10*time.Second))
			if _, err := w.Write([]byte(": heartbeat\n\n")); err != nil {
				return
			}
		}
	}
}

func writeEvent(w http.ResponseWriter, data []byte) error {
	if _, err := w.Write([]byte("event: snapshot\ndata: ")); err != nil {
		return err
	}
	if _, err := w.Write(data); err != nil {
		return err
	}
	_, err := w.Write([]byte("\n\n"))
	return err
}
