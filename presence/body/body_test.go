package body

import (
	"bytes"
	"encoding/xml"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

var update = flag.Bool("update", false, "rewrite the golden files")

var t0 = time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)

const entity = "sip:100@pbx.example.com"

// scenario builds a user's state through a real bridge.
type scenario struct {
	name   string
	events []bridge.Event
	person *bridge.PersonState
	user   string // display name override (escaping)
}

var bob = bridge.Party{Number: "101", Name: "Bob"}

func incoming(state bridge.CallState, held bool) bridge.Call {
	return bridge.Call{ID: "ch-1", Device: "PJSIP/100", Direction: bridge.Incoming, State: state, Held: held,
		Remote: bob, CallID: "a84b4c76e66710", LocalTag: "1928301774", RemoteTag: "314159", Started: t0}
}

func scenarios() []scenario {
	idle := bridge.DeviceStateChanged{Source: "ast", Device: "PJSIP/100", State: bridge.DeviceIdle}
	outgoing := bridge.Call{ID: "ch-2", Device: "PJSIP/100", Direction: bridge.Outgoing, State: bridge.CallProceeding,
		Remote: bridge.Party{Number: "101"}, Started: t0}
	second := bridge.Call{ID: "ch-3", Device: "PJSIP/100", Direction: bridge.Incoming, State: bridge.CallEarly,
		Remote: bridge.Party{Number: "102", Name: "Carol"}, CallID: "second-call", Started: t0.Add(10 * time.Second)}
	dnd := &bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityDND}, Note: "Back at 3"}
	return []scenario{
		{name: "idle", events: []bridge.Event{idle}},
		{name: "ringing-in", events: []bridge.Event{idle, bridge.CallUpdated{Source: "ast", Call: incoming(bridge.CallEarly, false)}}},
		{name: "ringing-out", events: []bridge.Event{idle, bridge.CallUpdated{Source: "ast", Call: outgoing}}},
		{name: "in-call", events: []bridge.Event{idle, bridge.CallUpdated{Source: "ast", Call: incoming(bridge.CallConfirmed, false)}}},
		{name: "on-hold", events: []bridge.Event{idle, bridge.CallUpdated{Source: "ast", Call: incoming(bridge.CallConfirmed, true)}}},
		{name: "ringing-in-use", events: []bridge.Event{idle,
			bridge.CallUpdated{Source: "ast", Call: incoming(bridge.CallConfirmed, false)},
			bridge.CallUpdated{Source: "ast", Call: second}}},
		{name: "unavailable", events: []bridge.Event{bridge.DeviceStateChanged{Source: "ast", Device: "PJSIP/100", State: bridge.DeviceUnavailable}}},
		{name: "dnd", events: []bridge.Event{idle}, person: dnd},
		{name: "dnd-in-call", events: []bridge.Event{idle, bridge.CallUpdated{Source: "ast", Call: incoming(bridge.CallConfirmed, false)}}, person: dnd},
		{name: "meeting-in-call", events: []bridge.Event{idle, bridge.CallUpdated{Source: "ast", Call: incoming(bridge.CallConfirmed, false)}},
			person: &bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityMeeting}, Note: "In a meeting"}},
		{name: "escaping", user: `Debbie "D" <&> O'Neil`, events: []bridge.Event{idle, bridge.CallUpdated{Source: "ast", Call: bridge.Call{
			ID: "ch<1>", Device: "PJSIP/100", Direction: bridge.Incoming, State: bridge.CallEarly,
			Remote: bridge.Party{Number: "101", Name: "Bob & <Alice> \"Q\" \x01"}, CallID: `x"y&z`, Started: t0}}},
			person: &bridge.PersonState{Note: "</dm:note><evil/>"}},
	}
}

func (s scenario) state(t *testing.T) *bridge.State {
	t.Helper()
	name := "Debbie"
	if s.user != "" {
		name = s.user
	}
	dir, err := bridge.NewDirectory([]bridge.User{{ID: "debbie", Name: name, Extensions: []string{"100"},
		Devices: []bridge.DeviceRef{{Source: "ast", Device: "PJSIP/100"}}}})
	if err != nil {
		t.Fatal(err)
	}
	b := bridge.New(dir, bridge.WithClock(func() time.Time { return t0 }))
	for _, e := range s.events {
		b.Apply(e)
	}
	if s.person != nil {
		if err := b.SetPerson("debbie", "api", *s.person); err != nil {
			t.Fatal(err)
		}
	}
	st, _ := b.State("debbie")
	return st
}

// xmlSafe is s as it reads back from a document: control characters that
// XML forbids are replaced with U+FFFD.
func xmlSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' {
			return '\uFFFD'
		}
		return r
	}, s)
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from golden:\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// Structures to read the documents back with encoding/xml.
type pidfDoc struct {
	XMLName xml.Name `xml:"urn:ietf:params:xml:ns:pidf presence"`
	Entity  string   `xml:"entity,attr"`
	Tuples  []struct {
		ID         string `xml:"id,attr"`
		Basic      string `xml:"status>basic"`
		PhoneState string `xml:"urn:x-lamplighter:params:xml:ns:phonestate status>phonestate"`
		Contact    string `xml:"contact"`
		Note       string `xml:"note"`
	} `xml:"tuple"`
	Person struct {
		ID         string `xml:"id,attr"`
		Activities struct {
			Any []struct{ XMLName xml.Name } `xml:",any"`
		} `xml:"urn:ietf:params:xml:ns:pidf:rpid activities"`
		Note string `xml:"urn:ietf:params:xml:ns:pidf:data-model note"`
	} `xml:"urn:ietf:params:xml:ns:pidf:data-model person"`
}

type dialogDoc struct {
	XMLName xml.Name `xml:"urn:ietf:params:xml:ns:dialog-info dialog-info"`
	Version string   `xml:"version,attr"`
	State   string   `xml:"state,attr"`
	Entity  string   `xml:"entity,attr"`
	Dialogs []struct {
		ID        string `xml:"id,attr"`
		CallID    string `xml:"call-id,attr"`
		LocalTag  string `xml:"local-tag,attr"`
		RemoteTag string `xml:"remote-tag,attr"`
		Direction string `xml:"direction,attr"`
		State     string `xml:"state"`
		Local     struct {
			Identity string `xml:"identity"`
			Target   struct {
				URI    string `xml:"uri,attr"`
				Params []struct {
					Name  string `xml:"pname,attr"`
					Value string `xml:"pvalue,attr"`
				} `xml:"param"`
			} `xml:"target"`
		} `xml:"local"`
		Remote struct {
			Identity struct {
				Display string `xml:"display,attr"`
				URI     string `xml:",chardata"`
			} `xml:"identity"`
			Target struct {
				URI string `xml:"uri,attr"`
			} `xml:"target"`
		} `xml:"remote"`
	} `xml:"dialog"`
	PhoneState string `xml:"urn:x-lamplighter:params:xml:ns:phonestate phonestate"`
}

func TestPIDFGolden(t *testing.T) {
	for _, s := range scenarios() {
		t.Run(s.name, func(t *testing.T) {
			st := s.state(t)
			out := PIDF(nil, entity, st, Options{})
			golden(t, "pidf-"+s.name+".xml", out)
			var doc pidfDoc
			if err := xml.Unmarshal(out, &doc); err != nil {
				t.Fatalf("does not parse: %v\n%s", err, out)
			}
			if doc.Entity != entity {
				t.Errorf("entity %q", doc.Entity)
			}
			if len(doc.Tuples) != 1 {
				t.Fatalf("%d tuples", len(doc.Tuples))
			}
			tu := doc.Tuples[0]
			if tu.ID == "" || tu.ID[0] >= '0' && tu.ID[0] <= '9' || doc.Person.ID[0] >= '0' && doc.Person.ID[0] <= '9' {
				t.Errorf("ids start with a digit: %q %q", tu.ID, doc.Person.ID)
			}
			if tu.Contact != entity {
				t.Errorf("contact %q is not the presentity", tu.Contact)
			}
			if tu.PhoneState != st.Phone.String() {
				t.Errorf("phonestate %q, want %q", tu.PhoneState, st.Phone)
			}
			wantBasic := map[bool]string{true: "open", false: "closed"}[st.Open()]
			if tu.Basic != wantBasic {
				t.Errorf("basic %q, want %q", tu.Basic, wantBasic)
			}
			if doc.Person.Note != xmlSafe(PersonNote(st)) || tu.Note != xmlSafe(LineNote(st)) {
				t.Errorf("notes %q / %q", tu.Note, doc.Person.Note)
			}
			// Every activity element is an RFC 4480 token.
			for _, a := range doc.Person.Activities.Any {
				if !bridge.Activity(a.XMLName.Local).Valid() || a.XMLName.Space != NSRPID {
					t.Errorf("activity %v is not RFC 4480", a.XMLName)
				}
			}
		})
	}
}

func TestDialogInfoGolden(t *testing.T) {
	for _, s := range scenarios() {
		t.Run(s.name, func(t *testing.T) {
			st := s.state(t)
			out := DialogInfo(nil, entity, st, Options{Version: 7, Now: t0.Add(42 * time.Second)})
			golden(t, "dialog-"+s.name+".xml", out)
			var doc dialogDoc
			if err := xml.Unmarshal(out, &doc); err != nil {
				t.Fatalf("does not parse: %v\n%s", err, out)
			}
			if doc.Entity != entity || doc.Version != "7" || doc.State != "full" {
				t.Errorf("root: entity %q version %q state %q", doc.Entity, doc.Version, doc.State)
			}
			if len(doc.Dialogs) != len(st.Calls) {
				t.Fatalf("%d dialogs for %d calls", len(doc.Dialogs), len(st.Calls))
			}
			if doc.PhoneState != st.Phone.String() {
				t.Errorf("phonestate %q, want %v", doc.PhoneState, st.Phone)
			}
			for i, d := range doc.Dialogs {
				c := st.Calls[i]
				if d.ID != c.ID || d.CallID != c.CallID {
					t.Errorf("dialog %d: id %q call-id %q, want %q %q", i, d.ID, d.CallID, c.ID, c.CallID)
				}
				wantDir := map[bridge.Direction]string{bridge.Incoming: "recipient", bridge.Outgoing: "initiator"}[c.Direction]
				if d.Direction != wantDir {
					t.Errorf("dialog %d: direction %q", i, d.Direction)
				}
				if d.Local.Identity != entity || d.Local.Target.URI != entity {
					t.Errorf("dialog %d: local %q", i, d.Local.Identity)
				}
				held := len(d.Local.Target.Params) == 1 && d.Local.Target.Params[0].Name == "+sip.rendering" && d.Local.Target.Params[0].Value == "no"
				if held != c.Held {
					t.Errorf("dialog %d: hold rendering %v, call held %v", i, held, c.Held)
				}
				if d.Remote.Identity.Display != xmlSafe(c.Remote.Name) {
					t.Errorf("dialog %d: remote display %q, want %q", i, d.Remote.Identity.Display, c.Remote.Name)
				}
			}
		})
	}
}

func TestDialogInfoSingleAndPlain(t *testing.T) {
	var ringInUse scenario
	for _, s := range scenarios() {
		if s.name == "ringing-in-use" {
			ringInUse = s
		}
	}
	st := ringInUse.state(t)
	out := DialogInfo(nil, entity, st, Options{Version: 3, SingleDialog: true, Plain: true})
	golden(t, "dialog-single-plain.xml", out)
	var doc dialogDoc
	if err := xml.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	// The ringing call is the one that matters: it can be picked up.
	if len(doc.Dialogs) != 1 || doc.Dialogs[0].State != "early" || doc.Dialogs[0].CallID != "second-call" {
		t.Errorf("single dialog mode kept %+v", doc.Dialogs)
	}
	if doc.PhoneState != "" || bytes.Contains(out, []byte(NSPhoneState)) {
		t.Error("plain document carries the phonestate extension")
	}
}

func TestEntityIsWhatWasSubscribed(t *testing.T) {
	st := scenarios()[0].state(t)
	for _, e := range []string{"sip:debbie@pbx.example.com", "sip:100@10.0.0.1:5060"} {
		var p pidfDoc
		var d dialogDoc
		if err := xml.Unmarshal(PIDF(nil, e, st, Options{}), &p); err != nil || p.Entity != e || p.Tuples[0].Contact != e {
			t.Errorf("pidf for %s: %v %+v", e, err, p)
		}
		if err := xml.Unmarshal(DialogInfo(nil, e, st, Options{}), &d); err != nil || d.Entity != e {
			t.Errorf("dialog-info for %s: %v %+v", e, err, d)
		}
	}
}

func TestDeviceStateAloneLightsTheLamp(t *testing.T) {
	// A Custom: device or a chan_sip peer tells only its device state. The
	// lamp must still light: a document with no dialog would read as idle.
	for devState, want := range map[bridge.DeviceState]struct{ state, direction string }{
		bridge.DeviceRinging: {"early", "recipient"},
		bridge.DeviceInUse:   {"confirmed", ""},
		bridge.DeviceOnHold:  {"confirmed", ""},
		bridge.DeviceIdle:    {},
	} {
		s := scenario{events: []bridge.Event{bridge.DeviceStateChanged{Source: "ast", Device: "PJSIP/100", State: devState}}}
		var doc dialogDoc
		if err := xml.Unmarshal(DialogInfo(nil, entity, s.state(t), Options{}), &doc); err != nil {
			t.Fatal(err)
		}
		if want.state == "" {
			if len(doc.Dialogs) != 0 {
				t.Errorf("%v: dialogs %+v, want none", devState, doc.Dialogs)
			}
			continue
		}
		if len(doc.Dialogs) != 1 || doc.Dialogs[0].State != want.state ||
			(want.direction != "" && doc.Dialogs[0].Direction != want.direction) {
			t.Errorf("%v: dialogs %+v, want one %s", devState, doc.Dialogs, want.state)
		}
	}
}
