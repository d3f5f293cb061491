package bridge

// aggregateOrder is Asterisk's precedence (main/devicestate.c, state_order):
// RINGINUSE > BUSY > INUSE > RINGING > ONHOLD > NOT_INUSE > UNAVAILABLE >
// UNKNOWN > INVALID.
var aggregateOrder = [...]uint8{
	DeviceUnknown:     1,
	DeviceIdle:        3,
	DeviceInUse:       6,
	DeviceBusy:        7,
	DeviceInvalid:     0,
	DeviceUnavailable: 2,
	DeviceRinging:     5,
	DeviceRingInUse:   8,
	DeviceOnHold:      4,
}

// Aggregator folds device states into one, the way Asterisk aggregates the
// devices of a hint (ast_devstate_aggregate_add): the state of highest
// precedence wins, and a ringing device together with an in-use, held or
// busy one gives RINGINUSE. The zero value is ready and yields
// DeviceInvalid until a state is added.
type Aggregator struct {
	state   DeviceState
	ringing bool
	inUse   bool
	started bool
}

// Add folds one more device state in.
func (a *Aggregator) Add(s DeviceState) {
	if !a.started {
		a.state, a.started = DeviceInvalid, true
	}
	if int(s) >= len(aggregateOrder) {
		s = DeviceUnknown
	}
	switch s {
	case DeviceRinging:
		a.ringing = true
	case DeviceInUse, DeviceOnHold, DeviceBusy:
		a.inUse = true
	}
	if a.ringing && a.inUse {
		a.state = DeviceRingInUse
	} else if aggregateOrder[s] > aggregateOrder[a.state] {
		a.state = s
	}
}

// State returns the aggregate so far (DeviceInvalid when nothing was added).
func (a *Aggregator) State() DeviceState {
	if !a.started {
		return DeviceInvalid
	}
	return a.state
}

// Aggregate folds the given states with Aggregator.
func Aggregate(states ...DeviceState) DeviceState {
	var a Aggregator
	for _, s := range states {
		a.Add(s)
	}
	return a.State()
}
