package netnstest

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

func TestIntegrationNewAndDo(t *testing.T) {
	_, path := New(t)
	var own, inside unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &own); err != nil {
		t.Fatal(err)
	}
	if err := netlinkdiag.Do(path, func() error { return unix.Stat("/proc/thread-self/ns/net", &inside) }); err != nil {
		t.Fatal(err)
	}
	if own.Ino == inside.Ino {
		t.Fatalf("Do ran in the caller's namespace (inode %d)", own.Ino)
	}
	var after unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &after); err != nil {
		t.Fatal(err)
	}
	if after.Ino != own.Ino {
		t.Fatalf("thread left in namespace %d, want %d", after.Ino, own.Ino)
	}
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("namespace path: %v", err)
	}
}
