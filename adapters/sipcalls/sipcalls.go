// Package sipcalls is the adapter for a PBX of kind sip: one Lamplighter
// reaches only through its SIP side, in proxy mode (a SIP registrar such as
// Kamailio or OpenSIPS, or a PBX whose event interface is not open to
// Lamplighter). Its lamps come from what the proxy sees of the phones'
// calls and registrations (presence/proxy/calls.go): a device is the user
// part a phone registers as, idle while it holds a registration through
// Lamplighter, unavailable once it holds none, and in a call while an
// INVITE it placed or received is ringing or answered.
package sipcalls

import (
	"context"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/callobs"
)

// Adapter turns the proxy's observations of one PBX into bridge events.
// It is a callobs.Observer for that PBX and an adapters.Adapter.
type Adapter struct {
	name    string
	answers func() (up, known bool) // does the PBX answer OPTIONS?

	mu      sync.Mutex
	sink    bridge.Sink // nil until Run
	legs    map[string]bridge.Call
	devices map[string]bridge.DeviceState
	since   time.Time
	events  uint64
}

var (
	_ adapters.Adapter = (*Adapter)(nil)
	_ callobs.Observer = (*Adapter)(nil)
)

// New makes the adapter of the PBX name; answers reports whether the
// PBX answers the proxy's OPTIONS (known false until it has been asked).
func New(name string, answers func() (up, known bool)) *Adapter {
	return &Adapter{name: name, answers: answers, legs: map[string]bridge.Call{}, devices: map[string]bridge.DeviceState{}}
}

// Name implements adapters.Adapter.
func (a *Adapter) Name() string { return a.name }

// Run delivers a snapshot of what has been seen so far, then every change
// as it is seen, until ctx ends.
func (a *Adapter) Run(ctx context.Context, sink bridge.Sink) error {
	a.mu.Lock()
	snap := bridge.Snapshot{Source: a.name, Devices: map[string]bridge.DeviceState{}}
	for d, st := range a.devices {
		snap.Devices[d] = st
	}
	for _, c := range a.legs {
		snap.Calls = append(snap.Calls, c)
	}
	sink.Apply(snap)
	a.sink, a.since = sink, time.Now()
	a.mu.Unlock()
	<-ctx.Done()
	a.mu.Lock()
	a.sink = nil
	a.mu.Unlock()
	return nil
}

// Status implements adapters.Adapter: connected while the PBX answers
// OPTIONS, synchronised once Run has delivered its snapshot (the proxy
// has seen everything since Lamplighter started).
func (a *Adapter) Status() adapters.Status {
	up, _ := a.answers()
	a.mu.Lock()
	defer a.mu.Unlock()
	return adapters.Status{Connected: up, Synchronised: up && a.sink != nil, Since: a.since, Events: a.events}
}

// ObserveRegistrations implements callobs.Observer: a device with a
// registration is idle (its calls take precedence), one with none is
// unavailable.
func (a *Adapter) ObserveRegistrations(target, user string, bindings int) {
	if target != a.name {
		return
	}
	st := bridge.DeviceIdle
	if bindings == 0 {
		st = bridge.DeviceUnavailable
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events++
	if a.devices[user] == st {
		return
	}
	a.devices[user] = st
	a.apply(bridge.DeviceStateChanged{Source: a.name, Device: user, State: st})
}

// ObserveCall implements callobs.Observer.
func (a *Adapter) ObserveCall(e callobs.Event) {
	if e.Target != a.name && e.User != "" {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.events++
	if e.User == "" { // every leg of the Call-ID
		for id, c := range a.legs {
			if c.CallID != e.CallID {
				continue
			}
			switch e.Step {
			case callobs.Ended:
				delete(a.legs, id)
				a.apply(bridge.CallEnded{Source: a.name, CallID: id})
			case callobs.Held, callobs.Resumed:
				c.Held = e.Step == callobs.Held
				a.legs[id] = c
				a.apply(bridge.CallUpdated{Source: a.name, Call: c})
			}
		}
		return
	}
	id := e.CallID + "|" + e.User
	if e.Step == callobs.Ended {
		if _, ok := a.legs[id]; ok {
			delete(a.legs, id)
			a.apply(bridge.CallEnded{Source: a.name, CallID: id})
		}
		return
	}
	c, ok := a.legs[id]
	if !ok {
		c = bridge.Call{ID: id, Device: e.User, CallID: e.CallID, Started: time.Now(),
			Remote: bridge.Party{Number: e.RemoteUser, Name: e.RemoteName}}
		if e.Outgoing {
			c.Direction = bridge.Outgoing
		}
	}
	switch e.Step {
	case callobs.Trying:
		c.State = bridge.CallTrying
	case callobs.Early:
		c.State = bridge.CallEarly
	case callobs.Confirmed:
		if c.State != bridge.CallConfirmed {
			c.Answered = time.Now()
		}
		c.State = bridge.CallConfirmed
	}
	c.LocalTag, c.RemoteTag = e.LocalTag, e.RemoteTag
	a.legs[id] = c
	a.apply(bridge.CallUpdated{Source: a.name, Call: c})
}

// apply hands an event to the bridge once Run has started; before, the
// snapshot will carry it. Called with mu held, so that events leave in
// the order they were seen.
func (a *Adapter) apply(e bridge.Event) {
	if a.sink != nil {
		a.sink.Apply(e)
	}
}
