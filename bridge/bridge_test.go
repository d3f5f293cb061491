package bridge

import (
	"strings"
	"testing"
	"time"
)

func testDirectory(t *testing.T) *Directory {
	t.Helper()
	d, err := NewDirectory([]User{
		{ID: "debbie", Name: "Debbie", Extensions: []string{"100"}, Aliases: []string{"Debbie"},
			Devices: []DeviceRef{{"ast", "PJSIP/100"}, {"fs", "1000@fs"}}},
		{ID: "bob", Name: "Bob", Extensions: []string{"101"}, Devices: []DeviceRef{{"ast", "PJSIP/101"}}},
		{ID: "nodev", Name: "No Device", Extensions: []string{"199"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// recorder collects the changes a bridge emits.
type recorder struct{ changes []Change }

func (r *recorder) listen(b *Bridge) { b.Listen(func(c Change) { r.changes = append(r.changes, c) }) }

func (r *recorder) take() []Change {
	c := r.changes
	r.changes = nil
	return c
}

func newTestBridge(t *testing.T) (*Bridge, *recorder, *time.Time) {
	now := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	b := New(testDirectory(t), WithClock(func() time.Time { return now }))
	r := &recorder{}
	r.listen(b)
	return b, r, &now
}

func mustState(t *testing.T, b *Bridge, id string) *State {
	t.Helper()
	s, ok := b.State(id)
	if !ok {
		t.Fatalf("no state for %s", id)
	}
	return s
}

func TestDirectoryLookup(t *testing.T) {
	d := testDirectory(t)
	for name, want := range map[string]string{"100": "debbie", "debbie": "debbie", "DEBBIE": "debbie", "101": "bob"} {
		u, ok := d.Lookup(name)
		if !ok || u.ID != want {
			t.Errorf("Lookup(%q) = %v, %v; want %s", name, u, ok, want)
		}
	}
	if _, ok := d.Lookup("102"); ok {
		t.Error("Lookup found a user for an unknown extension")
	}
	if u, ok := d.Owner(DeviceRef{"fs", "1000@fs"}); !ok || u.ID != "debbie" {
		t.Errorf("Owner(fs:1000@fs) = %v, %v", u, ok)
	}
	if _, ok := d.Owner(DeviceRef{"ast", "1000@fs"}); ok {
		t.Error("Owner matched a device on the wrong source")
	}
}

func TestDirectoryRejectsConflicts(t *testing.T) {
	cases := map[string][]User{
		"used twice":      {{ID: "a"}, {ID: "a"}},
		"belongs to both": {{ID: "a", Extensions: []string{"1"}}, {ID: "b", Aliases: []string{"1"}}},
		"device ast:X":    {{ID: "a", Devices: []DeviceRef{{"ast", "X"}}}, {ID: "b", Devices: []DeviceRef{{"ast", "X"}}}},
		"has no id":       {{Name: "nameless"}},
	}
	for want, users := range cases {
		_, err := NewDirectory(users)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("NewDirectory(%v) error = %v, want one containing %q", users, err, want)
		}
	}
}

func TestInitialStates(t *testing.T) {
	b, _, _ := newTestBridge(t)
	if s := mustState(t, b, "debbie"); s.Device != DeviceUnknown || s.Phone != PhoneOffline || s.Open() {
		t.Errorf("before any event: %v/%v open=%v, want unknown/offline closed", s.Device, s.Phone, s.Open())
	}
	if s := mustState(t, b, "nodev"); s.Device != DeviceUnavailable || s.Phone != PhoneOffline {
		t.Errorf("user without devices: %v/%v, want unavailable/offline", s.Device, s.Phone)
	}
}

func TestCallLifecycle(t *testing.T) {
	b, r, now := newTestBridge(t)
	b.Apply(Snapshot{Source: "ast", Devices: map[string]DeviceState{"PJSIP/100": DeviceIdle, "PJSIP/101": DeviceIdle}})
	r.take()
	started := *now
	ring := Call{ID: "ch-1", Device: "PJSIP/100", Direction: Incoming, State: CallEarly,
		Remote: Party{Number: "101", Name: "Bob"}, CallID: "abc@host", Started: started}
	dial := Call{ID: "ch-2", Device: "PJSIP/101", Direction: Outgoing, State: CallProceeding,
		Remote: Party{Number: "100"}, Started: started}

	steps := []struct {
		name       string
		ev         Event
		user       string
		wantPhone  PhoneState
		wantDevice DeviceState
		wantUrgent bool
	}{
		{"caller dials", CallUpdated{"ast", dial}, "bob", PhoneDialing, DeviceInUse, false},
		{"callee rings", CallUpdated{"ast", ring}, "debbie", PhoneRinging, DeviceRinging, true},
		{"answered", CallUpdated{"ast", with(ring, func(c *Call) { c.State = CallConfirmed })}, "debbie", PhoneBusy, DeviceInUse, false},
		{"caller sees answer", CallUpdated{"ast", with(dial, func(c *Call) { c.State = CallConfirmed })}, "bob", PhoneBusy, DeviceInUse, false},
		{"hold", CallUpdated{"ast", with(ring, func(c *Call) { c.State = CallConfirmed; c.Held = true })}, "debbie", PhoneHeld, DeviceOnHold, false},
		{"resume", CallUpdated{"ast", with(ring, func(c *Call) { c.State = CallConfirmed })}, "debbie", PhoneBusy, DeviceInUse, false},
		{"hangup", CallEnded{"ast", "ch-1"}, "debbie", PhoneIdle, DeviceIdle, false},
		{"caller hangup", CallUpdated{"ast", with(dial, func(c *Call) { c.State = CallTerminated })}, "bob", PhoneIdle, DeviceIdle, false},
	}
	for _, s := range steps {
		b.Apply(s.ev)
		changes := r.take()
		if len(changes) != 1 || changes[0].UserID != s.user {
			t.Fatalf("%s: changes = %+v, want one for %s", s.name, changes, s.user)
		}
		c := changes[0]
		if c.State.Phone != s.wantPhone || c.State.Device != s.wantDevice || c.Urgent != s.wantUrgent {
			t.Errorf("%s: phone %v device %v urgent %v; want %v %v %v", s.name,
				c.State.Phone, c.State.Device, c.Urgent, s.wantPhone, s.wantDevice, s.wantUrgent)
		}
	}
	if s := mustState(t, b, "debbie"); len(s.Calls) != 0 {
		t.Errorf("calls left after hangup: %+v", s.Calls)
	}
}

func with(c Call, f func(*Call)) Call { f(&c); return c }

func TestOnlyRealChangesAreEmitted(t *testing.T) {
	b, r, _ := newTestBridge(t)
	ev := DeviceStateChanged{"ast", "PJSIP/101", DeviceIdle}
	b.Apply(ev)
	if n := len(r.take()); n != 1 {
		t.Fatalf("first event: %d changes, want 1", n)
	}
	b.Apply(ev) // Local-channel states arrive twice
	if n := len(r.take()); n != 0 {
		t.Errorf("repeated event: %d changes, want 0", n)
	}
	b.Apply(DeviceStateChanged{"ast", "PJSIP/999", DeviceInUse}) // nobody's device
	if n := len(r.take()); n != 0 {
		t.Errorf("unowned device: %d changes, want 0", n)
	}
	// A call's state is applied whole: the same update twice is one change.
	c := Call{ID: "x", Device: "PJSIP/101", Direction: Incoming, State: CallEarly}
	b.Apply(CallUpdated{"ast", c})
	b.Apply(CallUpdated{"ast", c})
	if n := len(r.take()); n != 1 {
		t.Errorf("repeated call update: %d changes, want 1", n)
	}
}

func TestMultiDeviceAggregation(t *testing.T) {
	b, _, _ := newTestBridge(t)
	b.Apply(DeviceStateChanged{"ast", "PJSIP/100", DeviceUnavailable})
	b.Apply(DeviceStateChanged{"fs", "1000@fs", DeviceIdle})
	if s := mustState(t, b, "debbie"); s.Device != DeviceIdle || s.Phone != PhoneIdle || !s.Open() {
		t.Errorf("desk phone off, softphone on: %v/%v", s.Device, s.Phone)
	}
	// In a call on the softphone (FreeSWITCH) while the desk phone rings
	// (Asterisk): ring in use, and the ringing call is shown first.
	b.Apply(CallUpdated{"fs", Call{ID: "u1", Device: "1000@fs", Direction: Outgoing, State: CallConfirmed}})
	b.Apply(CallUpdated{"ast", Call{ID: "c9", Device: "PJSIP/100", Direction: Incoming, State: CallEarly}})
	s := mustState(t, b, "debbie")
	if s.Device != DeviceRingInUse || s.Phone != PhoneRinging {
		t.Errorf("ringing while in use: %v/%v", s.Device, s.Phone)
	}
	if len(s.Calls) != 2 || s.Calls[0].ID != "c9" || s.Calls[1].ID != "u1" {
		t.Errorf("calls not ordered ringing first: %+v", s.Calls)
	}
	if p, _ := s.Primary(); p.ID != "c9" {
		t.Errorf("primary call = %s, want c9", p.ID)
	}
}

func TestDeviceOnlyStates(t *testing.T) {
	// Custom: and Stasis: devices have no calls: their reported state is
	// all there is.
	b, _, _ := newTestBridge(t)
	for st, want := range map[DeviceState]PhoneState{
		DeviceRinging: PhoneRinging, DeviceInUse: PhoneBusy, DeviceBusy: PhoneBusy,
		DeviceOnHold: PhoneHeld, DeviceIdle: PhoneIdle, DeviceUnavailable: PhoneOffline,
		DeviceRingInUse: PhoneRinging, DeviceInvalid: PhoneOffline,
	} {
		b.Apply(DeviceStateChanged{"ast", "PJSIP/101", st})
		if s := mustState(t, b, "bob"); s.Phone != want {
			t.Errorf("device %v: phone %v, want %v", st, s.Phone, want)
		}
	}
}

func TestSnapshotReplacesSource(t *testing.T) {
	b, r, _ := newTestBridge(t)
	b.Apply(DeviceStateChanged{"ast", "PJSIP/100", DeviceInUse})
	b.Apply(CallUpdated{"ast", Call{ID: "stale", Device: "PJSIP/100", State: CallConfirmed}})
	b.Apply(DeviceStateChanged{"fs", "1000@fs", DeviceIdle})
	b.Apply(DeviceStateChanged{"ast", "PJSIP/101", DeviceInUse})
	r.take()
	// Asterisk restarted: 100 is idle, the call is gone, 101 is not in the
	// snapshot at all.
	b.Apply(Snapshot{Source: "ast", Devices: map[string]DeviceState{"PJSIP/100": DeviceIdle}})
	s := mustState(t, b, "debbie")
	if len(s.Calls) != 0 || s.Device != DeviceIdle || s.Phone != PhoneIdle {
		t.Errorf("after snapshot debbie: calls %v device %v phone %v", s.Calls, s.Device, s.Phone)
	}
	if s := mustState(t, b, "bob"); s.Device != DeviceUnknown {
		t.Errorf("device missing from snapshot: %v, want unknown", s.Device)
	}
	// Other sources are untouched.
	if s.Devices[1].State != DeviceIdle {
		t.Errorf("fs device changed by an ast snapshot: %v", s.Devices[1])
	}
	if n := len(r.take()); n != 2 {
		t.Errorf("snapshot gave %d changes, want 2", n)
	}
	// A snapshot with calls restores them.
	b.Apply(Snapshot{Source: "ast", Calls: []Call{{ID: "c", Device: "PJSIP/101", Direction: Incoming, State: CallEarly}}})
	if s := mustState(t, b, "bob"); s.Phone != PhoneRinging || len(s.Calls) != 1 {
		t.Errorf("snapshot with a ringing call: %v %v", s.Phone, s.Calls)
	}
}

func TestPersonState(t *testing.T) {
	b, r, now := newTestBridge(t)
	b.Apply(DeviceStateChanged{"ast", "PJSIP/100", DeviceIdle})
	b.Apply(CallUpdated{"ast", Call{ID: "c", Device: "PJSIP/100", State: CallConfirmed}})
	r.take()
	if err := b.SetPerson("debbie", "api", PersonState{Activities: []Activity{ActivityDND}, Note: "Focus time",
		Expires: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	s := mustState(t, b, "debbie")
	if s.Phone != PhoneDND || len(s.Calls) != 1 || s.Person.Note != "Focus time" {
		t.Errorf("dnd while in call: %v calls=%d note=%q", s.Phone, len(s.Calls), s.Person.Note)
	}
	// A PBX call ending never erases the person state.
	b.Apply(CallEnded{"ast", "c"})
	if s := mustState(t, b, "debbie"); s.Phone != PhoneDND || !s.Person.DND() {
		t.Errorf("after hangup: %v", s.Phone)
	}
	// A second origin says "meeting": both are shown, dnd first.
	b.SetPerson("debbie", "publish:e1", PersonState{Activities: []Activity{ActivityMeeting}, Note: "Board",
		Updated: now.Add(time.Minute)})
	s = mustState(t, b, "debbie")
	if len(s.Person.Activities) != 2 || s.Person.Activities[0] != ActivityDND || s.Person.Note != "Board" {
		t.Errorf("merged person: %+v", s.Person)
	}
	if got := b.NextExpiry(); !got.Equal(now.Add(time.Hour)) {
		t.Errorf("NextExpiry = %v", got)
	}
	*now = now.Add(2 * time.Hour)
	r.take()
	b.Expire()
	s = mustState(t, b, "debbie")
	if s.Person.DND() || !s.Person.Has(ActivityMeeting) || s.Phone != PhoneIdle {
		t.Errorf("after expiry: %+v %v", s.Person, s.Phone)
	}
	if n := len(r.take()); n != 1 {
		t.Errorf("expiry gave %d changes, want 1", n)
	}
	b.ClearPerson("debbie", "publish:e1")
	if s := mustState(t, b, "debbie"); !s.Person.IsZero() {
		t.Errorf("after clear: %+v", s.Person)
	}
	if err := b.SetPerson("nobody", "api", PersonState{}); err == nil {
		t.Error("SetPerson accepted an unknown user")
	}
}

// The calendar's word is the weakest: it shows while no one says what
// the person is doing, gives way to an activity or a note from anyone
// else (and comes back when they stop), leaves a call shown, and never
// makes the person reachable or not.
func TestCalendarGivesWay(t *testing.T) {
	b, _, now := newTestBridge(t)
	b.Apply(DeviceStateChanged{"ast", "PJSIP/100", DeviceIdle})
	meeting := PersonState{Activities: []Activity{ActivityMeeting}, Note: "In a meeting until 13:00",
		Until: now.Add(time.Hour), Expires: now.Add(time.Hour), Updated: *now}
	if err := b.SetPerson("debbie", OriginCalendar, meeting); err != nil {
		t.Fatal(err)
	}
	s := mustState(t, b, "debbie")
	if !s.Person.Has(ActivityMeeting) || s.Person.Note != meeting.Note || !s.Person.Until.Equal(meeting.Until) || s.Phone != PhoneIdle {
		t.Fatalf("the calendar alone: %+v %v", s.Person, s.Phone)
	}
	// A soft client that is merely online leaves the meeting shown.
	b.SetPerson("debbie", "publish:e1", PersonState{Open: true, Updated: now.Add(-time.Minute)})
	if s := mustState(t, b, "debbie"); !s.Person.Has(ActivityMeeting) || !s.Person.Open {
		t.Errorf("an online client hid the meeting: %+v", s.Person)
	}
	// The person says dnd, older than the meeting's start: theirs wins.
	b.SetPerson("debbie", "api", PersonState{Activities: []Activity{ActivityDND}, Updated: now.Add(-time.Hour)})
	if s := mustState(t, b, "debbie"); s.Person.Has(ActivityMeeting) || !s.Person.DND() || s.Person.Note != "" || !s.Person.Until.IsZero() {
		t.Errorf("the person's dnd beside the calendar: %+v", s.Person)
	}
	b.ClearPerson("debbie", "api")
	if s := mustState(t, b, "debbie"); !s.Person.Has(ActivityMeeting) {
		t.Errorf("the meeting did not come back: %+v", s.Person)
	}
	// A call is shown during the meeting.
	b.Apply(CallUpdated{"ast", Call{ID: "c", Device: "PJSIP/100", State: CallConfirmed}})
	if s := mustState(t, b, "debbie"); s.Phone != PhoneBusy || !s.Person.Has(ActivityMeeting) {
		t.Errorf("a call in a meeting: %v %+v", s.Phone, s.Person)
	}
	// A client that says closed is closed whatever the calendar says; a
	// calendar alone never closes anyone.
	b.SetPerson("debbie", "publish:e1", PersonState{Closed: true})
	if s := mustState(t, b, "debbie"); !s.Person.Closed || !s.Person.Has(ActivityMeeting) {
		t.Errorf("closed client with a calendar: %+v", s.Person)
	}
	b.ClearPerson("debbie", "publish:e1")
	if s := mustState(t, b, "debbie"); s.Person.Closed || s.Person.Open {
		t.Errorf("the calendar alone made debbie reachable or not: %+v", s.Person)
	}
}

func TestSetDirectory(t *testing.T) {
	b, r, _ := newTestBridge(t)
	b.Apply(DeviceStateChanged{"ast", "PJSIP/102", DeviceInUse}) // nobody's yet
	b.Apply(DeviceStateChanged{"ast", "PJSIP/101", DeviceIdle})
	r.take()
	d, err := NewDirectory([]User{
		{ID: "debbie", Name: "Debbie", Extensions: []string{"100"}, Aliases: []string{"Debbie"},
			Devices: []DeviceRef{{"ast", "PJSIP/100"}, {"fs", "1000@fs"}}}, // unchanged
		{ID: "carol", Name: "Carol", Extensions: []string{"102"}, Devices: []DeviceRef{{"ast", "PJSIP/102"}}}, // new
		// bob and nodev removed
	})
	if err != nil {
		t.Fatal(err)
	}
	b.SetDirectory(d)
	got := map[string]*State{}
	for _, c := range r.take() {
		got[c.UserID] = c.State
	}
	if len(got) != 3 {
		t.Fatalf("reload changes for %v, want bob, nodev, carol", got)
	}
	if s, ok := got["bob"]; !ok || s != nil {
		t.Errorf("removed user: %v", s)
	}
	if s := got["carol"]; s == nil || s.Phone != PhoneBusy {
		t.Errorf("new user does not show her device's state: %+v", s)
	}
	if _, ok := got["debbie"]; ok {
		t.Error("unchanged user got a change on reload")
	}
	if _, ok := b.State("bob"); ok {
		t.Error("removed user still has a state")
	}
}

func TestCallMovesDevice(t *testing.T) {
	b, _, _ := newTestBridge(t)
	c := Call{ID: "x", Device: "PJSIP/100", Direction: Incoming, State: CallEarly}
	b.Apply(CallUpdated{"ast", c})
	c.Device = "PJSIP/101"
	b.Apply(CallUpdated{"ast", c})
	if s := mustState(t, b, "debbie"); len(s.Calls) != 0 {
		t.Errorf("old device kept the call: %+v", s.Calls)
	}
	if s := mustState(t, b, "bob"); len(s.Calls) != 1 {
		t.Errorf("new device lacks the call: %+v", s.Calls)
	}
}

func TestPartyLabel(t *testing.T) {
	for p, want := range map[Party]string{
		{Name: "Bob", Number: "101"}: "Bob (101)",
		{Number: "101"}:              "101",
		{Name: "101", Number: "101"}: "101",
		{Name: "Bob"}:                "Bob",
		{}:                           "",
	} {
		if got := p.Label(); got != want {
			t.Errorf("%+v.Label() = %q, want %q", p, got, want)
		}
	}
}

func TestPendingIncomingLegIsNotShown(t *testing.T) {
	b, r, _ := newTestBridge(t)
	b.Apply(DeviceStateChanged{"ast", "PJSIP/101", DeviceIdle})
	r.take()
	leg := Call{ID: "x", Device: "PJSIP/101", Direction: Incoming, State: CallTrying}
	b.Apply(CallUpdated{"ast", leg})
	if n := len(r.take()); n != 0 {
		t.Errorf("a leg not yet ringing changed the lamp (%d changes)", n)
	}
	leg.State = CallEarly
	b.Apply(CallUpdated{"ast", leg})
	if s := mustState(t, b, "bob"); s.Phone != PhoneRinging || len(s.Calls) != 1 {
		t.Errorf("ringing leg: %v %v", s.Phone, s.Calls)
	}
}

// TestSourceDown: a source gone for too long takes its calls with it and
// its devices become unavailable; other sources' devices still count, and
// the next snapshot puts everything back.
func TestSourceDown(t *testing.T) {
	b, r, _ := newTestBridge(t)
	b.Apply(CallUpdated{"ast", Call{ID: "c", Device: "PJSIP/101", Direction: Incoming, State: CallConfirmed}})
	b.Apply(DeviceStateChanged{"ast", "PJSIP/100", DeviceIdle})
	b.Apply(DeviceStateChanged{"fs", "1000@fs", DeviceIdle})
	r.take()
	b.Apply(SourceDown{Source: "ast"})
	if s := mustState(t, b, "bob"); len(s.Calls) != 0 || s.Device != DeviceUnavailable || s.Phone != PhoneOffline {
		t.Errorf("bob after his PBX went down: calls %v device %v phone %v", s.Calls, s.Device, s.Phone)
	}
	// Debbie's softphone on the other PBX still counts.
	if s := mustState(t, b, "debbie"); s.Device != DeviceIdle || s.Devices[0].State != DeviceUnavailable {
		t.Errorf("debbie: %v %+v", s.Device, s.Devices)
	}
	if n := len(r.take()); n != 2 {
		t.Errorf("%d changes, want 2", n)
	}
	b.Apply(Snapshot{Source: "ast", Devices: map[string]DeviceState{"PJSIP/100": DeviceIdle, "PJSIP/101": DeviceIdle}})
	if s := mustState(t, b, "bob"); s.Device != DeviceIdle {
		t.Errorf("bob after the PBX came back: %v", s.Device)
	}
}

func TestRemotePartyNamedFromTheDirectory(t *testing.T) {
	b, _, _ := newTestBridge(t)
	calls := []Call{
		{ID: "a", Device: "PJSIP/100", State: CallConfirmed, Remote: Party{Number: "101"}},                     // a colleague: named
		{ID: "b", Device: "PJSIP/100", State: CallConfirmed, Remote: Party{Number: "101", Name: "Front desk"}}, // the PBX's name stays
		{ID: "c", Device: "PJSIP/100", State: CallConfirmed, Remote: Party{Number: "debbie"}},                  // an alias is no number
		{ID: "d", Device: "PJSIP/100", State: CallConfirmed, Remote: Party{Number: "0301234567"}},              // nobody
	}
	for _, c := range calls {
		b.Apply(CallUpdated{Source: "ast", Call: c})
	}
	st, _ := b.State("debbie")
	got := map[string]string{}
	for _, c := range st.Calls {
		got[c.ID] = c.Remote.Name
	}
	want := map[string]string{"a": "Bob", "b": "Front desk", "c": "", "d": ""}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("call %s: remote named %q, want %q", id, got[id], w)
		}
	}
}

func TestCallBySIPIDFindsTheLegAPickupTakes(t *testing.T) {
	b, _, _ := newTestBridge(t)
	// Behind a proxy-only registrar both sides share the Call-ID: the
	// caller's leg (outgoing) and the ringing callee's (incoming).
	b.Apply(CallUpdated{Source: "ast", Call: Call{ID: "out", Device: "PJSIP/100", Direction: Outgoing, State: CallEarly,
		CallID: "shared", LocalTag: "caller", RemoteTag: "callee"}})
	b.Apply(CallUpdated{Source: "ast", Call: Call{ID: "in", Device: "PJSIP/101", Direction: Incoming, State: CallEarly,
		CallID: "shared", LocalTag: "callee", RemoteTag: "caller"}})
	if c, ok := b.CallBySIPID("shared"); !ok || c.ID != "in" {
		t.Errorf("CallBySIPID gave %+v %v, want the ringing leg", c, ok)
	}
	if _, ok := b.CallBySIPID("none"); ok {
		t.Error("CallBySIPID found a Call-ID nobody has")
	}
	if c, ok := b.CallBySIPID(""); ok {
		t.Errorf("CallBySIPID found %+v for no Call-ID", c)
	}
}

// TestSetDirectoryRecomputesOnlyWhatChanged: a new directory leaves an
// unchanged user's state as it was (only its directory entry is the new
// one), but a call with someone the directory now names differently
// shows the new name.
func TestSetDirectoryRecomputesOnlyWhatChanged(t *testing.T) {
	users := []User{
		{ID: "ann", Name: "Ann", Extensions: []string{"100"}, Devices: []DeviceRef{{"ast", "PJSIP/100"}}},
		{ID: "bob", Name: "Bob", Extensions: []string{"101"}, Devices: []DeviceRef{{"ast", "PJSIP/101"}}},
		{ID: "cy", Name: "Cy", Extensions: []string{"102"}, Devices: []DeviceRef{{"ast", "PJSIP/102"}}},
	}
	d, err := NewDirectory(users)
	if err != nil {
		t.Fatal(err)
	}
	b := New(d)
	b.Apply(DeviceStateChanged{"ast", "PJSIP/102", DeviceIdle})
	b.Apply(CallUpdated{"ast", Call{ID: "c1", Device: "PJSIP/100", Direction: Outgoing, State: CallConfirmed,
		Remote: Party{Number: "101"}}})
	if s := mustState(t, b, "ann"); s.Calls[0].Remote.Name != "Bob" {
		t.Fatalf("ann's call: %+v", s.Calls)
	}
	cyBefore := mustState(t, b, "cy")
	users[1].Name = "Robert"
	d2, err := NewDirectory(users)
	if err != nil {
		t.Fatal(err)
	}
	b.SetDirectory(d2)
	if s := mustState(t, b, "ann"); s.Calls[0].Remote.Name != "Robert" {
		t.Errorf("ann's call after bob's rename: %+v", s.Calls)
	}
	if u, _ := b.Directory().User("bob"); u.Name != "Robert" {
		t.Errorf("the bridge's directory has bob as %+v", u)
	}
	cy := mustState(t, b, "cy")
	if u, _ := b.Directory().User("cy"); cy.User != u || !cy.Equal(cyBefore) || cy.Device != DeviceIdle {
		t.Errorf("cy, unchanged: %+v (directory entry %p, want %p)", cy, cy.User, u)
	}
}
