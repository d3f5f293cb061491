package presence

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// TestAdmissionIsOneForEveryTransport: the same requests get the same
// treatment over UDP and over TCP (admit.go): one that cannot be read is
// answered 400 from its bytes; a SUBSCRIBE with no credentials from an
// untrusted address is challenged at once (before the handler's own
// checks: an unknown Event too); and the per-address limit holds on a
// stream as on datagrams: of 100 OPTIONS in a burst, what is left of the
// bucket's 20 and a few refills are answered, the rest dropped.
func TestAdmissionIsOneForEveryTransport(t *testing.T) {
	env := newEnv(t, func(o *Options) { o.RequestsPerAddress, o.RequestBurst = 5, 20 })
	type sender func(msg string) (first string, answered int)
	udp := func(msg string) (string, int) {
		c, err := net.Dial("udp", env.udp)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 65536)
		n, err := c.Read(buf) // read as text: a response to a damaged request is one no SIP parser takes
		if err != nil {
			return "", 0
		}
		code, _, _ := strings.Cut(strings.TrimPrefix(string(buf[:n]), "SIP/2.0 "), " ")
		return code, 1
	}
	tcp := func(msg string) (string, int) {
		s := dialStream(t, env.tcp, false)
		if _, err := s.conn.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		m, err := s.readMessage(2 * time.Second)
		if err != nil {
			return "", 0
		}
		code, _, _ := strings.Cut(strings.TrimPrefix(m, "SIP/2.0 "), " ")
		return code, 1
	}
	req := func(transport, method, extra string) string {
		return fmt.Sprintf("%s sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/%s 127.0.0.1:5999;branch=z9hG4bK%d\r\n"+
			"Max-Forwards: 70\r\nFrom: <sip:w@127.0.0.1>;tag=f1\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: adm-%d\r\n"+
			"CSeq: 1 %s\r\nContact: <sip:w@127.0.0.1:5999>\r\n%sContent-Length: 0\r\n\r\n",
			method, transport, time.Now().UnixNano(), time.Now().UnixNano(), method, extra)
	}
	for _, tc := range []struct {
		name string
		send sender
		tr   string
	}{{"UDP", udp, "UDP"}, {"TCP", tcp, "TCP"}} {
		t.Run(tc.name, func(t *testing.T) {
			if code, _ := tc.send(strings.Replace(req(tc.tr, "SUBSCRIBE", "Event: dialog\r\n"), "CSeq: 1 SUBSCRIBE", "CSeq: x SUBSCRIBE", 1)); code != "400" {
				t.Errorf("an unreadable CSeq: %q, want 400", code)
			}
			if code, _ := tc.send(req(tc.tr, "SUBSCRIBE", "Event: dialog\r\nExpires: 600\r\n")); code != "401" {
				t.Errorf("a SUBSCRIBE without credentials: %q, want 401", code)
			}
			if code, _ := tc.send(req(tc.tr, "SUBSCRIBE", "Event: no-such-package\r\nExpires: 600\r\n")); code != "401" {
				t.Errorf("an unknown Event without credentials: %q, want 401 first", code)
			}
		})
	}

	// The per-address limit, on one TCP connection.
	s := dialStream(t, env.tcp, false)
	var burst strings.Builder
	for range 100 {
		burst.WriteString(s.options("0"))
	}
	if _, err := s.conn.Write([]byte(burst.String())); err != nil {
		t.Fatal(err)
	}
	answered := 0
	for {
		if _, err := s.readMessage(2 * time.Second); err != nil {
			break
		}
		answered++
	}
	// The six requests above took tokens from the same address's
	// bucket, which refills at 5 a second.
	if answered < 14 || answered > 40 {
		t.Errorf("%d of 100 OPTIONS on one connection answered, want what is left of the burst of 20 and a few refills", answered)
	}
}
