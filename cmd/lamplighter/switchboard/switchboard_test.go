package switchboard

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/api"
)

// readEvent reads one server-sent event (name and data) with a deadline.
func readEvent(t *testing.T, r *bufio.Reader) (string, string) {
	t.Helper()
	type ev struct{ name, data string }
	got := make(chan ev, 1)
	go func() {
		var e ev
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				got <- e
				return
			}
			line = strings.TrimRight(line, "\n")
			switch {
			case strings.HasPrefix(line, "event: "):
				e.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				e.data = strings.TrimPrefix(line, "data: ")
			case line == "" && e.name != "":
				got <- e
				return
			}
		}
	}()
	select {
	case e := <-got:
		return e.name, e.data
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return "", ""
}

func TestEventsStreamSnapshotThenUpdates(t *testing.T) {
	dir, _ := bridge.NewDirectory([]bridge.User{
		{ID: "debbie", Name: "Debbie", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "D/100"}}},
		{ID: "bob", Name: "Bob", Extensions: []string{"101"}},
	})
	b := bridge.New(dir)
	views := api.New(api.Options{Bridge: b})
	sb := New(Options{Bridge: b, View: views.View, Title: "Desk"})
	mux := http.NewServeMux()
	sb.Handle(mux)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go sb.Run(ctx)
	srv := httptest.NewServer(mux)
	defer srv.Close()

	for path, want := range map[string]string{"/": "<title>Switchboard", "/static/app.js": "EventSource", "/static/style.css": "prefers-reduced-motion"} {
		res, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		buf := new(strings.Builder)
		bufio.NewReader(res.Body).WriteTo(buf)
		res.Body.Close()
		if res.StatusCode != 200 || !strings.Contains(buf.String(), want) {
			t.Errorf("GET %s: %d, lacks %q", path, res.StatusCode, want)
		}
	}

	res, err := http.Get(srv.URL + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	r := bufio.NewReader(res.Body)
	name, data := readEvent(t, r)
	if name != "snapshot" || !strings.Contains(data, `"title":"Desk"`) || !strings.Contains(data, `"id":"bob"`) {
		t.Fatalf("first event %s %s", name, data)
	}
	b.Apply(bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: "c1", Device: "D/100", Direction: bridge.Incoming,
		State: bridge.CallEarly, Remote: bridge.Party{Number: "555"}}})
	name, data = readEvent(t, r)
	if name != "update" || !strings.Contains(data, `"id":"debbie"`) || !strings.Contains(data, `"state":"ringing"`) ||
		strings.Contains(data, `"id":"bob"`) {
		t.Errorf("update %s %s", name, data)
	}
	// A user leaving the directory is removed from the page.
	dir2, _ := bridge.NewDirectory([]bridge.User{{ID: "debbie", Name: "Debbie", Extensions: []string{"100"},
		Devices: []bridge.DeviceRef{{Source: "pbx", Device: "D/100"}}}})
	b.SetDirectory(dir2)
	for {
		name, data = readEvent(t, r)
		if strings.Contains(data, `"removed":["bob"]`) {
			break
		}
		if name != "update" {
			t.Fatalf("event %s %s", name, data)
		}
	}
}

// board starts a switchboard over a one-user bridge with opt's limits.
func board(t *testing.T, opt Options) (*bridge.Bridge, *Switchboard, string) {
	t.Helper()
	dir, _ := bridge.NewDirectory([]bridge.User{
		{ID: "debbie", Name: "Debbie", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "D/100"}}}})
	b := bridge.New(dir)
	opt.Bridge = b
	if opt.View == nil {
		opt.View = api.New(api.Options{Bridge: b}).PublicView
	}
	sb := New(opt)
	mux := http.NewServeMux()
	sb.Handle(mux)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go sb.Run(ctx)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return b, sb, srv.URL
}

// TestAnonymousViewHasNoDialogIdentifiers: the page's stream shows who
// calls, never the Call-ID and tags a pickup with Replaces needs.
func TestAnonymousViewHasNoDialogIdentifiers(t *testing.T) {
	b, _, url := board(t, Options{})
	b.Apply(bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: "c1", Device: "D/100", Direction: bridge.Incoming,
		State: bridge.CallEarly, Remote: bridge.Party{Number: "555", Name: "Caller"},
		CallID: "secret-call-id@pbx", LocalTag: "secret-local", RemoteTag: "secret-remote"}})
	res, err := http.Get(url + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	_, data := readEvent(t, bufio.NewReader(res.Body))
	if !strings.Contains(data, `"number":"555"`) {
		t.Fatalf("the call is not shown: %s", data)
	}
	for _, secret := range []string{"secret-call-id", "secret-local", "secret-remote", "call_id", "local_tag"} {
		if strings.Contains(data, secret) {
			t.Errorf("the anonymous stream carries %s: %s", secret, data)
		}
	}
}

// TestEventStreamsAreCapped: streams past the per-address cap, or the
// total, get 503; one closed makes room.
func TestEventStreamsAreCapped(t *testing.T) {
	_, sb, url := board(t, Options{MaxStreams: 3, MaxStreamsPerAddress: 2})
	open := func() *http.Response {
		t.Helper()
		res, err := http.Get(url + "/events")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { res.Body.Close() })
		return res
	}
	a, b := open(), open()
	if a.StatusCode != 200 || b.StatusCode != 200 {
		t.Fatalf("within the cap: %d %d", a.StatusCode, b.StatusCode)
	}
	if c := open(); c.StatusCode != 503 || c.Header.Get("Retry-After") == "" {
		t.Errorf("third from one address: %d, want 503 with Retry-After", c.StatusCode)
	}
	a.Body.Close()
	waitStreams(t, sb, 1)
	if c := open(); c.StatusCode != 200 {
		t.Errorf("after one closed: %d", c.StatusCode)
	}
}

func waitStreams(t *testing.T, sb *Switchboard, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for sb.Streams() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams open, want %d", sb.Streams(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestViewerWhoNeverReadsIsDropped: a stream whose reader stopped is cut
// off once a write cannot finish within the deadline, and costs nothing
// after.
func TestViewerWhoNeverReadsIsDropped(t *testing.T) {
	b, sb, url := board(t, Options{WriteTimeout: 200 * time.Millisecond, Heartbeat: time.Hour})
	conn, err := net.Dial("tcp", strings.TrimPrefix(url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.(*net.TCPConn).SetReadBuffer(4096)
	conn.Write([]byte("GET /events HTTP/1.1\r\nHost: x\r\n\r\n"))
	waitStreams(t, sb, 1)
	// Updates pile up in the socket buffers until a write blocks.
	for i := 0; sb.Streams() == 1; i++ {
		if i > 200000 {
			t.Fatal("a viewer that never reads was never dropped")
		}
		state := bridge.CallEarly
		if i%2 == 1 {
			state = bridge.CallConfirmed
		}
		b.Apply(bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: "c1", Device: "D/100", Direction: bridge.Incoming,
			State: state, Remote: bridge.Party{Number: strings.Repeat("5", 2000)}}})
		if i%100 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
}

// TestPBXDownIsShown: the stream says which PBX is down, in the snapshot
// and as soon as it changes.
func TestPBXDownIsShown(t *testing.T) {
	var down atomic.Bool
	_, _, url := board(t, Options{PBXs: func() []PBX {
		return []PBX{{Name: "asterisk", Connected: !down.Load(), Down: down.Load()}}
	}})
	res, err := http.Get(url + "/events")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	r := bufio.NewReader(res.Body)
	if _, data := readEvent(t, r); !strings.Contains(data, `"pbxs":[{"name":"asterisk","connected":true,"down":false}]`) {
		t.Errorf("snapshot: %s", data)
	}
	down.Store(true)
	if name, data := readEvent(t, r); name != "update" || !strings.Contains(data, `"name":"asterisk","connected":false,"down":true`) {
		t.Errorf("after the PBX went down: %s %s", name, data)
	}
}
