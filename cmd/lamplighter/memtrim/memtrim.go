// Package memtrim gives back to the system the memory the Go runtime
// keeps free after a burst.
//
// After a collection the runtime keeps the pages it freed, up to about its
// heap goal (twice the live heap with GOGC=100), for the heap to grow into
// again, and hands the rest back slowly in the background. After a burst
// (every phone subscribing at once after a power cut, a flood of
// unauthenticated requests) that leaves a daemon holding, for minutes or
// for good, memory sized for the burst: the same process measured 1.3 or
// 2.8 KiB of RSS per held subscription depending only on whether the
// runtime had got round to it. The trimmer looks every few seconds and,
// once the heap has stopped growing and the free pages kept are large
// beside it, returns them (debug.FreeOSMemory), at most once per interval
// of its own. In a steady state it costs a forced collection now and then.
package memtrim

import (
	"context"
	"log/slog"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// Policy is when the trimmer acts. Zero fields take the defaults noted.
type Policy struct {
	// Every is how often the heap is looked at (default 2 s).
	Every time.Duration
	// MinGap is the least time between two trims (default 10 s): each
	// costs a forced collection.
	MinGap time.Duration
	// MinFree is the least free memory kept that is worth a trim
	// (default 32 MiB).
	MinFree uint64
	// FreeShare is the least free memory kept, as a share of the live
	// heap, that is worth a trim (default 0.25).
	FreeShare float64
}

func (p *Policy) defaults() {
	if p.Every <= 0 {
		p.Every = 2 * time.Second
	}
	if p.MinGap <= 0 {
		p.MinGap = 10 * time.Second
	}
	if p.MinFree == 0 {
		p.MinFree = 32 << 20
	}
	if p.FreeShare <= 0 {
		p.FreeShare = 0.25
	}
}

// Heap is what the trimmer reads of the runtime's heap.
type Heap struct {
	Objects uint64 // bytes in objects, live or not yet swept
	Free    uint64 // bytes of free pages kept, not given back
	Cycles  uint64 // garbage collections so far
}

// readHeap reads Heap from runtime/metrics.
func readHeap() Heap {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/gc/cycles/total:gc-cycles"},
	}
	metrics.Read(s)
	var v [3]uint64
	for i := range s {
		if s[i].Value.Kind() == metrics.KindUint64 {
			v[i] = s[i].Value.Uint64()
		}
	}
	return Heap{Objects: v[0], Free: v[1], Cycles: v[2]}
}

// Trimmer decides when to trim from successive heap readings.
type Trimmer struct {
	policy   Policy
	last     Heap
	lastTrim time.Time
	read     func() Heap
	trim     func()
}

// New returns a trimmer with policy p over the process's own heap.
func New(p Policy) *Trimmer {
	p.defaults()
	return &Trimmer{policy: p, read: readHeap, trim: debug.FreeOSMemory}
}

// Tick looks at the heap once, at now, and trims when it should; it
// reports the heap it read and whether it trimmed.
func (t *Trimmer) Tick(now time.Time) (Heap, bool) {
	h := t.read()
	prev := t.last
	t.last = h
	// Quiet: looked at before, no collection since, not up 2 %.
	quiet := prev.Objects > 0 && h.Cycles == prev.Cycles && h.Objects <= prev.Objects+prev.Objects/50
	worth := h.Free >= t.policy.MinFree && float64(h.Free) >= t.policy.FreeShare*float64(h.Objects)
	if !quiet || !worth || (!t.lastTrim.IsZero() && now.Sub(t.lastTrim) < t.policy.MinGap) {
		return h, false
	}
	t.trim()
	t.lastTrim = now
	t.last = t.read()
	return h, true
}

// Run ticks every Policy.Every until ctx ends, logging each trim at debug
// level.
func (t *Trimmer) Run(ctx context.Context, log *slog.Logger) {
	tick := time.NewTicker(t.policy.Every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			if h, trimmed := t.Tick(now); trimmed {
				log.Debug("free heap memory given back", "free_bytes", h.Free, "heap_objects_bytes", h.Objects)
			}
		}
	}
}
