// Package presence is Lamplighter's SIP side: transports, subscription
// dialogs for the presence and dialog event packages, PUBLISH, REGISTER,
// authentication and NOTIFY fan-out. It knows users and their bridge.State,
// never PBXs. Document bodies are rendered by the sub-package body.
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
