// Package presence is Lamplighter's SIP side: transports, subscription
// dialogs for its event packages (packages.go: presence, dialog,
// as-feature-event, presence.winfo) and for lists of users (list.go, RFC
// 4662), PUBLISH, REGISTER, authentication and NOTIFY fan-out. It knows
// users and their bridge.State, never PBXs. Document bodies are rendered
// by the sub-package body.
//
// # Request path
//
// Requests the server answers (SUBSCRIBE, PUBLISH, REGISTER, OPTIONS) never
// reach sipgo, and pass one admission for every transport (admit.go: the
// per-address rate, reading, forwarding, the stateless challenge,
// overload). Over UDP, two readers per socket (udpread.go) match
// responses to NOTIFYs, answer what cannot be read, and queue requests raw
// for a pool of workers (overload.go), shedding with 503 when the queue or
// the NOTIFY backlog is too deep; a worker reads the request with sipmsg
// and runs it with a server transaction of ours (udptx.go). Over TCP and
// TLS the stream guard (stream.go) runs each request as it frames it.
// NOTIFYs are rendered and sent by our own client transactions
// (notify.go, notifysend.go; the transactions themselves in
// internal/notifytx). sipgo keeps other methods, answered 405.
//
// # Locks
//
// Each mutex's declaration says what it guards and what may be taken
// under it. Outermost first, the orders the code takes them in:
//
//	restoreMu → the bridge lock (a restored publication's state) → …
//	the bridge lock → paceMu | store.mu | Subscription.mu | sendQueue.mu | winfoState.mu | journal.mu
//	Subscription.mu → journal.mu | interner.mu | notifytx's randMu
//	publications.mu → journal.mu
//	registrar.mu → journal.mu
//	notifytx: Tx.sending → Table.mu (Start), Table.mu → Tx.sending (fire, UDP only): see its package doc
//
// Every other mutex is a leaf: nothing of ours is taken under store.mu,
// paceMu, sendQueue.mu, expiryWheel.mu, fenceState.mu, winfoState.mu,
// journal.mu, interner.mu, nonceUses.mu, rateLimiter.mu, udptx's Table.mu and
// Tx.mu, addrsMu, notifytx's randMu or guardedConn.wmu.
//
// The bridge calls Server.HandleChange with its own lock held (the write
// lock), so two rules follow:
//
//   - nothing here calls into the bridge (States: State, Person,
//     Directory, SetPerson …) while holding a lock of ours: the NOTIFY
//     worker reads a user's state first and takes the subscription's lock
//     after, a PUBLISH refresh reads the bridge before the publications'
//     lock, a restore sets publications' states before taking it;
//   - nothing HandleChange reaches calls into the bridge at all (a read
//     would wait for the writer, itself, forever): work that needs the
//     directory is handed to a goroutine of its own (relist for lists,
//     runWinfo naming the watchers that ended).
//
// No lock is held across a network write except the two that exist to
// order writes (notifytx's Tx.sending, guardedConn.wmu: each one message,
// under a write deadline), nor across a TCP dial: a NOTIFY's connection
// is made in transmit, after the subscription's lock is released.
// TestStormDoesNotWedge (fan-out, PUBLISH, restore, failover, reload,
// bindings and readers at once), TestFanOutUnderFlappingCallDoesNotDeadlock
// and TestRemovingAUserWatchedThroughAFlowDoesNotWedge keep this honest
// under the race detector.
package presence
