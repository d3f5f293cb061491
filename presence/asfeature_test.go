package presence

import (
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
)

// Feature key synchronisation as Yealink documents it
// (features.feature_key_sync.enable = 1): the phone subscribes to
// as-feature-event for its own account, and on a DND key press sends a
// SUBSCRIBE in that dialog whose body is SetDoNotDisturb.

const yealinkSetDND = `<?xml version="1.0" encoding="ISO-8859-1"?>
<SetDoNotDisturb xmlns="http://www.ecma-international.org/standards/ecma-323/csta/ed3">
<device>100</device>
<doNotDisturbOn>%s</doNotDisturbOn>
</SetDoNotDisturb>`

func featureBody(on string) subReq {
	return subReq{event: "as-feature-event", expires: 600, body: []byte(strings.Replace(yealinkSetDND, "%s", on, 1)),
		headers: []sip.Header{sip.NewHeader("Content-Type", body.TypeAsFeature)}}
}

func TestDNDKeyOnThePhoneSetsDNDForEveryone(t *testing.T) {
	env := newEnv(t)
	phone := newPhone(t, "UDP")
	phone.user, phone.password = "debbie", "d-secret"
	res, d := phone.subscribe(env.udp, subReq{user: "100", event: "as-feature-event", expires: 600})
	if res.StatusCode != 200 {
		t.Fatalf("as-feature-event SUBSCRIBE: %d", res.StatusCode)
	}
	n := phone.nextNotify(3 * time.Second)
	if ct := header(n, "Content-Type"); ct != body.TypeAsFeature || !strings.Contains(string(n.Body()), "<doNotDisturbOn>false</doNotDisturbOn>") ||
		!strings.Contains(string(n.Body()), "<device>100</device>") {
		t.Fatalf("first NOTIFY (%s):\n%s", ct, n.Body())
	}
	// A desk phone's busy lamp and a soft client watch debbie.
	watcher := newPhone(t, "UDP")
	watcher.user, watcher.password = "bob", "b-secret"
	if res, _ := watcher.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatalf("watcher: %d", res.StatusCode)
	}
	watcher.nextNotify(3 * time.Second)

	// DND pressed on the phone.
	r := featureBody("true")
	r.expires = 600
	if res := phone.do(phone.buildSubscribe(d, r)); res.StatusCode != 200 {
		t.Fatalf("SetDoNotDisturb: %d", res.StatusCode)
	}
	phone.notifyWhere("<doNotDisturbOn>true</doNotDisturbOn>", 3*time.Second)
	watcher.notifyWhere("Do not disturb", 3*time.Second)
	if st, _ := env.bridge.State("debbie"); !st.Person.DND() {
		t.Fatal("the person is not on dnd")
	}
	// Calls come and go: the key's phone hears nothing of them. (The
	// key press itself may bring two NOTIFYs: the change, and the one
	// that answers the refresh.)
	drainNotifies(phone, 300*time.Millisecond)
	env.bridge.Apply(ringing("101"))
	watcher.nextNotify(3 * time.Second)
	phone.noNotify(300 * time.Millisecond)
	env.bridge.Apply(bridge.CallEnded{Source: "pbx", CallID: "c1"})

	// DND cleared elsewhere (the API, the switchboard) turns the key off.
	env.bridge.ClearPerson("debbie", "feature-key")
	phone.notifyWhere("<doNotDisturbOn>false</doNotDisturbOn>", 3*time.Second)
	// And set elsewhere lights it.
	env.bridge.SetPerson("debbie", "feature-key", bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityDND}, Note: "Focus"})
	phone.notifyWhere("<doNotDisturbOn>true</doNotDisturbOn>", 3*time.Second)
	// Off on the phone keeps the rest of what was said (the note).
	if res := phone.do(phone.buildSubscribe(d, featureBody("false"))); res.StatusCode != 200 {
		t.Fatalf("SetDoNotDisturb off: %d", res.StatusCode)
	}
	phone.notifyWhere("<doNotDisturbOn>false</doNotDisturbOn>", 3*time.Second)
	if p, _ := env.bridge.Person("debbie", "feature-key"); p.DND() || p.Note != "Focus" {
		t.Fatalf("after the key turned dnd off: %+v", p)
	}
}

func TestForwardingIsAnsweredOffAndOthersKeysAreNotTheirs(t *testing.T) {
	env := newEnv(t)
	phone := newPhone(t, "UDP")
	phone.user, phone.password = "debbie", "d-secret"
	_, d := phone.subscribe(env.udp, subReq{user: "100", event: "as-feature-event", expires: 600})
	phone.nextNotify(3 * time.Second)
	fwd := `<?xml version="1.0" encoding="ISO-8859-1"?>
<SetForwarding xmlns="http://www.ecma-international.org/standards/ecma-323/csta/ed3">
<device>100</device>
<forwardingType>forwardImmediate</forwardingType>
<activateForward>true</activateForward>
<forwardDN>200</forwardDN>
</SetForwarding>`
	r := subReq{event: "as-feature-event", expires: 600, body: []byte(fwd),
		headers: []sip.Header{sip.NewHeader("Content-Type", body.TypeAsFeature)}}
	if res := phone.do(phone.buildSubscribe(d, r)); res.StatusCode != 200 {
		t.Fatalf("SetForwarding: %d", res.StatusCode)
	}
	n := phone.notifyWhere("ForwardingEvent", 3*time.Second)
	if !strings.Contains(string(n.Body()), "<forwardStatus>false</forwardStatus>") ||
		!strings.Contains(string(n.Body()), "<forwardingType>forwardImmediate</forwardingType>") {
		t.Fatalf("forwarding answered as:\n%s", n.Body())
	}
	// A body that is not the package's is refused, and changes nothing.
	bad := subReq{event: "as-feature-event", expires: 600, body: []byte("<nonsense/>"),
		headers: []sip.Header{sip.NewHeader("Content-Type", body.TypeAsFeature)}}
	if res := phone.do(phone.buildSubscribe(d, bad)); res.StatusCode != 400 {
		t.Fatalf("a nonsense body: %d, want 400", res.StatusCode)
	}
	// Bob may not sync debbie's keys.
	bob := newPhone(t, "UDP")
	bob.user, bob.password = "bob", "b-secret"
	if res, _ := bob.subscribe(env.udp, subReq{user: "100", event: "as-feature-event", expires: 600}); res.StatusCode != 403 {
		t.Fatalf("another user's as-feature-event: %d, want 403", res.StatusCode)
	}
}

// drainNotifies takes NOTIFYs until none has come for quiet.
func drainNotifies(p *phone, quiet time.Duration) {
	for {
		select {
		case <-p.notifies:
		case <-time.After(quiet):
			return
		}
	}
}

// TestUnsubscribeAnswered481IsNoFailure: Linphone forgets the dialog as
// it unsubscribes and answers the final NOTIFY 481; that is no NOTIFY
// failure, and the final NOTIFY gives no reason that invites it back.
func TestUnsubscribeAnswered481IsNoFailure(t *testing.T) {
	m := newTestMetrics()
	env := newEnv(t, trusted, func(o *Options) { o.Metrics = m })
	p := newPhone(t, "UDP")
	_, d := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600})
	p.nextNotify(3 * time.Second)
	p.answer.Store(481)
	if res := p.refresh(d, 0); res.StatusCode != 200 {
		t.Fatalf("unsubscribe: %d", res.StatusCode)
	}
	if n := p.nextNotify(3 * time.Second); header(n, "Subscription-State") != "terminated" {
		t.Fatalf("final NOTIFY says %q", header(n, "Subscription-State"))
	}
	// A live subscription's NOTIFY answered 481 is one (the subscriber
	// lost the dialog): counted, which also shows the count works here.
	p.subscribe(env.udp, subReq{user: "101", event: "presence", expires: 600})
	select {
	case reason := <-m.failed:
		if reason != "481" {
			t.Fatalf("failure %q", reason)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the 481 to a live subscription's NOTIFY was not counted")
	}
	select {
	case reason := <-m.failed:
		t.Fatalf("another failure counted: %q", reason)
	case <-time.After(300 * time.Millisecond):
	}
}
