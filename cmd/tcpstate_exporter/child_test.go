package main

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// child is a helper process the tests talk to in lines: it answers on its
// standard output and exits when its standard input closes.
type child struct {
	name   string
	pid    int
	stdin  io.WriteCloser
	lines  chan string
	stderr string // the file its standard error goes to
}

// startChild starts argv with env added to its environment. When the test
// ends it closes the child's standard input, and fails the test unless the
// child then exits with status 0 within 10 s.
func startChild(t *testing.T, name string, env []string, argv ...string) *child {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := os.Create(filepath.Join(t.TempDir(), "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer stderr.Close()
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{name: name, pid: cmd.Process.Pid, stdin: stdin, lines: make(chan string, 4), stderr: stderr.Name()}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			c.lines <- sc.Text()
		}
		close(c.lines)
		io.Copy(io.Discard, stdout)
	}()
	t.Cleanup(func() {
		stdin.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("%s: %v\n%s", name, err, c.log())
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("%s did not exit", name)
		}
	})
	return c
}

// send writes line to the child's standard input.
func (c *child) send(t *testing.T, line string) {
	t.Helper()
	if _, err := io.WriteString(c.stdin, line+"\n"); err != nil {
		t.Fatal(err)
	}
}

// await waits for a line starting with prefix and returns the rest ("" takes
// the next line whole).
func (c *child) await(t *testing.T, prefix string) string {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-c.lines:
			if !ok {
				t.Fatalf("%s exited before %q: %s", c.name, prefix, c.log())
			}
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return rest
			}
		case <-deadline:
			t.Fatalf("%s: no %q after 20 s: %s", c.name, prefix, c.log())
		}
	}
}

// log returns what the child has written to its standard error so far.
func (c *child) log() string {
	b, _ := os.ReadFile(c.stderr)
	return string(b)
}
