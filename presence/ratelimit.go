package presence

import (
	"net/netip"
	"sync"
	"time"
)

// rateLimiter bounds the requests each source address may send, as
// Kamailio's pike module does: a token bucket per address, refilled at
// rate a second up to burst. A request over it is dropped unanswered (an
// answer would feed the flood; a phone's retransmission gets through once
// the bucket refills). Addresses idle for a while are forgotten, and the
// table is bounded: past maxTracked addresses a new one is let through
// uncounted rather than growing the table without end.
type rateLimiter struct {
	rate, burst float64
	mu          sync.Mutex // guards buckets and lastSweep; a leaf
	buckets     map[netip.Addr]*bucket
	lastSweep   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
	warned time.Time // when a drop from this address was last logged
}

const (
	maxTracked  = 1 << 16
	bucketIdle  = 10 * time.Second
	sweepPeriod = time.Second
)

func newRateLimiter(rate float64, burst int) *rateLimiter {
	if rate <= 0 {
		return nil
	}
	return &rateLimiter{rate: rate, burst: max(float64(burst), rate), buckets: map[netip.Addr]*bucket{}}
}

// allow takes a token for a request from ip at now. warn is set on the
// first drop from an address in a minute, for the log.
func (r *rateLimiter) allow(ip netip.Addr, now time.Time) (ok, warn bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if now.Sub(r.lastSweep) > sweepPeriod {
		r.lastSweep = now
		for a, b := range r.buckets {
			if now.Sub(b.last) > bucketIdle {
				delete(r.buckets, a)
			}
		}
	}
	b := r.buckets[ip]
	if b == nil {
		if len(r.buckets) >= maxTracked {
			return true, false
		}
		b = &bucket{tokens: r.burst, last: now}
		r.buckets[ip] = b
	}
	b.tokens = min(r.burst, b.tokens+now.Sub(b.last).Seconds()*r.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true, false
	}
	if now.Sub(b.warned) > time.Minute {
		b.warned = now
		return false, true
	}
	return false, false
}

// tracked returns how many addresses the table holds.
func (r *rateLimiter) tracked() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buckets)
}
