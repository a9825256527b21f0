package exporter

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

const namespace = "tcpstate"

// DurationBuckets are the classic buckets of tcpstate_state_duration_seconds,
// 10 µs to 1 h: precise mode measures stays to the microsecond, and a
// connect on a local network completes in tens of µs. Native-histogram
// buckets are exposed beside them.
var DurationBuckets = []float64{
	.00001, .000025, .00005, .0001, .00025, .0005,
	.001, .0025, .005, .01, .025, .05, .1, .25, .5,
	1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
}

// PollBuckets are the classic buckets of tcpstate_poll_duration_seconds.
var PollBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

func nativeOpts(o prometheus.HistogramOpts) prometheus.HistogramOpts {
	o.NativeHistogramBucketFactor = 1.1
	o.NativeHistogramMaxBucketNumber = 160
	o.NativeHistogramMinResetDuration = time.Hour
	return o
}

// Histograms holds the histograms the poll loop feeds as it goes: completed
// stays in a state and poll durations. Its Observe methods are what
// collector.Config's hooks take.
type Histograms struct {
	stays    *prometheus.HistogramVec
	perState [collector.NumStates]prometheus.Observer
	polls    prometheus.Histogram
}

// NewHistograms creates the histograms, with every state's series present.
func NewHistograms() *Histograms {
	h := &Histograms{
		stays: prometheus.NewHistogramVec(nativeOpts(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "state_duration_seconds",
			Help:      "Completed stays of sockets in a TCP state, from entry to exit: exact in precise mode, estimated to within one poll interval in poll mode. Stays that began before the exporter started are not included.",
			Buckets:   DurationBuckets,
		}), []string{"state"}),
		polls: prometheus.NewHistogram(nativeOpts(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "poll_duration_seconds",
			Help:      "Time taken by a poll: the sock_diag dump plus the tracker update.",
			Buckets:   PollBuckets,
		})),
	}
	for _, s := range collector.States() {
		h.perState[s] = h.stays.WithLabelValues(s.String())
	}
	return h
}

// ObserveStay records a completed stay in state s.
func (h *Histograms) ObserveStay(s collector.State, d time.Duration) {
	if s < collector.NumStates {
		h.perState[s].Observe(d.Seconds())
	}
}

// ObservePoll records how long a poll took.
func (h *Histograms) ObservePoll(d time.Duration) { h.polls.Observe(d.Seconds()) }

// SnapshotSource is where scrapes read the latest poll from; the
// collector's Poller is one.
type SnapshotSource interface {
	Snapshot() *collector.Snapshot
}

// AttributionSource is where scrapes read the latest process attribution
// from; the collector's Attributor is one.
type AttributionSource interface {
	Snapshot() *collector.Attribution
}

// Option adds to what an Exporter publishes.
type Option func(*Exporter)

// WithNamespaces labels the per-state and per-port metrics with the
// namespace they were seen in (`netns`), and publishes each namespace's
// poll cost; for a Poller that observes every namespace.
func WithNamespaces() Option { return func(e *Exporter) { e.perNetns = true } }

// WithMode publishes the mode the exporter runs in ("poll" or "precise")
// as tcpstate_mode{mode}, and what precise mode counts of its events.
func WithMode(mode string) Option { return func(e *Exporter) { e.mode = mode } }

// WithAttribution publishes the process breakdown of a.
func WithAttribution(a AttributionSource) Option { return func(e *Exporter) { e.attr = a } }

// Exporter is a prometheus.Collector publishing the latest snapshot. A
// scrape never waits for a poll.
type Exporter struct {
	src      SnapshotSource
	hist     *Histograms
	attr     AttributionSource
	perNetns bool
	mode     string

	sockets     *prometheus.Desc
	oldest      *prometheus.Desc
	transitions *prometheus.Desc
	polls       *prometheus.Desc
	errors      *prometheus.Desc
	overruns    *prometheus.Desc
	tracked     *prometheus.Desc
	untracked   *prometheus.Desc
	lastPoll    *prometheus.Desc
	unknown     *prometheus.Desc
	missing     *prometheus.Desc
	inconsist   *prometheus.Desc
	modeDesc    *prometheus.Desc
	events      *prometheus.Desc
	corrections *prometheus.Desc
	eventsLost  *prometheus.Desc

	namespaces    *prometheus.Desc
	netnsPoll     *prometheus.Desc
	portSockets   *prometheus.Desc
	queueLength   *prometheus.Desc
	queueLimit    *prometheus.Desc
	truncated     *prometheus.Desc
	remoteSockets *prometheus.Desc
	remoteUsage   *prometheus.Desc
	procSockets   *prometheus.Desc
	attrDuration  *prometheus.Desc
	attrTimestamp *prometheus.Desc
	attrDenied    *prometheus.Desc
}

// New returns an Exporter of src's snapshots and h's histograms.
func New(src SnapshotSource, h *Histograms, opts ...Option) *Exporter {
	e := &Exporter{src: src, hist: h}
	for _, o := range opts {
		o(e)
	}
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	// nd is d for metrics that gain a netns label per namespace.
	nd := func(name, help string, labels ...string) *prometheus.Desc {
		if e.perNetns {
			labels = append(labels, "netns")
		}
		return d(name, help, labels...)
	}
	e.sockets = nd("sockets", "TCP sockets in each documented state at the latest complete poll, counting sockets that dump left out until a second dump confirms them closed (see tcpstate_missing_sockets).", "family", "state")
	e.oldest = nd("oldest_in_state_seconds", "How long the longest-standing socket now in the state has been in it, as of the latest complete poll; 0 when no socket is in it. For sockets present when the exporter started it is a lower bound.", "state")
	e.transitions = d("transitions_total", "State transitions observed between polls. Appearance counts as from CLOSED, disappearance as to CLOSED. Only pairs seen at least once are exported.", "from", "to")
	e.polls = d("polls_total", "Polls attempted.")
	e.errors = d("poll_errors_total", "Polls that failed, by reason.", "reason")
	e.overruns = d("poll_overruns_total", "Polls that took longer than the poll interval; the ticks they overran were skipped, not queued.")
	e.tracked = d("tracked_sockets", "Sockets whose time in state is tracked.")
	e.untracked = d("untracked_sockets", "Sockets counted but not tracked because --max-tracked-sockets was reached.")
	e.lastPoll = d("last_poll_timestamp_seconds", "Unix time of the latest complete poll; 0 before the first.")
	e.unknown = d("unknown_state_sockets", "Sockets the latest complete poll found in a kernel state with no documented name (a newer kernel's); counted in no state.")
	e.missing = d("missing_sockets", "Sockets the latest complete dump left out that are not yet confirmed closed: a sock_diag dump skips sockets when the kernel's tables change during it, so a socket is taken for closed only when a second consecutive dump leaves it out too (or its TIME_WAIT timer has run out). They are counted in tcpstate_sockets in their last state.")
	e.inconsist = d("dump_inconsistencies_total", "Inconsistencies in the kernel's dumps that were corrected, by kind: duplicate (a socket reported twice in one dump, counted once), skipped (a socket a complete dump left out that was still open: not taken for closed), interrupted (dumps the kernel flagged NLM_F_DUMP_INTR).", "kind")
	e.modeDesc = d("mode", "The mode the exporter runs in: poll (dumps every --poll.interval) or precise (kernel events, reconciled by dumps); 1 for the one in use.", "mode")
	e.events = d("events_total", "Kernel TCP state changes applied in precise mode.")
	e.corrections = d("reconcile_corrections_total", "In precise mode, what a reconciling dump found that the kernel's events had not said, by kind: state (another state than the last event left), handover (a remnant still in FIN_WAIT2 that the hand-over rule had put in TIME_WAIT), unannounced (a socket no event announced), vanished (a socket gone without its close event).", "kind")
	e.eventsLost = d("events_lost_total", "In precise mode, kernel state changes the event source lost, by reason: ring_full (no room in the ring buffer), recursion (the kernel skipped the program, already running on that CPU), malformed (a record that did not decode). Each loss is repaired by a dump at once.", "reason")
	e.namespaces = d("namespaces", "Network namespaces observed at the latest poll.")
	e.netnsPoll = d("namespace_poll_duration_seconds", "Time the latest dump and tracking of each network namespace took.", "netns")
	e.portSockets = nd("port_sockets", "Sockets by state and local port, for ports with a LISTEN socket (the server side of a service): the busiest --port.top ports by number, the rest as port=\"other\", sockets whose local port has no listener as port=\"none\". Only non-zero series are exported.", "state", "port")
	e.queueLength = nd("listen_queue_length", "Connections waiting in the accept queue of the port's LISTEN sockets (summed over them), a count of sockets.", "port")
	e.queueLimit = nd("listen_queue_limit", "Accept queue limit (backlog) of the port's LISTEN sockets, summed over them.", "port")
	e.remoteSockets = nd("remote_sockets", "Client-side sockets (local port with no listener, as port=\"none\" of tcpstate_port_sockets) by state and remote endpoint (IP:PORT, [IPv6]:PORT): the busiest --remote.top endpoints by number, the rest as remote=\"other\". Only non-zero series are exported.", "state", "remote")
	e.remoteUsage = nd("remote_port_usage_ratio", "Share of the local port range used up toward the remote endpoint: the most local ports that sockets toward it hold from any one local address, less TIME_WAIT sockets a connect() may reuse under net.ipv4.tcp_tw_reuse, divided by the ports of net.ipv4.ip_local_port_range not in ip_local_reserved_ports. 1 means the next connect() to it fails with EADDRNOTAVAIL. Not exported when the namespace's sysctls cannot be read.", "remote")
	e.truncated = d("breakdown_truncated_values", "Distinct values summed into \"other\" because a breakdown reached its limit; 0 means the breakdown is complete.", "breakdown")
	e.procSockets = d("process_sockets", "Sockets in the attribution states by owning process name (comm): the top --attribution.top names, the rest as process=\"other\", sockets with no owner as \"none\", owners not found (exited, or not readable without CAP_SYS_PTRACE) as \"unknown\". Only non-zero series are exported.", "state", "process")
	e.attrDuration = d("attribution_duration_seconds", "Time the latest attribution of sockets to processes took (a recheck of the owners already known, and a walk of /proc/PID/fd when sockets were new).")
	e.attrTimestamp = d("attribution_last_timestamp_seconds", "Unix time of the latest attribution of sockets to processes; 0 before the first.")
	e.attrDenied = d("attribution_denied_processes", "Processes whose open files the latest attribution could not read (needs CAP_SYS_PTRACE or the same user).")
	return e
}

func (e *Exporter) descs() []*prometheus.Desc {
	ds := []*prometheus.Desc{e.sockets, e.oldest, e.transitions, e.polls, e.errors, e.overruns, e.tracked,
		e.untracked, e.lastPoll, e.unknown, e.missing, e.inconsist, e.portSockets, e.queueLength, e.queueLimit, e.truncated,
		e.remoteSockets, e.remoteUsage}
	if e.perNetns {
		ds = append(ds, e.namespaces, e.netnsPoll)
	}
	if e.mode != "" {
		ds = append(ds, e.modeDesc)
	}
	if e.mode == "precise" {
		ds = append(ds, e.events, e.corrections, e.eventsLost)
	}
	if e.attr != nil {
		ds = append(ds, e.procSockets, e.attrDuration, e.attrTimestamp, e.attrDenied)
	}
	return ds
}

// Describe implements prometheus.Collector.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range e.descs() {
		ch <- d
	}
	e.hist.stays.Describe(ch)
	e.hist.polls.Describe(ch)
}

// Collect implements prometheus.Collector. It never panics on what it
// publishes: label values are made valid UTF-8 (see LabelValue), and a
// metric that still cannot be built is reported as that metric's error
// while the rest are published.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	s := e.src.Snapshot()
	metric := func(d *prometheus.Desc, t prometheus.ValueType, v float64, labels []string) {
		for i, l := range labels {
			labels[i] = LabelValue(l)
		}
		m, err := prometheus.NewConstMetric(d, t, v, labels...)
		if err != nil {
			m = prometheus.NewInvalidMetric(d, err)
		}
		ch <- m
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		metric(d, prometheus.GaugeValue, v, labels)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		metric(d, prometheus.CounterValue, float64(v), labels)
	}
	if e.perNetns {
		gauge(e.namespaces, float64(len(s.Namespaces)))
		for _, ns := range s.Namespaces {
			e.collectStates(gauge, ns.PollResult, ns.Name)
			gauge(e.netnsPoll, ns.Took.Seconds(), ns.Name)
		}
	} else {
		e.collectStates(gauge, s.PollResult)
	}
	for from := range s.Transitions {
		for to, n := range s.Transitions[from] {
			if n > 0 {
				counter(e.transitions, n, collector.State(from).String(), collector.State(to).String())
			}
		}
	}
	counter(e.polls, s.Polls)
	for r := collector.Reason(0); r < collector.NumReasons; r++ {
		counter(e.errors, s.Errors[r], r.String())
	}
	counter(e.overruns, s.Overruns)
	gauge(e.tracked, float64(s.Tracked))
	gauge(e.untracked, float64(s.Untracked))
	gauge(e.lastPoll, unixSeconds(s.Time))
	if e.mode != "" {
		gauge(e.modeDesc, 1, e.mode)
	}
	if e.mode == "precise" {
		counter(e.events, s.Events)
		for k := collector.Correction(0); k < collector.NumCorrections; k++ {
			counter(e.corrections, s.Corrections[k], k.String())
		}
		for l := collector.Loss(0); l < collector.NumLosses; l++ {
			counter(e.eventsLost, s.EventsLost[l], l.String())
		}
	}
	gauge(e.unknown, float64(s.Unknown))
	gauge(e.missing, float64(s.Missing))
	for k := collector.Inconsistency(0); k < collector.NumInconsistencies; k++ {
		counter(e.inconsist, s.Inconsistencies[k], k.String())
	}
	e.collectPorts(gauge, s.Ports)
	e.collectRemotes(gauge, s.Remotes)
	if e.attr != nil {
		e.collectProcesses(gauge, e.attr.Snapshot())
	}
	e.hist.stays.Collect(ch)
	e.hist.polls.Collect(ch)
}

type gaugeFunc func(d *prometheus.Desc, v float64, labels ...string)

// collectStates publishes one poll result's per-state gauges; netns is
// the namespace label value, when the metrics carry one.
func (e *Exporter) collectStates(gauge gaugeFunc, r collector.PollResult, netns ...string) {
	for f := collector.Family(0); f < collector.NumFamilies; f++ {
		for _, st := range collector.States() {
			gauge(e.sockets, float64(r.Sockets[f][st]), append([]string{f.String(), st.String()}, netns...)...)
		}
	}
	for _, st := range collector.States() {
		gauge(e.oldest, r.Oldest[st].Seconds(), append([]string{st.String()}, netns...)...)
	}
}

func (e *Exporter) collectPorts(gauge gaugeFunc, b collector.PortBreakdown) {
	gauge(e.truncated, float64(b.Folded), "port")
	for _, r := range b.Rows {
		labels := []string{portLabel(r)}
		if e.perNetns {
			labels = append(labels, r.Netns)
		}
		for _, st := range collector.States() {
			if n := r.Sockets[st]; n > 0 {
				gauge(e.portSockets, float64(n), append([]string{st.String()}, labels...)...)
			}
		}
		if r.Kind != collector.PortNone {
			gauge(e.queueLength, float64(r.Queue), labels...)
			gauge(e.queueLimit, float64(r.Limit), labels...)
		}
	}
}

func (e *Exporter) collectRemotes(gauge gaugeFunc, b collector.RemoteBreakdown) {
	gauge(e.truncated, float64(b.Folded), "remote")
	for _, r := range b.Rows {
		labels := []string{remoteLabel(r)}
		if e.perNetns {
			labels = append(labels, r.Netns)
		}
		for _, st := range collector.States() {
			if n := r.Sockets[st]; n > 0 {
				gauge(e.remoteSockets, float64(n), append([]string{st.String()}, labels...)...)
			}
		}
		if u, ok := r.Usage(); ok {
			gauge(e.remoteUsage, u, labels...)
		}
	}
}

func (e *Exporter) collectProcesses(gauge gaugeFunc, a *collector.Attribution) {
	gauge(e.truncated, float64(a.Folded), "process")
	gauge(e.attrDuration, a.Took.Seconds())
	gauge(e.attrTimestamp, unixSeconds(a.Time))
	gauge(e.attrDenied, float64(a.Denied))
	for _, r := range a.Rows {
		name := processLabel(r)
		for _, st := range collector.States() {
			if n := r.Sockets[st]; n > 0 {
				gauge(e.procSockets, float64(n), st.String(), name)
			}
		}
	}
}

// LabelValue returns v as a valid label value: v itself when it is valid
// UTF-8, otherwise v with each byte that is not part of valid UTF-8
// written as \xNN, so that distinct names stay distinct. Namespace names
// under /run/netns and process names are bytes, not always UTF-8.
func LabelValue(v string) string {
	if utf8.ValidString(v) {
		return v
	}
	var b strings.Builder
	for len(v) > 0 {
		r, n := utf8.DecodeRuneInString(v)
		if r == utf8.RuneError && n == 1 {
			fmt.Fprintf(&b, "\\x%02x", v[0])
		} else {
			b.WriteString(v[:n])
		}
		v = v[n:]
	}
	return b.String()
}

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
