package bpfsource

// tcpstate_bpfel.o and tcpstate_bpfel.go are generated from tcpstate.bpf.c
// and committed, so that building needs no clang. Regenerating needs
// Debian's clang 14, llvm-strip and libbpf-dev; CI regenerates and fails on
// any difference. bpf2go runs in this directory with relative paths, so the
// object holds no path of the machine that built it.
//go:generate go tool bpf2go -target bpfel -type event tcpstate tcpstate.bpf.c -- -Wall -Werror
