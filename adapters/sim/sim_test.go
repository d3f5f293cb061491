package sim

import (
	"context"
	"reflect"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
)

func testPhones() []Phone {
	return []Phone{
		{Device: "SIM/100", Extension: "100", Name: "Debbie"},
		{Device: "SIM/101", Extension: "101", Name: "Bob"},
		{Device: "SIM/102", Extension: "102", Name: "Carol"},
		{Device: "SIM/103", Extension: "103", Name: "Dan"},
		{Device: "SIM/100-soft", Extension: "100", Name: "Debbie"}, // Debbie's softphone
	}
}

// runFor steps a simulation through d of simulated time.
func runFor(s *Sim, start time.Time, d time.Duration) []bridge.Event {
	evs := []bridge.Event{s.Start(start)}
	now := start
	for now.Before(start.Add(d)) {
		out, next := s.Step(now)
		evs = append(evs, out...)
		if next.IsZero() {
			break
		}
		now = next
	}
	return evs
}

func TestSimulationIsLawful(t *testing.T) {
	start := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	s := NewSim("demo", Config{Seed: 42, CallsPerMinute: 20}, testPhones())
	evs := runFor(s, start, time.Hour)

	if _, ok := evs[0].(bridge.Snapshot); !ok {
		t.Fatalf("first event is %T, want a snapshot", evs[0])
	}
	// Every leg moves forward only (early before confirmed), is ended
	// exactly once, and never rings on a phone that is in another call.
	type legState struct {
		last  bridge.CallState
		ended bool
	}
	legs := map[string]*legState{}
	extOf := map[string]string{}
	for _, p := range testPhones() {
		extOf[p.Device] = p.Extension
	}
	active := map[string]string{} // device → leg id
	for _, e := range evs {
		switch e := e.(type) {
		case bridge.CallUpdated:
			c := e.Call
			l, ok := legs[c.ID]
			if !ok {
				if other, busy := active[c.Device]; busy {
					t.Fatalf("leg %s starts on %s while %s is active there", c.ID, c.Device, other)
				}
				l = &legState{last: c.State}
				legs[c.ID] = l
				active[c.Device] = c.ID
			}
			if l.ended || c.State < l.last {
				t.Fatalf("leg %s went from %v to %v (ended %v)", c.ID, l.last, c.State, l.ended)
			}
			l.last = c.State
			if c.Direction == bridge.Outgoing && c.Remote.Number == extOf[c.Device] {
				t.Fatalf("leg %s: %s calls its own extension", c.ID, c.Device)
			}
			if c.Held && c.State != bridge.CallConfirmed {
				t.Fatalf("leg %s held before answer", c.ID)
			}
		case bridge.CallEnded:
			l, ok := legs[e.CallID]
			if !ok || l.ended {
				t.Fatalf("end of unknown or ended leg %s", e.CallID)
			}
			l.ended = true
			for dev, id := range active {
				if id == e.CallID {
					delete(active, dev)
				}
			}
		}
	}
	if len(legs) < 200 {
		t.Errorf("only %d legs in an hour at 20 calls/minute", len(legs))
	}
}

func TestSimulationShowsEveryLampState(t *testing.T) {
	start := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	byExt := map[string]int{} // extension → index in users
	var users []bridge.User
	for _, p := range testPhones() {
		ref := bridge.DeviceRef{Source: "demo", Device: p.Device}
		if i, ok := byExt[p.Extension]; ok {
			users[i].Devices = append(users[i].Devices, ref)
			continue
		}
		byExt[p.Extension] = len(users)
		users = append(users, bridge.User{ID: p.Name, Extensions: []string{p.Extension}, Devices: []bridge.DeviceRef{ref}})
	}
	dir, err := bridge.NewDirectory(users)
	if err != nil {
		t.Fatal(err)
	}
	b := bridge.New(dir)
	seen := map[bridge.PhoneState]bool{}
	b.Listen(func(c bridge.Change) { seen[c.State.Phone] = true })
	s := NewSim("demo", Config{Seed: 7, CallsPerMinute: 10, OutageRate: 30}, testPhones())
	for _, e := range runFor(s, start, time.Hour) {
		b.Apply(e)
	}
	for _, want := range []bridge.PhoneState{bridge.PhoneIdle, bridge.PhoneRinging, bridge.PhoneDialing,
		bridge.PhoneBusy, bridge.PhoneHeld, bridge.PhoneOffline} {
		if !seen[want] {
			t.Errorf("an hour of simulation never showed %v", want)
		}
	}
}

func TestSimulationIsRepeatable(t *testing.T) {
	start := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	a := runFor(NewSim("demo", Config{Seed: 3}, testPhones()), start, 10*time.Minute)
	b := runFor(NewSim("demo", Config{Seed: 3}, testPhones()), start, 10*time.Minute)
	if !reflect.DeepEqual(a, b) {
		t.Error("same seed gave different runs")
	}
}

func TestConfigValidate(t *testing.T) {
	c := Config{CallsPerMinute: -1, AnswerRate: 2}
	errs := c.Validate()
	keys := map[string]bool{}
	for _, e := range errs {
		keys[e.Key] = true
	}
	if !keys["calls_per_minute"] || !keys["answer_rate"] || len(errs) != 2 {
		t.Errorf("Validate() = %v", errs)
	}
}

func TestAdapterRunDeliversSnapshotThenEvents(t *testing.T) {
	a := New(adapters.Connection{Name: "demo"}, Config{Seed: 1, CallsPerMinute: 6000}, testPhones(), nil)
	got := make(chan bridge.Event, 1024)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, bridge.SinkFunc(func(e bridge.Event) { got <- e })) }()
	deadline := time.After(10 * time.Second)
	first := true
	calls := 0
	for calls < 3 {
		select {
		case e := <-got:
			if _, ok := e.(bridge.Snapshot); ok != first {
				t.Fatalf("event %T (first=%v)", e, first)
			}
			if _, ok := e.(bridge.CallUpdated); ok {
				calls++
			}
			first = false
		case <-deadline:
			t.Fatal("no call events within 10s at 100 calls/s")
		}
	}
	if st := a.Status(); !st.Connected || !st.Synchronised {
		t.Errorf("status while running: %+v", st)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run returned %v", err)
	}
	if st := a.Status(); st.Connected {
		t.Error("still connected after stop")
	}
}
