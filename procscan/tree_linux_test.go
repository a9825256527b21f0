//go:build linux

package procscan

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// tree builds a fake /proc (or /run/netns) under a directory.
type tree struct {
	t    testing.TB
	root string
}

func newTree(t testing.TB) *tree {
	t.Helper()
	return &tree{t: t, root: t.TempDir()}
}

// path returns the absolute path of rel.
func (tr *tree) path(rel ...string) string {
	return filepath.Join(append([]string{tr.root}, rel...)...)
}

// file writes a file at rel, creating its directory.
func (tr *tree) file(rel, content string) {
	tr.t.Helper()
	p := tr.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		tr.t.Fatal(err)
	}
}

// link makes rel a symlink to target, creating its directory.
func (tr *tree) link(rel, target string) {
	tr.t.Helper()
	p := tr.path(rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.Symlink(target, p); err != nil {
		tr.t.Fatal(err)
	}
}

// dir makes the directory rel.
func (tr *tree) dir(rel string) {
	tr.t.Helper()
	if err := os.MkdirAll(tr.path(rel), 0o755); err != nil {
		tr.t.Fatal(err)
	}
}

// remove deletes rel and everything under it.
func (tr *tree) remove(rel string) {
	tr.t.Helper()
	if err := os.RemoveAll(tr.path(rel)); err != nil {
		tr.t.Fatal(err)
	}
}

// ino returns the inode rel stats to.
func (tr *tree) ino(rel string) uint64 {
	tr.t.Helper()
	id, err := statPath(tr.path(rel))
	if err != nil {
		tr.t.Fatal(err)
	}
	return id.ino
}

// statPath stats an ordinary path the way the package does.
func statPath(p string) (fileID, error) {
	return statAt(unix.AT_FDCWD, append([]byte(p), 0))
}
