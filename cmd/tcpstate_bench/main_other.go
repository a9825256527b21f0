//go:build !linux

package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "tcpstate_bench: sock_diag and network namespaces are Linux only")
	os.Exit(1)
}
