package main

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/presence/baresiptest"
)

// A busy-lamp line on the phone (phones: dedicated) with the real PBXs:
// the phone's own line is the PBX's, its second line is registered to
// Lamplighter, which authenticates the key presses and passes them on.
// The PBX is set up as the proxy README says (it trusts Lamplighter's
// address, here 127.0.0.2, apart from the phones' 127.0.0.1).
// firstInvite is the first INVITE Asterisk's pjsip logger wrote (in its
// log) as received from host.
func firstInvite(log, host string) string {
	_, rest, ok := strings.Cut(log, "<--- Received SIP request")
	for ok {
		msg, next, _ := strings.Cut(rest, "<--- ")
		if strings.Contains(msg, host) && strings.Contains(msg, "INVITE sip:") {
			return msg
		}
		_, rest, ok = strings.Cut(next, "Received SIP request")
	}
	return ""
}

func TestDedicatedLineOnTheRealPBXs(t *testing.T) {
	for _, kind := range []string{"ari", "esl"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			port := freePort(t)
			if !baresiptest.Bindable("127.0.0.2", port) {
				t.Fatal("127.0.0.2 is not usable here")
			}
			o := rigOptions{proxy: "{phones: dedicated}", untrusted: true, listen: net.JoinHostPort("127.0.0.2", strconv.Itoa(port))}
			o.ast.Apply(readmeSnippets(t, "asterisk", "dedicated"), "10.0.0.9", "127.0.0.2")
			o.fs.Apply(readmeSnippets(t, "freeswitch", "dedicated"), "10.0.0.9", "127.0.0.2")
			var r *pickupRig
			if kind == "ari" {
				o.exts = []string{"100", "101"}
				o.pbx = "    ari: {dedicated_endpoint: lamplighter}\n"
				o.yaml = `  - {id: u102, name: "User 102", extensions: ["102"], devices: [{pbx: ast, device: PJSIP/102}], sip: {username: "102", password: pw102}}` + "\n"
				rr := newAsteriskRig(t, o)
				r = &pickupRig{rig: rr, caller: "100", callee: "101", picker: "102", pickerLamp: rr.watch("102")}
			} else {
				o.exts = []string{"1000", "1010"}
				o.yaml = `  - {id: u1011, name: "User 1011", extensions: ["1011"], devices: [{pbx: fs, device: "1011@127.0.0.1"}], sip: {username: "1011", password: pw1011}}` + "\n"
				rr := newFreeSWITCHRig(t, o)
				r = &pickupRig{rig: rr, caller: "1000", callee: "1010", picker: "1011", pickerLamp: rr.watch("1011")}
			}
			const d = 10 * time.Second
			// The phone's own line, registered with the PBX.
			line := newSIPPhone(t, r.picker, r.password(r.picker), r.domain, "")
			if res := line.register(r.sip, 300); res.StatusCode != 200 {
				t.Fatalf("the phone's own line: %d %s", res.StatusCode, res.Reason)
			}
			r.pickerLamp.waitIdle(d)
			// The busy-lamp line: registered to Lamplighter with the
			// user's Lamplighter password, its keys subscribed there.
			phone := newSIPPhone(t, r.picker, "pw"+r.picker, r.domain, r.ll)
			if res := phone.register(r.domain, 300); res.StatusCode != 200 {
				t.Fatalf("the busy-lamp line's REGISTER: %d %s", res.StatusCode, res.Reason)
			}
			if res := phone.subscribe(r.ll, r.callee); res.StatusCode != 200 {
				t.Fatalf("the key's SUBSCRIBE: %d %s", res.StatusCode, res.Reason)
			}

			t.Run("a key calls", func(t *testing.T) {
				if r.ast != nil {
					r.ast.CLI("pjsip set logger on") // to read what reached Asterisk
					defer r.ast.CLI("pjsip set logger off")
				}
				answered := make(chan *sip.Response, 1)
				var s *sipgo.DialogClientSession
				go func() {
					res, ss := phone.call(sip.Uri{Scheme: "sip", User: r.callee, Host: r.domain})
					s = ss
					answered <- res
				}()
				// It rings with the key's owner as the caller, and the
				// owner's lamp shows the call.
				r.lamps[r.callee].waitCall("early", "recipient", r.picker, d)
				r.pickerLamp.waitCall("early", "initiator", r.callee, d)
				r.phones[r.callee].WaitOutput("Incoming call", d)
				r.cmd(r.callee, "/accept")
				select {
				case res := <-answered:
					if res.StatusCode != 200 {
						t.Fatalf("the key's call: %d %s", res.StatusCode, res.Reason)
					}
				case <-time.After(2 * d):
					t.Fatal("the key's call was never answered")
				}
				r.pickerLamp.waitCall("confirmed", "initiator", r.callee, d)
				if r.ast != nil {
					// Lamplighter's own Route (the phone's outbound proxy)
					// stayed with Lamplighter; the identity is asserted.
					inv := firstInvite(r.ast.Log(), "127.0.0.2")
					if inv == "" || strings.Contains(inv, "\nRoute:") || !strings.Contains(inv, "P-Asserted-Identity: \"User "+r.picker+"\"") {
						t.Errorf("the INVITE Asterisk got from Lamplighter:\n%s", inv)
					}
				}
				phone.hangup(s)
				r.lamps[r.callee].waitIdle(d)
				r.pickerLamp.waitIdle(d)
			})
			for name, key := range r.keyPresses() {
				t.Run(name, func(t *testing.T) {
					r.pickUp(t, phone, key.target, key.build)
				})
			}
		})
	}
}

// A PBX not set up to trust Lamplighter challenges a key press from a
// busy-lamp line: the phone gets 403 at once (never the challenge, which
// it would answer with Lamplighter's realm, over and over), and the log
// says what the PBX needs.
func TestDedicatedLineOnAPBXThatDoesNotTrustLamplighter(t *testing.T) {
	for _, kind := range []string{"ari", "esl"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			o := rigOptions{proxy: "{phones: dedicated}", untrusted: true}
			var r *rig
			var picker, callee string
			if kind == "ari" {
				o.exts, picker, callee = []string{"101"}, "102", "101"
				o.yaml = `  - {id: u102, name: "User 102", extensions: ["102"], devices: [{pbx: ast, device: PJSIP/102}], sip: {username: "102", password: pw102}}` + "\n"
				r = newAsteriskRig(t, o)
			} else {
				o.exts, picker, callee = []string{"1010"}, "1011", "1010"
				o.yaml = `  - {id: u1011, name: "User 1011", extensions: ["1011"], devices: [{pbx: fs, device: "1011@127.0.0.1"}], sip: {username: "1011", password: pw1011}}` + "\n"
				r = newFreeSWITCHRig(t, o)
			}
			phone := newSIPPhone(t, picker, "pw"+picker, r.domain, r.ll)
			if res := phone.register(r.domain, 300); res.StatusCode != 200 {
				t.Fatalf("the busy-lamp line's REGISTER: %d %s", res.StatusCode, res.Reason)
			}
			start := time.Now()
			res, _ := phone.call(sip.Uri{Scheme: "sip", User: callee, Host: r.domain})
			if res.StatusCode != 403 || time.Since(start) > 5*time.Second {
				t.Fatalf("the key press on a PBX that challenges it: %d %s after %v, want 403 at once", res.StatusCode, res.Reason, time.Since(start))
			}
			waitFor(t, r.out, "must trust Lamplighter's address", 5*time.Second)
		})
	}
}
