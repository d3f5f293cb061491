package adapters

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// TestResyncStartsANewSession: Resync ends the session at once and the
// next starts without the backoff wait, and is not counted as a loss.
func TestResyncStartsANewSession(t *testing.T) {
	var tr Tracker
	sessions := make(chan int, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	n := 0
	go func() {
		defer close(done)
		Backoff{Min: time.Hour, Max: time.Hour}.Reconnect(ctx, &tr, slog.New(slog.DiscardHandler),
			func(ctx context.Context) error {
				n++
				tr.Connected()
				tr.Synchronise(bridge.SinkFunc(func(bridge.Event) {}), bridge.Snapshot{})
				sessions <- n
				<-ctx.Done()
				return errors.New("closed")
			})
	}()
	expect := func(want int) {
		t.Helper()
		select {
		case got := <-sessions:
			if got != want {
				t.Fatalf("session %d, want %d", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("session %d did not start (a backoff wait of an hour?)", want)
		}
	}
	expect(1)
	tr.Resync()
	expect(2)
	if st := tr.Status(); st.Reconnects != 0 || !st.Connected {
		t.Errorf("after a resync: %+v", st)
	}
	cancel()
	<-done
}

// TestDownAfterShowsThePBXDown: a PBX that does not answer for DownAfter
// is declared down once (bridge.SourceDown), and the snapshot of the
// session that finally synchronises comes after it and clears it; retries
// are at most Max apart however long it was away.
func TestDownAfterShowsThePBXDown(t *testing.T) {
	var tr Tracker
	var mu sync.Mutex
	var got []bridge.Event
	events := make(chan struct{}, 10)
	sink := bridge.SinkFunc(func(e bridge.Event) {
		mu.Lock()
		got = append(got, e)
		mu.Unlock()
		events <- struct{}{}
	})
	var up atomic.Bool
	var attempts atomic.Int64
	var lastAttempt atomic.Int64
	var maxGap atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		Backoff{Min: 5 * time.Millisecond, Max: 40 * time.Millisecond, DownAfter: 150 * time.Millisecond, Sink: sink, Source: "pbx"}.
			Reconnect(ctx, &tr, slog.New(slog.DiscardHandler), func(ctx context.Context) error {
				now := time.Now().UnixNano()
				if prev := lastAttempt.Swap(now); prev != 0 && now-prev > maxGap.Load() {
					maxGap.Store(now - prev)
				}
				attempts.Add(1)
				if !up.Load() {
					return errors.New("connection refused")
				}
				tr.Connected()
				tr.Synchronise(sink, bridge.Snapshot{Source: "pbx"})
				<-ctx.Done()
				return ctx.Err()
			})
	}()
	select {
	case <-events:
	case <-time.After(5 * time.Second):
		t.Fatal("the PBX was never declared down")
	}
	if st := tr.Status(); !st.Down {
		t.Errorf("status after down_after: %+v", st)
	}
	up.Store(true)
	select {
	case <-events:
	case <-time.After(5 * time.Second):
		t.Fatal("no snapshot once the PBX answered")
	}
	mu.Lock()
	if len(got) != 2 || got[0] != (bridge.SourceDown{Source: "pbx"}) {
		t.Errorf("events %+v, want SourceDown then the snapshot", got)
	} else if _, ok := got[1].(bridge.Snapshot); !ok {
		t.Errorf("second event %T, want the snapshot", got[1])
	}
	mu.Unlock()
	if st := tr.Status(); st.Down || !st.Synchronised {
		t.Errorf("status once back: %+v", st)
	}
	// Jitter keeps each wait within Max (plus scheduling slack).
	if gap := time.Duration(maxGap.Load()); gap > 40*time.Millisecond+500*time.Millisecond {
		t.Errorf("attempts %v apart, beyond reconnect_max", gap)
	}
	cancel()
	<-done
}
