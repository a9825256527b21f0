//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/tcpstate/tcpstate_exporter/netlinkdiag"
)

// namespace is a network namespace the benchmark created, with one OS
// thread parked inside it that starts every child process meant to live
// there. Children are started with PR_SET_PDEATHSIG, which fires when the
// thread that started them ends, so that thread must outlive them.
type namespace struct {
	name string
	path string
	jobs chan func()
	done chan struct{}
}

// sysctls are set in every namespace the benchmark creates: room for
// hundreds of thousands of loopback connections, and no early reuse of
// TIME_WAIT sockets, whose count is part of the population.
var sysctls = map[string]string{
	"net/ipv4/ip_local_port_range": "10000 65535", // the exporters listen below
	"net/ipv4/tcp_tw_reuse":        "0",
}

// newNamespace creates the named namespace, brings its loopback up and
// applies sysctls.
func newNamespace(name string) (*namespace, error) {
	n := &namespace{name: name, path: filepath.Join("/run/netns", name), jobs: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread stays in the namespace and ends with
		// this goroutine, after every child it started is gone.
		runtime.LockOSThread()
		defer close(n.done)
		h, err := netns.NewNamed(name)
		if err != nil {
			errc <- fmt.Errorf("create network namespace %s: %w", name, err)
			return
		}
		h.Close()
		if err := setup(); err != nil {
			netns.DeleteNamed(name)
			errc <- fmt.Errorf("set up network namespace %s: %w", name, err)
			return
		}
		errc <- nil
		for job := range n.jobs {
			job()
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return n, nil
}

func setup() error {
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	for key, value := range sysctls {
		// /proc/sys/net resolves to the namespace of the opening thread.
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0); err != nil {
			return fmt.Errorf("sysctl %s: %w", strings.ReplaceAll(key, "/", "."), err)
		}
	}
	return nil
}

// start starts cmd inside the namespace.
func (n *namespace) start(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	n.jobs <- func() { errc <- cmd.Start() }
	return <-errc
}

// enter locks the calling goroutine to its thread and moves the thread into
// the namespace for good: the goroutine must end without unlocking, which
// makes the runtime discard the thread.
func (n *namespace) enter() error {
	runtime.LockOSThread()
	target, err := netns.GetFromPath(n.path)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", n.name, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return fmt.Errorf("enter network namespace %s: %w", n.name, err)
	}
	return nil
}

// dial connects to addr from inside the namespace, with TCP keepalive off.
func (n *namespace) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := netlinkdiag.Do(n.path, func() error {
		var err error
		c, err = (&net.Dialer{KeepAlive: -1}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// delete stops the namespace's thread and removes the namespace's name.
// The namespace itself goes when the last process and socket in it do.
func (n *namespace) delete() error {
	close(n.jobs)
	<-n.done
	if err := netns.DeleteNamed(n.name); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("delete network namespace %s: %w", n.name, err)
	}
	return nil
}
