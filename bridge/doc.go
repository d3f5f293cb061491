// Package bridge is Lamplighter's core: it owns the directory (users,
// their extensions, aliases and PBX devices), the device and call state that
// each PBX source reports, the per-user aggregation of devices into one
// state, and the person state (dnd, away, meeting…) that users publish.
//
// The package does no I/O. Adapters feed it Events (incremental changes and
// full per-source Snapshots); it emits a Change whenever a user's resulting
// State really changes. Everything else (SIP, HTTP, PBX sockets) lives
// outside and depends on this package, never the other way round.
package bridge
