// Package collector is the domain of tcpstate_exporter: the eleven documented
// TCP states and the kernel-to-documented mapping, per-socket time-in-state
// tracking keyed by socket cookie, and the poll loop that publishes immutable
// snapshots for scrapes to read without waiting for a dump.
package collector
