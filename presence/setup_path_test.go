package presence

import (
	"net"
	"strconv"
	"testing"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// TestSetUpPathHelpers checks the helpers the SUBSCRIBE path writes into
// buffers against what they stand for: host:port as net.JoinHostPort
// writes it, the presentity URI, the Event header's package and id, and
// the Accept list.
func TestSetUpPathHelpers(t *testing.T) {
	for _, c := range []struct {
		uri, transport string
		want           string
	}{
		{"sip:100@192.0.2.7:5080", "UDP", "192.0.2.7:5080"},
		{"sip:100@192.0.2.7", "UDP", "192.0.2.7:5060"},
		{"sip:100@192.0.2.7;transport=tls", "TLS", "192.0.2.7:5061"},
		{"sip:100@[2001:db8::1]:5070", "UDP", "[2001:db8::1]:5070"},
		{"sip:100@[2001:db8::1]", "TCP", "[2001:db8::1]:5060"},
		{"sip:phone.example.com", "UDP", "phone.example.com:5060"},
	} {
		u, err := sipmsg.ParseURI(c.uri)
		if err != nil {
			t.Fatalf("%s: %v", c.uri, err)
		}
		got := string(appendURIAddr(nil, u, c.transport))
		if got != c.want {
			t.Errorf("appendURIAddr(%s, %s) = %q, want %q", c.uri, c.transport, got, c.want)
		}
		port := u.Port
		if port == 0 {
			port = map[string]int{"UDP": 5060, "TCP": 5060, "TLS": 5061}[c.transport]
		}
		if host, _, _ := net.SplitHostPort(got); net.JoinHostPort(host, strconv.Itoa(port)) != got {
			t.Errorf("appendURIAddr(%s) = %q, not as net.JoinHostPort writes it", c.uri, got)
		}
	}

	req := func(head string) *sipmsg.Request {
		r, err := sipmsg.ParseString(head + "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\r\n" +
			"From: <sip:w@h>;tag=a\r\nCall-ID: c\r\nCSeq: 1 SUBSCRIBE\r\nContent-Length: 0\r\n\r\n")
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	for _, c := range []struct{ head, want string }{
		{"SUBSCRIBE sip:100@pbx.test SIP/2.0\r\nTo: <sip:100@pbx.test>\r\n", "sip:100@pbx.test"},
		{"SUBSCRIBE sip:100@pbx.test:5080 SIP/2.0\r\nTo: <sip:100@pbx.test>\r\n", "sip:100@pbx.test:5080"},
		{"SUBSCRIBE sips:pbx.test SIP/2.0\r\nTo: <sips:200@pbx.test>\r\n", "sips:200@pbx.test"},
	} {
		if got := string(appendPresentityURI(nil, req(c.head+"Event: presence\r\n"))); got != c.want {
			t.Errorf("appendPresentityURI(%q) = %q, want %q", c.head, got, c.want)
		}
	}

	for _, c := range []struct{ v, pkg, id string }{
		{"presence", "presence", ""},
		{"Dialog", "dialog", ""},
		{"dialog;id=7", "dialog", "7"},
		{` Presence.Winfo ; foo=1; ID="x9"`, "presence.winfo", "x9"},
	} {
		if pkg, id := parseEvent(c.v); pkg != c.pkg || id != c.id {
			t.Errorf("parseEvent(%q) = %q, %q; want %q, %q", c.v, pkg, id, c.pkg, c.id)
		}
	}

	base := "SUBSCRIBE sip:100@pbx.test SIP/2.0\r\nTo: <sip:100@pbx.test>\r\nEvent: presence\r\n"
	for _, c := range []struct{ accept, want string }{
		{"Accept: application/pidf+xml\r\n", "application/pidf+xml"},
		{"Accept:  application/pidf+xml \r\n", "application/pidf+xml"},
		{"Accept: application/pidf+xml,application/xpidf+xml\r\n", "application/pidf+xml, application/xpidf+xml"},
		{"Accept: application/pidf+xml\r\nAccept: multipart/related\r\n", "application/pidf+xml, multipart/related"},
		{"", ""},
	} {
		if got := acceptList(req(base + c.accept)); got != c.want {
			t.Errorf("acceptList(%q) = %q, want %q", c.accept, got, c.want)
		}
	}
}
