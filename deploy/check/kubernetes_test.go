package check

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"sigs.k8s.io/yaml"
)

// decoder decodes the Kubernetes objects deploy/ may hold into their API
// types, strictly, as an API server with field validation "Strict" does:
// an unknown or duplicate field, a field in the wrong case, or a value of
// the wrong type is an error. An apiVersion and kind it does not know is an
// error too.
var decoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, rbacv1.AddToScheme, policyv1.AddToScheme, monitoringv1.AddToScheme,
	} {
		utilruntime.Must(add(scheme))
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// manifest is one YAML document that names an apiVersion and a kind.
type manifest struct {
	where string // file, and document or line
	doc   []byte
	kind  string
}

// manifests returns every YAML document with an apiVersion and a kind
// under deploy/ (the Kubernetes manifests; Prometheus's and the web
// config's files have neither), and every such YAML code block of
// deploy/README.md (the kustomize patches it gives).
func manifests(t *testing.T) []manifest {
	t.Helper()
	var found []manifest
	add := func(where string, doc []byte) {
		var head struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
		}
		if err := yaml.Unmarshal(doc, &head); err != nil {
			t.Errorf("%s: %v", where, err)
			return
		}
		if head.APIVersion != "" || head.Kind != "" {
			found = append(found, manifest{where, doc, head.Kind})
		}
	}
	err := filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if d.Name() == "check" {
				return filepath.SkipDir
			}
			return nil
		}
		if ext := filepath.Ext(path); ext != ".yaml" && ext != ".yml" {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for i, doc := range regexp.MustCompile(`(?m)^---\s*$`).Split(string(b), -1) {
			if strings.TrimSpace(doc) != "" {
				add(filepath.ToSlash(path)+" document "+strconv.Itoa(i+1), []byte(doc))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join("..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	var block *bytes.Buffer
	start := 0
	for i, line := range strings.Split(string(readme), "\n") {
		switch {
		case block == nil && strings.TrimSpace(line) == "```yaml":
			block, start = &bytes.Buffer{}, i+2
		case block != nil && strings.TrimSpace(line) == "```":
			add("../README.md line "+strconv.Itoa(start), block.Bytes())
			block = nil
		case block != nil:
			block.WriteString(line + "\n")
		}
	}
	return found
}

// decodeStrict decodes doc into its API type, or says why it cannot.
func decodeStrict(doc []byte) (runtime.Object, error) {
	obj, _, err := decoder.Decode(doc, nil, nil)
	return obj, err
}

// TestKubernetesManifests: every Kubernetes object deploy/ ships or
// deploy/README.md gives as a patch decodes strictly into the API types
// of Kubernetes and of the Prometheus Operator.
func TestKubernetesManifests(t *testing.T) {
	kinds := map[string]int{}
	for _, m := range manifests(t) {
		kinds[m.kind]++
		if m.kind == "Kustomization" {
			continue // kustomize's file, not an API object
		}
		if _, err := decodeStrict(m.doc); err != nil {
			t.Errorf("%s: %v", m.where, err)
		}
	}
	for _, want := range []string{"DaemonSet", "Service", "ServiceMonitor", "PrometheusRule", "Kustomization"} {
		if kinds[want] == 0 {
			t.Errorf("no %s found under deploy/ (found %v)", want, kinds)
		}
	}
	t.Logf("checked: %v", kinds)
}

// TestKubernetesCheckIsStrict: the decoding above fails on what it should,
// so that its passing means something.
func TestKubernetesCheckIsStrict(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "kubernetes", "daemonset.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	ds := string(b)
	if _, err := decodeStrict(b); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, old, new, want string }{
		{"unknown field", "hostNetwork: true", "hostNetwork: true\n      hostNetworking: true", "hostNetworking"},
		{"wrong case", "hostNetwork: true", "HostNetwork: true", "HostNetwork"},
		{"wrong type", "hostNetwork: true", "hostNetwork: yes please", "hostNetwork"},
		{"duplicate field", "hostNetwork: true", "hostNetwork: true\n      hostNetwork: false", "hostNetwork"},
		{"unknown kind", "kind: DaemonSet", "kind: DaemonSets", "DaemonSets"},
	} {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(ds, c.old) {
				t.Fatalf("daemonset.yaml has no %q", c.old)
			}
			_, err := decodeStrict([]byte(strings.Replace(ds, c.old, c.new, 1)))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Errorf("got %v, want an error naming %q", err, c.want)
			}
		})
	}
	sm, err := os.ReadFile(filepath.Join("..", "kubernetes", "servicemonitor.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeStrict(bytes.Replace(sm, []byte("scrapeTimeout:"), []byte("scrapeTimout:"), 1)); err == nil || !strings.Contains(err.Error(), "scrapeTimout") {
		t.Errorf("a misspelt ServiceMonitor field: got %v", err)
	}
}
