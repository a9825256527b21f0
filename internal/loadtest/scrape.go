package loadtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// ScrapeStats counts what Scrapers did.
type ScrapeStats struct {
	OK         uint64 // scrapes answered 200 with an exposition that parses
	Failed     uint64 // anything else
	FirstError error  // the first failure, if any
}

// Scrapers are concurrent clients scraping one URL in a loop.
type Scrapers struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	client *http.Client
	ok     atomic.Uint64
	failed atomic.Uint64
	err    atomic.Pointer[error]
}

// StartScrapers starts n clients that each GET url, read and parse the
// whole exposition, and wait pause before the next scrape, until Stop.
// client nil means a client with keep-alive, at most n connections and a
// 10 s timeout.
func StartScrapers(url string, n int, pause time.Duration, client *http.Client) *Scrapers {
	if client == nil {
		client = &http.Client{
			Timeout:   10 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: n, MaxConnsPerHost: n},
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Scrapers{cancel: cancel, client: client}
	for range n {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for ctx.Err() == nil {
				if err := scrape(ctx, client, url); err != nil {
					if ctx.Err() != nil {
						return // cut short by Stop, not a failure
					}
					s.err.CompareAndSwap(nil, &err)
					s.failed.Add(1)
				} else {
					s.ok.Add(1)
				}
				select {
				case <-ctx.Done():
				case <-time.After(pause):
				}
			}
		}()
	}
	return s
}

func scrape(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(body))
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("parse exposition: %w", err)
	}
	if mfs["tcpstate_sockets"] == nil {
		return errors.New("exposition without tcpstate_sockets")
	}
	return nil
}

// Stats returns the counts so far.
func (s *Scrapers) Stats() ScrapeStats {
	st := ScrapeStats{OK: s.ok.Load(), Failed: s.failed.Load()}
	if err := s.err.Load(); err != nil {
		st.FirstError = *err
	}
	return st
}

// Stop ends the scrapes, waits for the clients, closes their idle
// connections and returns the final counts.
func (s *Scrapers) Stop() ScrapeStats {
	s.cancel()
	s.wg.Wait()
	s.client.CloseIdleConnections()
	return s.Stats()
}
