// Command tcpstate shows this host's TCP sockets by documented state, read
// from the kernel's sock_diag with no exporter: once, as text or JSON, or
// live in the terminal with --watch.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/version"

	"github.com/tcpstate/tcpstate_exporter/collector"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
	"github.com/tcpstate/tcpstate_exporter/procscan"
	"github.com/tcpstate/tcpstate_exporter/termview"
)

const name = "tcpstate"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func init() {
	if version.Version == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			version.Version = bi.Main.Version
		}
	}
}

type options struct {
	netns    string
	json     bool
	watch    bool
	interval time.Duration
	top      int
	from     string // an exporter's snapshot URL; "" to read the kernel
	fromFlag string // --from as given
}

// usageError is a flag or a combination of flags that cannot work: exit 2.
type usageError struct{ error }

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	app := kingpin.New(name, "Shows the TCP sockets of this host (or of a network namespace) by documented state, with the oldest socket's age and who holds CLOSE_WAIT sockets, read from the kernel's sock_diag. Needs no exporter, and no privileges in its own network namespace.")
	app.UsageWriter(stderr).ErrorWriter(stderr)
	app.HelpFlag.Short('h')
	app.Version(version.Print(name))
	o := &options{}
	app.Flag("netns", "Read this network namespace instead of our own: a name under /run/netns or a path such as /proc/PID/ns/net; or \"all\" for every network namespace on the host. Needs CAP_SYS_ADMIN (and CAP_SYS_PTRACE for all).").Default("").StringVar(&o.netns)
	app.Flag("json", "Print the table once as JSON, with stable field names, instead of text.").BoolVar(&o.json)
	app.Flag("watch", "Keep the table live in the terminal, refreshed every --interval, with transitions per second and stay percentiles since start; q quits.").BoolVar(&o.watch)
	interval := app.Flag("interval", "With --watch, how often to read the kernel (or the exporter): at least 100ms, such as 1s or 500ms.").Default("1s").String()
	app.Flag("top", "How many service ports and processes holding CLOSE_WAIT sockets to name.").Default("5").IntVar(&o.top)
	from := app.Flag("from", "Show a running tcpstate_exporter's view through its JSON API instead of reading the kernel, such as http://HOST:9965: its counts, ages and stays (exact in precise mode) and its transition rates over the last minute.").String()
	if _, err := app.Parse(args); err != nil {
		return nil, err
	}
	var err error
	if o.interval, err = time.ParseDuration(*interval); err != nil {
		return nil, fmt.Errorf("--interval=%s: not a duration such as 1s or 500ms", *interval)
	}
	if *from != "" {
		o.fromFlag = *from
		if o.from, err = parseFrom(*from); err != nil {
			return nil, err
		}
	}
	switch {
	case o.from != "" && o.netns != "":
		return nil, errors.New("--from and --netns do not go together: the exporter shows what it observes")
	case o.interval < 100*time.Millisecond:
		return nil, fmt.Errorf("--interval=%v: must be at least 100ms", o.interval)
	case o.top < 0:
		return nil, fmt.Errorf("--top=%d: must not be negative", o.top)
	case o.json && o.watch:
		return nil, errors.New("--json and --watch do not go together: --json prints the table once")
	}
	return o, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	o, err := parseFlags(args, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 2
	}
	if err := show(o, stdout); err != nil {
		fmt.Fprintf(stderr, "%s: %s\n", name, strings.Join(strings.Fields(err.Error()), " "))
		return 1
	}
	return 0
}

// newPoller opens what --netns names and returns a poller of it and what
// closes it.
func newPoller(netns string, cfg collector.Config) (*collector.Poller, func(), error) {
	if netns != "all" {
		conn, err := netlinkdiag.Dial(netlinkdiag.Options{NetNS: netns})
		if err != nil {
			return nil, nil, fmt.Errorf("open sock_diag: %w", err)
		}
		return collector.NewPoller(conn, cfg), func() { conn.Close() }, nil
	}
	disc := procscan.NewDiscoverer("/proc", "/run/netns")
	discover := func() ([]collector.Namespace, error) {
		found, err := disc.Discover()
		nss := make([]collector.Namespace, len(found))
		for i, ns := range found {
			nss[i] = collector.Namespace{ID: ns.Inode, Name: ns.Name, Path: ns.Path}
		}
		return nss, err
	}
	if _, err := discover(); err != nil {
		return nil, nil, fmt.Errorf("--netns=all: %w", err)
	}
	p := collector.NewDiscoveringPoller(collector.Discovery{
		Discover: discover,
		Dial: func(ns collector.Namespace) (collector.DumpCloser, error) {
			return netlinkdiag.Dial(netlinkdiag.Options{NetNS: ns.Path})
		},
	}, cfg)
	return p, p.Close, nil
}

// reader reads the kernel for the view: a poller of what --netns names,
// the attributor of its CLOSE_WAIT sockets, and the view over its snapshots.
type reader struct {
	poller     *collector.Poller
	attributor *collector.Attributor
	view       *termview.View
	close      func()
}

func open(o *options) (*reader, error) {
	poller, closePoller, err := newPoller(o.netns, collector.Config{
		Interval:          o.interval,
		MaxTracked:        1 << 20,
		PortTop:           1 << 16, // every port: the view ranks them by CLOSE_WAIT
		AttributionStates: []collector.State{collector.CloseWait},
	})
	if err != nil {
		return nil, err
	}
	return &reader{
		poller:     poller,
		attributor: collector.NewAttributor(poller, collector.AttributionConfig{Interval: attributeEvery, Top: o.top}),
		view:       termview.NewView(termview.Options{Netns: o.netns, Interval: o.interval, Top: o.top}),
		close:      closePoller,
	}, nil
}

// first dumps the sockets once, attributes them and returns the table.
func (r *reader) first(ctx context.Context) (termview.Table, error) {
	if err := r.poller.Poll(ctx); err != nil {
		return termview.Table{}, fmt.Errorf("dump TCP sockets: %w", err)
	}
	return r.view.Table(r.poller.Snapshot(), r.attributor.Attribute()), nil
}

func show(o *options, stdout io.Writer) error {
	if o.from != "" {
		return showRemote(o, stdout)
	}
	r, err := open(o)
	if err != nil {
		return err
	}
	defer r.close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	table, err := r.first(ctx)
	if err != nil {
		return err
	}
	if o.watch {
		return watch(ctx, o, newWatcher(ctx, o.interval, r, table), table)
	}
	return output(o, stdout, table)
}

// showRemote is show for --from.
func showRemote(o *options, stdout io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	rem := newRemote(o.fromFlag, o.from, o.top, max(o.interval, 5*time.Second))
	table, err := rem.table(ctx)
	if err != nil {
		return err
	}
	if o.watch {
		return watch(ctx, o, newRemoteWatcher(ctx, o.interval, rem), table)
	}
	return output(o, stdout, table)
}

// output writes the table once, as JSON or text.
func output(o *options, stdout io.Writer, table termview.Table) error {
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(table)
	}
	_, err := io.WriteString(stdout, table.Text())
	return err
}
