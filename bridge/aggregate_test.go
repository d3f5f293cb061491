package bridge

import (
	"strings"
	"testing"
)

// The whole pairwise matrix, written out by hand from Asterisk's rules
// (main/devicestate.c): row = first state added, column = second.
// Abbreviations: unk idle use busy inv unav ring riu hold.
const aggregateMatrix = `
       unk   idle  use   busy  inv   unav  ring  riu   hold
unk    unk   idle  use   busy  unk   unav  ring  riu   hold
idle   idle  idle  use   busy  idle  idle  ring  riu   hold
use    use   use   use   busy  use   use   riu   riu   use
busy   busy  busy  busy  busy  busy  busy  riu   riu   busy
inv    unk   idle  use   busy  inv   unav  ring  riu   hold
unav   unav  idle  use   busy  unav  unav  ring  riu   hold
ring   ring  ring  riu   riu   ring  ring  ring  riu   riu
riu    riu   riu   riu   riu   riu   riu   riu   riu   riu
hold   hold  hold  use   busy  hold  hold  riu   riu   hold
`

var abbrev = map[string]DeviceState{
	"unk": DeviceUnknown, "idle": DeviceIdle, "use": DeviceInUse, "busy": DeviceBusy,
	"inv": DeviceInvalid, "unav": DeviceUnavailable, "ring": DeviceRinging,
	"riu": DeviceRingInUse, "hold": DeviceOnHold,
}

func TestAggregateMatrix(t *testing.T) {
	lines := strings.Split(strings.TrimSpace(aggregateMatrix), "\n")
	cols := strings.Fields(lines[0])
	if len(cols) != 9 || len(lines) != 10 {
		t.Fatalf("matrix is not 9x9")
	}
	for _, line := range lines[1:] {
		f := strings.Fields(line)
		a := abbrev[f[0]]
		for j, want := range f[1:] {
			b := abbrev[cols[j]]
			if got := Aggregate(a, b); got != abbrev[want] {
				t.Errorf("Aggregate(%v, %v) = %v, want %v", a, b, got, abbrev[want])
			}
		}
	}
}

func TestAggregateLonger(t *testing.T) {
	cases := []struct {
		in   []DeviceState
		want DeviceState
	}{
		{nil, DeviceInvalid},
		{[]DeviceState{DeviceIdle}, DeviceIdle},
		{[]DeviceState{DeviceUnavailable, DeviceUnavailable}, DeviceUnavailable},
		// Ringing on one phone while another holds a call: ring in use,
		// even though the two are not adjacent.
		{[]DeviceState{DeviceRinging, DeviceIdle, DeviceOnHold}, DeviceRingInUse},
		{[]DeviceState{DeviceOnHold, DeviceUnavailable, DeviceRinging}, DeviceRingInUse},
		// Once ring-in-use, it stays.
		{[]DeviceState{DeviceRingInUse, DeviceIdle, DeviceUnknown}, DeviceRingInUse},
		{[]DeviceState{DeviceIdle, DeviceUnavailable, DeviceUnknown}, DeviceIdle},
		{[]DeviceState{DeviceUnknown, DeviceInvalid}, DeviceUnknown},
		// An out-of-range state counts as unknown, not as a crash.
		{[]DeviceState{DeviceState(200)}, DeviceUnknown},
	}
	for _, c := range cases {
		if got := Aggregate(c.in...); got != c.want {
			t.Errorf("Aggregate(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestParseDeviceState(t *testing.T) {
	for in, want := range map[string]DeviceState{
		"NOT_INUSE": DeviceIdle, "INUSE": DeviceInUse, "BUSY": DeviceBusy,
		"INVALID": DeviceInvalid, "UNAVAILABLE": DeviceUnavailable, "RINGING": DeviceRinging,
		"RINGINUSE": DeviceRingInUse, "ONHOLD": DeviceOnHold, "UNKNOWN": DeviceUnknown,
		"idle": DeviceIdle, "onhold": DeviceOnHold,
	} {
		got, err := ParseDeviceState(in)
		if err != nil || got != want {
			t.Errorf("ParseDeviceState(%q) = %v, %v; want %v", in, got, err, want)
		}
		// Every state's own name parses back to it.
		if back, err := ParseDeviceState(want.String()); err != nil || back != want {
			t.Errorf("round trip of %v gave %v, %v", want, back, err)
		}
	}
	if _, err := ParseDeviceState("ON_FIRE"); err == nil {
		t.Error("ParseDeviceState accepted ON_FIRE")
	}
}
