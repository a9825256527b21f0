// Package netlinkdiag dumps the TCP sockets of a network namespace over
// NETLINK_SOCK_DIAG, streaming and decoding each inet_diag_msg in place
// without per-socket allocations, and maps kernel errors to Go errors.
package netlinkdiag
