package browsertest

import (
	"context"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

var updateScreenshot = flag.Bool("update", false, "rewrite docs/states.png, the README's screenshot")

func TestMain(m *testing.M) { exportertest.Main(m) }

// holder holds sockets in a network namespace until the test ends.
type holder struct {
	t    *testing.T
	path string
	mu   sync.Mutex
	held []closer
}

type closer interface{ Close() error }

func (h *holder) keep(c closer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.held = append(h.held, c)
}

// listen opens a listener of network ("tcp4" or "tcp6") on loopback in the
// namespace.
func (h *holder) listen(network string) net.Listener {
	h.t.Helper()
	var ln net.Listener
	err := netlinkdiag.Do(h.path, func() error {
		addr := "127.0.0.1:0"
		if network == "tcp6" {
			addr = "[::1]:0"
		}
		var err error
		ln, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		h.t.Fatalf("listen in the namespace: %v", err)
	}
	h.keep(ln)
	return ln
}

// closeWait connects to ln from the namespace and closes the client end:
// the accepted end, held open, stays in CLOSE_WAIT. With keep false it
// closes that too, a whole short connection.
func (h *holder) closeWait(ln net.Listener, keep bool) error {
	return netlinkdiag.Do(h.path, func() error {
		c, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
		if err != nil {
			return err
		}
		s, err := ln.Accept()
		if err != nil {
			c.Close()
			return err
		}
		c.Close() // its FIN puts s in CLOSE_WAIT
		if keep {
			h.keep(s)
			return nil
		}
		time.Sleep(20 * time.Millisecond)
		return s.Close()
	})
}

func (h *holder) closeAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.held {
		c.Close()
	}
}

// stateOnPage is what the page shows of a state.
type stateOnPage struct {
	State string `json:"state"`
	IPv4  string `json:"ipv4"`
	IPv6  string `json:"ipv6"`
	Text  string `json:"text"`  // the count line, as drawn
	Width int    `json:"width"` // of the box as laid out
}

const readStates = `Array.from(document.querySelectorAll('#states .state')).map(function (g) {
	return {state: g.dataset.state, ipv4: g.dataset.ipv4, ipv6: g.dataset.ipv6,
		text: document.getElementById('n-' + g.dataset.state).textContent,
		width: Math.round(g.querySelector('rect').getBBox().width)};
})`

var documented = []string{"CLOSED", "LISTEN", "SYN_RCVD", "SYN_SEND", "ESTABLISHED", "FIN_WAIT_1", "FIN_WAIT_2", "TIME_WAIT", "CLOSING", "CLOSE_WAIT", "LAST_ACK"}

// TestStatesPageInChromium renders /states of an exporter watching a
// namespace that holds sockets in known states, in headless Chromium: the
// page draws the eleven states with /metrics' counts, shows a new socket
// within two seconds, logs no error and asks nothing of anyone but the
// exporter.
func TestStatesPageInChromium(t *testing.T) {
	netnstest.RequireRoot(t)
	browser, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatal("chromium not found: apt-get install -y --no-install-recommends chromium")
	}
	name, path := netnstest.New(t)
	h := &holder{t: t, path: path}
	t.Cleanup(h.closeAll)
	ln4, ln6 := h.listen("tcp4"), h.listen("tcp6")
	for i := range 5 {
		ln := ln4
		if i%2 == 1 {
			ln = ln6
		}
		if err := h.closeWait(ln, true); err != nil {
			t.Fatalf("hold a socket in CLOSE_WAIT: %v", err)
		}
	}
	exp := exportertest.Start(t, "--mode=poll", "--poll.interval=200ms", "--netns="+name, "--attribution.interval=1s")
	base, _ := url.Parse(exp.URL)
	sockets := func(family, state string) int {
		return int(exportertest.Scrape(t, exp.URL+"/metrics").Value("tcpstate_sockets", "family="+family, "state="+state))
	}
	waitFor(t, 5*time.Second, "the exporter to see 3+2 CLOSE_WAIT sockets", func() bool {
		return sockets("ipv4", "CLOSE_WAIT") == 3 && sockets("ipv6", "CLOSE_WAIT") == 2
	})

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		append(chromedp.DefaultExecAllocatorOptions[:],
			chromedp.ExecPath(browser),
			chromedp.NoSandbox, // as root
			chromedp.Flag("disable-gpu", true),
			chromedp.WindowSize(1400, 1250),
		)...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()

	var (
		mu       sync.Mutex
		problems []string
		requests []string
	)
	note := func(list *[]string, s string) {
		mu.Lock()
		defer mu.Unlock()
		*list = append(*list, s)
	}
	if err := chromedp.Listen(ctx, func(ev any) {
		switch ev := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeWarning || ev.Type == runtime.ConsoleAPICalledTypeAssert {
				var args []string
				for _, a := range ev.Args {
					args = append(args, string(a.Value)+a.Description)
				}
				note(&problems, fmt.Sprintf("console.%s: %s", ev.Type, strings.Join(args, " ")))
			}
		case *runtime.EventExceptionThrown:
			d := ev.ExceptionDetails
			msg := d.Text
			if d.Exception != nil {
				msg += " " + d.Exception.Description
			}
			note(&problems, fmt.Sprintf("exception at %s:%d: %s", d.URL, d.LineNumber, msg))
		case *cdplog.EventEntryAdded:
			if ev.Entry.Level == cdplog.EntryLevelError || ev.Entry.Level == cdplog.EntryLevelWarning {
				note(&problems, fmt.Sprintf("log %s (%s): %s %s", ev.Entry.Level, ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
			}
		case *network.EventRequestWillBeSent:
			note(&requests, ev.Request.URL)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(ctx,
		call(network.Enable, network.EnableParams{}),
		call(runtime.Enable, cdp.Empty{}),
		call(cdplog.Enable, cdp.Empty{}),
		chromedp.EmulateViewport(1400, 1250),
		chromedp.Navigate(exp.URL+"/states"),
	); err != nil {
		t.Fatalf("open /states: %v", err)
	}
	// The script has drawn a pushed snapshot.
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](`Number(document.body.dataset.rendered) > 0`, chromedp.WithPollingTimeout(5*time.Second))); err != nil {
		t.Fatalf("the page drew no snapshot from /api/v1/events within 5 s: %v", err)
	}

	// Every state drawn, with the counts /metrics has.
	compare := func() (string, []stateOnPage) {
		page, err := chromedp.Run(ctx, chromedp.Evaluate[[]stateOnPage](readStates))
		if err != nil {
			t.Fatalf("read the page: %v", err)
		}
		m := exportertest.Scrape(t, exp.URL+"/metrics")
		var diffs []string
		for _, s := range page {
			for _, fam := range []struct{ name, shown string }{{"ipv4", s.IPv4}, {"ipv6", s.IPv6}} {
				want := fmt.Sprint(m.Value("tcpstate_sockets", "family="+fam.name, "state="+s.State))
				if fam.shown != want {
					diffs = append(diffs, fmt.Sprintf("%s %s: page %s, /metrics %s", s.State, fam.name, fam.shown, want))
				}
			}
			if want := "IPv4 " + s.IPv4 + " · IPv6 " + s.IPv6; s.Text != want {
				diffs = append(diffs, fmt.Sprintf("%s drawn as %q, want %q", s.State, s.Text, want))
			}
		}
		return strings.Join(diffs, "; "), page
	}
	var page []stateOnPage
	waitFor(t, 3*time.Second, "the page's counts to equal /metrics'", func() bool {
		var diff string
		diff, page = compare()
		if diff != "" {
			t.Logf("not yet: %s", diff)
		}
		return diff == ""
	})
	var drawn []string
	for _, s := range page {
		drawn = append(drawn, s.State)
		if s.Width <= 0 {
			t.Errorf("%s has no size on the page", s.State)
		}
		if s.State == "CLOSE_WAIT" && (s.IPv4 != "3" || s.IPv6 != "2") {
			t.Errorf("CLOSE_WAIT shown as IPv4 %s, IPv6 %s; the namespace holds 3 and 2", s.IPv4, s.IPv6)
		}
		if s.State == "LISTEN" && (s.IPv4 != "1" || s.IPv6 != "1") {
			t.Errorf("LISTEN shown as IPv4 %s, IPv6 %s; the namespace holds 1 and 1", s.IPv4, s.IPv6)
		}
	}
	if strings.Join(drawn, " ") != strings.Join(documented, " ") {
		t.Errorf("states drawn: %v, want the eleven documented: %v", drawn, documented)
	}

	// A new socket in CLOSE_WAIT shows within two seconds.
	start := time.Now()
	if err := h.closeWait(ln4, true); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](
		`document.getElementById('state-CLOSE_WAIT').dataset.ipv4 === '4' && document.getElementById('n-CLOSE_WAIT').textContent === 'IPv4 4 · IPv6 2'`,
		chromedp.WithPollingTimeout(2*time.Second), chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		t.Fatalf("a fourth IPv4 CLOSE_WAIT socket not on the page 2 s later: %v", err)
	}
	t.Logf("a new CLOSE_WAIT socket reached the page in %v", time.Since(start).Round(10*time.Millisecond))

	// Some traffic, so that the screenshot shows transition rates.
	for range 30 {
		if err := h.closeWait(ln4, false); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(time.Second)
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	out := filepath.Join(t.TempDir(), "states.png")
	if *updateScreenshot {
		out = filepath.Join("..", "..", "docs", "states.png")
	}
	if err := os.WriteFile(out, shot, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s (%d bytes)", out, len(shot))

	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Errorf("in the browser: %s", p)
	}
	if len(requests) == 0 {
		t.Error("no request seen: the network listener saw nothing")
	}
	for _, r := range requests {
		u, err := url.Parse(r)
		if err != nil || u.Scheme == "data" {
			continue
		}
		if u.Host != base.Host {
			t.Errorf("the page asked %s, not the exporter (%s)", r, base.Host)
		}
	}
}

// call runs a protocol command whose answer does not matter.
func call[P, R any](cmd cdp.Command[P, R], params P) chromedp.Action[chromedp.Void] {
	return func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := cdp.Call(ctx, t, cmd, params)
		return chromedp.Void{}, err
	}
}

// waitFor polls cond every 100ms until it holds, failing the test after d.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %v for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
