package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	tea "charm.land/bubbletea/v2"
	"charm.land/lipgloss/v2"

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/termview"
)

// How often --watch walks /proc to find the processes holding CLOSE_WAIT
// sockets: a walk costs more than a dump, so every attributeEvery, and
// sooner (but not within attributeSoonest) when CLOSE_WAIT's count changes.
const (
	attributeEvery   = 5 * time.Second
	attributeSoonest = time.Second
)

// watcher owns the poller while --watch runs: one poll at a time, each
// started when the last one's table has been shown.
type watcher struct {
	ctx      context.Context
	r        *reader
	interval time.Duration
	refresh  func() polled // w.poll, or a read of an exporter
	mu       sync.Mutex    // held while a poll runs
	attr     *collector.Attribution
	attrAt   time.Time
	attrCW   int // CLOSE_WAIT sockets at the last attribution
}

// newWatcher returns the watcher of r, whose first table is first.
func newWatcher(ctx context.Context, interval time.Duration, r *reader, first termview.Table) *watcher {
	w := &watcher{ctx: ctx, r: r, interval: interval, attr: r.attributor.Snapshot(),
		attrAt: time.Now(), attrCW: first.States[collector.CloseWait].Total}
	w.refresh = w.poll
	return w
}

// newRemoteWatcher returns the watcher of an exporter's view.
func newRemoteWatcher(ctx context.Context, interval time.Duration, rem *remote) *watcher {
	// The closure reads w.ctx, which watch replaces with one it cancels.
	w := &watcher{ctx: ctx, interval: interval}
	w.refresh = func() polled {
		at := time.Now()
		t, err := rem.table(w.ctx)
		return polled{table: t, err: err, at: at}
	}
	return w
}

// polled is a poll's outcome.
type polled struct {
	table termview.Table
	err   error
	at    time.Time
}

// poll dumps the sockets once and builds the table.
func (w *watcher) poll() polled {
	w.mu.Lock()
	defer w.mu.Unlock()
	start := time.Now()
	if w.ctx.Err() != nil {
		return polled{err: w.ctx.Err(), at: start}
	}
	err := w.r.poller.Poll(w.ctx)
	snap := w.r.poller.Snapshot()
	cw := snap.Sockets[collector.IPv4][collector.CloseWait] + snap.Sockets[collector.IPv6][collector.CloseWait]
	if since := start.Sub(w.attrAt); since >= attributeEvery || cw != w.attrCW && since >= attributeSoonest {
		w.attr, w.attrAt, w.attrCW = w.r.attributor.Attribute(), start, cw
	}
	return polled{table: w.r.view.Table(snap, w.attr), err: err, at: start}
}

func (w *watcher) next(after time.Time) tea.Cmd {
	return tea.Tick(max(time.Until(after.Add(w.interval)), 0), func(time.Time) tea.Msg { return w.refresh() })
}

// screen is the bubbletea model of --watch.
type screen struct {
	w      *watcher
	title  string
	last   polled
	width  int
	height int
}

func (s screen) Init() tea.Cmd { return s.w.next(s.last.at) }

func (s screen) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tea.KeyPressMsg:
		switch msg.String() {
		case "q", "ctrl+c", "esc":
			return s, tea.Quit
		}
	case tea.WindowSizeMsg:
		s.width, s.height = msg.Width, msg.Height
	case polled:
		if msg.err == nil {
			s.last = msg
		} else {
			s.last.err, s.last.at = msg.err, msg.at
		}
		return s, s.w.next(msg.at)
	}
	return s, nil
}

var (
	titleStyle   = lipgloss.NewStyle().Bold(true).Reverse(true).Padding(0, 1)
	headStyle    = lipgloss.NewStyle().Bold(true)
	troubleStyle = lipgloss.NewStyle().Bold(true).Foreground(lipgloss.Color("9"))
	errStyle     = lipgloss.NewStyle().Foreground(lipgloss.Color("9"))
	faintStyle   = lipgloss.NewStyle().Faint(true)
)

func (s screen) View() tea.View {
	var b strings.Builder
	b.WriteString(titleStyle.Render(s.title) + "\n\n")
	cw := s.last.table.States[collector.CloseWait].Total > 0
	for i, line := range strings.Split(strings.TrimRight(s.last.table.Text(), "\n"), "\n") {
		switch {
		case i == 0 || strings.HasPrefix(line, "CLOSE_WAIT by") || strings.HasPrefix(strings.TrimSpace(line), "PORT") || strings.HasPrefix(strings.TrimSpace(line), "PROCESS"):
			line = headStyle.Render(line)
		case cw && strings.HasPrefix(line, "CLOSE_WAIT "):
			line = troubleStyle.Render(line)
		}
		b.WriteString(line + "\n")
	}
	b.WriteString("\n")
	if s.last.err != nil {
		b.WriteString(errStyle.Render("last poll failed: "+s.last.err.Error()) + "\n")
	}
	b.WriteString(faintStyle.Render(fmt.Sprintf("updated %s · OLDEST >= means there when the view started · q quits", s.last.table.Time.Format("15:04:05"))))
	v := tea.NewView(b.String())
	v.AltScreen = true
	return v
}

// watch runs the live view until q, ctrl+c or a signal.
func watch(ctx context.Context, o *options, w *watcher, first termview.Table) error {
	ctx, cancel := context.WithCancel(ctx)
	w.ctx = ctx
	ns := o.netns
	switch {
	case o.from != "":
		ns = "exporter " + o.fromFlag
	case ns == "":
		ns = "own network namespace"
	default:
		ns = "--netns=" + ns
	}
	title := fmt.Sprintf("tcpstate · %s · every %v", ns, o.interval)
	_, err := tea.NewProgram(screen{w: w, title: title, last: polled{table: first, at: time.Now()}}, tea.WithContext(ctx)).Run()
	cancel()
	// A poll under way ends at the cancel; the poller is closed after.
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil && !errors.Is(err, tea.ErrInterrupted) && !errors.Is(err, tea.ErrProgramKilled) {
		return fmt.Errorf("--watch: %w", err)
	}
	return nil
}
