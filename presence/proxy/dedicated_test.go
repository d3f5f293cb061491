package proxy

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"
)

// dedicated puts the test PBX's phones on dedicated busy-lamp lines.
func dedicated(redirect bool) envOpt {
	return func(o *Options, _ *presenceOptions) {
		o.Targets[0].Dedicated, o.Targets[0].Redirect = true, redirect
	}
}

// ack acknowledges a failure to an INVITE (RFC 3261 §17.1.1.3: same
// branch and CSeq number), as a phone does; without it the 407 comes
// again and again.
func ack(phone *peer, to string, inv phoneRequest) {
	a := inv
	a.method, a.extra, a.body = "ACK", nil, ""
	phone.sendTo(to, a.String())
}

// answer407 computes the Proxy-Authorization for a 407's first challenge.
func answer407(t *testing.T, res *sip.Response, method, uri, user, password string) string {
	t.Helper()
	h := res.GetHeader("Proxy-Authenticate")
	if h == nil {
		t.Fatalf("%s without Proxy-Authenticate", startLine(res))
	}
	chal, err := digest.ParseChallenge(h.Value())
	if err != nil {
		t.Fatal(err)
	}
	cred, err := digest.Digest(chal, digest.Options{Method: method, URI: uri, Username: user, Password: password,
		Cnonce: "0a4f113b", Count: 1})
	if err != nil {
		t.Fatal(err)
	}
	return "Proxy-Authorization: " + cred.String()
}

func TestBusyLampLineCallIsAuthenticatedAndAsserted(t *testing.T) {
	e := newEnv(t, dedicated(false))
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	inv := phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101",
		callID: "bl-1", branch: "z9hG4bKbl1", extra: []string{`P-Asserted-Identity: "Boss" <sip:999@pbx.test>`}}
	phone.sendTo(e.udp, inv.String())
	res := phone.response(sip.INVITE, 200)
	if res.StatusCode != 407 {
		t.Fatalf("a busy-lamp line's call without credentials got %s, want 407", startLine(res))
	}
	ack(phone, e.udp, inv)
	e.pbx.quiet(100*time.Millisecond, "an unauthenticated call must not reach the PBX")

	// A wrong password is refused the same way.
	bad := inv
	bad.cseq, bad.branch = 2, "z9hG4bKbl2"
	bad.extra = append(bad.extra, answer407(t, res, "INVITE", "sip:101@pbx.test", "100", "wrong"))
	phone.sendTo(e.udp, bad.String())
	if r := phone.response(sip.INVITE, 200); r.StatusCode != 407 {
		t.Fatalf("a wrong password got %s, want 407", startLine(r))
	}
	ack(phone, e.udp, bad)

	good := inv
	good.cseq, good.branch = 3, ""
	good.extra = append(good.extra, answer407(t, res, "INVITE", "sip:101@pbx.test", "100", "secret"))
	phone.sendTo(e.udp, good.String())
	got := e.pbx.request(sip.INVITE)
	if got.GetHeader("Proxy-Authorization") != nil {
		t.Error("Lamplighter's credentials went on to the PBX")
	}
	pais := got.GetHeaders("P-Asserted-Identity")
	if len(pais) != 1 || pais[0].Value() != `"Debbie" <sip:100@pbx.test>` {
		t.Fatalf("P-Asserted-Identity %v, want only Lamplighter's for Debbie", pais)
	}
	if got.Recipient.User != "101" || got.RecordRoute() == nil {
		t.Fatalf("forwarded as %s without Record-Route %v", got.Recipient.String(), got.RecordRoute())
	}
	e.pbx.sendTo(got.Source(), responseTo(got, 200, "OK", "pbx-bl"))
	if r := phone.response(sip.INVITE, 200); r.StatusCode != 200 {
		t.Fatalf("phone got %s", startLine(r))
	}
	// REGISTER on a busy-lamp line stays with Lamplighter's registrar.
	phone.sendTo(e.udp, phoneRequest{method: "REGISTER", uri: "sip:pbx.test", from: phone.addr(), user: "100",
		callID: "bl-reg", extra: []string{"Expires: 300"}}.String())
	if r := phone.response(sip.REGISTER, 200); r.StatusCode != 401 || r.GetHeader("WWW-Authenticate") == nil {
		t.Fatalf("REGISTER on a busy-lamp line got %s, want Lamplighter's own 401", startLine(r))
	}
	e.pbx.quiet(100*time.Millisecond, "a busy-lamp line's REGISTER is not the PBX's")
}

func TestBusyLampLineCallRedirectedToThePBX(t *testing.T) {
	e := newEnv(t, dedicated(true))
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	inv := phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101",
		callID: "rd-1", branch: "z9hG4bKrd1"}
	phone.sendTo(e.udp, inv.String())
	res := phone.response(sip.INVITE, 200)
	ack(phone, e.udp, inv)
	inv.cseq, inv.branch = 2, "z9hG4bKrd2"
	inv.extra = []string{answer407(t, res, "INVITE", "sip:101@pbx.test", "100", "secret")}
	phone.sendTo(e.udp, inv.String())
	res = phone.response(sip.INVITE, 200)
	want := "<sip:101@127.0.0.2:" + strconv.Itoa(e.pbx.port()) + ">"
	if c := res.GetHeader("Contact"); res.StatusCode != 302 || c == nil || !strings.Contains(c.Value(), want) {
		t.Fatalf("got %s with Contact %v, want 302 to %s", startLine(res), c, want)
	}
	e.pbx.quiet(100*time.Millisecond, "a redirected call must not reach the PBX")
}
