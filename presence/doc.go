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
// reach sipgo. Over UDP, two readers per socket (udpread.go) match
// responses to NOTIFYs, answer what cannot be read, and queue requests raw
// for a pool of workers (overload.go), shedding with 503 when the queue or
// the NOTIFY backlog is too deep; a worker reads the request with sipmsg
// and runs it with a server transaction of ours (udptx.go). Over TCP and
// TLS the stream guard (stream.go) runs each request as it frames it.
// NOTIFYs are rendered and sent by our own client transactions
// (notify.go, notifier.go). sipgo keeps other methods, answered 405.
//
// # Lock order
//
// The bridge calls Server.HandleChange with its own lock held, and
// HandleChange takes the pacing lock, the subscription store's lock and
// each watcher's Subscription.mu under it. So the order is:
//
//	bridge lock → paceMu → store.mu → Subscription.mu → sendQueue.mu / journal / notifier.mu
//
// and nothing here may call into the bridge (States) while holding any of
// them: the NOTIFY worker reads a user's state first and takes the
// subscription's lock after. TestFanOutUnderFlappingCallDoesNotDeadlock
// keeps that honest under the race detector.
package presence
