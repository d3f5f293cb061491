package esl

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/adapters/esl/esltest"
	"github.com/lamplighter/lamplighter/bridge"
)

// The users of the recordings: 1000 by its presence id, 1001 by the user
// part alone, 1002 by sofia profile and user (the three ways a device can
// be named).
var recordedUsers = map[string]string{"1000": "1000@127.0.0.1", "1001": "1001", "1002": "sofia/internal/1002"}

func recordedDirectory(t testing.TB) (*bridge.Directory, []string) {
	var users []bridge.User
	var devs []string
	for id, dev := range recordedUsers {
		users = append(users, bridge.User{ID: id, Extensions: []string{id},
			Devices: []bridge.DeviceRef{{Source: "fs", Device: dev}}})
		devs = append(devs, dev)
	}
	dir, err := bridge.NewDirectory(users)
	if err != nil {
		t.Fatal(err)
	}
	return dir, devs
}

// harness runs an adapter against the fake, into a bridge, and records
// every change.
type harness struct {
	t       *testing.T
	fake    *fakeFreeSWITCH
	adapter *Adapter
	bridge  *bridge.Bridge
	changes chan bridge.Change
	seen    map[string][]*bridge.State
}

func newHarness(t *testing.T, fake *fakeFreeSWITCH, addr, password string, tune ...func(*Config)) *harness {
	t.Helper()
	// As at the start of the recordings: 1001 registered with the
	// REGISTER it later ends (Call-ID 112d97b8bb9cdb96).
	fake.SetRegistrations([]byte(strings.Replace(string(apiBody(t, "show-registrations.esl-raw.txt")),
		"db962486549b235f", "112d97b8bb9cdb96", 1)))
	dir, devs := recordedDirectory(t)
	b := bridge.New(dir)
	h := &harness{t: t, fake: fake, bridge: b, changes: make(chan bridge.Change, 10000), seen: map[string][]*bridge.State{}}
	b.Listen(func(c bridge.Change) { h.changes <- c })
	cfg := Config{ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond,
		CommandTimeout: time.Second, PingInterval: 100 * time.Millisecond, HeartbeatTimeout: 5 * time.Second}
	for _, f := range tune {
		f(&cfg)
	}
	a, err := New(adapters.Connection{Name: "fs", Address: addr, Password: password}, cfg,
		func() []string { return devs }, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.adapter = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, b) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("adapter did not stop")
		}
	})
	return h
}

// waitFor waits until user's state satisfies ok, recording every state
// seen on the way.
func (h *harness) waitFor(user, what string, ok func(*bridge.State) bool) *bridge.State {
	h.t.Helper()
	deadline := time.After(5 * time.Second)
	recheck := time.NewTicker(10 * time.Millisecond) // for conditions on more than the state
	defer recheck.Stop()
	for {
		if s, _ := h.bridge.State(user); ok(s) {
			h.drain()
			return s
		}
		select {
		case c := <-h.changes:
			if c.State != nil {
				h.seen[c.UserID] = append(h.seen[c.UserID], c.State)
				if c.UserID == user && ok(c.State) {
					return c.State
				}
			}
		case <-recheck.C:
		case <-deadline:
			s, _ := h.bridge.State(user)
			h.t.Fatalf("%s never %s (now %v, %+v)", user, what, s.Phone, s.Calls)
		}
	}
}

func (h *harness) drain() {
	for {
		select {
		case c := <-h.changes:
			if c.State != nil {
				h.seen[c.UserID] = append(h.seen[c.UserID], c.State)
			}
		default:
			return
		}
	}
}

func (h *harness) waitPhone(user string, p bridge.PhoneState) *bridge.State {
	h.t.Helper()
	return h.waitFor(user, "showed "+p.String(), func(s *bridge.State) bool { return s.Phone == p })
}

// phones is the sequence of distinct phone states user went through.
func (h *harness) phones(user string) []bridge.PhoneState {
	h.drain()
	var out []bridge.PhoneState
	for _, s := range h.seen[user] {
		if len(out) == 0 || out[len(out)-1] != s.Phone {
			out = append(out, s.Phone)
		}
	}
	return out
}

func (h *harness) waitSynchronised(after int32) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := h.adapter.Status()
		if st.Synchronised && int32(st.Reconnects) >= after {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("not synchronised (after %d reconnects): %+v", after, st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRecordedCallStepByStep(t *testing.T) {
	fake := newFakeFreeSWITCH(t)
	h := newHarness(t, fake, fake.addr(), "ClueCon")
	conn := fake.waitLogin()
	h.waitSynchronised(0)
	// Registered at the resync: all three idle.
	for _, u := range []string{"1000", "1001", "1002"} {
		h.waitPhone(u, bridge.PhoneIdle)
	}
	h.seen = map[string][]*bridge.State{}
	evs := events(t, "esl-call-plain.txt")
	fake.send(conn, evs...)
	h.waitFor("1000", "settled", func(*bridge.State) bool { return h.adapter.Status().Events >= uint64(len(evs)) })

	// 1001's restart (unregister, register) comes first; eslgo may hand
	// the two over in either order, and the end is the same: registered.
	got := h.phones("1001")
	if i := slices.Index(got, bridge.PhoneRinging); i < 0 || !slices.Equal(got[i:],
		[]bridge.PhoneState{bridge.PhoneRinging, bridge.PhoneBusy, bridge.PhoneIdle}) {
		t.Errorf("callee 1001: %v, want ringing, busy, idle", got)
	}
	if got, want := h.phones("1000"), []bridge.PhoneState{bridge.PhoneDialing, bridge.PhoneBusy, bridge.PhoneHeld,
		bridge.PhoneBusy, bridge.PhoneIdle}; !slices.Equal(got, want) {
		t.Errorf("caller 1000: %v, want %v", got, want)
	}
	ring := firstState(h.seen["1001"], bridge.PhoneRinging)
	if c := ring.Calls[0]; c.Direction != bridge.Incoming || c.Remote.Number != "1000" || c.Remote.Name != "Extension 1000" ||
		c.ID != "097a2f00-f725-4be3-9e99-448227e0a35b" {
		t.Errorf("ringing: %+v", c)
	}
	dial := lastState(h.seen["1000"], bridge.PhoneDialing)
	// The caller's own tag is the remote one: FreeSWITCH answers any
	// INVITE with Replaces.
	if c := dial.Calls[0]; c.Direction != bridge.Outgoing || c.Remote.Number != "1001" || c.CallID != "a107d32baf48fb56" ||
		c.RemoteTag != "16d7b796b6769b42" {
		t.Errorf("dialing: %+v", c)
	}
	busy := lastState(h.seen["1001"], bridge.PhoneBusy)
	if c := busy.Calls[0]; c.CallID != "deee3036-6014-1240-cc8d-f6b91c3a5360" || c.Remote.Number != "1000" || c.Answered.IsZero() {
		t.Errorf("callee in call: %+v", c)
	}
	for _, u := range []string{"1000", "1001"} {
		if s, _ := h.bridge.State(u); len(s.Calls) != 0 || s.Phone != bridge.PhoneIdle {
			t.Errorf("%s after the hangup: %v %+v", u, s.Phone, s.Calls)
		}
	}
}

func TestRecordedLoopbackOriginate(t *testing.T) {
	fake := newFakeFreeSWITCH(t)
	h := newHarness(t, fake, fake.addr(), "ClueCon")
	conn := fake.waitLogin()
	h.waitSynchronised(0)
	h.waitPhone("1000", bridge.PhoneIdle)
	fake.send(conn, events(t, "esl-originate-loopback-plain.txt")...)
	ring := h.waitPhone("1000", bridge.PhoneRinging)
	if len(ring.Calls) != 1 || ring.Calls[0].Remote.Number != "9999" {
		t.Errorf("ringing from the loopback: %+v", ring.Calls)
	}
	h.waitPhone("1000", bridge.PhoneBusy)
	h.waitPhone("1000", bridge.PhoneIdle)
	if got, want := h.phones("1000"), []bridge.PhoneState{bridge.PhoneIdle, bridge.PhoneRinging, bridge.PhoneBusy,
		bridge.PhoneIdle}; !slices.Equal(got, want) {
		t.Errorf("1000: %v, want %v (the loopback legs are not a phone)", got, want)
	}
}

func TestResyncFindsCallsInProgress(t *testing.T) {
	fake := newFakeFreeSWITCH(t)
	fake.SetChannels(apiBody(t, "show-channels.esl-raw.txt"))
	h := newHarness(t, fake, fake.addr(), "ClueCon")
	h.waitSynchronised(0)
	s := h.waitPhone("1001", bridge.PhoneBusy)
	if s.Calls[0].Remote.Number != "1000" || s.Calls[0].Direction != bridge.Incoming {
		t.Errorf("1001 at resync: %+v", s.Calls[0])
	}
	s = h.waitPhone("1000", bridge.PhoneBusy)
	if s.Calls[0].Remote.Number != "1001" || s.Calls[0].Direction != bridge.Outgoing {
		t.Errorf("1000 at resync: %+v", s.Calls[0])
	}
}

func TestResyncReadsEachLegsSIPIds(t *testing.T) {
	// `show channels` has no SIP Call-ID or tags: the adapter reads them
	// per leg (uuid_dump), so that a call found at (re)connect can be
	// picked up and its lamp names its ids at once (a leg gone by the
	// time it is asked about is skipped). FreeSWITCH's own tag
	// of a leg is the local tag: the From tag of the leg it sent to 1001
	// (outbound), the To tag of the one 1000 started (inbound).
	fake := newFakeFreeSWITCH(t)
	fake.SetChannels(apiBody(t, "show-channels.esl-raw.txt"))
	fake.SetDump("097a2f00-f725-4be3-9e99-448227e0a35b", []byte(`{"Call-Direction":"outbound",`+
		`"variable_sip_call_id":"leg-1001","variable_sip_from_tag":"fs-tag-b","variable_sip_to_tag":"phone-1001"}`))
	// A variable of several values is an array in FreeSWITCH's JSON.
	fake.SetDump("27567d1f-055d-4266-8175-3fa5c93e1a58", []byte(`{"Call-Direction":"inbound","variable_sip_call_id":"leg-1000",`+
		`"variable_sip_from_tag":"phone-1000","variable_sip_to_tag":"fs-tag-a","variable_codecs":["PCMU","PCMA"]}`))
	h := newHarness(t, fake, fake.addr(), "ClueCon")
	h.waitSynchronised(0)
	s := h.waitPhone("1001", bridge.PhoneBusy)
	if c := s.Calls[0]; c.CallID != "leg-1001" || c.LocalTag != "fs-tag-b" || c.RemoteTag != "phone-1001" {
		t.Errorf("1001's call at resync: call-id %q, tags %q/%q", c.CallID, c.LocalTag, c.RemoteTag)
	}
	s = h.waitPhone("1000", bridge.PhoneBusy)
	if c := s.Calls[0]; c.CallID != "leg-1000" || c.LocalTag != "fs-tag-a" || c.RemoteTag != "phone-1000" {
		t.Errorf("1000's call at resync: call-id %q, tags %q/%q", c.CallID, c.LocalTag, c.RemoteTag)
	}
}

func TestDroppedSocketMidCallResyncs(t *testing.T) {
	fake := newFakeFreeSWITCH(t)
	h := newHarness(t, fake, fake.addr(), "ClueCon")
	conn := fake.waitLogin()
	h.waitSynchronised(0)
	evs := events(t, "esl-call-plain.txt")
	// Up to the answer, then the socket drops.
	cut := slices.IndexFunc(evs, func(f frame) bool { return f.ev.seq() == 601 })
	fake.send(conn, evs[:cut+1]...)
	h.waitPhone("1001", bridge.PhoneBusy)
	// While it is down the call ends: FreeSWITCH has no channels.
	fake.SetChannels([]byte(`{"row_count":0}`))
	conn.Close()
	fake.waitLogin()
	h.waitSynchronised(1)
	h.waitPhone("1001", bridge.PhoneIdle)
	h.waitPhone("1000", bridge.PhoneIdle)
}

func TestHeldCallFoundAtResync(t *testing.T) {
	fake := newFakeFreeSWITCH(t)
	fake.SetChannels(readJSONFixture(t, "show-channels-held.json"))
	h := newHarness(t, fake, fake.addr(), "ClueCon")
	h.waitSynchronised(0)
	h.waitPhone("1000", bridge.PhoneHeld)
}

func readJSONFixture(t *testing.T, name string) []byte {
	b, err := os.ReadFile(filepath.Join(fixtures, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Faults on the wire: each must lead to a reconnect and a resync.
func TestBrokenStreamsReconnect(t *testing.T) {
	for name, fault := range map[string]func(*fakeFreeSWITCH, *esltest.Conn){
		// A frame that says more than it carries; the connection stays
		// open, so the reader waits for bytes that never come.
		"truncated frame": func(f *fakeFreeSWITCH, c *esltest.Conn) {
			c.Write([]byte("Content-Length: 4000\nContent-Type: text/event-plain\n\nEvent-Name: CHANNEL_CALLSTATE\n"))
		},
		// eslgo's reader stops at a content type it does not know.
		"unknown content type": func(f *fakeFreeSWITCH, c *esltest.Conn) {
			c.Write([]byte("Content-Type: text/rude-remark\nContent-Length: 5\n\nhello"))
		},
		// FreeSWITCH wedged: the socket is open and nothing answers.
		"silent peer": func(f *fakeFreeSWITCH, c *esltest.Conn) { f.SetSilent(true) },
	} {
		t.Run(name, func(t *testing.T) {
			fake := newFakeFreeSWITCH(t)
			h := newHarness(t, fake, fake.addr(), "ClueCon")
			conn := fake.waitLogin()
			h.waitSynchronised(0)
			evs := events(t, "esl-call-plain.txt")
			cut := slices.IndexFunc(evs, func(f frame) bool { return f.ev.seq() == 586 }) // 1001 rings
			fake.send(conn, evs[:cut+1]...)
			h.waitPhone("1001", bridge.PhoneRinging)

			fault(fake, conn)
			// Meanwhile the call is answered; the resync must show it.
			fake.SetChannels(apiBody(t, "show-channels.esl-raw.txt"))
			deadline := time.Now().Add(5 * time.Second)
			for h.adapter.Status().Reconnects == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("the fault was not noticed: %+v", h.adapter.Status())
				}
				time.Sleep(5 * time.Millisecond)
			}
			fake.SetSilent(false)
			fake.waitLogin()
			h.waitSynchronised(1)
			s := h.waitPhone("1001", bridge.PhoneBusy)
			if len(s.Calls) != 1 {
				t.Errorf("calls after the resync: %+v", s.Calls)
			}
		})
	}
}

func TestFreeSWITCHDownAtStart(t *testing.T) {
	// Nothing listens yet: the adapter keeps trying without blocking.
	fake := newFakeFreeSWITCH(t)
	addr := fake.addr()
	fake.CloseListener()
	h := newHarness(t, fake, addr, "ClueCon")
	deadline := time.Now().Add(5 * time.Second)
	for h.adapter.Status().Reconnects < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("no retries: %+v", h.adapter.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := h.adapter.Status(); st.Synchronised || st.Connected || st.LastError == "" {
		t.Errorf("status while down: %+v", st)
	}
	// FreeSWITCH comes up on that address.
	fake2 := newFakeFreeSWITCHOn(t, addr)
	fake2.waitLogin()
	h.waitSynchronised(2)
}

func TestWrongPasswordIsAnError(t *testing.T) {
	fake := newFakeFreeSWITCH(t)
	h := newHarness(t, fake, fake.addr(), "wrong")
	deadline := time.Now().Add(5 * time.Second)
	for h.adapter.Status().Reconnects == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no error for a wrong password: %+v", h.adapter.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := h.adapter.Status(); !strings.Contains(st.LastError, "log in") || st.Synchronised {
		t.Errorf("status: %+v", st)
	}
}

func firstState(states []*bridge.State, p bridge.PhoneState) *bridge.State {
	for _, s := range states {
		if s.Phone == p && len(s.Calls) > 0 {
			return s
		}
	}
	return &bridge.State{Calls: []bridge.Call{{}}}
}

func lastState(states []*bridge.State, p bridge.PhoneState) *bridge.State {
	for i := len(states) - 1; i >= 0; i-- {
		if states[i].Phone == p && len(states[i].Calls) > 0 {
			return states[i]
		}
	}
	return &bridge.State{Calls: []bridge.Call{{}}}
}

// TestLongOutageShowsDownAndRecoversWithinASecond: FreeSWITCH dies mid-call
// and stays away: after down_after its devices are unavailable and the call
// no longer shows; when it answers again, however long it was away, the
// lamps are right within about a second (the default reconnect_max).
func TestLongOutageShowsDownAndRecoversWithinASecond(t *testing.T) {
	fake := newFakeFreeSWITCH(t)
	addr := fake.addr()
	h := newHarness(t, fake, addr, "ClueCon", func(c *Config) {
		c.ReconnectMin, c.ReconnectMax = 0, 0 // the defaults
		c.DownAfter = 300 * time.Millisecond
		c.Defaults()
	})
	conn := fake.waitLogin()
	h.waitSynchronised(0)
	evs := events(t, "esl-call-plain.txt")
	cut := slices.IndexFunc(evs, func(f frame) bool { return f.ev.seq() == 601 })
	fake.send(conn, evs[:cut+1]...)
	h.waitPhone("1001", bridge.PhoneBusy)
	// FreeSWITCH goes away altogether.
	fake.CloseListener()
	conn.Close()
	h.waitPhone("1001", bridge.PhoneOffline)
	if st := h.adapter.Status(); !st.Down {
		t.Errorf("status while down: %+v", st)
	}
	// Long enough for the old backoff to have grown far past a second.
	time.Sleep(3 * time.Second)
	fake2 := newFakeFreeSWITCHOn(t, addr)
	fake2.SetChannels([]byte(`{"row_count":0}`))
	back := time.Now()
	fake2.waitLogin()
	h.waitPhone("1001", bridge.PhoneIdle)
	if took := time.Since(back); took > 2500*time.Millisecond {
		t.Errorf("lamps right %v after FreeSWITCH answered again, want about a second at most", took)
	}
	if st := h.adapter.Status(); st.Down {
		t.Errorf("still down once back: %+v", st)
	}
}

// TestSubscribesToProgress: the adapter asks for the progress events, the
// only ones that carry a ringing callee leg's SIP Call-ID and tags.
func TestSubscribesToProgress(t *testing.T) {
	fake := newFakeFreeSWITCH(t)
	h := newHarness(t, fake, fake.addr(), "ClueCon")
	fake.waitLogin()
	h.waitSynchronised(0)
	got := fake.Subscribed()
	for _, want := range []string{"plain", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_CALLSTATE"} {
		if !slices.Contains(got, want) {
			t.Errorf("event subscription %v lacks %s", got, want)
		}
	}
}
