// Package eventlock keeps tests that count kernel TCP events exactly apart
// from tests that flood the kernel with them, across the test binaries that
// go test runs at once.
//
// Every precise-mode exporter and every bpfsource test program runs on
// every TCP state change of the host. Under another test's churn of tens
// of thousands of connections a second, a program is now and then
// interrupted on its CPU by a change it would have to record too, which the
// kernel skips (recursion misses): the test counting that program's events
// exactly then fails for another test's load. Several exporters, each with
// its program, counting at once make such misses likelier too. So every
// test that counts events exactly, and every test that churns, takes the
// lock, one at a time.
package eventlock

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// path is the lock file every test binary on the machine opens.
var path = filepath.Join(os.TempDir(), "tcpstate_exporter-events.lock")

// Exact holds the lock until the test ends: for a test that counts kernel
// events exactly. Call it after t.Parallel, never before.
func Exact(t testing.TB) { hold(t, unix.LOCK_EX) }

// Churn holds the lock until the test ends: for a test that floods the
// kernel with TCP state changes.
func Churn(t testing.TB) { hold(t, unix.LOCK_EX) }

func hold(t testing.TB, how int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatalf("eventlock: %v", err)
	}
	for {
		err = unix.Flock(int(f.Fd()), how)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		t.Fatalf("eventlock: flock %s: %v", path, err)
	}
	// Closing the file releases the lock.
	t.Cleanup(func() { f.Close() })
}
