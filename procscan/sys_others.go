//go:build !linux

package procscan

import (
	"errors"
	"fmt"
	"os"
	"runtime"
)

var errUnsupported = fmt.Errorf("procscan: /proc is unsupported on %s: %w", runtime.GOOS, errors.ErrUnsupported)

func openDir(int, []byte) (int, error)            { return -1, errUnsupported }
func openRoot(string) (int, error)                { return -1, errUnsupported }
func closeFD(int)                                 {}
func readDirents(int, []byte) (int, error)        { return 0, errUnsupported }
func readlinkAt(int, []byte, []byte) (int, error) { return 0, errUnsupported }
func statAt(int, []byte) (fileID, error)          { return fileID{}, errUnsupported }
func readAt(int, []byte, []byte) (int, error)     { return 0, errUnsupported }
func denied(err error) bool                       { return errors.Is(err, os.ErrPermission) }
