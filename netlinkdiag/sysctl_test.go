package netlinkdiag

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestParsePortSettings(t *testing.T) {
	base := map[string]string{
		sysctlPortRange:    "40000\t40999\n",
		sysctlReserved:     "8080,39990-40009,40998-41000,50000\n",
		sysctlTWReuse:      "2\n",
		sysctlTWReuseDelay: "1500\n",
		sysctlTimestamps:   "1\n",
	}
	got, err := parsePortSettings(base)
	if err != nil {
		t.Fatal(err)
	}
	want := PortSettings{Low: 40000, High: 40999, Reserved: 12, TWReuse: 2, TWReuseDelay: 1500 * time.Millisecond, Timestamps: true}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("(-want +got)\n%s", d)
	}
	if n := got.Ports(); n != 988 {
		t.Errorf("Ports() = %d, want 988", n)
	}

	old := map[string]string{sysctlPortRange: "32768 60999", sysctlReserved: "\n", sysctlTWReuse: "0", sysctlTimestamps: "0"}
	got, err = parsePortSettings(old)
	if err != nil {
		t.Fatal(err)
	}
	want = PortSettings{Low: 32768, High: 60999, TWReuseDelay: time.Second}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("(-want +got)\n%s", d)
	}
	if n := got.Ports(); n != 28232 {
		t.Errorf("Ports() = %d, want 28232", n)
	}

	for name, bad := range map[string]string{
		sysctlPortRange:    "40000",
		sysctlReserved:     "9000-8000",
		sysctlTWReuse:      "x",
		sysctlTWReuseDelay: "",
		sysctlTimestamps:   "",
	} {
		files := map[string]string{}
		for k, v := range base {
			files[k] = v
		}
		files[name] = bad
		if _, err := parsePortSettings(files); err == nil {
			t.Errorf("%s = %q: no error", name, bad)
		}
	}
}
