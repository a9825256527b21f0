// Package bpfsource loads and attaches a BPF program on the kernel's
// inet_sock_set_state tracepoint and streams every TCP state change, decoded,
// with the socket's cookie and network namespace, counting what it loses.
package bpfsource
