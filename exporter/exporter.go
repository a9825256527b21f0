package exporter

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

const namespace = "tcpstate"

// DurationBuckets are the classic buckets of tcpstate_state_duration_seconds,
// 1 ms to 1 h. Native-histogram buckets are exposed beside them.
var DurationBuckets = []float64{
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
			Help:      "Completed stays of sockets in a TCP state, from entry to exit, each estimated to within one poll interval. Stays that began before the exporter started are not included.",
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

// Exporter is a prometheus.Collector publishing the latest snapshot. A
// scrape never waits for a poll.
type Exporter struct {
	src  SnapshotSource
	hist *Histograms

	sockets     *prometheus.Desc
	oldest      *prometheus.Desc
	transitions *prometheus.Desc
	polls       *prometheus.Desc
	errors      *prometheus.Desc
	overruns    *prometheus.Desc
	tracked     *prometheus.Desc
	untracked   *prometheus.Desc
	lastPoll    *prometheus.Desc
}

// New returns an Exporter of src's snapshots and h's histograms.
func New(src SnapshotSource, h *Histograms) *Exporter {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, nil)
	}
	return &Exporter{
		src:         src,
		hist:        h,
		sockets:     d("sockets", "TCP sockets in each documented state at the latest complete poll.", "family", "state"),
		oldest:      d("oldest_in_state_seconds", "How long the longest-standing socket now in the state has been in it, as of the latest complete poll; 0 when no socket is in it. For sockets present when the exporter started it is a lower bound.", "state"),
		transitions: d("transitions_total", "State transitions observed between polls. Appearance counts as from CLOSED, disappearance as to CLOSED. Only pairs seen at least once are exported.", "from", "to"),
		polls:       d("polls_total", "Polls attempted."),
		errors:      d("poll_errors_total", "Poll errors by reason; unknown_state counts sockets in a kernel state with no documented name.", "reason"),
		overruns:    d("poll_overruns_total", "Polls that took longer than the poll interval; the ticks they overran were skipped, not queued."),
		tracked:     d("tracked_sockets", "Sockets whose time in state is tracked."),
		untracked:   d("untracked_sockets", "Sockets counted but not tracked because --max-tracked-sockets was reached."),
		lastPoll:    d("last_poll_timestamp_seconds", "Unix time of the latest complete poll; 0 before the first."),
	}
}

// Describe implements prometheus.Collector.
func (e *Exporter) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{e.sockets, e.oldest, e.transitions, e.polls, e.errors, e.overruns, e.tracked, e.untracked, e.lastPoll} {
		ch <- d
	}
	e.hist.stays.Describe(ch)
	e.hist.polls.Describe(ch)
}

// Collect implements prometheus.Collector.
func (e *Exporter) Collect(ch chan<- prometheus.Metric) {
	s := e.src.Snapshot()
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	for f := collector.Family(0); f < collector.NumFamilies; f++ {
		for _, st := range collector.States() {
			gauge(e.sockets, float64(s.Sockets[f][st]), f.String(), st.String())
		}
	}
	for _, st := range collector.States() {
		gauge(e.oldest, s.Oldest[st].Seconds(), st.String())
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
	var last float64
	if !s.Time.IsZero() {
		last = float64(s.Time.UnixNano()) / 1e9
	}
	gauge(e.lastPoll, last)
	e.hist.stays.Collect(ch)
	e.hist.polls.Collect(ch)
}
