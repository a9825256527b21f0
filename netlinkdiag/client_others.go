//go:build !linux

package netlinkdiag

import (
	"context"
	"errors"
	"fmt"
	"runtime"
)

var errUnsupported = fmt.Errorf("netlinkdiag: sock_diag is unsupported on %s: %w", runtime.GOOS, errors.ErrUnsupported)

// conn is the stand-in for OSes without netlink: it cannot be opened.
type conn struct{}

func dial(string) (*conn, error) { return nil, errUnsupported }

func (*conn) close() error { return errUnsupported }

func (*conn) netnsInode() uint64 { return 0 }

func (*conn) dumpTCP(context.Context, Request, func(*Socket) error) error {
	return errUnsupported
}

func do(string, func() error) error { return errUnsupported }

func (*conn) portSettings() (PortSettings, error) { return PortSettings{}, errUnsupported }
