package switchboard

import (
	"bufio"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
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
