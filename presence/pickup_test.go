package presence

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// ringingLeg is the callee's leg on PJSIP/100 as an adapter reports it:
// created Down (not ringing yet), then ringing with its Call-ID, then
// with its tags once they are read.
func ringingLeg(state bridge.CallState, callID, localTag, remoteTag string, pending bool) bridge.Event {
	return bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: "leg1", Device: "PJSIP/100",
		Direction: bridge.Incoming, State: state, Remote: bridge.Party{Number: "200", Name: "Caller 200"},
		CallID: callID, LocalTag: localTag, RemoteTag: remoteTag, IDsPending: pending, Started: time.Now()}}
}

// TestFirstRingingNotifyCarriesPickupIDs: on Asterisk the device may say
// RINGING before its leg does, and the leg's tags are read a moment after
// it rings. The first ringing NOTIFY waits for them (the adapter marks
// them pending) and then carries call-id, local-tag and remote-tag: the
// phone can pick the call up from the very first blink.
func TestFirstRingingNotifyCarriesPickupIDs(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.PickupWait = 10 * time.Second })
	p := newPhone(t, "UDP")
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600}); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
	}
	p.nextNotify(2 * time.Second)

	start := time.Now()
	env.bridge.Apply(ringingLeg(bridge.CallTrying, "", "", "", true)) // ChannelCreated, Down
	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/100", State: bridge.DeviceRinging})
	env.bridge.Apply(ringingLeg(bridge.CallEarly, "abc@pbx", "", "", true)) // ChannelStateChange Ringing
	// The adapter reads the tags from the PBX: that takes a while (here
	// longer than a NOTIFY takes to leave).
	time.Sleep(150 * time.Millisecond)
	env.bridge.Apply(ringingLeg(bridge.CallEarly, "abc@pbx", "phone-tag", "", true))
	env.bridge.Apply(ringingLeg(bridge.CallEarly, "abc@pbx", "phone-tag", "pbx-tag", false))
	n := p.nextNotify(5 * time.Second)
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("the ringing NOTIFY waited %v: it should go as the ids come", waited)
	}
	b := string(n.Body())
	for _, want := range []string{"<state>early</state>", `call-id="abc@pbx"`, `local-tag="phone-tag"`, `remote-tag="pbx-tag"`} {
		if !strings.Contains(b, want) {
			t.Errorf("first ringing NOTIFY lacks %s:\n%s", want, b)
		}
	}
}

// pickupMetrics counts expired waits.
type pickupMetrics struct {
	nopMetrics
	expired atomic.Int32
}

func (m *pickupMetrics) PickupWaitExpired() { m.expired.Add(1) }

// TestPickupWaitIsBounded: when the ids never come the ringing NOTIFY
// goes after Options.PickupWait without them (counted); when the source
// says it found none, it goes at once.
func TestPickupWaitIsBounded(t *testing.T) {
	m := &pickupMetrics{}
	env := newEnv(t, trusted, func(o *Options) { o.PickupWait = 300 * time.Millisecond; o.Metrics = m })
	p := newPhone(t, "UDP")
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600}); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
	}
	p.nextNotify(2 * time.Second)
	env.bridge.Apply(ringingLeg(bridge.CallEarly, "abc@pbx", "", "", true))
	n := p.notifyWhere("early", 5*time.Second)
	if strings.Contains(string(n.Body()), "local-tag") || m.expired.Load() != 1 {
		t.Errorf("after the wait: expired %d\n%s", m.expired.Load(), n.Body())
	}
	env.bridge.Apply(bridge.CallEnded{Source: "pbx", CallID: "leg1"})
	p.notifyWhere("phonestate>idle", 5*time.Second)

	// The source gives up (no tags found): released at once, no wait
	// counted, and no second NOTIFY for the flag alone.
	env2 := newEnv(t, trusted, func(o *Options) { o.PickupWait = time.Hour; o.Metrics = m })
	p2 := newPhone(t, "UDP")
	if res, _ := p2.subscribe(env2.udp, subReq{user: "100", event: "dialog", expires: 600}); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
	}
	p2.nextNotify(2 * time.Second)
	env2.bridge.Apply(ringingLeg(bridge.CallEarly, "abc@pbx", "", "", true))
	env2.bridge.Apply(ringingLeg(bridge.CallEarly, "abc@pbx", "", "", false))
	if n := p2.notifyWhere("early", 5*time.Second); !strings.Contains(string(n.Body()), `call-id="abc@pbx"`) {
		t.Errorf("released NOTIFY:\n%s", n.Body())
	}
	if m.expired.Load() != 1 {
		t.Errorf("expired %d, want still 1", m.expired.Load())
	}
	p2.noNotify(300 * time.Millisecond)
}

// TestForcedNotifyWaitsForPickupIDs: a NOTIFY that must be sent (a new
// subscription's first; likewise a refresh's and a restored one's)
// while a ringing leg's ids are on their way waits for them like any
// other, instead of showing the ringing call without what a pickup
// needs. (On the real Asterisk, the NOTIFY after a restart went out so
// in about one call in six.)
func TestForcedNotifyWaitsForPickupIDs(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.PickupWait = 10 * time.Second })
	first := newPhone(t, "UDP")
	if res, _ := first.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600}); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
	}
	first.nextNotify(2 * time.Second)
	env.bridge.Apply(ringingLeg(bridge.CallEarly, "abc@pbx", "", "", true)) // held: the tags are being read

	p := newPhone(t, "UDP")
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600}); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE while held: %d", res.StatusCode)
	}
	p.noNotify(300 * time.Millisecond) // its first NOTIFY waits with the others
	env.bridge.Apply(ringingLeg(bridge.CallEarly, "abc@pbx", "phone-tag", "pbx-tag", false))
	for _, w := range []*phone{p, first} {
		b := string(w.notifyWhere("early", 5*time.Second).Body())
		if !strings.Contains(b, `local-tag="phone-tag"`) || !strings.Contains(b, `remote-tag="pbx-tag"`) {
			t.Errorf("a ringing NOTIFY without the pickup ids:\n%s", b)
		}
	}
}
