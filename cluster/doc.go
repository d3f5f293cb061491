// Package cluster makes several Lamplighter nodes behave as one on NATS
// JetStream (README.md). Each node follows every PBX with its own adapter
// connection, so PBX call state agrees because the PBX is the same; what
// only one node learns (a PUBLISH, a person state set through the API or
// the switchboard, a phone's DND key) is written to a key-value bucket
// that every node watches and applies to its own bridge. Each node holds
// a lease, a key that lapses unless renewed, so that the others know it
// is alive.
//
// Writes never wait on the engine: they are queued (the newest per key)
// and retried, and a node whose engine is away serves from memory and
// says so in /readyz. Conflicts are settled by the bucket's revisions: a
// node shows for each key the newest revision it has seen, and keeps its
// own write while it is on its way.
package cluster
