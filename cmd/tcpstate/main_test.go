package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"

	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
)

func TestMain(m *testing.M) { exportertest.Main(m) }

// runTool runs the command in this process and returns its exit code,
// standard output and standard error.
func runTool(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(args, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestBadInvocations(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--no-such-flag"}, 2, "no-such-flag"},
		{[]string{"--interval=soon"}, 2, "--interval=soon"},
		{[]string{"--interval=10ms"}, 2, "at least 100ms"},
		{[]string{"--top=-1"}, 2, "--top=-1"},
		{[]string{"--top=many"}, 2, "many"},
		{[]string{"--json", "--watch"}, 2, "do not go together"},
		{[]string{"--from=127.0.0.1:9965"}, 2, "want an exporter's URL"},
		{[]string{"--from=ftp://127.0.0.1:9965"}, 2, "want an exporter's URL"},
		{[]string{"--from=http://127.0.0.1:9965", "--netns=x"}, 2, "do not go together"},
		{[]string{"--from=http://127.0.0.1:1"}, 1, "cannot be reached"},
		{[]string{"extra"}, 2, "extra"},
		{[]string{"--netns=/nonexistent/netns"}, 1, "/nonexistent/netns"},
		{[]string{"--netns=tcpstate-no-such-namespace"}, 1, "tcpstate-no-such-namespace"},
		{[]string{"--json", "--netns=/nonexistent/netns"}, 1, "/nonexistent/netns"},
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			code, stdout, stderr := runTool(t, c.args...)
			if code != c.code {
				t.Errorf("exit code %d, want %d\n%s", code, c.code, stderr)
			}
			if stdout != "" {
				t.Errorf("standard output is not empty:\n%s", stdout)
			}
			lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "tcpstate: ") || !strings.Contains(lines[0], c.want) {
				t.Errorf("standard error is not one line starting tcpstate: and giving the reason (%q):\n%s", c.want, stderr)
			}
		})
	}
}

// TestOwnNamespace: with no argument the command reads its own namespace,
// which needs no privilege, and prints every documented state in order.
func TestOwnNamespace(t *testing.T) {
	code, stdout, stderr := runTool(t)
	if code != 0 {
		t.Fatalf("exit code %d\n%s", code, stderr)
	}
	var states []string
	for _, line := range strings.Split(stdout, "\n")[1:12] {
		states = append(states, strings.Fields(line)[0])
	}
	if got, want := strings.Join(states, " "), "CLOSED LISTEN SYN_RCVD SYN_SEND ESTABLISHED FIN_WAIT_1 FIN_WAIT_2 TIME_WAIT CLOSING CLOSE_WAIT LAST_ACK"; got != want {
		t.Errorf("states %q, want %q\n%s", got, want, stdout)
	}
}

// TestHelp: --help names every flag with its default, and exits 0.
func TestHelp(t *testing.T) {
	bin := exportertest.Build(t, "tcpstate", nil, "build", "./cmd/tcpstate")
	out, err := exec.Command(bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("--help: %v\n%s", err, out)
	}
	help := strings.Join(strings.Fields(string(out)), " ")
	for _, want := range []string{"--netns", "--[no-]json", "--[no-]watch", `--interval="1s"`, "at least 100ms", "--top=5", "--from=FROM", "JSON API"} {
		if !strings.Contains(help, want) {
			t.Errorf("--help does not say %q:\n%s", want, out)
		}
	}
}
