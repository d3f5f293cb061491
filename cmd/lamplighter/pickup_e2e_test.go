package main

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Pressing the BLF key of a ringing colleague picks the call up: the
// phone builds an INVITE with Replaces from the dialog-info NOTIFY
// Lamplighter sent it and sends it to the watched extension. On the real
// Asterisk and FreeSWITCH, in every way a phone reaches Lamplighter.

// pickupRig is a rig with a caller and a callee phone (baresip) and a
// picker (a desk phone's SIP stack) whose lamp is watched too.
type pickupRig struct {
	*rig
	caller, callee, picker string
	pickerLamp             *lampWatch
}

func newPickupRig(t *testing.T, kind string) *pickupRig {
	t.Helper()
	if kind == "ari" {
		r := newAsteriskRig(t, rigOptions{exts: []string{"100", "101"},
			yaml: `  - {id: u102, name: "User 102", extensions: ["102"], devices: [{pbx: ast, device: PJSIP/102}]}
`})
		return &pickupRig{rig: r, caller: "100", callee: "101", picker: "102", pickerLamp: watchLamp(t, r.ll, "102")}
	}
	r := newFreeSWITCHRig(t, rigOptions{exts: []string{"1000", "1010"},
		yaml: `  - {id: u1011, name: "User 1011", extensions: ["1011"], devices: [{pbx: fs, device: "1011@127.0.0.1"}]}
`})
	return &pickupRig{rig: r, caller: "1000", callee: "1010", picker: "1011", pickerLamp: watchLamp(t, r.ll, "1011")}
}

// password is a phone's password on the rig's PBX.
func (r *pickupRig) password(ext string) string {
	if r.kind == "esl" {
		return "1234"
	}
	return ext
}

// pbxURI is ext at the PBX's own address (the phone's line is the PBX's).
func (r *pickupRig) pbxURI(ext string) sip.Uri {
	host, port, _ := strings.Cut(r.sip, ":")
	n, _ := strconv.Atoi(port)
	return sip.Uri{Scheme: "sip", User: ext, Host: host, Port: n}
}

// keyPress is how a desk phone's key asks for a ringing call: where its
// INVITE goes (no user: the ringing dialog's remote target) and the
// Replaces it builds from the ringing dialog.
type keyPress struct {
	target sip.Uri
	build  func(lampDialog) string
}

// keyPresses are the ways the desk-phone vendors pick up from a key (see
// the main README), for a key that reaches Lamplighter (proxy mode, the
// dedicated line), which puts each as the PBX matches it.
func (r *pickupRig) keyPresses() map[string]keyPress {
	callee := sip.Uri{Scheme: "sip", User: r.callee, Host: r.domain}
	callIDAlone := func(d lampDialog) string { return d.CallID }
	return map[string]keyPress{
		"pickup with the tags as dialog-info gives them (Yealink)": {callee, replacesFrom},
		"pickup with the tags the other way round (Polycom)":       {callee, replacesSwapped},
		"pickup with the Call-ID alone":                            {callee, callIDAlone},
		"pickup sent to the caller with the Call-ID alone (Snom)":  {sip.Uri{}, callIDAlone},
	}
}

// pickUp rings the callee from the caller, lets phone press its key for
// the callee (an INVITE with the Replaces that build makes, to target;
// with no user in target, to the ringing dialog's remote target, where
// Snom phones send it),
// and checks that the call is picked up: 200, the caller talking to the
// picker, the callee no longer ringing, the picker's lamp naming the
// caller.
func (r *pickupRig) pickUp(t *testing.T, phone *sipPhone, target sip.Uri, build func(lampDialog) string) {
	t.Helper()
	const d = 10 * time.Second
	r.markAll()
	r.pickerLamp.mark()
	from := map[*lampWatch]int{r.pickerLamp: r.pickerLamp.count()}
	for _, l := range r.lamps {
		from[l] = l.count()
	}
	defer func() {
		for l, n := range from {
			l.checkHonest(t, n)
		}
		// Every lamp in a call named who was really in it: the picker
		// the caller, the caller the callee until the pickup and the
		// picker after, never a feature code or the number dialled.
		for _, doc := range r.pickerLamp.documents()[from[r.pickerLamp]:] {
			if c, ok := doc.only(); ok && c.State == "confirmed" && userOf(c.Remote) != r.caller {
				t.Errorf("the picker's lamp named %s: %s\n%s", c.Remote, doc, r.pickerLamp.history())
			}
		}
		for _, doc := range r.lamps[r.caller].documents()[from[r.lamps[r.caller]]:] {
			if c, ok := doc.only(); ok && c.State == "confirmed" && userOf(c.Remote) != r.picker {
				t.Errorf("the caller's lamp named %s in the call: %s", c.Remote, doc)
			}
		}
	}()
	rings := strings.Count(r.phones[r.callee].Output(), "Incoming call")
	seen := phone.count()
	r.dial(r.caller, r.callee)
	r.lamps[r.callee].waitCall("early", "recipient", r.caller, d)
	ringing := phone.ringing(seen, d)
	if target.User == "" {
		var u sip.Uri
		if err := sip.ParseUri(ringing.Target, &u); err != nil || u.User != r.caller {
			t.Fatalf("the ringing dialog's remote target %q: %v", ringing.Target, err)
		}
		target = sip.Uri{Scheme: "sip", User: u.User, Host: r.domain}
	}
	res, s := phone.call(target, sip.NewHeader("Replaces", build(ringing)))
	if res.StatusCode != 200 {
		t.Fatalf("pickup answered %d %s (Replaces %s)", res.StatusCode, res.Reason, build(ringing))
	}
	r.lamps[r.caller].waitCall("confirmed", "", r.picker, d)
	r.pickerLamp.waitCall("confirmed", "", r.caller, d)
	r.lamps[r.callee].waitIdle(d)
	if n := strings.Count(r.phones[r.callee].Output(), "Incoming call"); n != rings+1 {
		t.Errorf("the callee's phone rang %d times, want once", n-rings)
	}
	phone.hangup(s)
	r.lamps[r.caller].waitIdle(d)
	r.pickerLamp.waitIdle(d)
}

// The phone's BLF server is Lamplighter (a separate presence server
// setting) and its line is the PBX's: the INVITE goes to the PBX
// directly, with the tags as dialog-info gives them.
func TestPickupWithASeparateBLFServer(t *testing.T) {
	for _, kind := range []string{"ari", "esl"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			r := newPickupRig(t, kind)
			phone := newSIPPhone(t, r.picker, r.password(r.picker), r.domain, "")
			if res := phone.register(r.sip, 300); res.StatusCode != 200 {
				t.Fatalf("REGISTER with the PBX: %d", res.StatusCode)
			}
			if res := phone.subscribe(r.ll, r.callee); res.StatusCode != 200 {
				t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
			}
			r.pickUp(t, phone, r.pbxURI(r.callee), replacesFrom)
		})
	}
}
