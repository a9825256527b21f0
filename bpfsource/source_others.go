//go:build !linux || !(386 || amd64 || arm || arm64 || loong64 || mips64le || mipsle || ppc64le || riscv64)

package bpfsource

import (
	"context"
	"fmt"
	"runtime"
)

const ipprotoTCP = 6

// source is the stand-in where the program cannot run: off Linux, and on
// big-endian hosts, for which no object is built. It cannot be opened.
type source struct{}

var errPlatform = fmt.Errorf("bpfsource: the eBPF source runs only on little-endian Linux, not %s/%s: %w", runtime.GOOS, runtime.GOARCH, ErrUnsupported)

func open(Options, uint16) (*source, error) { return nil, errPlatform }

func (*source) read(context.Context, func([]Event)) error { return errPlatform }

func (*source) losses() (Losses, error) { return Losses{}, errPlatform }

func (*source) sync() <-chan struct{} { return make(chan struct{}) }

func (*source) close() error { return nil }
