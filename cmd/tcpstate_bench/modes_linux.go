//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/cilium/ebpf"

	"github.com/tcpstate/tcpstate_exporter/bpfsource"
)

// transitionsPerConn is how many state changes one churned connection
// makes: the client's CLOSED->SYN_SENT->ESTABLISHED->FIN_WAIT_1->
// FIN_WAIT_2->TIME_WAIT and the server's CLOSED->SYN_RECV->ESTABLISHED->
// CLOSE_WAIT->LAST_ACK->CLOSED.
const transitionsPerConn = 10

// throughputWorkers share the throughput check's connections: one thread
// cannot open 10,000 a second.
const throughputWorkers = 4

// maxThroughputRing is the largest ring the throughput check tries when a
// smaller one loses events.
const maxThroughputRing = 64 << 20

// modeRun is tcpstate_exporter measured in one mode over one window.
type modeRun struct {
	window  time.Duration // wall time between the two readings
	cpu     time.Duration // the process's user and system time
	bpf     bpfRun        // its BPF program's, in precise mode
	events  float64       // tcpstate_events_total over the window
	lost    float64       // tcpstate_events_lost_total since it started
	lostBy  string        // the same by reason
	polls   float64       // dumps over the window
	mem     memUse
	tracked int
}

// share is the CPU the mode cost, its BPF program's included, as a share
// of one core.
func (r modeRun) share() float64 { return float64(r.cpu+r.bpf.time) / float64(max(1, r.window)) }

// throughputRun is one throughput check.
type throughputRun struct {
	ringBytes int
	conns     float64 // connections made a second
	rate      float64 // events applied a second, between publishes during the drive
	lost      float64
	cpu       float64 // the exporter's share of a core during the drive
	bpf       bpfRun  // its program's runs during the drive
}

func (cfg config) preciseArgs(ringBytes int) []string {
	args := cfg.exporterArgsIn("precise", cfg.interval)
	if ringBytes > 0 {
		args = append(args, "--precise.ring-bytes="+strconv.Itoa(ringBytes))
	}
	return args
}

// startMode starts tcpstate_exporter in ns, in precise mode or polling
// every cfg.interval, and waits for the scrape of a steady state.
func startMode(ctx context.Context, ns *namespace, cfg config, precise bool, ringBytes int) (*server, metrics, error) {
	args := cfg.exporterArgs(cfg.interval)
	if precise {
		args = cfg.preciseArgs(ringBytes)
	}
	s, err := startServer(ctx, ns, "tcpstate_exporter", exporterURL, args...)
	if err != nil {
		return nil, nil, err
	}
	// The first poll ran before it served. Polling, the second is the
	// first of the steady state; precise, the next dump is a dump interval
	// away, and the first publish of events a second after the start.
	var m metrics
	if !precise {
		m, err = waitPolls(ctx, s, 2)
	} else if err = sleep(ctx, 1500*time.Millisecond); err == nil {
		m, err = scrapeMetrics(ctx, s)
	}
	if err != nil {
		s.stop()
		return nil, nil, err
	}
	return s, m, nil
}

func scrapeMetrics(ctx context.Context, s *server) (metrics, error) {
	_, body, err := s.scrape(ctx)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", s.name, err)
	}
	return parseMetrics(body)
}

// measureMode runs tcpstate_exporter in one mode for cfg.modeWindow and
// measures its CPU time, its BPF program's run time, the events it applied
// and lost, and its memory.
func measureMode(ctx context.Context, ns *namespace, cfg config, precise bool) (modeRun, error) {
	s, m0, err := startMode(ctx, ns, cfg, precise, 0)
	if err != nil {
		return modeRun{}, err
	}
	defer s.stop()
	if precise && cfg.preciseSettle > 0 {
		if err := sleep(ctx, cfg.preciseSettle); err != nil {
			return modeRun{}, err
		}
		if m0, err = scrapeMetrics(ctx, s); err != nil {
			return modeRun{}, err
		}
	}
	var ids []ebpf.ProgramID
	if precise {
		if ids, err = programIDs(s.pid()); err != nil {
			return modeRun{}, err
		}
	}
	// CPU is read after the first scrape and before the last, which the
	// measurement leaves out.
	u0, err := readUsage(s.pid(), ids)
	if err != nil {
		return modeRun{}, err
	}
	if err := sleep(ctx, cfg.modeWindow); err != nil {
		return modeRun{}, err
	}
	u1, err := readUsage(s.pid(), ids)
	if err != nil {
		return modeRun{}, err
	}
	var r modeRun
	r.window, r.cpu, r.bpf = u1.since(u0)
	m1, err := scrapeMetrics(ctx, s)
	if err != nil {
		return modeRun{}, err
	}
	r.events = m1.sum("tcpstate_events_total") - m0.sum("tcpstate_events_total")
	if precise && r.events > 0 && r.bpf.runs == 0 {
		return modeRun{}, errors.New("the kernel counted no run of the BPF program: BPF run time statistics are off")
	}
	r.lost = m1.sum("tcpstate_events_lost_total")
	r.lostBy = m1.byLabel("tcpstate_events_lost_total", "reason")
	r.polls = m1.sum("tcpstate_polls_total") - m0.sum("tcpstate_polls_total")
	r.tracked = int(m1.sum("tcpstate_tracked_sockets"))
	r.mem, err = memory(s.pid())
	return r, err
}

// measureModes measures tcpstate_exporter polling every cfg.interval and
// in precise mode, in turns, on the population plus a churn of cfg.churn
// connections a second; then, with the churn still on, checks how many
// events a second precise mode handles.
func measureModes(ctx context.Context, ns *namespace, cfg config, res *result) (err error) {
	if cfg.churn > 0 {
		ch, err := startChurn(ctx, ns, churnSpec{rate: cfg.churn, workers: 1, v6: cfg.v6})
		if err != nil {
			return fmt.Errorf("start the churn: %w", err)
		}
		defer func() {
			rate, cerr := ch.stop()
			res.churnRate = rate
			if cerr != nil && ctx.Err() == nil {
				err = errors.Join(err, fmt.Errorf("churn: %w", cerr))
			}
		}()
		// Its TIME_WAIT remnants pile up for a TIME_WAIT lifetime before
		// they level off: both modes should find the same population.
		cfg.logf("churning %d connections a second; %v for its TIME_WAIT remnants to level off", cfg.churn, cfg.churnWarmup)
		if err := sleep(ctx, cfg.churnWarmup); err != nil {
			return err
		}
	}
	for run := range cfg.modeRuns {
		order := []bool{false, true}
		if run%2 == 1 {
			order[0], order[1] = true, false
		}
		for _, precise := range order {
			r, err := measureMode(ctx, ns, cfg, precise)
			if err != nil {
				return fmt.Errorf("measure %s mode: %w", modeName(precise), err)
			}
			if precise {
				res.precise = append(res.precise, r)
			} else {
				res.pollMode = append(res.pollMode, r)
			}
			cfg.logf("run %d/%d, %s mode: CPU %v + BPF %v (%d runs) over %v = %.2f%% of a core; %d dumps, %.0f events (%.0f/s), %.0f lost %s; RSS %s, %d tracked",
				run+1, cfg.modeRuns, modeName(precise), ms3(r.cpu), ms3(r.bpf.time), r.bpf.runs, r.window.Round(time.Millisecond), 100*r.share(),
				int(r.polls), r.events, r.events/r.window.Seconds(), r.lost, r.lostBy, mb(r.mem.rss), r.tracked)
		}
	}
	if cfg.throughput == 0 {
		return nil
	}
	for ring := bpfsource.DefaultRingBytes; ; ring *= 4 {
		r, err := measureThroughput(ctx, ns, cfg, ring)
		if err != nil {
			return fmt.Errorf("throughput check: %w", err)
		}
		res.throughput = append(res.throughput, r)
		if r.lost == 0 || ring >= maxThroughputRing {
			return nil
		}
	}
}

func modeName(precise bool) string {
	if precise {
		return "precise"
	}
	return "poll"
}

// measureThroughput drives cfg.throughput transitions a second for
// cfg.throughputWindow at tcpstate_exporter in precise mode with a ring of
// ringBytes, and measures the events it applied and lost.
func measureThroughput(ctx context.Context, ns *namespace, cfg config, ringBytes int) (throughputRun, error) {
	s, m0, err := startMode(ctx, ns, cfg, true, ringBytes)
	if err != nil {
		return throughputRun{}, err
	}
	defer s.stop()
	ids, err := programIDs(s.pid())
	if err != nil {
		return throughputRun{}, err
	}
	u0, err := readUsage(s.pid(), ids)
	if err != nil {
		return throughputRun{}, err
	}
	ch, err := startChurn(ctx, ns, churnSpec{rate: cfg.throughput / transitionsPerConn, workers: throughputWorkers, v6: cfg.v6})
	if err != nil {
		return throughputRun{}, err
	}
	// The exporter publishes its count once a second: the rate is taken
	// between the first and the last publish seen during the drive.
	var first, last publishSeen
	seen := m0.sum("tcpstate_events_total")
	for end := time.Now().Add(cfg.throughputWindow); time.Now().Before(end); {
		if err = sleep(ctx, 50*time.Millisecond); err != nil {
			break
		}
		var m metrics
		if m, err = scrapeMetrics(ctx, s); err != nil {
			break
		}
		if v := m.sum("tcpstate_events_total"); v != seen {
			seen, last = v, publishSeen{time.Now(), v}
			if first.at.IsZero() {
				first = last
			}
		}
	}
	conns, cerr := ch.stop()
	if err = errors.Join(err, cerr); err != nil {
		return throughputRun{}, err
	}
	u1, err := readUsage(s.pid(), ids)
	if err != nil {
		return throughputRun{}, err
	}
	r := throughputRun{ringBytes: ringBytes, conns: conns}
	wall, cpu, bpf := u1.since(u0)
	r.cpu, r.bpf = float64(cpu)/float64(wall), bpf
	if d := last.at.Sub(first.at); d > 0 {
		r.rate = (last.events - first.events) / d.Seconds()
	}
	// Losses are counted at the publish after the ring is read.
	if err := sleep(ctx, 2*time.Second); err != nil {
		return throughputRun{}, err
	}
	m1, err := scrapeMetrics(ctx, s)
	if err != nil {
		return throughputRun{}, err
	}
	r.lost = m1.sum("tcpstate_events_lost_total")
	cfg.logf("throughput check, ring %s: %.0f connections a second for %v: %.0f events a second applied, %.0f lost %s; exporter %.1f%% of a core, BPF %v in %d runs",
		mb(int64(ringBytes)), r.conns, cfg.throughputWindow, r.rate, r.lost, m1.byLabel("tcpstate_events_lost_total", "reason"), 100*r.cpu, ms3(r.bpf.time), r.bpf.runs)
	if r.rate == 0 {
		return r, fmt.Errorf("fewer than two publishes seen in %v", cfg.throughputWindow)
	}
	return r, nil
}

// publishSeen is a new tcpstate_events_total and when a scrape saw it.
type publishSeen struct {
	at     time.Time
	events float64
}

// modeRows adds the rows of the two modes and the throughput check to the
// table.
func modeRows(row func(string, func(*result) string), cfg config) {
	row(fmt.Sprintf("churn while the modes are measured (asked: %s connections a second, after %v)", thousands(cfg.churn), cfg.churnWarmup), func(r *result) string {
		return fmt.Sprintf("%s connections a second", thousands(int(math.Round(r.churnRate))))
	})
	row(fmt.Sprintf("**poll mode** (`--poll.interval=%v`): CPU over %v, share of a core", cfg.interval, cfg.modeWindow), func(r *result) string {
		return fmt.Sprintf("**%s** (%.0f dumps)", percent(median(each(r.pollMode, modeRun.share))), median(each(r.pollMode, func(m modeRun) float64 { return m.polls })))
	})
	row("**precise mode** (`--mode=precise`): CPU, the exporter's + its BPF program's", func(r *result) string {
		return fmt.Sprintf("**%s** (%s + %s; %.0f dumps)", percent(median(each(r.precise, modeRun.share))),
			percent(median(each(r.precise, modeRun.ownShare))), percent(median(each(r.precise, modeRun.bpfShare))),
			median(each(r.precise, func(m modeRun) float64 { return m.polls })))
	})
	row("**precise / poll CPU**", func(r *result) string {
		m, ok := medianRatio(each(r.precise, modeRun.share), each(r.pollMode, modeRun.share))
		if !ok {
			return "–"
		}
		return fmt.Sprintf("**%.3fx**", m)
	})
	row("precise mode: events applied a second; lost (all causes)", func(r *result) string {
		return fmt.Sprintf("%s; %.0f lost", thousands(int(median(each(r.precise, modeRun.eventRate)))), median(each(r.precise, func(m modeRun) float64 { return m.lost })))
	})
	row("precise mode: BPF run time per run (runs a second, all namespaces)", func(r *result) string {
		return fmt.Sprintf("%.0f ns (%s)", median(each(r.precise, func(m modeRun) float64 { return m.bpf.perRun() })),
			thousands(int(median(each(r.precise, func(m modeRun) float64 { return float64(m.bpf.runs) / m.window.Seconds() })))))
	})
	for _, mode := range []struct {
		name string
		runs func(*result) []modeRun
		base func(*result) memUse
	}{
		{"poll", func(r *result) []modeRun { return r.pollMode }, func(r *result) memUse { return r.base }},
		{"precise", func(r *result) []modeRun { return r.precise }, func(r *result) memUse { return r.basePrecise }},
	} {
		row(fmt.Sprintf("%s mode: RSS, anonymous (with no sockets); tracked sockets", mode.name), func(r *result) string {
			runs, base := mode.runs(r), mode.base(r)
			rss := median(each(runs, func(m modeRun) float64 { return float64(m.mem.rss) }))
			anon := median(each(runs, func(m modeRun) float64 { return float64(m.mem.anon) }))
			tracked := median(each(runs, func(m modeRun) float64 { return float64(m.tracked) }))
			s := fmt.Sprintf("%s, %s (%s, %s); %s", mb(int64(rss)), mb(int64(anon)), mb(base.rss), mb(base.anon), thousands(int(tracked)))
			if tracked >= minPerSocket {
				s += fmt.Sprintf(": %.0f B per tracked socket, %.0f B anonymous", perSocket(int64(rss), base.rss, int(tracked)), perSocket(int64(anon), base.anon, int(tracked)))
			}
			return s
		})
	}
	if cfg.throughput == 0 {
		return
	}
	row(fmt.Sprintf("**throughput check**, precise mode: %s changes a second asked for %v", thousands(cfg.throughput), cfg.throughputWindow), func(r *result) string {
		if len(r.throughput) == 0 {
			return "–"
		}
		t := r.throughput[0]
		s := fmt.Sprintf("**%s a second applied**, %.0f lost (%s connections a second; exporter %s of a core, BPF %.0f ns per run)",
			thousands(int(t.rate)), t.lost, thousands(int(t.conns)), percent(t.cpu), t.bpf.perRun())
		if last := r.throughput[len(r.throughput)-1]; len(r.throughput) > 1 {
			s += fmt.Sprintf("; with a %s ring: %s a second, %.0f lost", mb(int64(last.ringBytes)), thousands(int(last.rate)), last.lost)
		}
		return s
	})
}

func (r modeRun) ownShare() float64  { return float64(r.cpu) / float64(max(1, r.window)) }
func (r modeRun) bpfShare() float64  { return float64(r.bpf.time) / float64(max(1, r.window)) }
func (r modeRun) eventRate() float64 { return r.events / max(1e-9, r.window.Seconds()) }

// perRun is the mean run time of a program, in nanoseconds.
func (b bpfRun) perRun() float64 { return float64(b.time) / float64(max(1, b.runs)) }

// each returns f of each x.
func each[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

func percent(share float64) string { return fmt.Sprintf("%.2f%%", 100*share) }
