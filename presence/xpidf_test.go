package presence

import (
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// TestXPIDFSubscriber: an older phone that accepts only
// application/xpidf+xml gets its NOTIFYs in XPIDF (status and MSN
// substatus follow the line), one that accepts neither PIDF nor XPIDF
// is told what is offered, and a restart keeps the format.
func TestXPIDFSubscriber(t *testing.T) {
	env := newEnv(t, trusted)
	p := newRawPeer(t, env.udp)
	d := &rawSub{callID: "xpidf-1", fromTag: "ft", user: "100", event: "presence"}
	p.send(p.subscribeMsg(d, 600, "Accept: application/xpidf+xml"))
	if res := p.response(d.callID, 5*time.Second); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
	}
	waitUntil(t, 5*time.Second, "an XPIDF NOTIFY showing online", func() bool {
		return strings.Contains(p.lastBody(d.callID), `substatus="online"`)
	})
	p.mu.Lock()
	ct := header(p.last[d.callID].req, "Content-Type")
	p.mu.Unlock()
	if ct != "application/xpidf+xml" {
		t.Errorf("Content-Type %q", ct)
	}
	env.bridge.Apply(answered("101"))
	waitUntil(t, 5*time.Second, "the call in XPIDF", func() bool {
		b := p.lastBody(d.callID)
		return strings.Contains(b, `status="inuse"`) && strings.Contains(b, `substatus="onthephone"`)
	})

	other := &rawSub{callID: "xpidf-2", fromTag: "ft", user: "100", event: "presence"}
	p.send(p.subscribeMsg(other, 600, "Accept: text/plain"))
	res := p.response(other.callID, 5*time.Second)
	if res.StatusCode != 406 || !strings.Contains(header(res, "Accept"), "application/xpidf+xml") ||
		!strings.Contains(header(res, "Accept"), "application/pidf+xml") {
		t.Errorf("Accept: text/plain got %d with Accept %q", res.StatusCode, header(res, "Accept"))
	}
	// PIDF wins when both are accepted.
	both := &rawSub{callID: "xpidf-3", fromTag: "ft", user: "100", event: "presence"}
	p.send(p.subscribeMsg(both, 600, "Accept: application/xpidf+xml, application/pidf+xml"))
	if res := p.response(both.callID, 5*time.Second); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE accepting both: %d", res.StatusCode)
	}
	waitUntil(t, 5*time.Second, "a PIDF NOTIFY", func() bool {
		return strings.Contains(p.lastBody(both.callID), "urn:ietf:params:xml:ns:pidf")
	})
	for _, sub := range env.srv.subs.all() {
		sub.mu.Lock()
		rec := sub.saved()
		sub.mu.Unlock()
		back, err := restoredSubscription(&rec, env.srv.packages, env.srv.strs)
		if err != nil {
			t.Fatal(err)
		}
		if back.MediaType != sub.MediaType {
			t.Errorf("%s: %s after a restore, was %s", sub.CallID, back.MediaType, sub.MediaType)
		}
	}
}

// TestDNDForLinphone: do not disturb set anywhere reaches a Linphone
// watcher as Linphone reads it (text in busy), a desk phone's PIDF
// watcher as RFC 4480 has it.
func TestDNDForLinphone(t *testing.T) {
	env := newEnv(t, trusted)
	p := newRawPeer(t, env.udp)
	linphone := &rawSub{callID: "lin-1", fromTag: "ft", user: "100", event: "presence"}
	desk := &rawSub{callID: "desk-1", fromTag: "ft", user: "100", event: "presence"}
	for d, ua := range map[*rawSub]string{linphone: "Linphone Desktop/5.2.0 (Debian) LinphoneCore/5.1.65",
		desk: "Yealink SIP-T46S 66.86.0.15"} {
		// One at a time: response() passes over other dialogs' answers.
		p.send(p.subscribeMsg(d, 600, "User-Agent: "+ua))
		if res := p.response(d.callID, 5*time.Second); res.StatusCode != 200 {
			t.Fatalf("%s: %d", d.callID, res.StatusCode)
		}
	}
	if err := env.bridge.SetPerson("debbie", "api", bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityDND}}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 5*time.Second, "Linphone's dnd", func() bool {
		return strings.Contains(p.lastBody(linphone.callID), "<rpid:busy>Do not disturb</rpid:busy>")
	})
	waitUntil(t, 5*time.Second, "the desk phone's dnd", func() bool {
		return strings.Contains(p.lastBody(desk.callID), "<rpid:busy/>")
	})
	if strings.Contains(p.lastBody(desk.callID), "<rpid:busy>") {
		t.Errorf("the desk phone got Linphone's form:\n%s", p.lastBody(desk.callID))
	}
}
