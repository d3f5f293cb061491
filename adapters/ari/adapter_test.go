package ari

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
)

// fakeAsterisk is a test double of ARI: the events websocket and the REST
// paths a resync reads, over real HTTP on loopback.
type fakeAsterisk struct {
	t         *testing.T
	srv       *httptest.Server
	mu        sync.Mutex
	up        bool
	channels  []json.RawMessage
	endpoints []map[string]any
	devices   map[string]string
	conns     chan *websocket.Conn
	puts      chan string // device state writes, "name=STATE"
	pingDown  atomic.Bool // REST ping fails while the websocket stays up
	connects  atomic.Int32
	current   *websocket.Conn
	// variables answers GET /channels/{id}/variable, by variable name
	// (any channel); varReads counts those requests.
	variables map[string]string
	varReads  atomic.Int32
}

func newFakeAsterisk(t *testing.T) *fakeAsterisk {
	f := &fakeAsterisk{t: t, up: true, devices: map[string]string{}, conns: make(chan *websocket.Conn, 10),
		puts: make(chan string, 100)}
	mux := http.NewServeMux()
	ws := websocket.Server{Handler: func(c *websocket.Conn) {
		f.mu.Lock()
		f.current = c
		f.mu.Unlock()
		f.connects.Add(1)
		select { // never block a handler: Close waits for handlers
		case f.conns <- c:
		default:
		}
		// Hold the connection until the client or the test closes it.
		buf := make([]byte, 64)
		for {
			if _, err := c.Read(buf); err != nil {
				return
			}
		}
	}}
	mux.HandleFunc("/ari/events", func(w http.ResponseWriter, r *http.Request) {
		if !f.authorised(w, r) {
			return
		}
		q := r.URL.Query()
		if q.Get("app") != "lamplighter" || q.Get("subscribeAll") != "true" {
			http.Error(w, "bad query", http.StatusBadRequest)
			return
		}
		ws.ServeHTTP(w, r)
	})
	mux.HandleFunc("/ari/channels", func(w http.ResponseWriter, r *http.Request) {
		if f.authorised(w, r) {
			f.mu.Lock()
			defer f.mu.Unlock()
			json.NewEncoder(w).Encode(append([]json.RawMessage{}, f.channels...))
		}
	})
	mux.HandleFunc("/ari/channels/", func(w http.ResponseWriter, r *http.Request) {
		if !f.authorised(w, r) {
			return
		}
		if !strings.HasSuffix(r.URL.Path, "/variable") || r.Method != http.MethodGet {
			http.NotFound(w, r)
			return
		}
		f.varReads.Add(1)
		f.mu.Lock()
		v, ok := f.variables[r.URL.Query().Get("variable")]
		f.mu.Unlock()
		if !ok {
			http.Error(w, `{"message":"Provided variable was not found"}`, http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"value": v})
	})
	mux.HandleFunc("/ari/endpoints", func(w http.ResponseWriter, r *http.Request) {
		if f.authorised(w, r) {
			f.mu.Lock()
			defer f.mu.Unlock()
			json.NewEncoder(w).Encode(append([]map[string]any{}, f.endpoints...))
		}
	})
	mux.HandleFunc("/ari/deviceStates/", func(w http.ResponseWriter, r *http.Request) {
		if !f.authorised(w, r) {
			return
		}
		name := strings.TrimPrefix(r.URL.Path, "/ari/deviceStates/")
		if r.Method == http.MethodPut {
			// ARI lets an application set Stasis: devices only.
			st := r.URL.Query().Get("deviceState")
			if !strings.HasPrefix(name, "Stasis:") || st == "" {
				http.Error(w, "not controlled by ARI", http.StatusConflict)
				return
			}
			f.mu.Lock()
			f.devices[name] = st
			f.mu.Unlock()
			f.puts <- name + "=" + st
			w.WriteHeader(http.StatusNoContent)
			return
		}
		f.mu.Lock()
		st, ok := f.devices[name]
		f.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		json.NewEncoder(w).Encode(map[string]string{"name": name, "state": st})
	})
	mux.HandleFunc("/ari/asterisk/ping", func(w http.ResponseWriter, r *http.Request) {
		if f.pingDown.Load() {
			http.Error(w, "wedged", http.StatusServiceUnavailable)
			return
		}
		if f.authorised(w, r) {
			w.Write([]byte(`{"ping":"pong"}`))
		}
	})
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeAsterisk) authorised(w http.ResponseWriter, r *http.Request) bool {
	f.mu.Lock()
	up := f.up
	f.mu.Unlock()
	if !up {
		http.Error(w, "down", http.StatusServiceUnavailable)
		return false
	}
	if u, p, ok := r.BasicAuth(); !ok || u != "lamplighter" || p != "secret" {
		http.Error(w, "unauthorised", http.StatusUnauthorized)
		return false
	}
	return true
}

func (f *fakeAsterisk) setUp(up bool) { f.mu.Lock(); f.up = up; f.mu.Unlock() }

// waitConn waits for the adapter to open the websocket.
func (f *fakeAsterisk) waitConn() *websocket.Conn {
	f.t.Helper()
	select {
	case c := <-f.conns:
		return c
	case <-time.After(10 * time.Second):
		f.t.Fatal("the adapter did not connect within 10s")
	}
	return nil
}

// send writes recorded lines to the websocket, as Asterisk did.
func (f *fakeAsterisk) send(c *websocket.Conn, lines ...[]byte) {
	f.t.Helper()
	for _, l := range lines {
		if err := websocket.Message.Send(c, string(l)); err != nil {
			f.t.Fatalf("send: %v", err)
		}
	}
}

// harness runs an adapter against the double, into a bridge.
type harness struct {
	t       *testing.T
	fake    *fakeAsterisk
	adapter *Adapter
	bridge  *bridge.Bridge
	changes chan bridge.Change
}

func newHarness(t *testing.T, fake *fakeAsterisk, tune ...func(*Adapter)) *harness {
	t.Helper()
	dir, _ := bridge.NewDirectory([]bridge.User{
		{ID: "100", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "ast", Device: "PJSIP/100"}}},
		{ID: "101", Extensions: []string{"101"}, Devices: []bridge.DeviceRef{{Source: "ast", Device: "PJSIP/101"}}},
	})
	b := bridge.New(dir)
	h := &harness{t: t, fake: fake, bridge: b, changes: make(chan bridge.Change, 1000)}
	b.Listen(func(c bridge.Change) { h.changes <- c })
	a, err := New(adapters.Connection{Name: "ast", Address: fake.srv.URL, Username: "lamplighter", Password: "secret"},
		Config{ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond, RequestTimeout: 2 * time.Second},
		func() []string { return []string{"PJSIP/100", "PJSIP/101"} }, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range tune {
		f(a)
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

// waitPhone waits until user shows phone state p.
func (h *harness) waitPhone(user string, p bridge.PhoneState) *bridge.State {
	h.t.Helper()
	if s, _ := h.bridge.State(user); s.Phone == p {
		return s
	}
	deadline := time.After(5 * time.Second)
	for {
		select {
		case c := <-h.changes:
			if c.UserID == user && c.State.Phone == p {
				return c.State
			}
		case <-deadline:
			s, _ := h.bridge.State(user)
			h.t.Fatalf("%s never showed %v (now %v)", user, p, s.Phone)
		}
	}
}

func (h *harness) waitSynchronised() {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !h.adapter.Status().Synchronised {
		if time.Now().After(deadline) {
			h.t.Fatalf("not synchronised: %+v", h.adapter.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRecordedCallOverWebsocket(t *testing.T) {
	fake := newFakeAsterisk(t)
	fake.devices["PJSIP/100"], fake.devices["PJSIP/101"] = "NOT_INUSE", "NOT_INUSE"
	h := newHarness(t, fake)
	c := fake.waitConn()
	h.waitSynchronised()
	h.waitPhone("101", bridge.PhoneIdle)
	fake.send(c, readFixture(t, "pjsip/pjsip-call.jsonl")...)
	ring := h.waitPhone("101", bridge.PhoneRinging)
	if ring.Calls[0].Remote.Number != "100" || ring.Calls[0].CallID == "" {
		t.Errorf("ringing without caller or Call-ID: %+v", ring.Calls[0])
	}
	h.waitPhone("101", bridge.PhoneBusy)
	h.waitPhone("101", bridge.PhoneIdle)
	h.waitPhone("100", bridge.PhoneIdle)
	if st := h.adapter.Status(); st.Skipped != 0 || st.Events == 0 {
		t.Errorf("status %+v", st)
	}
}

func TestDisconnectMidCallThenResync(t *testing.T) {
	fake := newFakeAsterisk(t)
	fake.devices["PJSIP/100"], fake.devices["PJSIP/101"] = "NOT_INUSE", "NOT_INUSE"
	h := newHarness(t, fake)
	c := fake.waitConn()
	h.waitSynchronised()
	// Play the call up to the answer, then the websocket drops: the
	// hangup happens while Lamplighter is away.
	lines := readFixture(t, "pjsip/pjsip-call.jsonl")
	var upTo int
	for i, l := range lines {
		if strings.Contains(string(l), `"ChannelStateChange"`) && strings.Contains(string(l), `"state":"Up"`) {
			upTo = i + 1
		}
	}
	fake.send(c, lines[:upTo]...)
	h.waitPhone("101", bridge.PhoneBusy)
	c.Close()
	// Reconnect: REST says no channels, devices idle.
	c2 := fake.waitConn()
	_ = c2
	h.waitPhone("101", bridge.PhoneIdle)
	h.waitPhone("100", bridge.PhoneIdle)
	if st := h.adapter.Status(); st.Reconnects == 0 || !st.Synchronised {
		t.Errorf("status after reconnect: %+v", st)
	}
}

func TestResyncFindsACallInProgress(t *testing.T) {
	fake := newFakeAsterisk(t)
	fake.devices["PJSIP/100"], fake.devices["PJSIP/101"] = "INUSE", "INUSE"
	// Two channels in a call, as GET /channels returns them.
	fake.channels = []json.RawMessage{
		json.RawMessage(`{"id":"a1","name":"PJSIP/100-00000001","state":"Up","protocol_id":"cid-a","caller":{"name":"Phone 100","number":"100"},"connected":{"name":"Phone 101","number":"101"},"dialplan":{"context":"phones","exten":"101","priority":1,"app_name":"Dial","app_data":"PJSIP/101"},"creationtime":"2026-11-21T05:42:49.452+0000"}`),
		json.RawMessage(`{"id":"b1","name":"PJSIP/101-00000002","state":"Up","protocol_id":"cid-b","caller":{"name":"Phone 101","number":"101"},"connected":{"name":"Phone 100","number":"100"},"dialplan":{"context":"phones","exten":"s","priority":1,"app_name":"AppDial","app_data":"(Outgoing Line)"},"creationtime":"2026-11-21T05:42:49.454+0000"}`),
	}
	h := newHarness(t, fake)
	fake.waitConn()
	s := h.waitPhone("101", bridge.PhoneBusy)
	if c := s.Calls[0]; c.Direction != bridge.Incoming || c.Remote.Number != "100" || c.CallID != "cid-b" {
		t.Errorf("101's call from the resync: %+v", c)
	}
	if s := h.waitPhone("100", bridge.PhoneBusy); s.Calls[0].Direction != bridge.Outgoing {
		t.Errorf("100's call from the resync: %+v", s.Calls[0])
	}
}

func TestUndecodableEventsAreSkippedAndCounted(t *testing.T) {
	fake := newFakeAsterisk(t)
	fake.devices["PJSIP/101"] = "NOT_INUSE"
	h := newHarness(t, fake)
	c := fake.waitConn()
	h.waitSynchronised()
	h.waitPhone("101", bridge.PhoneIdle)
	fake.send(c,
		[]byte(`not json at all`),
		[]byte(`{"type":"SomethingAsterisk30Adds","timestamp":"2026-11-21T05:42:49.452+0000"}`),
		[]byte(`{"no":"type"}`),
		[]byte(`{"type":"DeviceStateChanged","timestamp":"2026-11-21T05:42:49.452+0000","device_state":{"name":"PJSIP/101","state":"UNAVAILABLE"}}`),
	)
	h.waitPhone("101", bridge.PhoneOffline)
	if st := h.adapter.Status(); st.Skipped != 3 || !st.Connected {
		t.Errorf("status: %+v, want 3 skipped and still connected", st)
	}
}

func TestAsteriskDownAtStart(t *testing.T) {
	fake := newFakeAsterisk(t)
	fake.setUp(false)
	fake.devices["PJSIP/101"] = "UNAVAILABLE"
	h := newHarness(t, fake)
	// Run does not block and keeps trying; nothing is synchronised.
	deadline := time.Now().Add(5 * time.Second)
	for h.adapter.Status().Reconnects < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("no retries: %+v", h.adapter.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := h.adapter.Status(); st.Connected || st.Synchronised || st.LastError == "" {
		t.Errorf("status while Asterisk is down: %+v", st)
	}
	fake.setUp(true)
	fake.waitConn()
	h.waitSynchronised()
	h.waitPhone("101", bridge.PhoneOffline)
}

func TestWrongPasswordIsAnErrorNotAHang(t *testing.T) {
	fake := newFakeAsterisk(t)
	a, _ := New(adapters.Connection{Name: "ast", Address: fake.srv.URL, Username: "lamplighter", Password: "nope"},
		Config{RequestTimeout: time.Second}, func() []string { return nil }, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := a.session(ctx, bridge.SinkFunc(func(bridge.Event) {})); err == nil {
		t.Error("a refused login did not end the session with an error")
	}
}

func TestSilentAsteriskIsReconnected(t *testing.T) {
	// The websocket stays open but Asterisk stops answering REST (wedged):
	// the liveness check ends the session, and a new one resyncs.
	fake := newFakeAsterisk(t)
	h := newHarness(t, fake, func(a *Adapter) { a.pingEvery = 30 * time.Millisecond })
	fake.waitConn()
	h.waitSynchronised()
	fake.pingDown.Store(true)
	deadline := time.Now().Add(5 * time.Second)
	for h.adapter.Status().Reconnects == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("a silent Asterisk was not noticed: %+v", h.adapter.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := h.adapter.Status(); !strings.Contains(st.LastError, "stopped answering") {
		t.Errorf("last error %q", st.LastError)
	}
	fake.pingDown.Store(false)
	h.waitSynchronised()
}

func TestDNDMirroredToAStasisDevice(t *testing.T) {
	fake := newFakeAsterisk(t)
	h := newHarness(t, fake, func(a *Adapter) { a.cfg.DNDDevice = "Stasis:DND_{extension}" })
	user := bridge.User{ID: "alice", Extensions: []string{"100"}}
	waitPut := func(want string) {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case got := <-fake.puts:
				if got == want {
					return
				}
			case <-deadline:
				t.Fatalf("Asterisk was never told %s", want)
			}
		}
	}
	c := fake.waitConn()
	h.waitSynchronised()
	h.adapter.MirrorPerson(user, bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityDND}})
	waitPut("Stasis:DND_100=BUSY")

	// Asterisk restarts and forgets; after the reconnect it is told again.
	fake.mu.Lock()
	delete(fake.devices, "Stasis:DND_100")
	fake.mu.Unlock()
	c.Close()
	fake.waitConn()
	waitPut("Stasis:DND_100=BUSY")

	h.adapter.MirrorPerson(user, bridge.PersonState{Note: "back"})
	waitPut("Stasis:DND_100=NOT_INUSE")
}

func TestDNDDeviceMustBeStasis(t *testing.T) {
	for dev, ok := range map[string]bool{
		"Stasis:DND_{extension}": true, "Stasis:dnd-{user}": true,
		"Custom:DND_{extension}": false, "Stasis:DND": false,
	} {
		c := Config{DNDDevice: dev}
		if errs := c.Validate(); (len(errs) == 0) != ok {
			t.Errorf("%s: %v", dev, errs)
		}
	}
}

// TestRingingLegGetsItsTagsFromAsterisk: with no dialplan help at all, a
// phone's ringing leg gets its SIP tags read from Asterisk once it rings
// (the phone's own tag exists only after its 180), so that the ringing
// lamp carries call-id, local-tag and remote-tag for a pickup by Replaces.
func TestRingingLegGetsItsTagsFromAsterisk(t *testing.T) {
	fake := newFakeAsterisk(t)
	fake.devices["PJSIP/100"], fake.devices["PJSIP/101"] = "NOT_INUSE", "NOT_INUSE"
	fake.variables = map[string]string{"CHANNEL(pjsip,remote_tag)": "phone-101-tag", "CHANNEL(pjsip,local_tag)": "asterisk-tag"}
	h := newHarness(t, fake)
	c := fake.waitConn()
	h.waitSynchronised()
	h.waitPhone("101", bridge.PhoneIdle)
	lines := readFixture(t, "pjsip/pjsip-call.jsonl")
	fake.send(c, lines[:20]...) // up to 101's leg ringing
	h.waitPhone("101", bridge.PhoneRinging)
	deadline := time.Now().Add(5 * time.Second)
	for {
		st, _ := h.bridge.State("101")
		// Oriented for Asterisk, which answers the pickup INVITE: its
		// tag is the dialog's local tag (the Replaces to-tag).
		if len(st.Calls) == 1 && st.Calls[0].LocalTag == "asterisk-tag" && st.Calls[0].RemoteTag == "phone-101-tag" {
			if st.Phone != bridge.PhoneRinging || st.Calls[0].CallID == "" {
				t.Errorf("ringing leg: %v %+v", st.Phone, st.Calls[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the ringing leg never got its tags: %+v", st.Calls)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := fake.varReads.Load(); n != 2 {
		t.Errorf("%d variable reads, want 2 (two tags, once)", n)
	}
	// The caller's leg (the phone's own call) is never asked.
	fake.send(c, lines[20:]...)
	h.waitPhone("101", bridge.PhoneIdle)
	if n := fake.varReads.Load(); n != 2 {
		t.Errorf("%d variable reads after the call, want 2", n)
	}
}

// TestRingingLegSaysItsIDsArePending: in the recording where Asterisk
// says the device RINGS before its leg does (pjsip-call2: 100 is called),
// every ringing state the bridge shows is marked as waiting for the leg's
// dialog ids until the adapter has read the tags; the first one that is
// not carries Call-ID and both tags (what a watcher's held NOTIFY then
// shows). When Asterisk has no tags, the wait ends as the read does.
func TestRingingLegSaysItsIDsArePending(t *testing.T) {
	for _, found := range []bool{true, false} {
		fake := newFakeAsterisk(t)
		fake.devices["PJSIP/100"], fake.devices["PJSIP/101"] = "NOT_INUSE", "NOT_INUSE"
		if found {
			fake.variables = map[string]string{"CHANNEL(pjsip,remote_tag)": "phone-100-tag", "CHANNEL(pjsip,local_tag)": "asterisk-tag"}
		}
		h := newHarness(t, fake)
		c := fake.waitConn()
		h.waitSynchronised()
		h.waitPhone("100", bridge.PhoneIdle)
		lines := readFixture(t, "pjsip/pjsip-call2.jsonl")
		up := slices.IndexFunc(lines, func(l []byte) bool { return bytes.Contains(l, []byte(`"state":"Up"`)) })
		fake.send(c, lines[:up]...) // until the call is answered
		var pending int
		deadline := time.After(5 * time.Second)
	wait:
		for {
			select {
			case ch := <-h.changes:
				if ch.UserID != "100" || ch.State == nil || ch.State.Phone != bridge.PhoneRinging {
					continue
				}
				if ch.State.IDsPending {
					pending++
					continue
				}
				if pending == 0 {
					t.Errorf("found=%v: rang without saying its ids were coming", found)
				}
				call, ok := ch.State.Primary()
				switch {
				case !ok:
					t.Errorf("found=%v: ringing with no call", found)
				case found && (call.CallID == "" || call.LocalTag != "asterisk-tag" || call.RemoteTag != "phone-100-tag"):
					t.Errorf("found=%v: first ringing state without pending ids: %+v", found, call)
				case !found && (call.CallID == "" || call.RemoteTag != ""):
					t.Errorf("found=%v: %+v", found, call)
				}
				break wait
			case <-deadline:
				t.Fatalf("found=%v: no ringing state without pending ids (%d with)", found, pending)
			}
		}
	}
}
