package esltest

import (
	"bufio"
	"bytes"
	"net/textproto"
	"net/url"
	"strconv"
	"testing"
)

// TestAppendEvent: a frame's Content-Length covers exactly its event, and
// values come back whole once URL-decoded, as the adapter reads them.
func TestAppendEvent(t *testing.T) {
	frame := AppendEvent(nil, 42, "Event-Name", "CHANNEL_CALLSTATE",
		"Caller-Caller-ID-Name", "Bob & Alice: 100%", "Channel-Presence-ID", "1000@pbx.example.com")
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(frame)))
	outer, err := r.ReadMIMEHeader()
	if err != nil {
		t.Fatal(err)
	}
	if outer.Get("Content-Type") != "text/event-plain" {
		t.Errorf("Content-Type %q", outer.Get("Content-Type"))
	}
	n, _ := strconv.Atoi(outer.Get("Content-Length"))
	_, body, _ := bytes.Cut(frame, []byte("\n\n"))
	if n != len(body) {
		t.Fatalf("Content-Length %d, body %d bytes", n, len(body))
	}
	ev, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(body))).ReadMIMEHeader()
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"Event-Name": "CHANNEL_CALLSTATE", "Event-Sequence": "42",
		"Caller-Caller-ID-Name": "Bob & Alice: 100%", "Channel-Presence-ID": "1000@pbx.example.com"} {
		got, err := url.PathUnescape(ev.Get(name))
		if err != nil || got != want {
			t.Errorf("%s = %q (%v), want %q", name, got, err, want)
		}
	}
}
