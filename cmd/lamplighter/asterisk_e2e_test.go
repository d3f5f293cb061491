package main

import (
	"testing"
	"time"
)

// Lamps on a real Asterisk 22 through the ARI adapter, with real baresip
// phones registered to Asterisk: the calls a receptionist lives in. Every
// lamp is a BLF key's subscription; after each scenario every document
// each lamp was sent is checked (no call without its party or ids).
func TestAsteriskLamps(t *testing.T) {
	phones := []string{"100", "101", "102", "103"}
	r := newAsteriskRig(t, rigOptions{exts: phones,
		yaml: `  - {id: park701, name: "Park 701", extensions: ["701"], devices: [{pbx: ast, device: "park:701@parkedcalls"}]}
`})
	r.lamps["701"] = watchLamp(t, r.ll, "701")
	const d = 10 * time.Second
	step := r.scenarios(t, phones, r.watchNative(phones, "103", "103"))

	step("plain call", func(t *testing.T) { r.plainCall(t, "100", "101", "Phone 100") })

	step("ring group", func(t *testing.T) {
		l100, l101, l102 := r.lamps["100"], r.lamps["101"], r.lamps["102"]
		r.dial("100", "600") // Dial(PJSIP/101&PJSIP/102)
		l101.waitCall("early", "recipient", "100", d)
		l102.waitCall("early", "recipient", "100", d)
		r.cmd("102", "/accept")
		l102.waitCall("confirmed", "recipient", "100", d)
		l101.waitIdle(d)
		l100.waitCall("confirmed", "initiator", "102", d)
	})

	step("blind transfer", func(t *testing.T) {
		l100, l101, l102 := r.lamps["100"], r.lamps["101"], r.lamps["102"]
		r.dial("100", "101")
		l101.waitCall("early", "recipient", "100", d)
		r.cmd("101", "/accept")
		l101.waitCall("confirmed", "recipient", "100", d)
		r.cmd("101", "/transfer "+r.uri("102"))
		l102.waitCall("early", "recipient", "100", d) // the transferred caller rings at 102
		l101.waitIdle(d)
		r.cmd("102", "/accept")
		l102.waitCall("confirmed", "recipient", "100", d)
		l100.waitCall("confirmed", "", "102", d)
	})

	step("directed pickup", func(t *testing.T) {
		l100, l101, l102 := r.lamps["100"], r.lamps["101"], r.lamps["102"]
		r.dial("100", "101")
		l101.waitCall("early", "recipient", "100", d)
		r.dial("102", "*8101")
		l102.waitCall("confirmed", "", "100", d) // the picker names the caller
		l100.waitCall("confirmed", "", "102", d)
		l101.waitIdle(d)
	})

	step("parking", func(t *testing.T) {
		l100, l101, l102, slot := r.lamps["100"], r.lamps["101"], r.lamps["102"], r.lamps["701"]
		r.dial("100", "101")
		l101.waitCall("early", "recipient", "100", d)
		r.cmd("101", "/accept")
		l101.waitCall("confirmed", "recipient", "100", d)
		r.cmd("101", "/transfer "+r.uri("700")) // park: the caller goes to 701
		l101.waitIdle(d)
		// The space's lamp names who waits there; the parked caller's
		// names the space, not the phone that parked it.
		slot.waitCall("confirmed", "", "100", d)
		if c := l100.waitCall("confirmed", "", "701", d); c.RemoteName != "Parked" {
			t.Errorf("the parked caller's lamp: %+v", c)
		}
		r.dial("102", "701")
		l102.waitCall("confirmed", "", "100", d)
		l100.waitCall("confirmed", "", "102", d)
		slot.waitIdle(d)
	})

	step("conference", func(t *testing.T) {
		l100, l101 := r.lamps["100"], r.lamps["101"]
		r.dial("100", "800")
		inConference := func(doc lamp) bool {
			c, ok := doc.only()
			return ok && c.State == "confirmed" && userOf(c.Remote) == "800" && c.RemoteName == "Conference 800"
		}
		l100.wait("in conference 800", d, inConference)
		r.dial("101", "800")
		l101.wait("in conference 800", d, inConference)
	})

	step("rejected call", func(t *testing.T) {
		l100, l101 := r.lamps["100"], r.lamps["101"]
		r.dial("100", "101")
		l101.waitCall("early", "recipient", "100", d)
		r.cmd("101", "/hangup") // 486 Busy Here
		l101.waitIdle(d)
		l100.waitIdle(d)
	})

	step("unregister and return", func(t *testing.T) {
		l103 := r.lamps["103"]
		old := r.phones["103"]
		old.Command("/quit") // baresip unregisters as it quits
		select {
		case <-old.Exited:
		case <-time.After(d):
			t.Fatal("baresip did not quit")
		}
		l103.wait("unavailable", d, func(doc lamp) bool { return doc.Phone == "offline" })
		r.phones["103"] = r.phone("103")
		l103.waitIdle(d)
	})
}
