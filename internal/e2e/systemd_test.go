package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// unitDirectives returns the directives of a unit file's [Service] section,
// each key with its values in order.
func unitDirectives(t testing.TB, unit []byte) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(unit))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "", strings.HasPrefix(line, "#"), strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		case section == "Service":
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("unit file: malformed line %q", line)
			}
			out[k] = append(out[k], v)
		}
	}
	return out
}

func TestSystemdUnit(t *testing.T) {
	path := deployPath(t, "systemd", "tcpstate_exporter.service")
	unit := readFile(t, path)
	d := unitDirectives(t, unit)
	last := func(k string) string {
		if v := d[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}

	const binary = "/usr/local/bin/tcpstate_exporter"
	t.Run("hardening", func(t *testing.T) {
		for k, want := range map[string]string{
			"User":                    "tcpstate_exporter",
			"NoNewPrivileges":         "yes",
			"ProtectSystem":           "strict",
			"ProtectHome":             "yes",
			"PrivateTmp":              "yes",
			"PrivateDevices":          "yes",
			"ProtectKernelTunables":   "yes",
			"ProtectKernelModules":    "yes",
			"ProtectControlGroups":    "yes",
			"RestrictNamespaces":      "yes",
			"SystemCallArchitectures": "native",
			"RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
			"CapabilityBoundingSet":   "",
			"AmbientCapabilities":     "",
		} {
			if _, ok := d[k]; !ok {
				t.Errorf("%s= is not set", k)
			} else if got := last(k); got != want {
				t.Errorf("%s=%s, want %s=%s", k, got, k, want)
			}
		}
		// The exporter must see the host's sockets.
		if v, ok := d["PrivateNetwork"]; ok {
			t.Errorf("PrivateNetwork=%v: the exporter would see only an empty namespace", v)
		}
		if exec := last("ExecStart"); !strings.HasPrefix(exec, binary+" ") && exec != binary {
			t.Errorf("ExecStart=%s, want %s ...", exec, binary)
		}
		for _, s := range []string{"--netns", "CAP_SYS_ADMIN", "--mode=precise", "CAP_BPF", "CAP_PERFMON"} {
			if !bytes.Contains(unit, []byte(s)) {
				t.Errorf("the unit's comments do not explain %s", s)
			}
		}
	})

	t.Run("systemd-analyze verify", func(t *testing.T) {
		verifyUnit(t, unit, binary, "")
	})

	// The drop-ins the unit's comments document: each must verify, each
	// that grants capabilities must let the exporter drop them (capset),
	// and precise mode's grants its two and the bpf system call.
	t.Run("documented drop-ins", func(t *testing.T) {
		dropIns := documentedDropIns(unit)
		if len(dropIns) == 0 {
			t.Fatal("the unit's comments document no drop-in")
		}
		var precise bool
		for i, dropIn := range dropIns {
			d := unitDirectives(t, []byte(dropIn))
			caps := strings.Join(d["AmbientCapabilities"], " ")
			filter := strings.Fields(strings.Join(d["SystemCallFilter"], " "))
			if caps != "" {
				if got := strings.Join(d["CapabilityBoundingSet"], " "); got != caps {
					t.Errorf("drop-in %d: CapabilityBoundingSet=%s, AmbientCapabilities=%s; want the same on both", i+1, got, caps)
				}
				if !slices.Contains(filter, "capset") {
					t.Errorf("drop-in %d grants %s but does not allow capset, which dropping them takes:\n%s", i+1, caps, dropIn)
				}
			}
			if strings.Contains(caps, "CAP_BPF") {
				precise = true
				if !strings.Contains(caps, "CAP_PERFMON") || !slices.Contains(filter, "bpf") {
					t.Errorf("drop-in %d: precise mode needs CAP_BPF, CAP_PERFMON and the bpf system call:\n%s", i+1, dropIn)
				}
			}
			t.Run(fmt.Sprintf("verify %d", i+1), func(t *testing.T) {
				verifyUnit(t, unit, binary, dropIn)
			})
		}
		if !precise {
			t.Error("no documented drop-in for precise mode (CAP_BPF)")
		}
	})

	t.Run("sysusers", func(t *testing.T) {
		sysusers, err := exec.LookPath("systemd-sysusers")
		if err != nil {
			t.Skip("systemd-sysusers not installed")
		}
		root := t.TempDir()
		if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
			t.Fatal(err)
		}
		conf := deployPath(t, "systemd", "tcpstate_exporter.sysusers")
		if out, err := run("", sysusers, "--root="+root, conf); err != nil {
			t.Fatalf("systemd-sysusers: %v\n%s", err, out)
		}
		passwd := string(readFile(t, filepath.Join(root, "etc", "passwd")))
		var found bool
		for _, line := range strings.Split(passwd, "\n") {
			f := strings.Split(line, ":")
			if len(f) == 7 && f[0] == last("User") {
				found = true
				if f[2] == "0" {
					t.Errorf("user %s is root", f[0])
				}
				if !strings.HasSuffix(f[6], "nologin") {
					t.Errorf("user %s has shell %s", f[0], f[6])
				}
			}
		}
		if !found {
			t.Fatalf("sysusers file creates no user %s:\n%s", last("User"), passwd)
		}
	})

	t.Run("defaults", func(t *testing.T) {
		if !bytes.Contains(unit, []byte("EnvironmentFile=-/etc/default/tcpstate_exporter")) || !strings.Contains(last("ExecStart"), "$ARGS") {
			t.Fatal("the unit does not take $ARGS from /etc/default/tcpstate_exporter")
		}
		if !bytes.Contains(readFile(t, deployPath(t, "systemd", "tcpstate_exporter.default")), []byte("\nARGS=")) {
			t.Fatal("tcpstate_exporter.default sets no ARGS")
		}
	})
}

// documentedDropIns returns the drop-ins a unit's comments show: a
// "[Service]" line indented in a comment, and the directives indented the
// same way under it.
func documentedDropIns(unit []byte) []string {
	const prefix = "#   "
	var out []string
	var cur []string
	flush := func() {
		if len(cur) > 1 {
			out = append(out, strings.Join(cur, "\n")+"\n")
		}
		cur = nil
	}
	for _, line := range strings.Split(string(unit), "\n") {
		body, ok := strings.CutPrefix(line, prefix)
		switch {
		case ok && body == "[Service]":
			flush()
			cur = []string{body}
		case ok && cur != nil && strings.Contains(body, "=") && !strings.HasPrefix(body, " "):
			cur = append(cur, body)
		default:
			flush()
		}
	}
	flush()
	return out
}

// verifyUnit runs systemd-analyze verify on the unit, with dropIn as a
// drop-in if it is not empty, and fails on any warning about either.
func verifyUnit(t *testing.T, unit []byte, binary, dropIn string) {
	t.Helper()
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	// verify wants ExecStart's program to exist: point it at an
	// executable that does, this test's own binary.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	copyPath := filepath.Join(dir, "tcpstate_exporter.service")
	if err := os.WriteFile(copyPath, bytes.ReplaceAll(unit, []byte("ExecStart="+binary), []byte("ExecStart="+self)), 0o644); err != nil {
		t.Fatal(err)
	}
	if dropIn != "" {
		// verify reads drop-ins from beside the unit it is given.
		d := copyPath + ".d"
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "override.conf"), []byte(dropIn), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := run("", analyze, "verify", copyPath)
	// Warnings about the unit or the drop-in (an unknown or misspelt
	// directive, for one) do not change the exit status; they name the
	// file.
	if err != nil || strings.Contains(out, "tcpstate_exporter.service") {
		t.Fatalf("systemd-analyze verify: %v\n%s\n%s", err, out, dropIn)
	}
}
