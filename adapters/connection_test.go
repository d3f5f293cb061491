package adapters

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"
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
				tr.Synchronised()
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
