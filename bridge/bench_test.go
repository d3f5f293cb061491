package bridge

import (
	"fmt"
	"testing"
)

// BenchmarkApplyCall applies one PBX call event (ring, answer, hang up in
// turn) to a bridge of 1,000 users with one listener, as a NOTIFY fan-out
// would see it.
func BenchmarkApplyCall(b *testing.B) {
	var users []User
	for i := range 1000 {
		users = append(users, User{ID: fmt.Sprintf("u%d", i), Extensions: []string{fmt.Sprint(1000 + i)},
			Devices: []DeviceRef{{Source: "pbx", Device: fmt.Sprintf("PJSIP/%d", 1000+i)}}})
	}
	dir, err := NewDirectory(users)
	if err != nil {
		b.Fatal(err)
	}
	br := New(dir)
	changes := 0
	br.Listen(func(Change) { changes++ })
	evs := []Event{
		CallUpdated{Source: "pbx", Call: Call{ID: "c", Device: "PJSIP/1500", Direction: Incoming, State: CallEarly,
			Remote: Party{Number: "555"}}},
		CallUpdated{Source: "pbx", Call: Call{ID: "c", Device: "PJSIP/1500", Direction: Incoming, State: CallConfirmed,
			Remote: Party{Number: "555"}}},
		CallEnded{Source: "pbx", CallID: "c"},
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		br.Apply(evs[i%3])
		i++
	}
	if changes == 0 {
		b.Fatal("no change emitted")
	}
}
