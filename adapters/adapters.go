// Package adapters holds what every PBX adapter shares: the Adapter
// interface that cmd/lamplighter runs, the connection settings common to
// all kinds, and the status an adapter reports for readiness and metrics.
// Each adapter lives in its own sub-folder (ari, esl, sim) with its README,
// config section, code, tests and fixtures, like a CoreDNS plugin.
package adapters

import (
	"context"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/configerr"
)

// Adapter connects to one PBX and feeds its events to a bridge.Sink.
type Adapter interface {
	// Name is the PBX connection's name from the config; it is the
	// Source of every event the adapter delivers.
	Name() string
	// Run connects, delivers a Snapshot after every (re)connect and
	// incremental events after it, and reconnects on its own until ctx
	// ends. A PBX that is down is not an error: Run keeps trying. It
	// returns nil when ctx ends.
	Run(ctx context.Context, sink bridge.Sink) error
	// Status tells whether the adapter is connected and synchronised.
	Status() Status
}

// DeviceLearner is an Adapter that can take devices the directory gave
// its users since its last resync without reading the whole PBX again:
// it reads only their state, on the connection it has, so that a PBX's
// new extension costs no reconnection (and no event lost in one). An
// adapter that is not one is resynchronised instead.
type DeviceLearner interface {
	// DevicesAdded tells the adapter that its device list grew; it must
	// not block.
	DevicesAdded()
}

// PersonMirror is an Adapter that writes a user's person state back into
// its PBX (for example dnd as a device state the PBX's own hints and
// routing can read). MirrorPerson is called from a bridge listener: it
// must not block, and the adapter re-writes what it was told after every
// reconnect.
type PersonMirror interface {
	MirrorPerson(user bridge.User, person bridge.PersonState)
}

// Status is an adapter's connection state.
type Status struct {
	Connected    bool      `json:"connected"`
	Synchronised bool      `json:"synchronised"`   // a snapshot was delivered since the last connect
	Down         bool      `json:"down,omitempty"` // unreachable past its down_after: its devices show unavailable
	Since        time.Time `json:"since,omitzero"`
	LastError    string    `json:"last_error,omitempty"`
	Reconnects   uint64    `json:"reconnects"`
	Events       uint64    `json:"events"`  // events received from the PBX
	Skipped      uint64    `json:"skipped"` // events that could not be used (counted, never silent)
}

// Connection is what every adapter needs to reach its PBX, resolved from
// the config (secrets already read from their file or environment).
type Connection struct {
	Name     string
	Address  string
	Username string
	Password string
}

// ConfigError is a problem in an adapter's own config section (see
// configerr, where it lives so that other components share it).
type ConfigError = configerr.Error
