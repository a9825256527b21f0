// Package netnstest creates throw-away network namespaces for integration
// tests (netlinkdiag.Do runs code inside them). It is for tests only and
// needs root.
package netnstest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

var seq atomic.Uint64

// RequireRoot skips the test when it does not run as root. CI runs as root,
// so integration tests run there.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("integration test: needs root to create network namespaces")
	}
}

// New creates a network namespace with its loopback up, bind-mounted at
// /run/netns/<name>, and deletes it when the test ends. It returns the
// namespace's name and path.
func New(t testing.TB) (name, path string) {
	t.Helper()
	RequireRoot(t)
	name = fmt.Sprintf("tcpstate-test-%d-%d", os.Getpid(), seq.Add(1))
	if err := create(name); err != nil {
		t.Fatalf("create network namespace %s: %v", name, err)
	}
	path = filepath.Join("/run/netns", name)
	t.Cleanup(func() {
		if err := netns.DeleteNamed(name); err != nil && !os.IsNotExist(err) {
			t.Errorf("delete network namespace %s: %v", name, err)
		}
	})
	return name, path
}

// Delete removes the namespace's bind mount early, as `ip netns del` does;
// the namespace itself lives on while anything holds it.
func Delete(name string) error {
	return netns.DeleteNamed(name)
}

func create(name string) error {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name) // switches this thread into the new namespace
	if err != nil {
		if serr := netns.Set(orig); serr != nil {
			return fmt.Errorf("%w (and restoring the thread's namespace: %v)", err, serr)
		}
		runtime.UnlockOSThread()
		return err
	}
	defer ns.Close()
	err = loopbackUp()
	if serr := netns.Set(orig); serr != nil {
		// This thread is stuck in the wrong namespace: keep it locked so
		// the runtime throws it away when the goroutine ends.
		return fmt.Errorf("restore namespace: %w", serr)
	}
	runtime.UnlockOSThread()
	if err != nil {
		_ = netns.DeleteNamed(name)
	}
	return err
}

func loopbackUp() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

// Exec returns the argument list that runs argv inside the named namespace
// with `ip netns exec`.
func Exec(name string, argv ...string) []string {
	return append([]string{"ip", "netns", "exec", name}, argv...)
}
