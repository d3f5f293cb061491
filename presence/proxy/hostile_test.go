package proxy

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestMalformedRequestsDoNotTakeTheProxyDown: requests that sipgo reads
// but that lack what forwarding needs (From, To, Call-ID, a usable URI)
// get an answer or nothing, never a crash; the proxy forwards the next
// good request as before.
func TestMalformedRequestsDoNotTakeTheProxyDown(t *testing.T) {
	m := &countingMetrics{answered: map[int]int{}}
	m2 := m
	e := newEnv(t, func(o *Options, _ *presenceOptions) { o.Metrics = m })
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	good := func(callID string) string {
		return phoneRequest{method: "MESSAGE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101", callID: callID}.String()
	}
	drop := func(msg, header string) string {
		var out []string
		for _, line := range strings.Split(msg, "\r\n") {
			if !strings.HasPrefix(line, header+":") {
				out = append(out, line)
			}
		}
		return strings.Join(out, "\r\n")
	}
	base := phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101", callID: "bad"}
	cases := []string{
		drop(base.String(), "From"),
		drop(base.String(), "To"),
		drop(base.String(), "Call-ID"),
		drop(base.String(), "Max-Forwards"),
		strings.Replace(base.String(), "INVITE sip:101@pbx.test", "INVITE tel:+15551234", 1),
		strings.Replace(base.String(), "Contact:", "Route: <sip:ll-AAAA@127.0.0.1;lr>\r\nContact:", 1),
		strings.Replace(base.String(), "Contact:", "Route: <garbage\r\nContact:", 1),
		drop(strings.Replace(base.String(), "INVITE", "BYE", 2), "From"),
		drop(strings.Replace(base.String(), "INVITE", "ACK", 2), "To"),
		strings.Replace(base.String(), "CSeq: 1 INVITE", "CSeq: 1 CANCEL", 1),
	}
	for i, c := range cases {
		phone.sendTo(e.udp, strings.Replace(c, "branch=", fmt.Sprintf("branch=z9hG4bKbad%d", i), 1))
	}
	// Whatever came of those, the proxy still forwards.
	phone.sendTo(e.udp, good("after"))
	deadline := time.After(10 * time.Second)
	for {
		select {
		case msg := <-e.pbx.in:
			if r, ok := msg.(*sip.Request); ok && r.CallID() != nil && r.CallID().Value() == "after" {
				// sipgo serves requests concurrently: the refusals may
				// still be on their way.
				for wait := time.Now().Add(5 * time.Second); m2.count(400) < 4 && time.Now().Before(wait); {
					time.Sleep(10 * time.Millisecond)
				}
				if n := m2.count(400); n < 4 {
					t.Fatalf("%d requests answered 400, want the four without From, To or Call-ID, or with a tel: URI", n)
				}
				if n := m2.count(500); n != 0 {
					t.Fatalf("%d requests ended in a recovered fault (500): they must be refused for what they are", n)
				}
				return
			}
		case <-deadline:
			t.Fatal("the proxy stopped forwarding after malformed requests")
		}
	}
}

// countingMetrics counts the proxy's answers by code.
type countingMetrics struct {
	mu       sync.Mutex
	answered map[int]int
}

func (c *countingMetrics) Forwarded(string) {}

func (c *countingMetrics) Answered(_ string, code int) {
	c.mu.Lock()
	c.answered[code]++
	c.mu.Unlock()
}

func (c *countingMetrics) count(code int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.answered[code]
}
