package memtrim

import (
	"context"
	"io"
	"log/slog"
	"runtime"
	"testing"
	"time"
)

// TestTrimsOnlyAQuietHeapWithMuchFree: the trimmer leaves alone a heap
// that grows or collects between two looks, and one with little free
// memory kept; it trims a quiet heap with much free, and not again within
// MinGap.
func TestTrimsOnlyAQuietHeapWithMuchFree(t *testing.T) {
	var heap Heap
	trims := 0
	tr := New(Policy{MinGap: time.Minute})
	tr.read = func() Heap { return heap }
	tr.trim = func() { trims++; heap.Free = 0 }
	now := time.Unix(1_800_000_000, 0)
	step := func(h Heap, want bool) {
		t.Helper()
		heap = h
		now = now.Add(5 * time.Second)
		if _, trimmed := tr.Tick(now); trimmed != want {
			t.Fatalf("heap %+v: trimmed %v, want %v", h, trimmed, want)
		}
	}
	step(Heap{Objects: 100 << 20, Free: 200 << 20, Cycles: 1}, false) // a first look: nothing to compare with
	step(Heap{Objects: 150 << 20, Free: 200 << 20, Cycles: 1}, false) // growing (a burst)
	step(Heap{Objects: 120 << 20, Free: 200 << 20, Cycles: 2}, false) // a collection since the last look
	step(Heap{Objects: 120 << 20, Free: 10 << 20, Cycles: 2}, false)  // quiet, little free
	step(Heap{Objects: 120 << 20, Free: 29 << 20, Cycles: 2}, false)  // under a quarter of the heap
	step(Heap{Objects: 121 << 20, Free: 100 << 20, Cycles: 2}, true)  // quiet, much free
	step(Heap{Objects: 121 << 20, Free: 100 << 20, Cycles: 2}, false) // within MinGap of the last trim
	now = now.Add(time.Minute)
	step(Heap{Objects: 121 << 20, Free: 100 << 20, Cycles: 2}, true) // past it
	if trims != 2 {
		t.Fatalf("%d trims, want 2", trims)
	}
}

// TestTrimGivesMemoryBack runs the trimmer over the process's own heap:
// after garbage much larger than what is live, one tick past a quiet one
// gives the free pages back.
func TestTrimGivesMemoryBack(t *testing.T) {
	// 128 MiB of small objects, as a burst's requests leave them, one
	// in a thousand kept live.
	var keep [][]byte
	garbage := make([][]byte, 0, 1<<21)
	for i := range 1 << 21 {
		b := make([]byte, 64)
		garbage = append(garbage, b)
		if i%1000 == 0 {
			keep = append(keep, b)
		}
	}
	runtime.GC()
	tr := New(Policy{MinFree: 16 << 20})
	now := time.Now()
	tr.Tick(now) // a first look
	before, trimmed := tr.Tick(now.Add(2 * time.Second))
	if !trimmed {
		t.Skipf("runtime had already given the memory back (free %d)", before.Free)
	}
	after := readHeap()
	if after.Free >= before.Free/2 || before.Free < 16<<20 {
		t.Fatalf("free pages kept %d → %d: not given back", before.Free, after.Free)
	}
	runtime.KeepAlive(keep)
}

// TestRunStopsWithItsContext: Run returns when its context ends.
func TestRunStopsWithItsContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		New(Policy{Every: time.Millisecond}).Run(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)))
		close(done)
	}()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
}
