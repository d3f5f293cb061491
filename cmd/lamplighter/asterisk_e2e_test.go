package main

import (
	"testing"
	"time"
)

// Lamps on a real Asterisk 22, through the ARI adapter, with real
// phones: the calls a receptionist lives in.
func TestAsteriskLampsPlainCall(t *testing.T) {
	r := newAsteriskRig(t, rigOptions{exts: []string{"100", "101", "102"}})
	l100, l101 := r.lamps["100"], r.lamps["101"]
	r.dial("100", "101")
	in := l101.waitCall("early", "recipient", "100", 10*time.Second)
	out := l100.waitCall("early", "initiator", "101", 10*time.Second)
	t.Logf("ringing: %+v / %+v", in, out)
	r.cmd("101", "/accept")
	l101.waitCall("confirmed", "recipient", "100", 10*time.Second)
	l100.waitCall("confirmed", "initiator", "101", 10*time.Second)
	r.cmd("100", "/hold")
	time.Sleep(2 * time.Second)
	r.cmd("100", "/resume")
	time.Sleep(2 * time.Second)
	r.cmd("100", "/hangup")
	l100.waitIdle(10 * time.Second)
	l101.waitIdle(10 * time.Second)
	t.Logf("100:\n%s", l100.history())
	t.Logf("101:\n%s", l101.history())
	checkLampsHonest(t, l100, l101)
}
