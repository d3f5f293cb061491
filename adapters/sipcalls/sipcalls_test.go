package sipcalls

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/callobs"
)

// recorder keeps what the adapter delivers.
type recorder struct {
	mu     sync.Mutex
	events []bridge.Event
	read   int // events handed out by next
	got    chan struct{}
}

func (r *recorder) Apply(e bridge.Event) {
	r.mu.Lock()
	r.events = append(r.events, e)
	r.mu.Unlock()
	r.got <- struct{}{}
}

// next waits for the next event.
func (r *recorder) next(t *testing.T) bridge.Event {
	t.Helper()
	select {
	case <-r.got:
	case <-time.After(5 * time.Second):
		t.Fatal("no event")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.read++
	return r.events[r.read-1]
}

func TestCallsAndRegistrationsBecomeBridgeEvents(t *testing.T) {
	up := true
	a := New("kam", func() (bool, bool) { return up, true })
	// Seen before Run: carried by the snapshot.
	a.ObserveRegistrations("kam", "100", 1)
	a.ObserveRegistrations("other", "200", 1) // another PBX's: ignored
	rec := &recorder{got: make(chan struct{}, 16)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx, rec)
	snap, ok := rec.next(t).(bridge.Snapshot)
	if !ok || snap.Devices["100"] != bridge.DeviceIdle || len(snap.Devices) != 1 {
		t.Fatalf("snapshot %+v, want 100 idle only", snap)
	}
	if st := a.Status(); !st.Connected || !st.Synchronised {
		t.Fatalf("status %+v with the PBX answering and the snapshot delivered", st)
	}

	ev := callobs.Event{Target: "kam", User: "100", CallID: "c1", Outgoing: true, Step: callobs.Trying,
		LocalTag: "a", RemoteUser: "101", RemoteName: "Bob"}
	a.ObserveCall(ev)
	c := rec.next(t).(bridge.CallUpdated).Call
	if c.Device != "100" || c.Direction != bridge.Outgoing || c.State != bridge.CallTrying || c.Remote.Number != "101" {
		t.Fatalf("trying: %+v", c)
	}
	ev.Step, ev.RemoteTag = callobs.Confirmed, "b"
	a.ObserveCall(ev)
	c = rec.next(t).(bridge.CallUpdated).Call
	if c.State != bridge.CallConfirmed || c.Answered.IsZero() || c.LocalTag != "a" || c.RemoteTag != "b" || c.CallID != "c1" {
		t.Fatalf("answered: %+v", c)
	}
	// The callee's leg of the same call (a registrar, not a B2BUA, in
	// the middle): one Call-ID, two users.
	a.ObserveCall(callobs.Event{Target: "kam", User: "101", CallID: "c1", Step: callobs.Confirmed})
	rec.next(t)
	a.ObserveCall(callobs.Event{CallID: "c1", Step: callobs.Held})
	held := map[string]bool{}
	for range 2 {
		u := rec.next(t).(bridge.CallUpdated)
		held[u.Call.Device] = u.Call.Held
	}
	if !held["100"] || !held["101"] {
		t.Fatalf("hold reached %v, want both legs", held)
	}
	a.ObserveCall(callobs.Event{CallID: "c1", Step: callobs.Ended})
	ended := map[string]bool{}
	for range 2 {
		ended[rec.next(t).(bridge.CallEnded).CallID] = true
	}
	if !ended["c1|100"] || !ended["c1|101"] {
		t.Fatalf("BYE ended %v, want both legs", ended)
	}
	a.ObserveRegistrations("kam", "100", 0)
	if d := rec.next(t).(bridge.DeviceStateChanged); d.Device != "100" || d.State != bridge.DeviceUnavailable {
		t.Fatalf("unregistered: %+v", d)
	}
	up = false
	if a.Status().Connected {
		t.Fatal("connected while the PBX answers no OPTIONS")
	}
}
