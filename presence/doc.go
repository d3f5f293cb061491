// Package presence is Lamplighter's SIP side: transports, subscription
// dialogs for the presence and dialog event packages, PUBLISH, REGISTER,
// authentication and NOTIFY fan-out. It knows users and their bridge.State,
// never PBXs. Document bodies are rendered by the sub-package body.
package presence
