package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
	"github.com/tcpstate/tcpstate_exporter/internal/loadtest"
	"github.com/tcpstate/tcpstate_exporter/internal/netnstest"
	"github.com/tcpstate/tcpstate_exporter/internal/statezoo"
	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// TestMain removes the programs exportertest builds once the tests are done.
func TestMain(m *testing.M) { exportertest.Main(m) }

// clientIn returns an HTTP client whose connections are made inside the
// network namespace at path, to reach an exporter listening on that
// namespace's loopback.
func clientIn(path string) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netlinkdiag.Do(path, func() (err error) {
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: dial}}
}

// TestIntegrationUnprivilegedExactCounts runs the exporter as nobody, with
// no capability in any set, inside a namespace holding sockets in every
// state: sock_diag dumps of one's own namespace need no privilege, and the
// counts must be exact.
func TestIntegrationUnprivilegedExactCounts(t *testing.T) {
	requireTool(t, "setpriv")
	name, path := netnstest.New(t)
	zoo, err := statezoo.Build(path, statezoo.Options{PerState: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer zoo.Close()
	bin := exportertest.Binary(t)
	p := exportertest.StartWith(t, exportertest.Options{Wrapper: netnstest.Exec(name, nobody()...)}, "--poll.interval=200ms")

	if exe, err := os.Readlink(filepath.Join("/proc", strconv.Itoa(p.PID()), "exe")); err != nil || exe != bin {
		t.Fatalf("pid %d runs %q (%v), not the exporter: the wrappers did not exec in place", p.PID(), exe, err)
	}
	st, err := loadtest.Status(p.PID(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(st["Uid"], "65534\t") || st["CapEff"] != mask() || st["CapPrm"] != mask() || st["CapBnd"] != mask() {
		t.Fatalf("exporter not unprivileged: Uid %q CapEff %s CapPrm %s CapBnd %s", st["Uid"], st["CapEff"], st["CapPrm"], st["CapBnd"])
	}

	client := clientIn(path)
	want := zoo.Expected()
	var m exportertest.Metrics
	deadline := time.Now().Add(10 * time.Second)
	for {
		m = exportertest.ScrapeWith(t, client, p.URL+"/metrics")
		if cmp.Equal(want, socketCounts(m)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if d := cmp.Diff(want, socketCounts(m)); d != "" {
		t.Errorf("tcpstate_sockets as nobody (-want +got)\n%s", d)
	}
	for _, reason := range []string{"permission", "dump", "malformed"} {
		if v := m.Value("tcpstate_poll_errors_total", "reason="+reason); v != 0 {
			t.Errorf("poll_errors_total{reason=%q} = %v as nobody", reason, v)
		}
	}
}

// TestIntegrationPermissionDeniedAtStartup: an unprivileged exporter asked
// to observe another namespace cannot enter it, and says so in one line
// with exit status 1, instead of serving empty metrics.
func TestIntegrationPermissionDeniedAtStartup(t *testing.T) {
	requireTool(t, "setpriv")
	name, path := netnstest.New(t)
	for _, c := range []struct {
		netns string
		want  []string
	}{
		{name, []string{path, "operation not permitted"}},
		{"/proc/1/ns/net", []string{"/proc/1/ns/net", "permission denied"}},
	} {
		t.Run(c.netns, func(t *testing.T) {
			code, stderr := exportertest.RunWith(t, exportertest.Options{Wrapper: nobody()}, "--netns="+c.netns, "--web.listen-address=127.0.0.1:0")
			if code != 1 {
				t.Fatalf("exit status %d, want 1\n%s", code, stderr)
			}
			last := lastLine(stderr)
			if !strings.HasPrefix(last, "tcpstate_exporter: ") {
				t.Errorf("last line %q is not the one-line reason", last)
			}
			for _, w := range c.want {
				if !strings.Contains(last, w) {
					t.Errorf("reason %q does not say %q", last, w)
				}
			}
		})
	}
}

// listenIn opens an IPv4 listener inside the namespace at path and closes
// it when the test ends (or when the caller does).
func listenIn(t *testing.T, path string) int {
	t.Helper()
	var fd int
	if err := netlinkdiag.Do(path, func() (err error) {
		fd, _, err = statezoo.Listen(unix.AF_INET, 8)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// recreateNamespace deletes the namespace called name and makes a new one
// under the same name and path, with its loopback up. netnstest.New's
// cleanup deletes the new one.
func recreateNamespace(t *testing.T, name, path string) {
	t.Helper()
	if err := netnstest.Delete(name); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"netns", "add", name}, {"-n", name, "link", "set", "lo", "up"}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationNamespaceDeletedWhileRunning deletes the observed
// namespace under a running exporter: it keeps serving the last complete
// poll, counts reason="namespace" on every poll, and when a namespace of
// the same name appears again, follows it and stops counting.
func TestIntegrationNamespaceDeletedWhileRunning(t *testing.T) {
	requireTool(t, "ip")
	name, path := netnstest.New(t)
	old := listenIn(t, path)
	p := exportertest.Start(t, "--netns="+name, "--mode=poll", "--poll.interval=100ms")
	url := p.URL + "/metrics"
	if _, ok := eventually(t, url, 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_sockets", "family=ipv4", "state=LISTEN") == 1
	}); !ok {
		t.Fatal("the listener never showed")
	}

	if err := netnstest.Delete(name); err != nil {
		t.Fatal(err)
	}
	unix.Close(old) // nothing of ours keeps the old namespace alive now
	m, ok := eventually(t, url, 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_poll_errors_total", "reason=namespace") >= 3
	})
	if !ok {
		t.Fatalf("namespace errors: %v", m.Value("tcpstate_poll_errors_total", "reason=namespace"))
	}
	time.Sleep(300 * time.Millisecond)
	later := exportertest.Scrape(t, url)
	if a, b := m.Value("tcpstate_last_poll_timestamp_seconds"), later.Value("tcpstate_last_poll_timestamp_seconds"); a != b {
		t.Errorf("last complete poll moved from %v to %v while the namespace was gone", a, b)
	}
	if v := later.Value("tcpstate_sockets", "family=ipv4", "state=LISTEN"); v != 1 {
		t.Errorf("LISTEN = %v while the namespace was gone, want the last complete poll's 1", v)
	}
	if a, b := m.Value("tcpstate_polls_total"), later.Value("tcpstate_polls_total"); b <= a {
		t.Errorf("polls stopped while the namespace was gone: %v then %v", a, b)
	}

	recreateNamespace(t, name, path)
	listenIn(t, path)
	listenIn(t, path)
	m, ok = eventually(t, url, 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_sockets", "family=ipv4", "state=LISTEN") == 2
	})
	if !ok {
		t.Fatalf("the new namespace's two listeners never showed: %v", m.Value("tcpstate_sockets", "family=ipv4", "state=LISTEN"))
	}
	time.Sleep(300 * time.Millisecond)
	later = exportertest.Scrape(t, url)
	if a, b := m.Value("tcpstate_poll_errors_total", "reason=namespace"), later.Value("tcpstate_poll_errors_total", "reason=namespace"); a != b {
		t.Errorf("namespace errors still counted after it came back: %v then %v", a, b)
	}
	if a, b := m.Value("tcpstate_last_poll_timestamp_seconds"), later.Value("tcpstate_last_poll_timestamp_seconds"); b <= a {
		t.Errorf("last complete poll stuck at %v after the namespace came back", a)
	}
	if !strings.Contains(p.Log(), "polls recovered") {
		t.Errorf("recovery not logged:\n%s", p.Log())
	}
}

// TestWebConfigTLSAndBasicAuth serves metrics behind TLS and basic auth
// from --web.config.file: the right user and password get metrics over
// TLS; a wrong password, an unknown user or no credentials get 401; plain
// HTTP to the TLS port gets no metrics; a client that does not trust the
// certificate, or speaks only TLS 1.1, cannot connect.
func TestWebConfigTLSAndBasicAuth(t *testing.T) {
	dir := t.TempDir()
	cert := exportertest.WriteCert(t, dir)
	const user, password = "prometheus", "correct horse battery staple"
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(dir, "web.yml")
	if err := os.WriteFile(config, []byte("tls_server_config:\n  cert_file: tls.crt\n  key_file: tls.key\nbasic_auth_users:\n  "+user+": '"+string(hash)+"'\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := exportertest.Start(t, "--web.config.file="+config, "--poll.interval=200ms")
	secure := "https://" + p.Addr + "/metrics"

	roots := x509.NewCertPool()
	roots.AddCert(cert)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	do := func(url, u, pw string, auth bool) (int, string, http.Header) {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if auth {
			req.SetBasicAuth(u, pw)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s as %q: %v", url, u, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}

	code, body, _ := do(secure, user, password, true)
	if code != http.StatusOK || !strings.Contains(body, "tcpstate_sockets{") {
		t.Errorf("right credentials over TLS: %d\n%.300s", code, body)
	}
	for _, c := range []struct {
		what     string
		user, pw string
		auth     bool
	}{
		{"wrong password", user, "wrong", true},
		{"unknown user", "mallory", password, true},
		{"empty credentials", "", "", true},
		{"no credentials", "", "", false},
	} {
		code, body, h := do(secure, c.user, c.pw, c.auth)
		if code != http.StatusUnauthorized || strings.Contains(body, "tcpstate_") {
			t.Errorf("%s: %d, want 401 without metrics\n%.300s", c.what, code, body)
		}
		if c.what == "no credentials" && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Basic") {
			t.Errorf("no credentials: WWW-Authenticate %q, want a Basic challenge", h.Get("WWW-Authenticate"))
		}
	}
	if code, _, _ := do("https://"+p.Addr+"/", "", "", false); code != http.StatusUnauthorized {
		t.Errorf("landing page without credentials: %d, want 401", code)
	}

	plain := &http.Client{Timeout: 10 * time.Second}
	if resp, err := plain.Get("http://" + p.Addr + "/metrics"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || strings.Contains(string(b), "tcpstate_") {
			t.Errorf("plain HTTP to the TLS port: %s\n%.300s", resp.Status, b)
		}
	}

	untrusting := &http.Client{Timeout: 10 * time.Second}
	var unknownAuthority x509.UnknownAuthorityError
	if _, err := untrusting.Get(secure); !errors.As(err, &unknownAuthority) {
		t.Errorf("client not trusting the certificate: %v, want an unknown authority error", err)
	}
	old := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: roots, MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11,
	}}}
	if resp, err := old.Get(secure); err == nil {
		resp.Body.Close()
		t.Errorf("a TLS 1.1 client connected: %s", resp.Status)
	}
}

// TestSlowClientIsCutOff: a client that opens a connection and never
// finishes its request headers is disconnected by the server's header
// timeout instead of holding a connection (and a goroutine) for ever.
func TestSlowClientIsCutOff(t *testing.T) {
	t.Parallel()
	p := exportertest.Start(t, "--poll.interval=1s")
	c, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: x\r\n"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := io.ReadAll(c)
	took := time.Since(start)
	if err != nil {
		t.Fatalf("server kept a request with unfinished headers open for %v: %v", took, err)
	}
	if took > 15*time.Second {
		t.Errorf("server waited %v for the headers", took)
	}
	t.Logf("cut off after %v with %q", took, b)
}

// TestBadWebConfig: a web config that cannot be used (a directory, invalid
// YAML, an unknown field, a missing certificate, a bad password hash, and
// as root a file the exporter's user may not read) stops the exporter at
// start-up with status 1, and the last line it writes to stderr gives the
// reason on one line and names the file.
func TestBadWebConfig(t *testing.T) {
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, content string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	cases := []struct {
		name    string
		config  string
		wrapper []string
	}{
		{"directory", dir, nil},
		{"invalid YAML", write("invalid.yml", "tls_server_config: [\n", 0o644), nil},
		{"unknown field", write("unknown.yml", "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  no_such_field: 1\n", 0o644), nil},
		{"missing certificate", write("nocert.yml", "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n", 0o644), nil},
		{"bad password hash", write("hash.yml", "basic_auth_users:\n  prometheus: not-a-bcrypt-hash\n", 0o644), nil},
	}
	if os.Geteuid() == 0 {
		cases = append(cases, struct {
			name    string
			config  string
			wrapper []string
		}{"unreadable to the exporter's user", write("private.yml", "basic_auth_users: {}\n", 0o600), nobody()})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			args := []string{"--web.listen-address=127.0.0.1:0", "--web.config.file=" + c.config}
			code, stderr := exportertest.RunWith(t, exportertest.Options{Wrapper: c.wrapper}, args...)
			last := lastLine(stderr)
			if code != 1 {
				t.Errorf("exit %d, want 1\n%s", code, stderr)
			}
			if !strings.HasPrefix(last, "tcpstate_exporter: ") || !strings.Contains(last, c.config) {
				t.Errorf("last line %q: want the one-line reason, naming %s\nstderr:\n%s", last, c.config, stderr)
			}
		})
	}
}

// TestBadFlagValues: flag values the exporter cannot use are refused with
// status 2 and a one-line reason naming the flag and the value.
func TestBadFlagValues(t *testing.T) {
	for _, c := range []struct {
		args []string
		want []string
	}{
		{[]string{"--poll.interval=-1s"}, []string{"--poll.interval", "-1s"}},
		{[]string{"--poll.interval=0"}, []string{"--poll.interval"}},
		{[]string{"--attribution.states=ESTABLISHED,NO_SUCH_STATE"}, []string{"--attribution.states", "NO_SUCH_STATE"}},
		{[]string{"--attribution.interval=-1s"}, []string{"--attribution.interval"}},
		{[]string{"--web.max-requests=-1"}, []string{"--web.max-requests", "-1"}},
		{[]string{"--web.listen-address=bogus"}, []string{"--web.listen-address", "bogus", "host:port"}},
		{[]string{"--web.listen-address=:99999"}, []string{"--web.listen-address", "99999"}},
		{[]string{"--web.listen-address=127.0.0.1:0", "--web.listen-address=:no-such-service"}, []string{"--web.listen-address", "no-such-service"}},
		{[]string{"--web.listen-address=vsock://:port"}, []string{"--web.listen-address", "vsock"}},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, stderr := exportertest.Run(t, c.args...)
			last := lastLine(stderr)
			if code != 2 || !strings.HasPrefix(last, "tcpstate_exporter: ") {
				t.Errorf("exit %d, last line %q: want 2 and the one-line reason", code, last)
			}
			for _, w := range c.want {
				if !strings.Contains(last, w) {
					t.Errorf("reason %q does not name %q", last, w)
				}
			}
		})
	}
}

// TestIntegrationRestartStartsClean stops an exporter that has counted
// transitions and stays, and starts another on the same namespace: it
// starts from zero, and sockets already there are counted but have no
// known start (no transition, no stay).
func TestIntegrationRestartStartsClean(t *testing.T) {
	name, path := netnstest.New(t)
	args := []string{"--netns=" + name, "--mode=poll", "--poll.interval=50ms"}

	first := exportertest.Start(t, args...)
	if _, ok := eventually(t, first.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_polls_total") >= 2
	}); !ok {
		t.Fatal("no polls")
	}
	churned, err := loadtest.NewPopulation(path, 50)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := eventually(t, first.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_transitions_total", "from=CLOSED", "to=ESTABLISHED") == 100
	}); !ok {
		t.Fatal("the first exporter never saw 100 connections open")
	}
	churned.Close()
	m, ok := eventually(t, first.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_transitions_total", "from=ESTABLISHED", "to=CLOSED") == 100
	})
	if !ok {
		t.Fatal("the first exporter never saw them go")
	}
	if n, _, _ := m.Histogram("tcpstate_state_duration_seconds", "state=ESTABLISHED"); n != 100 {
		t.Fatalf("first exporter: %d ESTABLISHED stays, want 100", n)
	}
	standing, err := loadtest.NewPopulation(path, 10)
	if err != nil {
		t.Fatal(err)
	}
	defer standing.Close()
	time.Sleep(200 * time.Millisecond)
	first.Stop(t)

	started := time.Now()
	second := exportertest.Start(t, args...)
	m, ok = eventually(t, second.URL+"/metrics", 5*time.Second, func(m exportertest.Metrics) bool {
		return m.Value("tcpstate_polls_total") >= 3
	})
	if !ok {
		t.Fatal("no polls after the restart")
	}
	if v := m.Value("tcpstate_sockets", "family=ipv4", "state=ESTABLISHED") + m.Value("tcpstate_sockets", "family=ipv6", "state=ESTABLISHED"); v != 20 {
		t.Errorf("after the restart: %v ESTABLISHED, want the 20 standing", v)
	}
	if polls := m.Value("tcpstate_polls_total"); polls > time.Since(started).Seconds()/0.05+2 {
		t.Errorf("polls_total %v right after a restart: not counted from zero", polls)
	}
	if f := m["tcpstate_transitions_total"]; f != nil {
		for _, x := range f.GetMetric() {
			if x.GetCounter().GetValue() != 0 {
				t.Errorf("after the restart: transition %v = %v, want none", x.GetLabel(), x.GetCounter().GetValue())
			}
		}
	}
	for _, st := range stateNames {
		if n, _, _ := m.Histogram("tcpstate_state_duration_seconds", "state="+st); n != 0 {
			t.Errorf("after the restart: %d %s stays, want none", n, st)
		}
	}
	if f := m["tcpstate_poll_errors_total"]; f != nil {
		for _, x := range f.GetMetric() {
			if x.GetCounter().GetValue() != 0 {
				t.Errorf("after the restart: poll errors %v = %v", x.GetLabel(), x.GetCounter().GetValue())
			}
		}
	}
	if age := m.Value("tcpstate_oldest_in_state_seconds", "state=ESTABLISHED"); age > time.Since(started).Seconds() {
		t.Errorf("oldest ESTABLISHED %v s, older than the exporter (%v): carried over", age, time.Since(started))
	}
}

// nobody is the command prefix that runs a command as user and group 65534
// with no capability at all, in any set, and no way to gain one.
func nobody() []string {
	return []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"}
}

// requireTool fails the test when a command it needs is missing: CI
// installs them all, so a missing one is a broken machine, not a skip.
func requireTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Fatalf("%s is needed: %v", name, err)
	}
}
