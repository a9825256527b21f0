// Command tcpstate_bench measures what watching TCP states costs, side by
// side on one socket population, and prints one table of medians with
// ratios. It needs root, and removes everything it creates.
//
// For each size it creates a network namespace, fills it with about that
// many sockets (90% ESTABLISHED, 2.5% each FIN_WAIT_2 and CLOSE_WAIT, 5%
// TIME_WAIT kept up by a bounded churn, a quarter IPv6), held by child
// processes of under 9000 descriptors each, and measures, run after run:
// ss -tan and cat /proc/net/tcp*; our sock_diag dump and our poll (dump plus
// tracking) in this process, with their heap allocations; then the
// tcpstate_exporter binary polling the namespace at its default interval:
// poll time, CPU time, scrape latency and RSS; node_exporter's tcpstat
// collector, when prometheus-node-exporter is installed; and whether polls
// pile up at an interval shorter than a poll.
//
// Then, under a churn of new loopback connections (--churn a second, each
// closed client-first), it runs the exporter polling every second and in
// precise mode, in turns, and sets their CPU side by side: the process's
// own, plus in precise mode its BPF program's run time, counted by the
// kernel while kernel.bpf_stats_enabled is on (the run puts it back as it
// found it). Last, it drives --throughput state changes a second at precise
// mode for a few seconds and reports what was applied and lost.
//
//	go build -o /tmp/tcpstate/ ./cmd/...
//	/tmp/tcpstate/tcpstate_bench --sockets=10000,100000,200000
package main
