package main

import (
	"testing"
	"time"
)

// Lamps on a real FreeSWITCH 1.10 through the event socket adapter, with
// real baresip phones registered to FreeSWITCH (its vanilla dialplan):
// the calls a receptionist lives in, as TestAsteriskLamps. FreeSWITCH's
// build here has no mod_conference, so no conference is tried.
func TestFreeSWITCHLamps(t *testing.T) {
	phones := []string{"1000", "1010", "1011", "1012"}
	r := newFreeSWITCHRig(t, rigOptions{exts: phones,
		yaml: `  - {id: park6001, name: "Park 6001", extensions: ["6001"], devices: [{pbx: fs, device: "park+6001@127.0.0.1"}]}
`})
	r.lamps["6001"] = watchLamp(t, r.ll, "6001")
	const d = 10 * time.Second
	step := r.scenarios(t, phones, r.watchNative(phones, "1019", "1234"))

	step("plain call", func(t *testing.T) { r.plainCall(t, "1000", "1010", "") })

	step("ring group", func(t *testing.T) {
		r.dial("1000", "2001") // group support: 1010-1014
		for _, ext := range []string{"1010", "1011", "1012"} {
			r.lamps[ext].waitCall("early", "recipient", "1000", d)
		}
		r.cmd("1011", "/accept")
		r.lamps["1011"].waitCall("confirmed", "recipient", "1000", d)
		r.lamps["1010"].waitIdle(d)
		r.lamps["1012"].waitIdle(d)
		r.lamps["1000"].waitCall("confirmed", "initiator", "1011", d) // who answered, not 2001
	})

	step("blind transfer", func(t *testing.T) {
		r.dial("1000", "1010")
		r.lamps["1010"].waitCall("early", "recipient", "1000", d)
		r.cmd("1010", "/accept")
		r.lamps["1010"].waitCall("confirmed", "recipient", "1000", d)
		r.cmd("1010", "/transfer "+r.uri("1011"))
		r.lamps["1011"].waitCall("early", "recipient", "1000", d)
		r.lamps["1010"].waitIdle(d)
		r.cmd("1011", "/accept")
		r.lamps["1011"].waitCall("confirmed", "recipient", "1000", d)
		r.lamps["1000"].waitCall("confirmed", "", "1011", d)
	})

	step("pickup by intercept code", func(t *testing.T) {
		r.dial("1000", "1010")
		r.lamps["1010"].waitCall("early", "recipient", "1000", d)
		r.dial("1011", "**1010")
		r.lamps["1011"].waitCall("confirmed", "", "1000", d) // the picker names the caller
		r.lamps["1000"].waitCall("confirmed", "", "1011", d) // and the caller the picker
		r.lamps["1010"].waitIdle(d)
	})

	step("parking", func(t *testing.T) {
		r.dial("1000", "1010")
		r.lamps["1010"].waitCall("early", "recipient", "1000", d)
		r.cmd("1010", "/accept")
		r.lamps["1010"].waitCall("confirmed", "recipient", "1000", d)
		r.cmd("1010", "/transfer "+r.uri("6001")) // valet park in 6001
		r.lamps["1010"].waitIdle(d)
		r.lamps["6001"].waitCall("confirmed", "", "1000", d)
		r.lamps["1000"].wait("parked in 6001", d, func(doc lamp) bool {
			c, ok := doc.only()
			return ok && c.State == "confirmed" && userOf(c.Remote) == "6001" && c.RemoteName == "Parked"
		})
		r.dial("1011", "6001")
		r.lamps["1011"].waitCall("confirmed", "", "1000", d)
		r.lamps["1000"].waitCall("confirmed", "", "1011", d)
		r.lamps["6001"].waitIdle(d)
	})

	step("rejected call", func(t *testing.T) {
		r.dial("1000", "1010")
		r.lamps["1010"].waitCall("early", "recipient", "1000", d)
		r.cmd("1010", "/hangup")
		r.lamps["1010"].waitIdle(d)
		r.lamps["1000"].waitIdle(d)
	})

	step("unregister and return", func(t *testing.T) {
		old := r.phones["1012"]
		old.Command("/quit")
		select {
		case <-old.Exited:
		case <-time.After(d):
			t.Fatal("baresip did not quit")
		}
		r.lamps["1012"].wait("unavailable", d, func(doc lamp) bool { return doc.Phone == "offline" })
		r.phones["1012"] = r.phone("1012")
		r.lamps["1012"].waitIdle(d)
	})
}
