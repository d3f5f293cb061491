package bridge

import (
	"fmt"
	"strings"
	"time"
)

// DeviceState is the state of one PBX device (a phone, a line, a custom
// device), with the same values and meaning as Asterisk's device states.
type DeviceState uint8

// Device states, in Asterisk's enum order (not in precedence order: see
// Aggregate for that).
const (
	DeviceUnknown     DeviceState = iota // nothing known yet
	DeviceIdle                           // NOT_INUSE: reachable, no call
	DeviceInUse                          // INUSE: at least one call up or dialing
	DeviceBusy                           // BUSY: cannot take a call
	DeviceInvalid                        // INVALID: no such device
	DeviceUnavailable                    // UNAVAILABLE: unregistered or unreachable
	DeviceRinging                        // RINGING: an incoming call alerts
	DeviceRingInUse                      // RINGINUSE: ringing while in use
	DeviceOnHold                         // ONHOLD: every call on hold
)

var deviceStateNames = [...]string{
	DeviceUnknown:     "unknown",
	DeviceIdle:        "idle",
	DeviceInUse:       "inuse",
	DeviceBusy:        "busy",
	DeviceInvalid:     "invalid",
	DeviceUnavailable: "unavailable",
	DeviceRinging:     "ringing",
	DeviceRingInUse:   "ringinuse",
	DeviceOnHold:      "onhold",
}

// String returns the lower-case name used in logs, the API and config.
func (s DeviceState) String() string {
	if int(s) < len(deviceStateNames) {
		return deviceStateNames[s]
	}
	return fmt.Sprintf("DeviceState(%d)", s)
}

// ParseDeviceState accepts Lamplighter's names ("idle", "inuse"…) and
// Asterisk's ("NOT_INUSE", "INUSE", "RINGINUSE", "ONHOLD"…), in any case.
func ParseDeviceState(s string) (DeviceState, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "unknown":
		return DeviceUnknown, nil
	case "idle", "not_inuse", "not in use":
		return DeviceIdle, nil
	case "inuse", "in use", "in_use":
		return DeviceInUse, nil
	case "busy":
		return DeviceBusy, nil
	case "invalid":
		return DeviceInvalid, nil
	case "unavailable":
		return DeviceUnavailable, nil
	case "ringing":
		return DeviceRinging, nil
	case "ringinuse", "ring in use":
		return DeviceRingInUse, nil
	case "onhold", "on hold", "hold":
		return DeviceOnHold, nil
	}
	return DeviceUnknown, fmt.Errorf("unknown device state %q", s)
}

// MarshalText implements encoding.TextMarshaler (JSON, YAML, logs).
func (s DeviceState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// CallState is the state of one call leg as seen from its device, with the
// RFC 4235 dialog states as values.
type CallState uint8

// Call states (RFC 4235 §3.7.1).
const (
	CallTrying     CallState = iota // request sent or received, nothing back
	CallProceeding                  // provisional response without tag
	CallEarly                       // ringing (early dialog)
	CallConfirmed                   // answered
	CallTerminated                  // over
)

var callStateNames = [...]string{"trying", "proceeding", "early", "confirmed", "terminated"}

// String returns the RFC 4235 name of the state.
func (s CallState) String() string {
	if int(s) < len(callStateNames) {
		return callStateNames[s]
	}
	return fmt.Sprintf("CallState(%d)", s)
}

// MarshalText implements encoding.TextMarshaler.
func (s CallState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Answered reports whether the call has been answered and is not over.
func (s CallState) Answered() bool { return s == CallConfirmed }

// Direction says who started a call, seen from the user's device.
type Direction uint8

// Directions. Incoming means the device is called (dialog-info
// "recipient"); Outgoing means the device placed the call ("initiator").
const (
	Incoming Direction = iota
	Outgoing
)

// String returns "incoming" or "outgoing".
func (d Direction) String() string {
	if d == Outgoing {
		return "outgoing"
	}
	return "incoming"
}

// MarshalText implements encoding.TextMarshaler.
func (d Direction) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Party is the other side of a call, as far as the PBX told us.
type Party struct {
	Number string `json:"number,omitempty"` // extension or E.164 number
	Name   string `json:"name,omitempty"`   // caller/connected-line name
	URI    string `json:"uri,omitempty"`    // SIP URI when the PBX gives one
}

// Label is the human form used in notes: "Bob (101)", "101" or "Bob".
func (p Party) Label() string {
	switch {
	case p.Name != "" && p.Number != "" && p.Name != p.Number:
		return p.Name + " (" + p.Number + ")"
	case p.Number != "":
		return p.Number
	case p.Name != "":
		return p.Name
	}
	return ""
}

// IsZero reports whether nothing is known about the party.
func (p Party) IsZero() bool { return p.Number == "" && p.Name == "" && p.URI == "" }

// Call is one call leg on one device.
type Call struct {
	// ID identifies the leg within its source (an Asterisk channel id, a
	// FreeSWITCH channel UUID). Required.
	ID string `json:"id"`
	// Device is the device the leg belongs to, as named by the source
	// ("PJSIP/100", "1000@pbx.example.com").
	Device    string    `json:"device"`
	Direction Direction `json:"direction"`
	State     CallState `json:"state"`
	Held      bool      `json:"held,omitempty"`
	Remote    Party     `json:"remote"`
	// SIP dialog identifiers of the device's own leg, where the PBX
	// exposes them: they let a phone pick the call up with Replaces
	// (RFC 3891), so they are oriented for the UA that answers such an
	// INVITE, which matches its to-tag against its own tag. LocalTag
	// (dialog-info's local-tag, the Replaces to-tag) is that UA's tag:
	// behind a back-to-back PBX (Asterisk, FreeSWITCH) the PBX's own tag
	// of its leg to the device; where the INVITE reaches the device
	// itself (a plain registrar, kind sip) the device's, as RFC 4235 has
	// it. RemoteTag is the other one (the from-tag).
	CallID    string `json:"call_id,omitempty"`
	LocalTag  string `json:"local_tag,omitempty"`
	RemoteTag string `json:"remote_tag,omitempty"`
	// IDsPending says the source is still reading the leg's dialog
	// identifiers and will report them within moments (Asterisk's tags
	// are read once the leg rings; a new channel's Call-ID comes with its
	// next event): watchers' NOTIFY may wait for them, briefly, so that
	// no lamp shows the call without them and the first ringing one can
	// already be picked up.
	IDsPending bool `json:"ids_pending,omitempty"`
	// Started is when the leg appeared; Answered when it was answered
	// (zero until then).
	Started  time.Time `json:"started,omitzero"`
	Answered time.Time `json:"answered,omitzero"`
}

// Alerting reports whether the call rings on this device (an incoming
// leg in the early state: the phone answered 180).
func (c *Call) Alerting() bool { return c.Direction == Incoming && c.State == CallEarly }

// Pending reports whether an incoming leg is still being set up towards
// the device (trying, proceeding): the phone does not ring yet, so the
// leg is not shown until it does.
func (c *Call) Pending() bool { return c.Direction == Incoming && c.State < CallEarly }

// Dialing reports whether the device placed the call and it is not yet
// answered.
func (c *Call) Dialing() bool { return c.Direction == Outgoing && c.State < CallConfirmed }

// Talking reports whether the call is answered and not on hold.
func (c *Call) Talking() bool { return c.State == CallConfirmed && !c.Held }

// OnHold reports whether the call is answered and on hold.
func (c *Call) OnHold() bool { return c.State == CallConfirmed && c.Held }

// rank orders calls by how much a watcher cares: an alerting call first
// (it can be picked up), then a talking one, a held one, a dialing one.
func (c *Call) rank() int {
	switch {
	case c.Alerting():
		return 0
	case c.Talking():
		return 1
	case c.OnHold():
		return 2
	case c.Dialing():
		return 3
	}
	return 4
}

// Activity is a person's activity, an RFC 4480 token ("away", "meeting",
// "on-the-phone"…) or Lamplighter's "dnd" (do not disturb, rendered as the
// RFC 4480 "busy" activity plus the dnd phonestate).
type Activity string

// Activities that Lamplighter knows. Any RFC 4480 token is accepted.
const (
	ActivityNone       Activity = ""
	ActivityDND        Activity = "dnd"
	ActivityAway       Activity = "away"
	ActivityBusy       Activity = "busy"
	ActivityMeeting    Activity = "meeting"
	ActivityVacation   Activity = "vacation"
	ActivityMeal       Activity = "meal"
	ActivityOnThePhone Activity = "on-the-phone"
)

// rfc4480Activities are the activity tokens of RFC 4480 §3.2, plus dnd.
var rfc4480Activities = map[Activity]string{
	"appointment": "Appointment", "away": "Away", "breakfast": "Breakfast",
	"busy": "Busy", "dinner": "Dinner", "holiday": "Holiday",
	"in-transit": "In transit", "looking-for-work": "Looking for work",
	"meal": "At a meal", "meeting": "In a meeting", "on-the-phone": "On the phone",
	"performance": "Performance", "permanent-absence": "Permanently absent",
	"playing": "Playing", "presentation": "Presenting", "shopping": "Shopping",
	"sleeping": "Sleeping", "spectator": "Spectator", "steering": "Driving",
	"travel": "Travelling", "tv": "Watching TV", "unknown": "Unknown",
	"vacation": "On vacation", "working": "Working", "worship": "Worship",
	ActivityDND: "Do not disturb",
}

// Valid reports whether a is an RFC 4480 activity token or "dnd".
func (a Activity) Valid() bool {
	_, ok := rfc4480Activities[a]
	return ok
}

// Label is the activity's human name ("In a meeting"), or the token itself
// for one Lamplighter does not know.
func (a Activity) Label() string {
	if l, ok := rfc4480Activities[a]; ok {
		return l
	}
	return string(a)
}

// RPID is the RFC 4480 element name that carries the activity in PIDF
// (dnd is carried as "busy").
func (a Activity) RPID() string {
	if a == ActivityDND {
		return string(ActivityBusy)
	}
	return string(a)
}

// PersonState is what a person says about themselves, independent of calls:
// set by PUBLISH from a soft client or through the API, never erased by a
// PBX call.
type PersonState struct {
	// Activities, most important first; empty means available.
	Activities []Activity `json:"activities,omitempty"`
	// Note is free text ("Back at 3").
	Note string `json:"note,omitempty"`
	// Closed marks a publication that says the person is not reachable at
	// all (PIDF basic "closed" for every tuple).
	Closed bool `json:"closed,omitempty"`
	// Open marks a publication that says the person is reachable (some
	// tuple's basic "open": a soft client is online), whatever the PBX's
	// devices say.
	Open bool `json:"open,omitempty"`
	// Until is when the activities end as their source knows it (a
	// calendar's meeting; RPID's until), zero when unknown.
	Until time.Time `json:"until,omitzero"`
	// Expires is when the state lapses by itself; zero means never.
	Expires time.Time `json:"expires,omitzero"`
	// Updated is when it was set; the newest of several publications wins
	// where they disagree.
	Updated time.Time `json:"updated,omitzero"`
	// Extra holds foreign XML elements from a published PIDF person
	// element, kept verbatim so that they survive the merge.
	Extra [][]byte `json:"-"`
}

// OriginCalendar is the origin of what a person's calendar says. It is
// the weakest word: it shows only while no other origin says what the
// person is doing (an activity or a note), and it never decides whether
// the person is reachable.
const OriginCalendar = "calendar"

// IsZero reports whether the person state says nothing.
func (p *PersonState) IsZero() bool {
	return len(p.Activities) == 0 && p.Note == "" && !p.Closed && !p.Open && len(p.Extra) == 0
}

// Has reports whether a is one of the activities.
func (p *PersonState) Has(a Activity) bool {
	for _, x := range p.Activities {
		if x == a {
			return true
		}
	}
	return false
}

// DND reports whether the person asked not to be disturbed.
func (p *PersonState) DND() bool { return p.Has(ActivityDND) }
