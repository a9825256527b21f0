package e2e

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/exporter-toolkit/web"
	"go.yaml.in/yaml/v2"

	"github.com/tcpstate/tcpstate_exporter/internal/exportertest"
)

func TestDockerfile(t *testing.T) {
	var from []string
	var expose, user, entrypoint, build string
	for _, line := range strings.Split(string(readFile(t, deployPath(t, "Dockerfile"))), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		switch strings.ToUpper(f[0]) {
		case "FROM":
			from = append(from, f[1])
		case "EXPOSE":
			expose = f[1]
		case "USER":
			user = f[1]
		case "ENTRYPOINT":
			entrypoint = strings.Join(f[1:], " ")
		case "RUN":
			if strings.Contains(line, "go build") {
				build = line
			}
		}
	}
	if len(from) != 2 {
		t.Fatalf("want a two-stage build, FROM lines: %q", from)
	}
	if !strings.HasPrefix(from[0], "golang:1.26") {
		t.Errorf("build stage FROM %s, want golang:1.26", from[0])
	}
	if !regexp.MustCompile(`^gcr\.io/distroless/static(-debian\d+)?:nonroot$`).MatchString(from[1]) {
		t.Errorf("final stage FROM %s, want distroless/static:nonroot", from[1])
	}
	if expose != "9965" {
		t.Errorf("EXPOSE %q, want 9965", expose)
	}
	if user == "" || strings.HasPrefix(user, "0") || strings.HasPrefix(user, "root") {
		t.Errorf("USER %q, want a non-root user", user)
	}
	if build == "" {
		t.Error("no go build step")
	}
	if !strings.Contains(entrypoint, "tcpstate_exporter") {
		t.Errorf("ENTRYPOINT %s does not run the exporter", entrypoint)
	}
	if b := string(readFile(t, deployPath(t, "Dockerfile"))); !strings.Contains(b, "./cmd/tcpstate_exporter") || !strings.Contains(b, "CGO_ENABLED=0") {
		t.Error("the build stage does not build ./cmd/tcpstate_exporter statically (CGO_ENABLED=0)")
	}
}

// TestEveryGoBuildIsStatic: every build command the project gives (in
// the code blocks of its Markdown, in its Dockerfile and scripts) builds
// with CGO_ENABLED=0. Where a C compiler is installed a plain go build
// makes a cgo binary, which cannot drop its capabilities.
func TestEveryGoBuildIsStatic(t *testing.T) {
	static := regexp.MustCompile(`(^|[\s;&|(])CGO_ENABLED=0 ([A-Z_]+=\S* )*go build\b`)
	root := repoRoot(t)
	found := 0
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == ".git" || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		name := d.Name()
		markdown := strings.HasSuffix(name, ".md")
		if !markdown && !strings.HasPrefix(name, "Dockerfile") && !strings.HasSuffix(name, ".sh") && path != filepath.Join(root, ".ci", "run") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		code := !markdown
		for i, line := range strings.Split(string(b), "\n") {
			if markdown && strings.HasPrefix(strings.TrimSpace(line), "```") {
				code = !code
				continue
			}
			if !code || !strings.Contains(line, "go build") {
				continue
			}
			found++
			if !static.MatchString(line) {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s:%d: a go build without CGO_ENABLED=0: %s", rel, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if found == 0 {
		t.Error("no go build command found at all")
	}
}

// TestCIRunsTheREADMETestCommand: the README's test command (its second
// code block) is one line that .ci/run runs as it is, installs without
// recommends (Debian's prometheus recommends prometheus-node-exporter),
// and runs the tests of deploy/check and internal/browsertest (with the
// chromium it installs), which go test ./... does not enter.
func TestCIRunsTheREADMETestCommand(t *testing.T) {
	var blocks [][]string
	var block []string
	in := false
	for _, line := range strings.Split(string(readFile(t, filepath.Join(repoRoot(t), "README.md"))), "\n") {
		switch {
		case !in && strings.HasPrefix(line, "```"):
			in, block = true, nil
		case in && line == "```":
			in, blocks = false, append(blocks, block)
		case in:
			block = append(block, line)
		}
		if len(blocks) == 2 {
			break
		}
	}
	if len(blocks) < 2 || len(blocks[1]) != 1 {
		t.Fatalf("README's second code block is not one command: %q", blocks)
	}
	command := blocks[1][0]
	for _, want := range []string{"apt-get install -y --no-install-recommends ", " gcc ", "go test -race ./...", "(cd deploy/check && go test ./...)", " chromium ", "(cd internal/browsertest && go test ./...)"} {
		if !strings.Contains(command, want) {
			t.Errorf("README's test command lacks %q: %s", want, command)
		}
	}
	ci := strings.Split(string(readFile(t, filepath.Join(repoRoot(t), ".ci", "run"))), "\n")
	if !slices.Contains(ci, command) {
		t.Errorf(".ci/run does not run README's test command as it is:\n%s", command)
	}
}

// TestWebConfigExample validates deploy/web-config.yml with the
// exporter-toolkit the exporter uses, its certificate paths pointed at a
// throw-away certificate. The password hash is a placeholder that must
// still have bcrypt's form.
func TestWebConfigExample(t *testing.T) {
	src := readFile(t, deployPath(t, "web-config.yml"))
	var cfg struct {
		TLS struct {
			CertFile string `yaml:"cert_file"`
			KeyFile  string `yaml:"key_file"`
		} `yaml:"tls_server_config"`
		Users map[string]string `yaml:"basic_auth_users"`
	}
	if err := yaml.Unmarshal(src, &cfg); err != nil {
		t.Fatal(err)
	}
	if cfg.TLS.CertFile == "" || cfg.TLS.KeyFile == "" {
		t.Fatal("no tls_server_config cert_file and key_file")
	}
	if len(cfg.Users) == 0 {
		t.Fatal("no basic_auth_users")
	}
	for u, h := range cfg.Users {
		if !strings.Contains(h, "REPLACE") {
			t.Errorf("user %s: hash %q is not an obvious placeholder", u, h)
		}
	}

	dir := t.TempDir()
	exportertest.WriteCert(t, dir)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	conf := strings.NewReplacer(cfg.TLS.CertFile, certFile, cfg.TLS.KeyFile, keyFile).Replace(string(src))
	path := filepath.Join(dir, "web-config.yml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := web.Validate(path); err != nil {
		t.Fatalf("web-config.yml: %v", err)
	}
}
