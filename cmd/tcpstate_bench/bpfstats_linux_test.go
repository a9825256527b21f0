//go:build linux

package main

import (
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

func TestFdinfoProgID(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		want       ebpf.ProgramID
		ok         bool
	}{
		{"program", "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2083\nprog_type:\t26\nprog_jited:\t1\nprog_tag:\t3b185187f1855c4c\nmemlock:\t4096\nprog_id:\t42\nrun_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t0\nverified_insns:\t37\n", 42, true},
		{"tracing link", "pos:\t0\nflags:\t02000000\nmnt_id:\t15\nino:\t2083\nlink_type:\ttracing\nlink_id:\t7\nprog_tag:\t3b185187f1855c4c\nprog_id:\t1234\nattach_type:\t24\ntarget_obj_id:\t1\ntarget_btf_id:\t120466\n", 1234, true},
		{"map", "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2083\nmap_type:\t27\nkey_size:\t0\nvalue_size:\t0\nmax_entries:\t4194304\nmap_flags:\t0x0\nmap_extra:\t0x0\nmemlock:\t4206592\nmap_id:\t9\nfrozen:\t0\n", 0, false},
		{"socket", "pos:\t0\nflags:\t02000002\nmnt_id:\t9\nino:\t81234\n", 0, false},
		{"no value", "prog_id:\n", 0, false},
		{"zero", "prog_id:\t0\n", 0, false},
		{"not a number", "prog_id:\tabc\n", 0, false},
		{"too large", "prog_id:\t4294967296\n", 0, false},
		{"prefix of another key", "prog_id_x:\t5\n", 0, false},
		{"empty", "", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := fdinfoProgID(tc.text)
			if got != tc.want || ok != tc.ok {
				t.Errorf("fdinfoProgID = %d, %v; want %d, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

func TestStatCPU(t *testing.T) {
	// utime 1234 and stime 56 ticks of 10 ms.
	const line = "4242 (tcpstate_export) S 1 4242 4242 0 -1 4194560 9156 0 0 0 1234 56 0 0 20 0 9 0 1861508 1262252032 7042 18446744073709551615 1 1 0 0 0 0 0 0 1073741824 0 0 0 17 1 0 0 0 0 0\n"
	got, err := statCPU(line)
	if err != nil {
		t.Fatal(err)
	}
	if want := 12900 * time.Millisecond; got != want {
		t.Errorf("statCPU = %v, want %v", got, want)
	}
	// A command name may hold spaces and parentheses.
	got, err = statCPU("7 (a) b (c) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 5 0 0\n")
	if err != nil {
		t.Fatal(err)
	}
	if want := 70 * time.Millisecond; got != want {
		t.Errorf("statCPU with ') ' in the name = %v, want %v", got, want)
	}
	for _, bad := range []string{
		"",
		"4242 tcpstate S 1",
		"4242 (x) S 1 2 3 4 5 6 7 8 9 10",
		"4242 (x) S 1 4242 4242 0 -1 0 0 0 0 0 -3 4",
		"4242 (x) S 1 4242 4242 0 -1 0 0 0 0 0 3 four",
	} {
		if got, err := statCPU(bad); err == nil {
			t.Errorf("statCPU(%q) = %v, want an error", bad, got)
		}
	}
}
