//go:build linux

package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Bounds of the connection churn the benchmark drives.
const (
	// churnTick is how often a churn worker opens its share and closes
	// what it has held long enough: paced, never a busy loop.
	churnTick = 10 * time.Millisecond
	// churnHold is how long a churned connection stays open.
	churnHold = 20 * time.Millisecond
	// timeWaitLifetime is how long the kernel keeps a TIME_WAIT remnant
	// (TCP_TIMEWAIT_LEN), so how many of them a churn keeps up.
	timeWaitLifetime = 60 * time.Second
	// maxChurnRate bounds --churn and --throughput's connections a second:
	// above that, ephemeral ports run out within a TIME_WAIT lifetime.
	maxChurnRate = 20_000
)

// churnSpec is a connection churn: rate new loopback connections a second,
// each opened, held for churnHold and closed client-first, so that its
// client end stays in TIME_WAIT; a share v6 of them IPv6.
type churnSpec struct {
	rate    int
	workers int
	v6      float64
}

// churner is a running churn.
type churner struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	made   atomic.Uint64 // connections opened and closed
	errMu  sync.Mutex
	err    error
	start  time.Time
}

// startChurn starts spec's workers, each on a thread of its own inside ns,
// and returns once they listen. The churn ends with ctx or stop.
func startChurn(ctx context.Context, ns *namespace, spec churnSpec) (*churner, error) {
	ctx, cancel := context.WithCancel(ctx)
	c := &churner{cancel: cancel, start: time.Now()}
	workers := max(1, spec.workers)
	ready := make(chan error, workers)
	for w := range workers {
		// Spread the rate over the workers, the remainder to the first.
		rate := float64(spec.rate/workers + min(1, max(0, spec.rate%workers-w)))
		c.wg.Go(func() {
			if err := c.work(ctx, ns, rate, spec.v6, ready); err != nil && ctx.Err() == nil {
				c.fail(err)
			}
		})
	}
	for range workers {
		if err := <-ready; err != nil {
			c.stop()
			return nil, err
		}
	}
	return c, nil
}

func (c *churner) fail(err error) {
	c.errMu.Lock()
	defer c.errMu.Unlock()
	if c.err == nil {
		c.err = err
		c.cancel()
	}
}

// stop ends the churn, closes what it holds, and returns how many
// connections it made a second, and the first error a worker met.
func (c *churner) stop() (float64, error) {
	c.cancel()
	c.wg.Wait()
	c.errMu.Lock()
	defer c.errMu.Unlock()
	return float64(c.made.Load()) / time.Since(c.start).Seconds(), c.err
}

// heldPair is a churned connection waiting to be closed.
type heldPair struct {
	client, server int
	opened         time.Time
}

// work is one churn worker: rate connections a second, opened at each tick
// and closed, client first, at the first tick churnHold after.
func (c *churner) work(ctx context.Context, ns *namespace, rate, v6 float64, ready chan<- error) error {
	// The goroutine ends without unlocking: its thread leaves with it.
	if err := ns.enter(); err != nil {
		ready <- err
		return err
	}
	// Enough listeners that none gathers more than twPerListener TIME_WAIT
	// remnants over their lifetime, for each family.
	per := int(rate*timeWaitLifetime.Seconds())/twPerListener + 1
	var lns [2][]listener
	defer func() {
		for _, ls := range lns {
			for _, l := range ls {
				unix.Close(l.fd)
			}
		}
	}()
	for fam, family := range families {
		for range per {
			l, err := listen(family)
			if err != nil {
				ready <- err
				return err
			}
			lns[fam] = append(lns[fam], l)
		}
	}
	ready <- nil

	var held []heldPair
	defer func() {
		for _, p := range held {
			unix.Close(p.client)
			unix.Close(p.server)
		}
	}()
	t := time.NewTicker(churnTick)
	defer t.Stop()
	var owed, six float64
	var n [2]int
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return ctx.Err()
		case now = <-t.C:
		}
		// Client first: its end goes through FIN_WAIT_1 and FIN_WAIT_2 to
		// TIME_WAIT, the server's through CLOSE_WAIT and LAST_ACK.
		done := 0
		for ; done < len(held) && now.Sub(held[done].opened) >= churnHold; done++ {
			unix.Close(held[done].client)
			unix.Close(held[done].server)
			c.made.Add(1)
		}
		held = append(held[:0], held[done:]...)
		// A tick late (the machine was busy) is made up for at the next,
		// but never more than a tick's worth: no bursts after a stall.
		owed = min(owed+rate*churnTick.Seconds(), 2*rate*churnTick.Seconds()+1)
		for ; owed >= 1; owed-- {
			fam := 0
			if six += v6; six >= 1 {
				six--
				fam = 1
			}
			n[fam]++
			cl, sv, err := pair(lns[fam][n[fam]%len(lns[fam])])
			if err != nil {
				return fmt.Errorf("churn: %w", err)
			}
			held = append(held, heldPair{cl, sv, now})
		}
	}
}
