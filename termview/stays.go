package termview

import (
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/tcpstate/tcpstate_exporter/collector"
)

// staysKept bounds the stays kept per state: past it, a uniform sample of
// them (reservoir sampling) stands for all.
const staysKept = 1 << 14

// Stays holds the completed stays in each state since the view started,
// for their percentiles. Observe is a collector.Config.ObserveStay; it and
// Percentiles may run on different goroutines.
type Stays struct {
	mu   sync.Mutex
	seen [collector.NumStates]int
	kept [collector.NumStates][]time.Duration
	rand *rand.Rand
}

// NewStays returns an empty Stays.
func NewStays() *Stays {
	return &Stays{rand: rand.New(rand.NewPCG(1, 2))}
}

// Observe records one completed stay in st.
func (s *Stays) Observe(st collector.State, d time.Duration) {
	if int(st) >= collector.NumStates {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seen[st]++
	if len(s.kept[st]) < staysKept {
		s.kept[st] = append(s.kept[st], d)
		return
	}
	if i := s.rand.IntN(s.seen[st]); i < staysKept {
		s.kept[st][i] = d
	}
}

// Percentiles returns how many stays in st were seen, and their median and
// 99th percentile in seconds (nearest rank; nil when there are none).
func (s *Stays) Percentiles(st collector.State) (n int, median, p99 *float64) {
	s.mu.Lock()
	n = s.seen[st]
	sorted := slices.Clone(s.kept[st])
	s.mu.Unlock()
	if len(sorted) == 0 {
		return n, nil, nil
	}
	slices.Sort(sorted)
	return n, rank(sorted, 0.5), rank(sorted, 0.99)
}

func rank(sorted []time.Duration, p float64) *float64 {
	i := max(int(math.Ceil(p*float64(len(sorted))))-1, 0)
	v := sorted[i].Seconds()
	return &v
}
