package e2e

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
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
		for _, s := range []string{"--netns", "CAP_SYS_ADMIN"} {
			if !bytes.Contains(unit, []byte(s)) {
				t.Errorf("the unit's comments do not explain %s", s)
			}
		}
	})

	t.Run("systemd-analyze verify", func(t *testing.T) {
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
		copyPath := filepath.Join(t.TempDir(), "tcpstate_exporter.service")
		if err := os.WriteFile(copyPath, bytes.ReplaceAll(unit, []byte("ExecStart="+binary), []byte("ExecStart="+self)), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := run("", analyze, "verify", copyPath)
		// Warnings about the unit (an unknown or misspelt directive, for
		// one) do not change the exit status; they name the file.
		if err != nil || strings.Contains(out, "tcpstate_exporter.service") {
			t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
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
