package presence

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestReusedBuffersAnswerEachRequestItsOwn floods the workers with
// challenges (whose request and buffers are reused) from one socket while
// another sends unreadable requests (also reused) and a trusted phone
// subscribes (whose request is not): every response must carry the
// Call-ID, branch and CSeq of the one request it answers, so that no
// answer is written from a buffer another request has taken meanwhile.
func TestReusedBuffersAnswerEachRequestItsOwn(t *testing.T) {
	env := newEnv(t, func(o *Options) {
		o.Trusted = []netip.Prefix{mustPrefix("127.0.0.3/32")}
		o.MaxSubscriptionsPerSource = 1 << 30
	})
	dial := func(ip string) *net.UDPConn {
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadBuffer(4 << 20)
		t.Cleanup(func() { c.Close() })
		return c
	}
	server, err := net.ResolveUDPAddr("udp", env.udp)
	if err != nil {
		t.Fatal(err)
	}
	const n = 1500
	request := func(c *net.UDPConn, kind string, i int, contentLength string) []byte {
		return fmt.Appendf(nil, "SUBSCRIBE sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-%s-%d\r\n"+
			"Max-Forwards: 70\r\nFrom: <sip:w@127.0.0.1>;tag=%s%d\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: %s-%d\r\n"+
			"CSeq: %d SUBSCRIBE\r\nContact: <sip:w@%s>\r\nEvent: dialog\r\nExpires: 600\r\nContent-Length: %s\r\n\r\n",
			c.LocalAddr(), kind, i, kind, i, kind, i, 1000+i, c.LocalAddr(), contentLength)
	}
	senders := []struct {
		conn          *net.UDPConn
		kind, length  string
		code          string
		challengeSeen bool
	}{
		{dial("127.0.0.1"), "flood", "0", "401", true},
		{dial("127.0.0.2"), "broken", "99", "400", false},
		{dial("127.0.0.3"), "phone", "0", "200", false},
	}
	var wg sync.WaitGroup
	errs := make(chan string, 3*n)
	for _, s := range senders {
		wg.Add(2)
		go func() { // the answers: each must be its request's
			defer wg.Done()
			buf := make([]byte, 65536)
			seen := 0
			for seen < n {
				_ = s.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				k, err := s.conn.Read(buf)
				if err != nil {
					errs <- fmt.Sprintf("%s: %d of %d answers: %v", s.kind, seen, n, err)
					return
				}
				msg := buf[:k]
				if bytes.HasPrefix(msg, []byte("NOTIFY ")) {
					continue // the phone's first NOTIFYs: not what is checked here
				}
				seen++
				var i int
				if _, err := fmt.Sscanf(string(msg[bytes.Index(msg, []byte("Call-ID: "))+9:]), s.kind+"-%d", &i); err != nil {
					errs <- fmt.Sprintf("%s: no Call-ID of ours in\n%s", s.kind, msg)
					continue
				}
				want := []string{fmt.Sprintf("branch=z9hG4bK-%s-%d", s.kind, i),
					fmt.Sprintf("CSeq: %d SUBSCRIBE", 1000+i), fmt.Sprintf("tag=%s%d", s.kind, i)}
				switch {
				case bytes.HasPrefix(msg, []byte("SIP/2.0 503 ")):
					// Shed while the queue was full: also an answer of its own.
				case !bytes.HasPrefix(msg, []byte("SIP/2.0 "+s.code+" ")):
					errs <- fmt.Sprintf("%s-%d: not %s:\n%s", s.kind, i, s.code, msg)
					continue
				case s.challengeSeen:
					want = append(want, "WWW-Authenticate: Digest")
				}
				for _, w := range want {
					if !bytes.Contains(msg, []byte(w)) {
						errs <- fmt.Sprintf("%s-%d: answer without %q:\n%s", s.kind, i, w, msg)
						break
					}
				}
			}
		}()
		go func() {
			defer wg.Done()
			for i := range n {
				if _, err := s.conn.WriteToUDP(request(s.conn, s.kind, i, s.length), server); err != nil {
					errs <- err.Error()
					return
				}
				if i%50 == 49 {
					time.Sleep(time.Millisecond) // the kernel's socket buffers, not the server, are not the test
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	var all []string
	for e := range errs {
		all = append(all, e)
	}
	if len(all) > 0 {
		t.Fatalf("%d wrong answers, the first:\n%s", len(all), strings.Join(all[:min(3, len(all))], "\n"))
	}
}
