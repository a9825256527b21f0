//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// namespacesResult is tcpstate_exporter with --netns=all on a host with
// many empty network namespaces, in each mode.
type namespacesResult struct {
	count             int
	pollMode, precise []modeRun
}

// measureNamespaces creates cfg.namespaces empty network namespaces, then
// runs tcpstate_exporter with --netns=all polling every cfg.interval and in
// precise mode, in turns, cfg.modeRuns times each for cfg.modeWindow. Every
// namespace's dump walks the kernel's shared socket table, so what the
// rest of the host holds counts too: the run is only comparable with
// itself.
func measureNamespaces(ctx context.Context, cfg config) (res *namespacesResult, err error) {
	res = &namespacesResult{count: cfg.namespaces}
	var created []*namespace
	defer func() {
		for _, ns := range created {
			err = errors.Join(err, ns.delete())
		}
	}()
	for i := range cfg.namespaces + 1 {
		ns, err := newNamespace(fmt.Sprintf("tcpstate-bench-%d-ns%d", os.Getpid(), i))
		if err != nil {
			return nil, err
		}
		created = append(created, ns)
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
	cfg.logf("created %d empty network namespaces, and one for the exporter", cfg.namespaces)
	// The exporter runs in the first, and observes them all. Precise mode
	// dumps every namespace at start-up, then each once per dump interval,
	// a share of them every second: it is measured from one interval on
	// (or one --mode-window, if shorter, as in a quick check).
	cfg.exporterFlags = append(cfg.exporterFlags[:len(cfg.exporterFlags):len(cfg.exporterFlags)], "--netns=all")
	cfg.preciseSettle = min(preciseDumpInterval, cfg.modeWindow)
	cfg.logf("precise mode settles for %v before each measurement", cfg.preciseSettle)
	for run := range cfg.modeRuns {
		for _, precise := range []bool{run%2 == 1, run%2 == 0} {
			r, err := measureMode(ctx, created[0], cfg, precise)
			if err != nil {
				return nil, fmt.Errorf("measure %s mode over %d namespaces: %w", modeName(precise), cfg.namespaces, err)
			}
			if precise {
				res.precise = append(res.precise, r)
			} else {
				res.pollMode = append(res.pollMode, r)
			}
			cfg.logf("namespaces run %d/%d, %s mode: CPU %v + BPF %v over %v = %.2f%% of a core; %d dumps",
				run+1, cfg.modeRuns, modeName(precise), ms3(r.cpu), ms3(r.bpf.time), r.window.Round(time.Millisecond), 100*r.share(), int(r.polls))
		}
	}
	return res, nil
}

// preciseDumpInterval is tcpstate_exporter's default
// --precise.dump-interval.
const preciseDumpInterval = 30 * time.Second

// namespacesTable sets the two modes side by side over the namespaces.
func namespacesTable(res *namespacesResult, cfg config) string {
	var b strings.Builder
	poll, precise := each(res.pollMode, modeRun.share), each(res.precise, modeRun.share)
	fmt.Fprintf(&b, "\n| %d empty network namespaces, `--netns=all` | poll, every %v | precise | precise/poll |\n|---|---:|---:|---:|\n", res.count, cfg.interval)
	ratio := "n/a"
	if r, ok := medianRatio(precise, poll); ok {
		ratio = fmt.Sprintf("**%.3fx**", r)
	}
	fmt.Fprintf(&b, "| CPU, share of a core (median of %d) | %s | %s (exporter %s + BPF %s) | %s |\n",
		cfg.modeRuns, percent(median(poll)), percent(median(precise)),
		percent(median(each(res.precise, modeRun.ownShare))), percent(median(each(res.precise, modeRun.bpfShare))), ratio)
	fmt.Fprintf(&b, "| polls in %v (median; precise: seconds with a reconciling dump) | %.0f | %.0f | |\n", cfg.modeWindow,
		median(each(res.pollMode, func(r modeRun) float64 { return r.polls })), median(each(res.precise, func(r modeRun) float64 { return r.polls })))
	return b.String()
}
