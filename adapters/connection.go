package adapters

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
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
	// down is the timer that declares the PBX down (bridge.SourceDown)
	// after Backoff.DownAfter without a synchronised session.
	down *time.Timer
}

// Synchronise delivers a session's snapshot to sink and records the
// session as synchronised. The PBX's down timer is stopped under the same
// lock, so a SourceDown can never land after the snapshot it would undo.
func (t *Tracker) Synchronise(sink bridge.Sink, snap bridge.Snapshot) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.down != nil {
		t.down.Stop()
		t.down = nil
	}
	sink.Apply(snap)
	t.status.Synchronised, t.status.Down = true, false
}

// armDown starts the down timer unless it runs already: after d without a
// synchronised session, source is declared down in sink.
func (t *Tracker) armDown(d time.Duration, sink bridge.Sink, source string) {
	if d <= 0 || sink == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.down != nil || t.status.Down {
		return
	}
	var timer *time.Timer
	timer = time.AfterFunc(d, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.down != timer || t.status.Synchronised {
			return
		}
		t.down = nil
		t.status.Down = true
		sink.Apply(bridge.SourceDown{Source: source})
	})
	t.down = timer
}

// disarm stops the down timer (the adapter stops).
func (t *Tracker) disarm() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.down != nil {
		t.down.Stop()
		t.down = nil
	}
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

// Backoff bounds the waits between connection attempts, and says when a
// PBX that does not come back is declared down.
type Backoff struct {
	Min, Max time.Duration
	// DownAfter is how long a PBX may go without a synchronised session
	// (at start, or after losing one) before its devices are shown
	// unavailable and its calls ended (bridge.SourceDown in Sink); 0
	// never does.
	DownAfter time.Duration
	Sink      bridge.Sink
	Source    string
}

// stillDownEvery is how often a PBX that stays unreachable is logged at
// warning level again (every attempt in between is logged at debug).
const stillDownEvery = time.Minute

// Reconnect runs session until ctx ends, waiting between attempts with
// capped exponential backoff and jitter (the wait starts again from Min
// after a session that lasted a good while). Each failure is recorded in t;
// the first of a run of failures is logged as a warning, the rest at debug
// level with a reminder every minute.
func (b Backoff) Reconnect(ctx context.Context, t *Tracker, log *slog.Logger, session func(context.Context) error) {
	defer t.disarm()
	wait := b.Min
	var failingSince, lastWarned time.Time
	t.armDown(b.DownAfter, b.Sink, b.Source)
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
		t.armDown(b.DownAfter, b.Sink, b.Source)
		if time.Since(started) > 2*b.Max {
			wait = b.Min
			failingSince = time.Time{}
		}
		jittered := wait/2 + rand.N(wait/2+1)
		t.Lost(err)
		now := time.Now()
		switch {
		case failingSince.IsZero():
			failingSince, lastWarned = now, now
			log.Warn("pbx connection lost; retrying", "err", err, "in", jittered.Round(time.Millisecond))
		case now.Sub(lastWarned) >= stillDownEvery:
			lastWarned = now
			log.Warn("pbx still unreachable; retrying", "for", now.Sub(failingSince).Round(time.Second), "err", err)
		default:
			log.Debug("pbx connection attempt failed; retrying", "err", err, "in", jittered.Round(time.Millisecond))
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(jittered):
		}
		wait = min(2*wait, b.Max)
	}
}
