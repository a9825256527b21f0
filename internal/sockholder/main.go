// Command sockholder holds TCP sockets on loopback for tests that need them
// owned by a process with a chosen name: run a copy of it under that name
// (the kernel's comm is the executable's file name).
//
//	sockholder serve -port P -accept N   listen, accept N connections, never close them
//	sockholder dial -port P -n N [-close] connect N times; with -close, close each at once
//
// It prints "ready <port>" when its sockets are in place and exits when its
// standard input closes.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sockholder:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return fmt.Errorf("want a mode: serve or dial")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	port := fs.Int("port", 0, "port on 127.0.0.1 (serve: 0 picks one)")
	accept := fs.Int("accept", 0, "serve: connections to accept and hold")
	n := fs.Int("n", 1, "dial: connections to make")
	closeNow := fs.Bool("close", false, "dial: close each connection at once")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	var held []io.Closer
	switch args[0] {
	case "serve":
		var lc net.ListenConfig
		lc.SetMultipathTCP(false) // plain TCP, whatever the Go default
		l, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:"+strconv.Itoa(*port))
		if err != nil {
			return err
		}
		held = append(held, l)
		_, p, _ := net.SplitHostPort(l.Addr().String())
		fmt.Println("ready", p)
		for range *accept {
			c, err := l.Accept()
			if err != nil {
				return err
			}
			held = append(held, c)
		}
		fmt.Println("accepted", *accept)
	case "dial":
		d := net.Dialer{KeepAlive: -1, Timeout: 5 * time.Second}
		for range *n {
			c, err := d.Dial("tcp4", "127.0.0.1:"+strconv.Itoa(*port))
			if err != nil {
				return err
			}
			if *closeNow {
				c.Close()
				continue
			}
			held = append(held, c)
		}
		fmt.Println("ready", *port)
	default:
		return fmt.Errorf("unknown mode %q", args[0])
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	for _, c := range held {
		c.Close()
	}
	return nil
}
