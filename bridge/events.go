package bridge

// Event is something a PBX source reports. Adapters deliver the concrete
// types below, in order per source.
type Event interface {
	// SourceName is the name of the PBX connection that reported it.
	SourceName() string
}

// DeviceStateChanged reports a device's own state as the PBX computes it
// (Asterisk's DeviceStateChanged, a registration that came or went).
// Calls reported for the device take precedence over it while they last.
type DeviceStateChanged struct {
	Source string
	Device string
	State  DeviceState
}

// CallUpdated reports the whole current state of one call leg: adapters
// keep per-leg state and send it entire, so applying it is idempotent.
type CallUpdated struct {
	Source string
	Call   Call
}

// CallEnded reports that a call leg is gone.
type CallEnded struct {
	Source string
	CallID string // Call.ID of the leg
}

// Snapshot is a source's full state after a (re)connect. It replaces
// everything the source reported before: devices not in it return to
// unknown, calls not in it end.
type Snapshot struct {
	Source  string
	Devices map[string]DeviceState
	Calls   []Call
}

// SourceName implements Event.
func (e DeviceStateChanged) SourceName() string { return e.Source }

// SourceName implements Event.
func (e CallUpdated) SourceName() string { return e.Source }

// SourceName implements Event.
func (e CallEnded) SourceName() string { return e.Source }

// SourceName implements Event.
func (e Snapshot) SourceName() string { return e.Source }

// SourceDown reports that a source has been unreachable for longer than an
// administrator accepts: what it reported last is no longer true, so its
// calls end and every device users have on it is unavailable, until the
// Snapshot of its next connection replaces that.
type SourceDown struct {
	Source string
}

// SourceName implements Event.
func (e SourceDown) SourceName() string { return e.Source }

// Sink takes events. *Bridge is one; adapters are written against this
// interface so that tests can record what they deliver.
type Sink interface {
	Apply(Event)
}

// SinkFunc adapts a function to Sink.
type SinkFunc func(Event)

// Apply implements Sink.
func (f SinkFunc) Apply(e Event) { f(e) }
