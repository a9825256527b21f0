package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/tcpstate/tcpstate_exporter/exporter"
	"github.com/tcpstate/tcpstate_exporter/termview"
)

// snapshotPath is where an exporter serves its latest snapshot.
const snapshotPath = "/api/v1/snapshot"

// maxSnapshot bounds what is read of an answer: a snapshot of every
// namespace of a busy host is a few MB.
const maxSnapshot = 64 << 20

// remote reads a running exporter's view through its JSON API.
type remote struct {
	url    string // of the snapshot
	from   string // as --from gave it
	client *http.Client
	top    int
}

// parseFrom checks --from: an http or https URL of an exporter, with or
// without the snapshot's path.
func parseFrom(from string) (string, error) {
	u, err := url.Parse(from)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--from=%s: want an exporter's URL, such as http://HOST:9965", from)
	}
	u.Path = strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), snapshotPath) + snapshotPath
	return u.String(), nil
}

func newRemote(from, snapshotURL string, top int, timeout time.Duration) *remote {
	return &remote{url: snapshotURL, from: from, client: &http.Client{Timeout: timeout}, top: top}
}

// table fetches the exporter's latest snapshot and returns its table.
func (r *remote) table(ctx context.Context) (termview.Table, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.url, nil)
	if err != nil {
		return termview.Table{}, fmt.Errorf("--from=%s: %w", r.from, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := r.client.Do(req)
	if err != nil {
		return termview.Table{}, fmt.Errorf("--from=%s: the exporter cannot be reached: %w", r.from, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return termview.Table{}, fmt.Errorf("--from=%s: %s answered %s (is it tcpstate_exporter, with its JSON API?)", r.from, r.url, resp.Status)
	}
	var s exporter.APISnapshot
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxSnapshot)).Decode(&s); err != nil {
		return termview.Table{}, fmt.Errorf("--from=%s: %s is not an exporter's snapshot: %w", r.from, r.url, err)
	}
	if len(s.States) == 0 {
		return termview.Table{}, fmt.Errorf("--from=%s: %s holds no states: not an exporter's snapshot", r.from, r.url)
	}
	return termview.FromAPI(&s, r.from, r.top), nil
}
