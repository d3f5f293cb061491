package presence

import (
	"strings"
	"testing"
	"time"
)

// TestContactHostNamesTheSharedAddress: with Options.ContactHost (a
// cluster's virtual IP) the Contact of the 200 and of NOTIFYs names it,
// while Via stays this node's own address.
func TestContactHostNamesTheSharedAddress(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.ContactHost = "blf.example.com" })
	p := newPhone(t, "UDP")
	res, _ := p.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600})
	if res.StatusCode != 200 || !strings.Contains(header(res, "Contact"), "sip:blf.example.com:") {
		t.Fatalf("200: %d, Contact %q", res.StatusCode, header(res, "Contact"))
	}
	n := p.nextNotify(2 * time.Second)
	if !strings.Contains(header(n, "Contact"), "sip:blf.example.com:") || !strings.Contains(header(n, "Via"), "127.0.0.1:") {
		t.Errorf("NOTIFY: Contact %q, Via %q", header(n, "Contact"), header(n, "Via"))
	}
}
