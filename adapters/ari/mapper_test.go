package ari

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/CyCoreSystems/ari/v5"

	"github.com/lamplighter/lamplighter/bridge"
)

const fixtures = "../../../shared/fixtures/ari"

// readFixture returns the raw lines of a recording.
func readFixture(t *testing.T, name string) [][]byte {
	t.Helper()
	path := filepath.Join(fixtures, name)
	if strings.HasPrefix(name, "testdata/") { // recorded for this package
		path = name
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("recording missing: %v", err)
	}
	defer f.Close()
	var lines [][]byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) > 0 {
			lines = append(lines, slices.Clone(sc.Bytes()))
		}
	}
	return lines
}

// timeline records each user's states as the bridge emits them.
type timeline struct {
	states map[string][]*bridge.State
}

func (tl *timeline) phones(user string) []bridge.PhoneState {
	var out []bridge.PhoneState
	for _, s := range tl.states[user] {
		if len(out) == 0 || out[len(out)-1] != s.Phone {
			out = append(out, s.Phone)
		}
	}
	return out
}

// first returns the first state of user in phone state p.
func (tl *timeline) first(user string, p bridge.PhoneState) *bridge.State {
	for _, s := range tl.states[user] {
		if s.Phone == p {
			return s
		}
	}
	return nil
}

// replay feeds recordings through a mapper into a bridge with the given
// users (each with the listed devices on source "ast").
func replay(t *testing.T, users map[string][]string, names ...string) (*timeline, *bridge.Bridge, *mapper) {
	t.Helper()
	var lines [][]byte
	for _, name := range names {
		lines = append(lines, readFixture(t, name)...)
	}
	return replayLines(t, users, lines)
}

// replayLines is replay of events given one per line.
func replayLines(t *testing.T, users map[string][]string, lines [][]byte) (*timeline, *bridge.Bridge, *mapper) {
	t.Helper()
	var dir []bridge.User
	for id, devs := range users {
		u := bridge.User{ID: id, Extensions: []string{id}}
		for _, d := range devs {
			u.Devices = append(u.Devices, bridge.DeviceRef{Source: "ast", Device: d})
		}
		dir = append(dir, u)
	}
	d, err := bridge.NewDirectory(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := bridge.New(d)
	tl := &timeline{states: map[string][]*bridge.State{}}
	b.Listen(func(c bridge.Change) { tl.states[c.UserID] = append(tl.states[c.UserID], c.State) })
	cfg := &Config{}
	cfg.Defaults()
	m := newMapper("ast", cfg)
	for i, line := range lines {
		ev, err := ari.DecodeEvent(line)
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		for _, e := range m.event(ev, line) {
			b.Apply(e)
		}
	}
	return tl, b, m
}

func TestPJSIPCall(t *testing.T) {
	// 100 dials 101; 101 rings 3 s and answers; 100 hangs up.
	tl, b, _ := replay(t, map[string][]string{"100": {"PJSIP/100"}, "101": {"PJSIP/101"}}, "pjsip/pjsip-call.jsonl")
	if got, want := tl.phones("100"), []bridge.PhoneState{bridge.PhoneDialing, bridge.PhoneBusy, bridge.PhoneIdle}; !slices.Equal(got, want) {
		t.Errorf("caller 100: %v, want %v", got, want)
	}
	if got, want := tl.phones("101"), []bridge.PhoneState{bridge.PhoneRinging, bridge.PhoneBusy, bridge.PhoneIdle}; !slices.Equal(got, want) {
		t.Errorf("callee 101: %v, want %v", got, want)
	}
	// While ringing, the callee's lamp knows who calls and the SIP Call-ID
	// of its own leg (for pickup), which Asterisk's own BLF does not send.
	ring := tl.first("101", bridge.PhoneRinging)
	if ring == nil || len(ring.Calls) != 1 {
		t.Fatalf("no ringing state with a call: %+v", ring)
	}
	c := ring.Calls[0]
	if c.Direction != bridge.Incoming || c.Remote.Number != "100" || c.Remote.Name != "Phone 100" ||
		c.CallID != "01ff1afb-f162-4153-942d-9c0f0c54f42d" {
		t.Errorf("ringing call: %+v", c)
	}
	// In the call, both sides still know the other party.
	busy := tl.first("100", bridge.PhoneBusy)
	if busy == nil || busy.Calls[0].Remote.Number != "101" || busy.Calls[0].Direction != bridge.Outgoing ||
		busy.Calls[0].CallID != "2bd03b710e42d9d9" {
		t.Errorf("caller in call: %+v", busy)
	}
	for _, u := range []string{"100", "101"} {
		if s, _ := b.State(u); len(s.Calls) != 0 || s.Device != bridge.DeviceIdle {
			t.Errorf("%s after hangup: %+v", u, s)
		}
	}
}

func TestPJSIPCallOtherWay(t *testing.T) {
	// 101 dials 100; 100 rings and answers; 101 hangs up.
	tl, _, _ := replay(t, map[string][]string{"100": {"PJSIP/100"}, "101": {"PJSIP/101"}}, "pjsip/pjsip-call2.jsonl")
	// 100's first event is its device turning RINGING, a moment before
	// its channel rings: that says it is reachable (idle), and the lamp
	// rings with the channel, which names the caller.
	if got, want := tl.phones("100"), []bridge.PhoneState{bridge.PhoneIdle, bridge.PhoneRinging, bridge.PhoneBusy, bridge.PhoneIdle}; !slices.Equal(got, want) {
		t.Errorf("callee 100: %v, want %v", got, want)
	}
	if got, want := tl.phones("101"), []bridge.PhoneState{bridge.PhoneDialing, bridge.PhoneBusy, bridge.PhoneIdle}; !slices.Equal(got, want) {
		t.Errorf("caller 101: %v, want %v", got, want)
	}
	for _, u := range []string{"100", "101"} {
		for _, s := range tl.states[u] {
			if s.Phone != bridge.PhoneIdle && s.Phone != bridge.PhoneOffline && len(s.Calls) == 0 {
				t.Errorf("%s was %v with no call: a lamp would show a call no channel stands for", u, s.Phone)
			}
		}
	}
}

func TestPJSIPSession(t *testing.T) {
	// Registration, both calls, 101 unregisters and registers again.
	tl, b, _ := replay(t, map[string][]string{"100": {"PJSIP/100"}, "101": {"PJSIP/101"}, "102": {"PJSIP/102"}},
		"pjsip/pjsip-session.jsonl")
	want101 := []bridge.PhoneState{bridge.PhoneIdle, bridge.PhoneRinging, bridge.PhoneBusy, bridge.PhoneIdle,
		bridge.PhoneDialing, bridge.PhoneBusy, bridge.PhoneIdle, bridge.PhoneOffline, bridge.PhoneIdle}
	if got := tl.phones("101"); !slices.Equal(got, want101) {
		t.Errorf("101 over the session: %v\nwant %v", got, want101)
	}
	if s, _ := b.State("102"); s.Phone != bridge.PhoneIdle {
		t.Errorf("102 (registered, never called): %v", s.Phone)
	}
}

func TestLocalChannelsAndCustomDevices(t *testing.T) {
	tl, _, _ := replay(t, map[string][]string{"100": {"Custom:100"}, "110": {"Stasis:110"}},
		"local-channels/devstate.jsonl", "local-channels/stasisdev.jsonl")
	if got, want := tl.phones("100"), []bridge.PhoneState{bridge.PhoneBusy, bridge.PhoneRinging, bridge.PhoneIdle}; !slices.Equal(got, want) {
		t.Errorf("Custom:100: %v, want %v", got, want)
	}
	if got, want := tl.phones("110"), []bridge.PhoneState{bridge.PhoneBusy, bridge.PhoneIdle}; !slices.Equal(got, want) {
		t.Errorf("Stasis:110: %v, want %v", got, want)
	}
}

func TestLocalDeviceStatesTwiceAreOne(t *testing.T) {
	cfg := &Config{}
	cfg.Defaults()
	m := newMapper("ast", cfg)
	raw, emitted := 0, 0
	last := map[string]bridge.DeviceState{}
	for _, line := range readFixture(t, "local-channels/dial.jsonl") {
		ev, err := ari.DecodeEvent(line)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := ev.(*ari.DeviceStateChanged); ok {
			raw++
		}
		for _, e := range m.event(ev, line) {
			if d, ok := e.(bridge.DeviceStateChanged); ok {
				emitted++
				if prev, seen := last[d.Device]; seen && prev == d.State {
					t.Errorf("%s: %v twice in a row", d.Device, d.State)
				}
				last[d.Device] = d.State
			}
		}
	}
	if raw == 0 || emitted*2 > raw {
		t.Errorf("%d device states in the recording became %d events, want at most half", raw, emitted)
	}
}

func TestLocalChannelHalves(t *testing.T) {
	// The originate in call.jsonl makes Local/100@phones;1 and ;2: only
	// the outward half is a call leg of device Local/100@phones.
	tl, b, _ := replay(t, map[string][]string{"100": {"Local/100@phones"}}, "local-channels/call.jsonl")
	var maxCalls int
	for _, s := range tl.states["100"] {
		maxCalls = max(maxCalls, len(s.Calls))
	}
	if maxCalls != 1 {
		t.Errorf("Local/100@phones had %d calls at once, want 1", maxCalls)
	}
	if s, _ := b.State("100"); len(s.Calls) != 0 {
		t.Errorf("calls left after the hangup: %+v", s.Calls)
	}
}

func TestDeviceOf(t *testing.T) {
	for in, want := range map[string]string{
		"PJSIP/100-0000002a":            "PJSIP/100",
		"SIP/alice-00000001":            "SIP/alice",
		"IAX2/trunk-1234":               "IAX2/trunk",
		"Local/100@phones-00000001;1":   "Local/100@phones",
		"Local/100@phones-00000001;2":   "Local/100@phones",
		"PJSIP/my-phone-0000000b":       "PJSIP/my-phone",
		"DAHDI/1-1":                     "DAHDI/1",
		"PJSIP/trunk-provider-00000abc": "PJSIP/trunk-provider",
	} {
		if got, _ := deviceOf(in); got != want {
			t.Errorf("deviceOf(%q) = %q, want %q", in, got, want)
		}
	}
	if _, outward := deviceOf("Local/1@x-1;2"); outward {
		t.Error(";2 half counted as outward")
	}
}

// everyRemote checks that a user's every state that shows a call names
// its remote party and has its Call-ID: no lamp between two states shows
// a call it cannot say anything about.
func everyRemote(t *testing.T, tl *timeline, user string) {
	t.Helper()
	for i, s := range tl.states[user] {
		for _, c := range s.Calls {
			if (c.Remote.Number == "" && c.Remote.URI == "") || c.CallID == "" {
				if s.IDsPending {
					continue // held back from watchers until its ids come
				}
				t.Errorf("%s, state %d: a call without its party or Call-ID: %+v", user, i, c)
			}
		}
	}
}

func TestParkedCallAndItsSpace(t *testing.T) {
	// 100 calls 101, 101 parks 100 (blind transfer to 700: space 701),
	// 102 retrieves it by dialing 701. Asterisk sends the space's device
	// state and the caller's entry into the lot on different topics: in
	// the recording the entry comes first; on the real Asterisk about
	// one park in four the space's INUSE does.
	recorded := readFixture(t, "testdata/park-and-retrieve.jsonl")
	spaceFirst := slices.Clone(recorded)
	entered := slices.IndexFunc(spaceFirst, func(l []byte) bool {
		return bytes.Contains(l, []byte(`"ChannelEnteredBridge"`)) && bytes.Contains(l, []byte(`"bridge_class":"parking"`))
	})
	taken := slices.IndexFunc(spaceFirst, func(l []byte) bool { return bytes.Contains(l, []byte(`"park:701@parkedcalls","state":"INUSE"`)) })
	if entered < 0 || taken < entered {
		t.Fatalf("the recording changed: entry at %d, space taken at %d", entered, taken)
	}
	line := spaceFirst[taken]
	spaceFirst = slices.Insert(slices.Delete(spaceFirst, taken, taken+1), entered, line)
	for name, lines := range map[string][][]byte{"entry first": recorded, "space first": spaceFirst} {
		t.Run(name, func(t *testing.T) { parkedCallAndItsSpace(t, lines) })
	}
}

func parkedCallAndItsSpace(t *testing.T, lines [][]byte) {
	users := map[string][]string{"100": {"PJSIP/100"}, "101": {"PJSIP/101"}, "102": {"PJSIP/102"},
		"701": {"park:701@parkedcalls"}}
	tl, b, _ := replayLines(t, users, lines)
	for _, u := range []string{"100", "101", "102"} {
		everyRemote(t, tl, u)
	}
	// While parked, 100's lamp names the space, never the phone that
	// parked it; the space's lamp names who waits there.
	var parked, after bool
	for _, s := range tl.states["100"] {
		if len(s.Calls) != 1 || s.IDsPending {
			continue
		}
		switch r := s.Calls[0].Remote; {
		case r.Number == "701" && r.Name == "Parked":
			parked = true
		case parked && r.Number == "101":
			t.Errorf("100's lamp named 101 again after it was parked: %+v", r)
		case parked && r.Number == "102":
			after = true
		}
	}
	if !parked || !after {
		t.Errorf("100's lamp: parked in 701 %v, then with 102 %v; states %v", parked, after, tl.phones("100"))
	}
	slot := tl.first("701", bridge.PhoneBusy)
	if slot == nil || len(slot.Calls) != 1 || slot.Calls[0].Remote.Number != "100" || slot.Calls[0].CallID == "" {
		t.Fatalf("space 701 while taken: %+v", slot)
	}
	if s, _ := b.State("701"); len(s.Calls) != 0 || s.Phone != bridge.PhoneIdle {
		t.Errorf("space 701 after the retrieval: %v %+v", s.Phone, s.Calls)
	}
	// The retriever's lamp names the space it dialed, answered by the
	// lot, and then the caller it took.
	var with []string
	for _, s := range tl.states["102"] {
		if len(s.Calls) == 1 && s.Phone == bridge.PhoneBusy {
			if n := s.Calls[0].Remote.Number; len(with) == 0 || with[len(with)-1] != n {
				with = append(with, n)
			}
		}
	}
	if !slices.Equal(with, []string{"701", "100"}) {
		t.Errorf("102 retrieving was in a call with %v, want 701 then 100", with)
	}
}

func TestConfBridgeNamesTheConference(t *testing.T) {
	tl, _, _ := replay(t, map[string][]string{"100": {"PJSIP/100"}, "101": {"PJSIP/101"}}, "testdata/confbridge.jsonl")
	for _, u := range []string{"100", "101"} {
		everyRemote(t, tl, u)
		found := false
		for _, s := range tl.states[u] {
			if len(s.Calls) == 1 && s.Calls[0].Remote == (bridge.Party{Number: "800", Name: "Conference 800"}) {
				found = true
			}
			if len(s.Calls) == 1 && strings.HasPrefix(s.Calls[0].Remote.Number, "CBAnn") {
				t.Errorf("%s's lamp names the conference's announcer: %+v", u, s.Calls[0].Remote)
			}
		}
		if !found {
			t.Errorf("%s's lamp never said Conference 800: %v", u, tl.phones(u))
		}
	}
}

func TestPickupByCodeNamesWhoIsOnTheCall(t *testing.T) {
	// 100 calls 101; 102 dials *8101 while it rings.
	tl, _, _ := replay(t, map[string][]string{"100": {"PJSIP/100"}, "101": {"PJSIP/101"}, "102": {"PJSIP/102"}},
		"testdata/pickup-by-code.jsonl")
	for _, u := range []string{"100", "101", "102"} {
		everyRemote(t, tl, u)
	}
	if s := tl.first("102", bridge.PhoneBusy); s == nil || s.Calls[0].Remote.Number != "100" {
		t.Errorf("the picker: %+v", s)
	}
	if got := tl.phones("101"); !slices.Equal(got, []bridge.PhoneState{bridge.PhoneIdle, bridge.PhoneRinging, bridge.PhoneIdle}) {
		t.Errorf("the callee: %v", got)
	}
}

func TestPickupByReplacesNamesTheCaller(t *testing.T) {
	tl, _, _ := replay(t, map[string][]string{"100": {"PJSIP/100"}, "101": {"PJSIP/101"}, "102": {"PJSIP/102"}},
		"testdata/pickup-by-replaces.jsonl")
	// The picker's channel is answered before the bridge says with whom:
	// until then (ids pending) it shows nobody; then the caller.
	for _, s := range tl.states["102"] {
		if s.Phone == bridge.PhoneBusy && !s.IDsPending && s.Calls[0].Remote.Number != "100" {
			t.Errorf("the picker was shown in a call with %+v", s.Calls[0].Remote)
		}
	}
	if s := tl.first("102", bridge.PhoneBusy); s == nil {
		t.Fatal("the picker never showed the call")
	}
	if got := tl.phones("101"); !slices.Equal(got, []bridge.PhoneState{bridge.PhoneIdle, bridge.PhoneRinging, bridge.PhoneIdle}) {
		t.Errorf("the callee: %v", got)
	}
}
