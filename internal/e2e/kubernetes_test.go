package e2e

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v2"
)

const (
	imageRepository = "ghcr.io/tcpstate/tcpstate_exporter"
	metricsPort     = 9965
)

// k8sDoc is one YAML document of a manifest, decoded into the fields the
// tests look at.
type k8sDoc struct {
	file       string
	raw        []byte
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name      string            `yaml:"name"`
		Namespace string            `yaml:"namespace"`
		Labels    map[string]string `yaml:"labels"`
	} `yaml:"metadata"`
}

type probe struct {
	HTTPGet *struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type containerPort struct {
	Name          string `yaml:"name"`
	ContainerPort int    `yaml:"containerPort"`
}

type container struct {
	Name           string          `yaml:"name"`
	Image          string          `yaml:"image"`
	Args           []string        `yaml:"args"`
	Ports          []containerPort `yaml:"ports"`
	LivenessProbe  *probe          `yaml:"livenessProbe"`
	ReadinessProbe *probe          `yaml:"readinessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	SecurityContext *securityContext `yaml:"securityContext"`
}

type securityContext struct {
	RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
	RunAsUser                *int  `yaml:"runAsUser"`
	ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
	AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
	Privileged               *bool `yaml:"privileged"`
	Capabilities             *struct {
		Add  []string `yaml:"add"`
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
}

type daemonSet struct {
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				HostNetwork     bool             `yaml:"hostNetwork"`
				HostPID         bool             `yaml:"hostPID"`
				SecurityContext *securityContext `yaml:"securityContext"`
				Containers      []container      `yaml:"containers"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type service struct {
	Spec struct {
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort any    `yaml:"targetPort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type serviceMonitor struct {
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Endpoints []struct {
			Port string `yaml:"port"`
			Path string `yaml:"path"`
		} `yaml:"endpoints"`
	} `yaml:"spec"`
}

// k8sManifests parses every YAML document under deploy/kubernetes.
func k8sManifests(t testing.TB) []k8sDoc {
	t.Helper()
	dir := deployPath(t, "kubernetes")
	var files []string
	for _, pat := range []string{"*.yaml", "*.yml"} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, m...)
	}
	if len(files) == 0 {
		t.Fatal("no manifests under deploy/kubernetes")
	}
	var docs []k8sDoc
	for _, f := range files {
		docs = append(docs, decodeK8sDocs(t, filepath.Base(f), readFile(t, f))...)
	}
	return docs
}

// decodeK8sDocs decodes the YAML documents of b, which came from file.
func decodeK8sDocs(t testing.TB, file string, b []byte) []k8sDoc {
	t.Helper()
	var docs []k8sDoc
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var v any
		err := dec.Decode(&v)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if v == nil {
			continue
		}
		raw, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		d := k8sDoc{file: file, raw: raw}
		if err := yaml.Unmarshal(raw, &d); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if d.APIVersion == "" || d.Kind == "" {
			t.Fatalf("%s: a document without apiVersion or kind", file)
		}
		docs = append(docs, d)
	}
	return docs
}

// only returns the one document of kind, decoded into v.
func only(t testing.TB, docs []k8sDoc, kind string, v any) k8sDoc {
	t.Helper()
	var found []k8sDoc
	for _, d := range docs {
		if d.Kind == kind {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one %s under deploy/kubernetes, found %d", kind, len(found))
	}
	if err := yaml.Unmarshal(found[0].raw, v); err != nil {
		t.Fatalf("%s: %v", found[0].file, err)
	}
	return found[0]
}

func isTrue(b *bool) bool { return b != nil && *b }

// portNumber resolves a probe or target port, by number or container port name.
func portNumber(c container, port any) int {
	switch p := port.(type) {
	case int:
		return p
	case string:
		for _, cp := range c.Ports {
			if cp.Name == p {
				return cp.ContainerPort
			}
		}
	}
	return 0
}

func TestKubernetesManifests(t *testing.T) {
	docs := k8sManifests(t)

	var ds daemonSet
	dsDoc := only(t, docs, "DaemonSet", &ds)
	pod := ds.Spec.Template.Spec
	t.Run("DaemonSet", func(t *testing.T) {
		if !pod.HostNetwork {
			t.Error("hostNetwork is not true: the exporter would see only its pod's sockets")
		}
		if pod.HostPID {
			t.Error("hostPID is true; the exporter does not need it")
		}
		for k, v := range ds.Spec.Selector.MatchLabels {
			if ds.Spec.Template.Metadata.Labels[k] != v {
				t.Errorf("selector %s=%s does not match the pod template's labels", k, v)
			}
		}
		if len(pod.Containers) != 1 {
			t.Fatalf("want one container, have %d", len(pod.Containers))
		}
		c := pod.Containers[0]
		if repo, _, _ := strings.Cut(c.Image, ":"); repo != imageRepository {
			t.Errorf("image %q, want %s:<tag>", c.Image, imageRepository)
		}
		if !slices.ContainsFunc(c.Ports, func(p containerPort) bool { return p.ContainerPort == metricsPort }) {
			t.Errorf("no container port %d", metricsPort)
		}
		if !slices.Contains(c.Args, "--web.listen-address=:9965") {
			t.Errorf("args %q do not listen on :%d", c.Args, metricsPort)
		}
		for name, p := range map[string]*probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
			if p == nil || p.HTTPGet == nil {
				t.Errorf("no HTTP %s probe", name)
				continue
			}
			if got := portNumber(c, p.HTTPGet.Port); got != metricsPort {
				t.Errorf("%s probe on port %v (%d), want %d", name, p.HTTPGet.Port, got, metricsPort)
			}
		}
		for _, r := range []string{"cpu", "memory"} {
			if c.Resources.Requests[r] == "" {
				t.Errorf("no %s request", r)
			}
			if c.Resources.Limits[r] == "" {
				t.Errorf("no %s limit", r)
			}
		}
		sc := c.SecurityContext
		if sc == nil {
			t.Fatal("container has no securityContext")
		}
		if !isTrue(sc.RunAsNonRoot) && (pod.SecurityContext == nil || !isTrue(pod.SecurityContext.RunAsNonRoot)) {
			t.Error("runAsNonRoot is not set")
		}
		if !isTrue(sc.ReadOnlyRootFilesystem) {
			t.Error("readOnlyRootFilesystem is not set")
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation is not false")
		}
		if isTrue(sc.Privileged) {
			t.Error("privileged")
		}
		if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) || len(sc.Capabilities.Add) != 0 {
			t.Errorf("capabilities %+v, want drop [ALL] and none added", sc.Capabilities)
		}
	})

	var svc service
	svcDoc := only(t, docs, "Service", &svc)
	t.Run("Service", func(t *testing.T) {
		if d := cmp.Diff(ds.Spec.Selector.MatchLabels, svc.Spec.Selector); d != "" {
			t.Errorf("Service selector differs from the DaemonSet's (-daemonset +service)\n%s", d)
		}
		if len(svc.Spec.Ports) != 1 || svc.Spec.Ports[0].Port != metricsPort || svc.Spec.Ports[0].Name != "metrics" {
			t.Errorf("ports %+v, want one named metrics on %d", svc.Spec.Ports, metricsPort)
		} else if got := portNumber(pod.Containers[0], svc.Spec.Ports[0].TargetPort); got != metricsPort {
			t.Errorf("targetPort %v resolves to %d, want %d", svc.Spec.Ports[0].TargetPort, got, metricsPort)
		}
		if svcDoc.Metadata.Namespace != dsDoc.Metadata.Namespace {
			t.Errorf("Service in namespace %q, DaemonSet in %q", svcDoc.Metadata.Namespace, dsDoc.Metadata.Namespace)
		}
	})

	var sm serviceMonitor
	only(t, docs, "ServiceMonitor", &sm)
	t.Run("ServiceMonitor", func(t *testing.T) {
		for k, v := range sm.Spec.Selector.MatchLabels {
			if svcDoc.Metadata.Labels[k] != v {
				t.Errorf("selector %s=%s does not match the Service's labels", k, v)
			}
		}
		if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "metrics" || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("endpoints %+v, want port metrics, path /metrics", sm.Spec.Endpoints)
		}
		// TCPStateExporterDown matches up{job=~"tcpstate.*"}; the
		// operator names the job after the Service.
		if !strings.HasPrefix(svcDoc.Metadata.Name, "tcpstate") {
			t.Errorf("Service %q: the job it names does not match TCPStateExporterDown's tcpstate.*", svcDoc.Metadata.Name)
		}
	})

	t.Run("kustomization", func(t *testing.T) {
		var k struct {
			Resources []string `yaml:"resources"`
		}
		only(t, docs, "Kustomization", &k)
		var want []string
		for _, d := range docs {
			if d.Kind != "Kustomization" && !slices.Contains(want, d.file) {
				want = append(want, d.file)
			}
		}
		slices.Sort(want)
		got := slices.Sorted(slices.Values(k.Resources))
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("kustomization resources differ from the manifests present (-present +listed)\n%s", d)
		}
	})
}

// TestPrometheusRuleMatchesRules checks that the PrometheusRule holds
// exactly the groups of rules.yml, and is what the generator makes of it.
func TestPrometheusRuleMatchesRules(t *testing.T) {
	docs := k8sManifests(t)
	var pr struct {
		Spec map[string]any `yaml:"spec"`
	}
	only(t, docs, "PrometheusRule", &pr)
	var rules map[string]any
	if err := yaml.Unmarshal(readFile(t, deployPath(t, "prometheus", "rules.yml")), &rules); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(rules, pr.Spec); d != "" {
		t.Fatalf("kubernetes/prometheusrule.yaml's spec differs from prometheus/rules.yml; run deploy/kubernetes/gen-prometheusrule.sh (-rules.yml +prometheusrule.yaml)\n%s", d)
	}

	sh := requireTool(t, "sh", "a POSIX shell")
	out, err := run(repoRoot(t), sh, "deploy/kubernetes/gen-prometheusrule.sh", "deploy/prometheus/rules.yml", "-")
	if err != nil {
		t.Fatalf("gen-prometheusrule.sh: %v\n%s", err, out)
	}
	if d := cmp.Diff(string(readFile(t, deployPath(t, "kubernetes", "prometheusrule.yaml"))), out); d != "" {
		t.Fatalf("kubernetes/prometheusrule.yaml is not what gen-prometheusrule.sh writes; run it (-file +generated)\n%s", d)
	}
	if fi, err := os.Stat(deployPath(t, "kubernetes", "gen-prometheusrule.sh")); err != nil || fi.Mode()&0o111 == 0 {
		t.Errorf("gen-prometheusrule.sh is not executable (%v)", err)
	}
}

// readmeDaemonSetPatches returns the DaemonSet patches deploy/README.md
// shows: its YAML blocks of kind DaemonSet.
func readmeDaemonSetPatches(t testing.TB) []string {
	t.Helper()
	kind := regexp.MustCompile(`(?m)^kind: DaemonSet$`)
	var out, block []string
	in := false
	for _, line := range strings.Split(string(readFile(t, deployPath(t, "README.md"))), "\n") {
		switch {
		case line == "```yaml":
			in, block = true, nil
		case in && line == "```":
			in = false
			if b := strings.Join(block, "\n") + "\n"; kind.MatchString(b) {
				out = append(out, b)
			}
		case in:
			block = append(block, line)
		}
	}
	return out
}

// kustomizeDaemonSet applies patch to the shipped manifests with kustomize
// and returns the DaemonSet that results.
func kustomizeDaemonSet(t *testing.T, kubectl, patch string) daemonSet {
	t.Helper()
	dir := t.TempDir()
	// kustomize takes a base by relative path only.
	base, err := filepath.Rel(dir, deployPath(t, "kubernetes"))
	if err != nil {
		t.Fatal(err)
	}
	kustomization := fmt.Sprintf("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\npatches:\n  - path: patch.yaml\n", base)
	for name, content := range map[string]string{"kustomization.yaml": kustomization, "patch.yaml": patch} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(kubectl, "kustomize", dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s\npatch:\n%s", err, stderr.String(), patch)
	}
	var ds daemonSet
	only(t, decodeK8sDocs(t, "kustomize's output", out), "DaemonSet", &ds)
	return ds
}

// TestKubernetesReadmePatches applies each DaemonSet patch deploy/README.md
// shows to the shipped manifests, as an operator would with kustomize, and
// checks the result: capabilities added only with root (Kubernetes gives
// them to no other user), every other one still dropped, the rest of the
// hardening kept; precise mode with BPF and PERFMON, and those two only
// with precise mode; --netns=all with SYS_ADMIN and the host's PID
// namespace.
func TestKubernetesReadmePatches(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl not installed")
	}
	patches := readmeDaemonSetPatches(t)
	if len(patches) == 0 {
		t.Fatal("deploy/README.md shows no DaemonSet patch")
	}
	var precise bool
	for i, patch := range patches {
		t.Run(fmt.Sprintf("patch %d", i+1), func(t *testing.T) {
			ds := kustomizeDaemonSet(t, kubectl, patch)
			pod := ds.Spec.Template.Spec
			if len(pod.Containers) != 1 {
				t.Fatalf("want one container, have %d", len(pod.Containers))
			}
			c := pod.Containers[0]
			sc := c.SecurityContext
			if sc == nil || sc.Capabilities == nil {
				t.Fatal("container has no capabilities")
			}
			if !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
				t.Errorf("capabilities drop %v, want [ALL]", sc.Capabilities.Drop)
			}
			if !isTrue(sc.ReadOnlyRootFilesystem) || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || isTrue(sc.Privileged) {
				t.Errorf("securityContext %+v lost its hardening", sc)
			}
			add := sc.Capabilities.Add
			root := pod.SecurityContext != nil && pod.SecurityContext.RunAsUser != nil && *pod.SecurityContext.RunAsUser == 0
			if len(add) > 0 && !root {
				t.Errorf("adds %v but does not run as root, so the exporter gets none of them", add)
			}
			if !slices.Contains(c.Args, "--web.listen-address=:9965") {
				t.Errorf("args %q do not listen on :%d", c.Args, metricsPort)
			}
			mode := "poll"
			for _, a := range c.Args {
				if m, ok := strings.CutPrefix(a, "--mode="); ok {
					mode = m
				}
			}
			bpf := slices.Contains(add, "BPF") && slices.Contains(add, "PERFMON")
			switch {
			case mode == "precise" || mode == "auto":
				precise = true
				if !bpf {
					t.Errorf("--mode=%s with capabilities %v, want BPF and PERFMON", mode, add)
				}
			case slices.Contains(add, "BPF") || slices.Contains(add, "PERFMON"):
				t.Errorf("capabilities %v for precise mode, but args %q do not ask for it", add, c.Args)
			}
			if slices.Contains(c.Args, "--netns=all") && (!slices.Contains(add, "SYS_ADMIN") || !pod.HostPID) {
				t.Errorf("--netns=all with capabilities %v and hostPID %v, want SYS_ADMIN and the host's PID namespace", add, pod.HostPID)
			}
		})
	}
	if !precise {
		t.Error("deploy/README.md shows no patch for precise mode")
	}
}
