// Package callobs is what a SIP proxy sees of its phones' calls and
// registrations: presence/proxy observes them on the requests it
// forwards, as Kamailio's pua_dialoginfo does, and adapters/sipcalls
// turns them into device and call state for a PBX with no event
// interface of its own. A leaf both import, so that neither points at
// the other.
package callobs

// Step is how far a call leg has come.
type Step int

// The steps of a call leg.
const (
	Trying    Step = iota // sent on, no answer yet
	Early                 // ringing (180/183)
	Confirmed             // answered (2xx)
	Held                  // put on hold by a re-INVITE (every leg of the Call-ID)
	Resumed               // taken off hold (every leg of the Call-ID)
	Ended                 // failed, cancelled, timed out, or a BYE (User "": every leg of the Call-ID)
)

// Event is one thing the proxy saw of a phone's call.
type Event struct {
	Target string // the PBX's name
	User   string // the phone's address-of-record user ("" with a Call-ID-wide step)
	CallID string
	// Outgoing is set when the phone placed the call.
	Outgoing bool
	Step     Step
	// The phone's dialog identifiers (for pickup with Replaces): its
	// own tag and the other side's, once known.
	LocalTag, RemoteTag string
	// RemoteUser and RemoteName are the other party as the request
	// names it.
	RemoteUser, RemoteName string
}

// Observer learns what the proxy sees of its phones: their call legs and
// how many registrations each user holds through it. Its methods must
// not block.
type Observer interface {
	ObserveCall(e Event)
	ObserveRegistrations(target, user string, bindings int)
}
