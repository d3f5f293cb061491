package esl

import (
	"encoding/xml"
	"maps"
	"math/rand/v2"
	"net/textproto"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
)

// mapped feeds events through a mapper into a bridge with the recorded
// users, starting from the registrations at the start of the recordings.
type mapped struct {
	m      *mapper
	b      *bridge.Bridge
	states map[string][]*bridge.State
}

func newMapped(t *testing.T) *mapped {
	dir, devs := recordedDirectory(t)
	mp := &mapped{m: newMapper("fs", devs), b: bridge.New(dir), states: map[string][]*bridge.State{}}
	mp.b.Listen(func(c bridge.Change) {
		if c.State != nil {
			mp.states[c.UserID] = append(mp.states[c.UserID], c.State)
		}
	})
	regs, err := showRows[registrationRow]([]byte(strings.Replace(string(apiBody(t, "show-registrations.esl-raw.txt")),
		"db962486549b235f", "112d97b8bb9cdb96", 1)))
	if err != nil {
		t.Fatal(err)
	}
	mp.b.Apply(mp.m.snapshot(nil, regs, devs))
	return mp
}

func (mp *mapped) feed(frames ...frame) {
	for _, f := range frames {
		for _, e := range mp.m.event(f.ev) {
			mp.b.Apply(e)
		}
	}
}

func (mp *mapped) phones(user string) []bridge.PhoneState {
	var out []bridge.PhoneState
	for _, s := range mp.states[user] {
		if len(out) == 0 || out[len(out)-1] != s.Phone {
			out = append(out, s.Phone)
		}
	}
	return out
}

func (mp *mapped) state(user string) *bridge.State {
	s, _ := mp.b.State(user)
	return s
}

func bySeq(frames []frame, seq uint64) frame {
	for _, f := range frames {
		if f.ev.seq() == seq {
			return f
		}
	}
	panic("no event with that sequence")
}

func TestInOrderEveryStep(t *testing.T) {
	mp := newMapped(t)
	mp.feed(events(t, "esl-call-plain.txt")...)
	// In order, every step shows, the restart of 1001 included.
	if got, want := mp.phones("1001"), []bridge.PhoneState{bridge.PhoneIdle, bridge.PhoneOffline, bridge.PhoneIdle,
		bridge.PhoneRinging, bridge.PhoneBusy, bridge.PhoneIdle}; !slices.Equal(got, want) {
		t.Errorf("1001: %v, want %v", got, want)
	}
	if got, want := mp.phones("1000"), []bridge.PhoneState{bridge.PhoneIdle, bridge.PhoneDialing, bridge.PhoneBusy,
		bridge.PhoneHeld, bridge.PhoneBusy, bridge.PhoneIdle}; !slices.Equal(got, want) {
		t.Errorf("1000: %v, want %v", got, want)
	}
}

func TestShuffledAndDuplicatedEventsEndRight(t *testing.T) {
	evs := events(t, "esl-call-plain.txt")
	for seed := range uint64(50) {
		mp := newMapped(t)
		r := rand.New(rand.NewPCG(seed, 7))
		shuffled := slices.Clone(evs)
		// Every event twice, then shuffled within windows of eight: the
		// reordering a dispatch thread or a goroutine per event makes.
		shuffled = append(shuffled, evs...)
		r.Shuffle(len(shuffled), func(i, j int) {
			if d := i - j; d > -8 && d < 8 {
				shuffled[i], shuffled[j] = shuffled[j], shuffled[i]
			}
		})
		mp.feed(shuffled...)
		for _, u := range []string{"1000", "1001"} {
			if s := mp.state(u); s.Phone != bridge.PhoneIdle || len(s.Calls) != 0 {
				t.Fatalf("seed %d: %s ends %v with %+v", seed, u, s.Phone, s.Calls)
			}
		}
		// A newer state is never undone by an older event.
		for _, u := range []string{"1000", "1001"} {
			for _, s := range mp.states[u] {
				for _, c := range s.Calls {
					if c.State < bridge.CallEarly && c.Direction == bridge.Incoming {
						t.Fatalf("seed %d: %s shows a pending leg", seed, u)
					}
				}
			}
		}
	}
}

func TestLateEventsCannotReviveOrRegress(t *testing.T) {
	evs := events(t, "esl-call-plain.txt")
	mp := newMapped(t)
	// The callee leg: created, answered and up...
	mp.feed(bySeq(evs, 580), bySeq(evs, 597))
	if s := mp.state("1001"); s.Phone != bridge.PhoneBusy {
		t.Fatalf("1001 after ACTIVE: %v", s.Phone)
	}
	// ...then its RINGING, older, arrives late: no step back.
	mp.feed(bySeq(evs, 586))
	if s := mp.state("1001"); s.Phone != bridge.PhoneBusy {
		t.Errorf("a late RINGING took 1001 back to %v", s.Phone)
	}
	// Hung up, then a CALLSTATE from before the hangup arrives: the
	// tombstone keeps the call dead.
	mp.feed(bySeq(evs, 633), bySeq(evs, 597), bySeq(evs, 595))
	if s := mp.state("1001"); len(s.Calls) != 0 || s.Phone != bridge.PhoneIdle {
		t.Errorf("a late event revived the call: %v %+v", s.Phone, s.Calls)
	}
	// Late register/unregister pairs: the newer one counts.
	mp.feed(bySeq(evs, 500), bySeq(evs, 496))
	if s := mp.state("1001"); s.Phone != bridge.PhoneIdle {
		t.Errorf("1001 after register then a late unregister of its old contact: %v", s.Phone)
	}
}

func TestTwoCallsAtOnceOnOneUser(t *testing.T) {
	mp := newMapped(t)
	mp.feed(events(t, "testdata/two-calls-on-1001.txt")...)
	var both *bridge.State
	for _, s := range mp.states["1001"] {
		if len(s.Calls) == 2 {
			both = s
		}
	}
	if both == nil {
		t.Fatalf("1001 never had two calls: %v", mp.phones("1001"))
	}
	// The second caller rings while the first call is up: the lamp says
	// ringing (a call can be picked up), and both dialogs are there.
	if both.Phone != bridge.PhoneRinging {
		t.Errorf("1001 with a call up and one ringing: %v", both.Phone)
	}
	var numbers []string
	for _, c := range both.Calls {
		numbers = append(numbers, c.Remote.Number)
	}
	slices.Sort(numbers)
	if !slices.Equal(numbers, []string{"1000", "1002"}) {
		t.Errorf("remote parties %v", numbers)
	}
	if s := mp.state("1001"); s.Phone != bridge.PhoneIdle || len(s.Calls) != 0 {
		t.Errorf("1001 at the end: %v %+v", s.Phone, s.Calls)
	}
}

func TestRegistrationExpiry(t *testing.T) {
	mp := newMapped(t)
	frames := events(t, "testdata/registration-expiry.txt")
	mp.feed(frames[0])
	mp.feed(frames[1]) // sofia::expire
	// 1001's other contact (from the start) is still there; drop it by
	// its own expiry: FreeSWITCH's sofia::expire for it was lost.
	if s := mp.state("1001"); s.Phone != bridge.PhoneIdle {
		t.Fatalf("1001 with one contact left: %v", s.Phone)
	}
	later := time.Now().Add(time.Hour)
	mp.m.now = func() time.Time { return later }
	for _, e := range mp.m.expire() {
		mp.b.Apply(e)
	}
	if s := mp.state("1001"); s.Phone != bridge.PhoneOffline {
		t.Errorf("1001 after every registration expired: %v", s.Phone)
	}
	if s := mp.state("1000"); s.Phone != bridge.PhoneOffline {
		t.Errorf("1000 after its registration expired: %v", s.Phone)
	}
}

func TestExpireEventAloneMakesUnavailable(t *testing.T) {
	dir, devs := recordedDirectory(t)
	m := newMapper("fs", devs)
	b := bridge.New(dir)
	b.Apply(m.snapshot(nil, nil, devs))
	frames := events(t, "testdata/registration-expiry.txt")
	for i, want := range []bridge.PhoneState{bridge.PhoneIdle, bridge.PhoneOffline} {
		for _, e := range m.event(frames[i].ev) {
			b.Apply(e)
		}
		if s, _ := b.State("1001"); s.Phone != want {
			t.Errorf("after %s: %v, want %v", frames[i].ev.get("Event-Subclass"), s.Phone, want)
		}
	}
}

// dialogDoc is the part of a dialog-info document the comparison reads.
type dialogDoc struct {
	Dialogs []struct {
		ID        string `xml:"id,attr"`
		CallID    string `xml:"call-id,attr"`
		Direction string `xml:"direction,attr"`
		State     string `xml:"state"`
		Remote    struct {
			Identity string `xml:"identity"`
		} `xml:"remote"`
	} `xml:"dialog"`
}

func TestCarriesAtLeastWhatFreeSWITCHBLFSends(t *testing.T) {
	evs := events(t, "esl-call-plain.txt")
	mp := newMapped(t)
	render := func(user string) dialogDoc {
		var d dialogDoc
		if err := xml.Unmarshal(body.DialogInfo(nil, "sip:"+user+"@127.0.0.1", mp.state(user), body.Options{}), &d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	native := func(name string) dialogDoc {
		raw, err := os.ReadFile(filepath.Join(fixtures, "../freeswitch-native-blf", name))
		if err != nil {
			t.Fatal(err)
		}
		var d dialogDoc
		if err := xml.Unmarshal(raw[strings.Index(string(raw), "<?xml"):], &d); err != nil {
			t.Fatal(err)
		}
		return d
	}
	userOf := func(uri string) string {
		u, _, _ := strings.Cut(strings.TrimPrefix(uri, "sip:"), "@")
		return u
	}
	// Up to 1001 ringing.
	for _, f := range evs {
		if f.ev.seq() <= 586 {
			mp.feed(f)
		}
	}
	ours, theirs := render("1001"), native("native-notify-1001-dialog-03-early.txt")
	if len(ours.Dialogs) != 1 || len(theirs.Dialogs) != 1 {
		t.Fatalf("callee ringing: ours %+v, FreeSWITCH %+v", ours, theirs)
	}
	o, n := ours.Dialogs[0], theirs.Dialogs[0]
	if o.ID != n.ID || o.Direction != n.Direction || o.State != n.State || userOf(o.Remote.Identity) != userOf(n.Remote.Identity) {
		t.Errorf("callee ringing: ours %+v, FreeSWITCH %+v", o, n)
	}
	// The caller, meanwhile: FreeSWITCH says confirmed; it is not.
	caller := render("1000")
	if len(caller.Dialogs) != 1 || caller.Dialogs[0].State != "early" || caller.Dialogs[0].Direction != "initiator" ||
		userOf(caller.Dialogs[0].Remote.Identity) != "1001" || caller.Dialogs[0].CallID != "a107d32baf48fb56" {
		t.Errorf("caller while the callee rings: %+v", caller.Dialogs)
	}
	if nat := native("native-notify-1000-dialog-02-confirmed.txt"); nat.Dialogs[0].State != "confirmed" {
		t.Fatalf("the recording changed: %+v", nat)
	}
	// In the call, both sides: the same dialog ids, with Call-IDs.
	for _, f := range evs {
		if f.ev.seq() > 586 && f.ev.seq() <= 601 {
			mp.feed(f)
		}
	}
	for user, file := range map[string]string{"1000": "native-notify-1000-dialog-03-confirmed.txt", "1001": "native-notify-1001-dialog-04-confirmed.txt"} {
		ours, theirs := render(user), native(file)
		o, n := ours.Dialogs[0], theirs.Dialogs[0]
		if o.ID != n.ID || o.State != n.State || o.Direction != n.Direction || o.CallID == "" ||
			userOf(o.Remote.Identity) != userOf(n.Remote.Identity) {
			t.Errorf("%s in call: ours %+v, FreeSWITCH %+v", user, o, n)
		}
	}
}

// TestRingingCalleeCarriesPickupData: on a real FreeSWITCH the callee's
// leg learns its Call-ID and tags from the phone's 180, reported as
// CHANNEL_PROGRESS (the recording did not subscribe to it, so its ringing
// leg has neither until answer). Fed the recorded ringing event as the
// progress event FreeSWITCH sends with those variables (their values from
// the same leg's answer event), the ringing phone's dialog carries
// call-id, local-tag and remote-tag: enough to pick it up with Replaces.
func TestRingingCalleeCarriesPickupData(t *testing.T) {
	evs := events(t, "esl-call-plain.txt")
	mp := newMapped(t)
	for _, f := range evs {
		if f.ev.seq() <= 586 {
			mp.feed(f)
		}
	}
	if st := mp.state("1001"); st.Phone != bridge.PhoneRinging || !st.IDsPending {
		t.Errorf("ringing before the phone's 180: phone %v, ids pending %v (want ringing, pending)", st.Phone, st.IDsPending)
	}
	answer := bySeq(evs, 595).ev
	progress := event{}
	for k, v := range bySeq(evs, 586).ev {
		progress[k] = v
	}
	progress["Event-Name"] = []string{"CHANNEL_PROGRESS"}
	progress["Event-Sequence"] = []string{"587"}
	for _, k := range []string{"Variable_sip_call_id", "Variable_sip_from_tag", "Variable_sip_to_tag"} {
		progress[k] = answer[k]
	}
	if len(progress["Variable_sip_call_id"]) == 0 {
		t.Fatalf("the answer event has no sip variables: %v", answer)
	}
	mp.feed(frame{ev: progress})
	st := mp.state("1001")
	if len(st.Calls) != 1 {
		t.Fatalf("calls: %+v", st.Calls)
	}
	c := st.Calls[0]
	if st.Phone != bridge.PhoneRinging || c.CallID != "deee3036-6014-1240-cc8d-f6b91c3a5360" ||
		c.LocalTag != "3Q6vgt45XjjrD" || c.RemoteTag != "97d7dc44d0c2ff3b" || st.IDsPending { // FreeSWITCH's tag, the phone's
		t.Errorf("ringing callee: phone %v, call %+v", st.Phone, c)
	}
}

// replayed feeds a recording made with phones 1000, 1010, 1011 and 1012
// (and valet space 6001) through a mapper into a bridge, and returns
// every state each user went through.
func replayed(t *testing.T, name string) (map[string][]*bridge.State, *bridge.Bridge) {
	t.Helper()
	var users []bridge.User
	var devs []string
	for _, ext := range []string{"1000", "1010", "1011", "1012"} {
		users = append(users, bridge.User{ID: ext, Name: "User " + ext, Extensions: []string{ext},
			Devices: []bridge.DeviceRef{{Source: "fs", Device: ext + "@127.0.0.1"}}})
		devs = append(devs, ext+"@127.0.0.1")
	}
	users = append(users, bridge.User{ID: "6001", Extensions: []string{"6001"},
		Devices: []bridge.DeviceRef{{Source: "fs", Device: "park+6001@127.0.0.1"}}})
	devs = append(devs, "park+6001@127.0.0.1")
	dir, err := bridge.NewDirectory(users)
	if err != nil {
		t.Fatal(err)
	}
	b := bridge.New(dir)
	states := map[string][]*bridge.State{}
	b.Listen(func(c bridge.Change) {
		if c.State != nil {
			states[c.UserID] = append(states[c.UserID], c.State)
		}
	})
	m := newMapper("fs", devs)
	b.Apply(m.snapshot(nil, nil, devs))
	for _, f := range events(t, "testdata/"+name) {
		for _, e := range m.event(f.ev) {
			b.Apply(e)
		}
	}
	return states, b
}

// partiesOf lists, in order, the remote parties a user's lamp named
// while in a call (answered), each once per stretch.
func partiesOf(states []*bridge.State) []string {
	var out []string
	for _, s := range states {
		if len(s.Calls) != 1 || s.Calls[0].State != bridge.CallConfirmed || s.IDsPending {
			continue
		}
		r := s.Calls[0].Remote
		label := r.Number
		if r.Name != "" {
			label += " " + r.Name
		}
		if len(out) == 0 || out[len(out)-1] != label {
			out = append(out, label)
		}
	}
	return out
}

func TestRingGroupCallerSeesWhoAnswered(t *testing.T) {
	states, _ := replayed(t, "ring-group-2001.txt")
	if got := partiesOf(states["1000"]); !slices.Equal(got, []string{"1011 User 1011"}) {
		t.Errorf("the caller into the group was in a call with %v, want who answered", got)
	}
	if got := partiesOf(states["1011"]); !slices.Equal(got, []string{"1000 Extension 1000"}) {
		t.Errorf("who answered: %v", got)
	}
	for _, u := range []string{"1010", "1012"} {
		if s := states[u][len(states[u])-1]; len(s.Calls) != 0 {
			t.Errorf("%s still shows %+v after another member answered", u, s.Calls)
		}
	}
}

func TestInterceptNamesPickerAndCaller(t *testing.T) {
	states, _ := replayed(t, "intercept-by-code.txt")
	// The picker dialled **1010, FreeSWITCH bridged it with 1000's call.
	if got := partiesOf(states["1011"]); len(got) == 0 || !strings.HasPrefix(got[len(got)-1], "1000 ") || slices.ContainsFunc(got, func(p string) bool { return strings.HasPrefix(p, "**") }) {
		t.Errorf("the picker was in a call with %v, want 1000 and never the feature code", got)
	}
	if got := partiesOf(states["1000"]); !slices.Equal(got, []string{"1011 User 1011"}) {
		t.Errorf("the caller was in a call with %v, want the picker", got)
	}
}

func TestValetParkedCallAndItsSpace(t *testing.T) {
	states, b := replayed(t, "valet-park-and-retrieve.txt")
	if got := partiesOf(states["1000"]); !slices.Equal(got, []string{"1010 User 1010", "6001", "6001 Parked", "1011 User 1011"}) {
		t.Errorf("the parked caller was in a call with %v", got)
	}
	var held bool
	for _, s := range states["6001"] {
		if len(s.Calls) == 1 && s.Calls[0].Remote.Number == "1000" && s.Calls[0].CallID != "" {
			held = true
		}
	}
	if !held {
		t.Errorf("space 6001's lamp never showed the parked caller: %v", states["6001"])
	}
	if s, _ := b.State("6001"); s.Phone != bridge.PhoneIdle || len(s.Calls) != 0 {
		t.Errorf("space 6001 after the retrieval: %v %+v", s.Phone, s.Calls)
	}
	if got := partiesOf(states["1011"]); !slices.Equal(got, []string{"1000 User 1000"}) {
		t.Errorf("the retriever was in a call with %v, want the parked caller alone", got)
	}
}

func TestBlindTransferNamesTheNewParty(t *testing.T) {
	states, _ := replayed(t, "blind-transfer.txt")
	if got := partiesOf(states["1000"]); !slices.Equal(got, []string{"1010 User 1010", "1011 User 1011"}) {
		t.Errorf("the transferred caller was in a call with %v", got)
	}
	if got := partiesOf(states["1011"]); !slices.Equal(got, []string{"1000 Extension 1000"}) {
		t.Errorf("the transfer's target: %v", got)
	}
}

// TestFeatureKeysFollowPresenceIn: a PRESENCE_IN for a configured
// feature key (both ways FusionPBX's scripts name one) sets its state by
// answer-state; one for a phone's own presence id, or for a feature no
// one configured, gives nothing.
func TestFeatureKeysFollowPresenceIn(t *testing.T) {
	m := newMapper("fs", []string{"dnd+1000@pbx.example", "flow+*30@pbx.example", "1000@pbx.example"})
	presence := func(proto, from, state string) []bridge.Event {
		e := event{}
		textproto.MIMEHeader(e).Set("Event-Name", "PRESENCE_IN")
		textproto.MIMEHeader(e).Set("proto", proto)
		textproto.MIMEHeader(e).Set("from", from)
		textproto.MIMEHeader(e).Set("answer-state", state)
		return m.event(e)
	}
	want := func(got []bridge.Event, dev string, st bridge.DeviceState) {
		t.Helper()
		if len(got) != 1 {
			t.Fatalf("events %+v, want %s %v", got, dev, st)
		}
		if d, ok := got[0].(bridge.DeviceStateChanged); !ok || d.Device != dev || d.State != st {
			t.Errorf("event %+v, want %s %v", got[0], dev, st)
		}
	}
	want(presence("dnd", "1000@pbx.example", "confirmed"), "dnd+1000@pbx.example", bridge.DeviceInUse)
	if got := presence("dnd", "1000@pbx.example", "confirmed"); len(got) != 0 {
		t.Errorf("the same state again: %+v", got)
	}
	want(presence("sip", "flow+*30@pbx.example", "early"), "flow+*30@pbx.example", bridge.DeviceRinging)
	want(presence("sip", "dnd+1000@pbx.example", "terminated"), "dnd+1000@pbx.example", bridge.DeviceIdle)
	for _, c := range [][3]string{
		{"sip", "1000@pbx.example", "confirmed"},   // a phone's presence: its channel events say it
		{"dnd", "1001@pbx.example", "confirmed"},   // no such key configured
		{"agent", "1000@pbx.example", "confirmed"}, // nor this one
	} {
		if got := presence(c[0], c[1], c[2]); len(got) != 0 {
			t.Errorf("%v: %+v", c, got)
		}
	}
	if got := m.features(); len(got) != 2 || got[0] != "dnd+1000@pbx.example" {
		t.Errorf("features to probe: %v", got)
	}
}

// TestLearningDevices: devices the directory gives after the snapshot
// take their registrations from a later `show registrations`, unless an
// event for the registration came since they were configured (newer).
func TestLearningDevices(t *testing.T) {
	m := newMapper("fs", []string{"1000@d"})
	m.snapshot(nil, nil, []string{"1000@d"})
	fresh := m.beginLearn([]string{"1000@d", "1001@d", "1002@d", "dnd+1001@d"})
	if len(fresh) != 3 {
		t.Fatalf("fresh %v", fresh)
	}
	// 1002 unregisters (an event) while the rows are being read.
	e := event{}
	for k, v := range map[string]string{"Event-Name": "CUSTOM", "Event-Subclass": "sofia::unregister", "username": "1002",
		"realm": "d", "call-id": "tok1002", "profile-name": "internal", "Event-Sequence": "9"} {
		textproto.MIMEHeader(e).Set(k, v)
	}
	m.event(e)
	rows := []registrationRow{
		{User: "1001", Realm: "d", Token: "tok1001", URL: "sofia/internal/sip:1001@127.0.0.1", Expires: "0"},
		{User: "1002", Realm: "d", Token: "tok1002", URL: "sofia/internal/sip:1002@127.0.0.1", Expires: "0"},
		{User: "1000", Realm: "d", Token: "tok1000", URL: "sofia/internal/sip:1000@127.0.0.1", Expires: "0"}, // not fresh: its own events tell
	}
	got := map[string]bridge.DeviceState{}
	for _, ev := range m.finishLearn(fresh, rows) {
		d := ev.(bridge.DeviceStateChanged)
		got[d.Device] = d.State
	}
	want := map[string]bridge.DeviceState{"1001@d": bridge.DeviceIdle, "1002@d": bridge.DeviceUnavailable, "dnd+1001@d": bridge.DeviceIdle}
	if !maps.Equal(got, want) {
		t.Errorf("states %v, want %v", got, want)
	}
	if m.reachable("1000@d") {
		t.Error("a device known before took a listed row")
	}
	if again := m.beginLearn([]string{"1000@d", "1001@d", "1002@d", "dnd+1001@d"}); len(again) != 0 {
		t.Errorf("learnt twice: %v", again)
	}
}
