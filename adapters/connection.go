package adapters

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Tracker keeps an adapter's Status. Adapters embed it; its Status method
// implements Adapter.Status.
type Tracker struct {
	mu      sync.Mutex
	status  Status
	events  atomic.Uint64
	skipped atomic.Uint64
	end     context.CancelFunc // ends the current session
	resync  bool               // the session was ended by Resync
}

// Resync ends the current connection so that the next one, made at once,
// reads the PBX's whole state again: after a reload changed the devices
// users have on this PBX. It is not counted as a lost connection.
func (t *Tracker) Resync() {
	t.mu.Lock()
	end := t.end
	if end != nil {
		t.resync = true
		t.status.Synchronised = false
	}
	t.mu.Unlock()
	if end != nil {
		end()
	}
}

// session records the cancel function of a new session.
func (t *Tracker) session(end context.CancelFunc) {
	t.mu.Lock()
	t.end, t.resync = end, false
	t.mu.Unlock()
}

// resynced reports (once) whether the last session ended by Resync.
func (t *Tracker) resynced() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	r := t.resync
	t.end, t.resync = nil, false
	return r
}

// Status implements Adapter.Status.
func (t *Tracker) Status() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.status
	st.Events, st.Skipped = t.events.Load(), t.skipped.Load()
	return st
}

// Connected records a connection made (not yet synchronised).
func (t *Tracker) Connected() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.status.Connected, t.status.Synchronised, t.status.Since, t.status.LastError = true, false, time.Now(), ""
}

// Synchronised records that a snapshot was delivered.
func (t *Tracker) Synchronised() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.status.Synchronised = true
}

// Lost records a connection ended by err.
func (t *Tracker) Lost(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.status.Connected, t.status.Synchronised, t.status.Since = false, false, time.Now()
	t.status.LastError = err.Error()
	t.status.Reconnects++
}

// Event counts an event received.
func (t *Tracker) Event() { t.events.Add(1) }

// Skip counts an event that could not be used and returns how many so far.
func (t *Tracker) Skip() uint64 { return t.skipped.Add(1) }

// Backoff bounds the waits between connection attempts.
type Backoff struct {
	Min, Max time.Duration
}

// Reconnect runs session until ctx ends, waiting between attempts with
// capped exponential backoff and jitter (the wait starts again from Min
// after a session that lasted a good while). Each failure is recorded in t
// and logged.
func (b Backoff) Reconnect(ctx context.Context, t *Tracker, log *slog.Logger, session func(context.Context) error) {
	wait := b.Min
	for {
		started := time.Now()
		sctx, end := context.WithCancel(ctx)
		t.session(end)
		err := session(sctx)
		end()
		if ctx.Err() != nil {
			return
		}
		if t.resynced() {
			log.Info("reconnecting to read the PBX's state again: its devices in the directory changed")
			continue
		}
		if time.Since(started) > 2*b.Max {
			wait = b.Min
		}
		jittered := wait/2 + rand.N(wait/2+1)
		t.Lost(err)
		log.Warn("pbx connection lost; retrying", "err", err, "in", jittered.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-time.After(jittered):
		}
		wait = min(2*wait, b.Max)
	}
}
