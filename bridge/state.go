package bridge

import (
	"bytes"
	"slices"
)

// PhoneState is the one-word summary of a user that busy lamps show and
// that Lamplighter carries as its phonestate extension.
type PhoneState uint8

// Phone states (DESIGN §3).
const (
	PhoneIdle    PhoneState = iota // reachable, no call
	PhoneDialing                   // placing a call that is not answered yet
	PhoneRinging                   // an incoming call alerts
	PhoneBusy                      // in a call
	PhoneHeld                      // every call on hold
	PhoneDND                       // do not disturb (person state)
	PhoneOffline                   // no device reachable
)

var phoneStateNames = [...]string{"idle", "dialing", "ringing", "busy", "held", "dnd", "offline"}

// String returns the phonestate token.
func (p PhoneState) String() string {
	if int(p) < len(phoneStateNames) {
		return phoneStateNames[p]
	}
	return "unknown"
}

// MarshalText implements encoding.TextMarshaler.
func (p PhoneState) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// DeviceStatus is one device of a user with its effective state.
type DeviceStatus struct {
	DeviceRef
	State DeviceState `json:"state"`
}

// State is everything known about one user: the aggregate of their
// devices, their calls and their person state. A State handed out by the
// bridge is never modified afterwards; treat it as read-only.
type State struct {
	User    *User          `json:"user"`
	Device  DeviceState    `json:"device_state"` // aggregate of Devices
	Phone   PhoneState     `json:"phone_state"`
	Devices []DeviceStatus `json:"devices"`
	// Calls on all the user's devices, most important first (alerting,
	// talking, held, dialing), then oldest first.
	Calls  []Call      `json:"calls"`
	Person PersonState `json:"person"`
	// IDsPending: a leg not answered yet on one of the user's devices is
	// still waiting for its dialog identifiers from its source
	// (Call.IDsPending). Not part of Equal: it changes no document.
	IDsPending bool `json:"ids_pending,omitempty"`
}

// Open reports whether the user can be reached at all (PIDF basic
// "open"). The person's stated intent wins over the PBX's devices: a
// person whose every soft client says closed (offline) is closed though
// a desk phone is registered, and one a soft client says open is open
// though no PBX device is; only a call in progress shows them open
// regardless.
func (s *State) Open() bool {
	if len(s.Calls) > 0 {
		return true
	}
	if s.Person.Closed {
		return false
	}
	if s.Person.Open {
		return true
	}
	switch s.Device {
	case DeviceUnavailable, DeviceUnknown, DeviceInvalid:
		return false
	}
	return true
}

// Primary returns the call a single-dialog busy lamp should show, if any.
func (s *State) Primary() (Call, bool) {
	if len(s.Calls) == 0 {
		return Call{}, false
	}
	return s.Calls[0], true
}

// LinePhone is the phone state from calls and devices alone, ignoring
// person state: what the lines are doing even while the person is on dnd.
func (s *State) LinePhone() PhoneState {
	return phoneState(s.Device, s.Calls, &PersonState{})
}

// phoneState derives the summary from calls, person and device states.
func phoneState(dev DeviceState, calls []Call, person *PersonState) PhoneState {
	if person.DND() {
		return PhoneDND
	}
	if len(calls) > 0 {
		switch calls[0].rank() {
		case 0:
			return PhoneRinging
		case 1:
			return PhoneBusy
		case 2:
			return PhoneHeld
		case 3:
			return PhoneDialing
		}
	}
	switch dev {
	case DeviceRinging, DeviceRingInUse:
		return PhoneRinging
	case DeviceInUse, DeviceBusy:
		return PhoneBusy
	case DeviceOnHold:
		return PhoneHeld
	case DeviceIdle:
		return PhoneIdle
	}
	return PhoneOffline
}

// sortCalls orders calls by rank, then by start, then by id for stability.
func sortCalls(calls []Call) {
	slices.SortFunc(calls, func(a, b Call) int {
		if ra, rb := a.rank(), b.rank(); ra != rb {
			return ra - rb
		}
		if c := a.Started.Compare(b.Started); c != 0 {
			return c
		}
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
}

// Equal reports whether two states would render the same documents.
func (s *State) Equal(o *State) bool {
	if !s.User.Equal(o.User) || s.Device != o.Device || s.Phone != o.Phone {
		return false
	}
	if !slices.Equal(s.Devices, o.Devices) {
		return false
	}
	if !slices.EqualFunc(s.Calls, o.Calls, callEqual) {
		return false
	}
	return personEqual(&s.Person, &o.Person)
}

func callEqual(a, b Call) bool {
	return a.ID == b.ID && a.Device == b.Device && a.Direction == b.Direction &&
		a.State == b.State && a.Held == b.Held && a.Remote == b.Remote &&
		a.CallID == b.CallID && a.LocalTag == b.LocalTag && a.RemoteTag == b.RemoteTag &&
		a.Started.Equal(b.Started) && a.Answered.Equal(b.Answered)
}

func personEqual(a, b *PersonState) bool {
	return personLooksEqual(a, b) && a.Expires.Equal(b.Expires)
}

// personLooksEqual compares what watchers see of a person: not when it
// lapses, which a soft client's PUBLISH refresh moves on every time.
func personLooksEqual(a, b *PersonState) bool {
	return slices.Equal(a.Activities, b.Activities) && a.Note == b.Note && a.Until.Equal(b.Until) &&
		a.Closed == b.Closed && a.Open == b.Open && slices.EqualFunc(a.Extra, b.Extra, bytes.Equal)
}

// LooksEqual reports whether s and o show the same to a watcher: Equal
// but for when the person state lapses.
func (s *State) LooksEqual(o *State) bool {
	t := *o
	t.Person.Expires = s.Person.Expires
	return s.Equal(&t)
}

// personOf is the person state a user's origins make together: what
// the person and their clients say, and the calendar's word where they
// say nothing of what the person is doing.
func personOf(m map[string]PersonState) PersonState {
	ps := make([]PersonState, 0, len(m))
	cal, hasCal := m[OriginCalendar]
	for origin, p := range m {
		if origin != OriginCalendar {
			ps = append(ps, p)
		}
	}
	out := mergePersons(ps)
	if hasCal && len(out.Activities) == 0 && out.Note == "" {
		out.Activities, out.Note, out.Until = cal.Activities, cal.Note, cal.Until
		if !cal.Expires.IsZero() && (out.Expires.IsZero() || cal.Expires.Before(out.Expires)) {
			out.Expires = cal.Expires
		}
		if cal.Updated.After(out.Updated) {
			out.Updated = cal.Updated
		}
	}
	return out
}

// mergePersons combines the person states a user has from several origins
// (two soft clients, the API): activities are united (dnd first), the
// newest note and foreign elements win, and the person is closed only if
// every origin says so.
func mergePersons(ps []PersonState) PersonState {
	switch len(ps) {
	case 0:
		return PersonState{}
	case 1:
		return ps[0]
	}
	slices.SortFunc(ps, func(a, b PersonState) int { return b.Updated.Compare(a.Updated) })
	out := PersonState{Closed: true}
	seen := map[Activity]bool{}
	for _, p := range ps {
		for _, a := range p.Activities {
			if !seen[a] {
				seen[a] = true
				out.Activities = append(out.Activities, a)
			}
		}
		if out.Note == "" {
			out.Note = p.Note
		}
		if out.Until.IsZero() {
			out.Until = p.Until
		}
		if out.Extra == nil {
			out.Extra = p.Extra
		}
		if !p.Closed {
			out.Closed = false
		}
		out.Open = out.Open || p.Open
		if !p.Expires.IsZero() && (out.Expires.IsZero() || p.Expires.Before(out.Expires)) {
			out.Expires = p.Expires
		}
		if p.Updated.After(out.Updated) {
			out.Updated = p.Updated
		}
	}
	if seen[ActivityDND] && out.Activities[0] != ActivityDND {
		out.Activities = slices.DeleteFunc(out.Activities, func(a Activity) bool { return a == ActivityDND })
		out.Activities = slices.Insert(out.Activities, 0, ActivityDND)
	}
	return out
}
