package body

import (
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// benchState is a user in a call, with a note: a typical busy lamp.
func benchState() *bridge.State {
	u := &bridge.User{ID: "debbie", Name: "Debbie Harry", Extensions: []string{"100"}}
	return &bridge.State{User: u, Device: bridge.DeviceInUse, Phone: bridge.PhoneBusy,
		Calls: []bridge.Call{{ID: "c1", Device: "PJSIP/100", Direction: bridge.Incoming, State: bridge.CallConfirmed,
			Remote: bridge.Party{Number: "101", Name: "Bob Marley"}, CallID: "a84b4c76e66710@pc33", LocalTag: "1928301774",
			RemoteTag: "a6c85cf", Started: time.Unix(1_800_000_000, 0)}},
		Person: bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityMeeting}, Note: "Budget review"}}
}

func BenchmarkPIDF(b *testing.B) {
	st := benchState()
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	for b.Loop() {
		buf = PIDF(buf[:0], "sip:100@pbx.example.com", st, Options{})
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkDialogInfo(b *testing.B) {
	st := benchState()
	buf := make([]byte, 0, 2048)
	b.ReportAllocs()
	var v uint32
	for b.Loop() {
		v++
		buf = DialogInfo(buf[:0], "sip:100@pbx.example.com", st, Options{Version: v})
	}
	b.SetBytes(int64(len(buf)))
}
