package collector

import (
	"math"
	"time"
)

// Stays are log-bucketed histograms of the completed stays in each state
// since the exporter started: what the page, the JSON API and the terminal
// view take stay percentiles from. They are fixed-size arrays, so that an
// observation allocates nothing and a published snapshot carries its own
// copy.
//
// Bucket 0 holds stays up to StayMin; bucket i > 0 holds stays in
// (StayMin·2^((i-1)/StayBucketsPerOctave), StayMin·2^(i/StayBucketsPerOctave)];
// the last bucket also holds everything longer. With four buckets an octave
// a percentile is within 9% of the true value (see Quantile).
type Stays struct {
	Count   [NumStates]uint64
	Buckets [NumStates][NumStayBuckets]uint64
}

// The layout of the Stays buckets: 1 µs to 2^38 µs (about 76 hours).
const (
	StayMin               = time.Microsecond
	StayBucketsPerOctave  = 4
	stayOctaves           = 38
	NumStayBuckets        = stayOctaves*StayBucketsPerOctave + 1
	stayBucketsPerOctaveF = float64(StayBucketsPerOctave)
)

// stayBucket returns the index of the bucket holding a stay of d.
func stayBucket(d time.Duration) int {
	if d <= StayMin {
		return 0
	}
	i := int(math.Ceil(math.Log2(float64(d)/float64(StayMin)) * stayBucketsPerOctaveF))
	return min(max(i, 1), NumStayBuckets-1)
}

// StayBucketBound returns the upper bound of bucket i.
func StayBucketBound(i int) time.Duration {
	return time.Duration(float64(StayMin) * math.Exp2(float64(i)/stayBucketsPerOctaveF))
}

// Observe counts a completed stay of d in state s.
func (h *Stays) Observe(s State, d time.Duration) {
	if s >= NumStates {
		return
	}
	h.Count[s]++
	h.Buckets[s][stayBucket(d)]++
}

// Quantile returns the q-quantile (0 < q <= 1) of the completed stays in
// state s, as the geometric middle of the bucket it falls in (within 9%
// of the true value), and false when there are none.
func (h *Stays) Quantile(s State, q float64) (time.Duration, bool) {
	if s >= NumStates || h.Count[s] == 0 {
		return 0, false
	}
	rank := q * float64(h.Count[s])
	var seen float64
	for i, n := range h.Buckets[s] {
		seen += float64(n)
		if n > 0 && seen >= rank {
			if i == 0 {
				return StayMin, true
			}
			return time.Duration(float64(StayMin) * math.Exp2((float64(i)-0.5)/stayBucketsPerOctaveF)), true
		}
	}
	return StayBucketBound(NumStayBuckets - 1), true
}
