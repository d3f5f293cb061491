package proxy

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence"
)

// register takes a phone through a REGISTER that the PBX challenges and
// then accepts, and returns the Path the PBX was given.
func register(t *testing.T, e *env, phone *peer, user string) string {
	t.Helper()
	return registerAs(t, e, phone, user, phone.addr())
}

// registerAs is register with the phone's Contact at contactAddr (a
// phone behind NAT registers its private address).
func registerAs(t *testing.T, e *env, phone *peer, user, contactAddr string) string {
	t.Helper()
	callID := "reg-" + user + "-" + phone.addr()
	phone.sendTo(e.udp, phoneRequest{method: "REGISTER", uri: "sip:pbx.test", from: phone.addr(), user: user,
		callID: callID, contact: contactAddr, extra: []string{"Expires: 300"}}.String())
	got := e.pbx.request(sip.REGISTER)
	vias := got.GetHeaders("Via")
	if len(vias) != 2 {
		t.Fatalf("PBX got %d Vias, want ours and the phone's:\n%s", len(vias), got)
	}
	if b, _ := vias[0].(*sip.ViaHeader).Params.Get("branch"); !strings.HasPrefix(b, branchPrefix) {
		t.Errorf("top Via is not ours: %s", vias[0].Value())
	}
	if rp, _ := vias[1].(*sip.ViaHeader).Params.Get("rport"); rp != strings.Split(phone.addr(), ":")[1] {
		t.Errorf("phone's Via has rport=%q, want its port: %s", rp, vias[1].Value())
	}
	if mf := got.MaxForwards(); mf == nil || mf.Val() != 69 {
		t.Errorf("Max-Forwards %v, want 69", got.MaxForwards())
	}
	path := got.GetHeader("Path")
	if path == nil || !strings.Contains(path.Value(), tokenPrefix) || !strings.Contains(path.Value(), ";lr") {
		t.Fatalf("REGISTER reached the PBX without our Path:\n%s", got)
	}
	// The PBX challenges; the challenge reaches the phone untouched.
	e.pbx.sendTo(got.Source(), responseTo(got, 401, "Unauthorized", "pbx-reg",
		`WWW-Authenticate: Digest realm="pbx.test", nonce="abc", algorithm=MD5`))
	res := phone.response(sip.REGISTER, 200)
	if res.StatusCode != 401 || res.GetHeader("WWW-Authenticate") == nil {
		t.Fatalf("phone got %s, want the PBX's 401 with its challenge", res.String()[:40])
	}
	if n := len(res.GetHeaders("Via")); n != 1 {
		t.Fatalf("the 401 reached the phone with %d Vias, want its own only", n)
	}
	auth := `Authorization: Digest username="` + user + `", realm="pbx.test", nonce="abc", uri="sip:pbx.test", response="0123456789abcdef0123456789abcdef"`
	phone.sendTo(e.udp, phoneRequest{method: "REGISTER", uri: "sip:pbx.test", from: phone.addr(), user: user,
		callID: callID, contact: contactAddr, cseq: 2, extra: []string{"Expires: 300", auth}}.String())
	got = e.pbx.request(sip.REGISTER)
	if a := got.GetHeader("Authorization"); a == nil || !strings.Contains(a.Value(), `response="0123456789abcdef0123456789abcdef"`) {
		t.Fatalf("the phone's credentials did not reach the PBX unchanged:\n%s", got)
	}
	contact := "Contact: <sip:" + user + "@" + contactAddr + ">;expires=300"
	e.pbx.sendTo(got.Source(), responseTo(got, 200, "OK", "pbx-reg", contact))
	if res := phone.response(sip.REGISTER, 200); res.StatusCode != 200 {
		t.Fatalf("phone got %s, want 200", res.String()[:40])
	}
	return got.GetHeader("Path").Value()
}

func TestRegisterPassesThroughWithPathAndTrustsItsFlow(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	register(t, e, phone, "100")
	if n := e.px.Bindings(); n != 1 {
		t.Fatalf("proxy holds %d bindings, want 1", n)
	}
	// The registered phone subscribes to a colleague's lamp with no
	// second password: its flow stands for user 100.
	phone.sendTo(e.udp, phoneRequest{method: "SUBSCRIBE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "sub-1", extra: []string{"Event: dialog", "Accept: application/dialog-info+xml", "Expires: 600"}}.String())
	if res := phone.response(sip.SUBSCRIBE, 200); res.StatusCode != 200 {
		t.Fatalf("registered phone's SUBSCRIBE got %s, want 200", res.String()[:40])
	}
	if n := phone.request(sip.NOTIFY); !strings.Contains(string(n.Body()), "dialog-info") {
		t.Fatalf("NOTIFY without a dialog-info body:\n%s", n)
	}
	// The same user from another address is challenged (by Lamplighter:
	// a presence SUBSCRIBE is never forwarded).
	other := listenPeer(t, "127.0.0.1:0")
	other.sendTo(e.udp, phoneRequest{method: "SUBSCRIBE", uri: "sip:101@pbx.test", from: other.addr(), user: "100",
		toUser: "101", callID: "sub-2", extra: []string{"Event: dialog", "Expires: 600"}}.String())
	if res := other.response(sip.SUBSCRIBE, 200); res.StatusCode != 401 {
		t.Fatalf("SUBSCRIBE from an unregistered flow got %s, want 401", res.String()[:40])
	}
	// Another user on the registered flow is not that user either.
	phone.sendTo(e.udp, phoneRequest{method: "SUBSCRIBE", uri: "sip:100@pbx.test", from: phone.addr(), user: "101",
		toUser: "100", callID: "sub-3", extra: []string{"Event: dialog", "Expires: 600"}}.String())
	if res := phone.response(sip.SUBSCRIBE, 200); res.StatusCode != 401 {
		t.Fatalf("SUBSCRIBE as another user on the flow got %s, want 401", res.String()[:40])
	}
	e.pbx.quiet(200*time.Millisecond, "presence SUBSCRIBEs are served here, never forwarded")
}

func TestRequireDigestIgnoresFlows(t *testing.T) {
	e := newEnv(t, func(o *Options, _ *presenceOptions) { o.RequireDigest = true })
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	register(t, e, phone, "100")
	phone.sendTo(e.udp, phoneRequest{method: "SUBSCRIBE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "sub-1", extra: []string{"Event: dialog", "Expires: 600"}}.String())
	if res := phone.response(sip.SUBSCRIBE, 200); res.StatusCode != 401 {
		t.Fatalf("with require_digest a registered flow's SUBSCRIBE got %s, want 401", res.String()[:40])
	}
}

func TestIncomingCallFollowsPathAndDialogFollowsRecordRoute(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	path := register(t, e, phone, "100")
	route := strings.TrimSpace(path)

	// The PBX calls the phone at its contact, routed by the Path.
	inv := phoneRequest{method: "INVITE", uri: "sip:100@10.9.9.9:5060", from: e.pbx.addr(), user: "200",
		toUser: "100", callID: "in-1", extra: []string{"Route: " + route}}
	e.pbx.sendTo(e.udp, inv.String())
	got := phone.request(sip.INVITE)
	if got.Route() != nil {
		t.Errorf("our Route was not taken off: %s", got.Route().Value())
	}
	if got.Recipient.Host != "10.9.9.9" {
		t.Errorf("Request-URI changed to %s", got.Recipient.String())
	}
	rr := got.GetHeaders("Record-Route")
	if len(rr) != 1 || !strings.Contains(rr[0].Value(), tokenPrefix) {
		t.Fatalf("INVITE reached the phone without our Record-Route: %v", rr)
	}
	if res := e.pbx.response(sip.INVITE, 100); res.StatusCode != 100 {
		t.Fatalf("PBX got %s first, want 100 Trying", res.String()[:40])
	}
	phone.sendTo(got.Source(), responseTo(got, 180, "Ringing", "ph-1"))
	if res := e.pbx.response(sip.INVITE, 101); res.StatusCode != 180 {
		t.Fatalf("PBX got %s, want 180", res.String()[:40])
	}
	phone.sendTo(got.Source(), responseTo(got, 200, "OK", "ph-1", "Contact: <sip:100@"+phone.addr()+">"))
	ok := e.pbx.response(sip.INVITE, 200)
	if ok.StatusCode != 200 || len(ok.GetHeaders("Via")) != 1 {
		t.Fatalf("PBX got %s with %d Vias, want 200 with its own", ok.String()[:40], len(ok.GetHeaders("Via")))
	}
	// The PBX's ACK and the phone's BYE follow the Record-Route.
	ack := phoneRequest{method: "ACK", uri: "sip:100@" + phone.addr(), from: e.pbx.addr(), user: "200", toUser: "100",
		callID: "in-1", toTag: "ph-1", extra: []string{"Route: " + rr[0].Value()}}
	e.pbx.sendTo(e.udp, ack.String())
	if a := phone.request(sip.ACK); a.CallID().Value() != "in-1" {
		t.Fatalf("ACK for the wrong call: %s", a.CallID().Value())
	}
	bye := phoneRequest{method: "BYE", uri: "sip:200@" + e.pbx.addr(), from: phone.addr(), user: "100", toUser: "200",
		callID: "in-1", cseq: 5, extra: []string{"Route: " + rr[0].Value()}}
	phone.sendTo(e.udp, bye.String())
	b := e.pbx.request(sip.BYE)
	if b.Route() != nil {
		t.Errorf("BYE still carries our Route: %s", b.Route().Value())
	}
	e.pbx.sendTo(b.Source(), responseTo(b, 200, "OK", ""))
	if res := phone.response(sip.BYE, 200); res.StatusCode != 200 {
		t.Fatalf("phone's BYE got %s", res.String()[:40])
	}
}

func TestCancelBeforeAnswer(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	inv := phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101",
		callID: "c-1", branch: "z9hG4bKcancel1"}
	phone.sendTo(e.udp, inv.String())
	if res := phone.response(sip.INVITE, 100); res.StatusCode != 100 {
		t.Fatalf("phone got %s, want 100 Trying at once", res.String()[:40])
	}
	got := e.pbx.request(sip.INVITE)
	if rr := got.RecordRoute(); rr == nil || !strings.Contains(rr.Address.User, tokenPrefix) {
		t.Errorf("INVITE to the PBX without our Record-Route")
	}
	e.pbx.sendTo(got.Source(), responseTo(got, 180, "Ringing", "pbx-1"))
	if res := phone.response(sip.INVITE, 101); res.StatusCode != 180 {
		t.Fatalf("phone got %s, want 180", res.String()[:40])
	}
	cancel := inv
	cancel.method = "CANCEL"
	phone.sendTo(e.udp, cancel.String())
	if res := phone.response(sip.CANCEL, 200); res.StatusCode != 200 {
		t.Fatalf("CANCEL got %s, want 200", res.String()[:40])
	}
	c := e.pbx.request(sip.CANCEL)
	ib, _ := got.Via().Params.Get("branch")
	cb, _ := c.Via().Params.Get("branch")
	if ib != cb || c.CSeq().SeqNo != got.CSeq().SeqNo {
		t.Fatalf("CANCEL does not match the forwarded INVITE: branch %s vs %s", cb, ib)
	}
	// The INVITE ends with what the PBX answers (RFC 3261 §16.10).
	e.pbx.sendTo(c.Source(), responseTo(c, 200, "OK", ""))
	e.pbx.sendTo(got.Source(), responseTo(got, 487, "Request Terminated", "pbx-1"))
	if res := phone.response(sip.INVITE, 200); res.StatusCode != 487 {
		t.Fatalf("INVITE ended with %s, want the PBX's 487", res.String()[:40])
	}
	if a := e.pbx.request(sip.ACK); a.CSeq().SeqNo != got.CSeq().SeqNo {
		t.Fatalf("ACK for the 487 has CSeq %d", a.CSeq().SeqNo)
	}
}

func TestAnswerThatCrossesTheCancelReachesTheCaller(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	inv := phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101",
		callID: "x-1", branch: "z9hG4bKcross1"}
	phone.sendTo(e.udp, inv.String())
	got := e.pbx.request(sip.INVITE)
	e.pbx.sendTo(got.Source(), responseTo(got, 180, "Ringing", "pbx-x"))
	phone.response(sip.INVITE, 101)
	// The caller gives up just as the callee answers: the PBX gets the
	// CANCEL after its 200 has left, and says so.
	cancel := inv
	cancel.method = "CANCEL"
	phone.sendTo(e.udp, cancel.String())
	if res := phone.response(sip.CANCEL, 200); res.StatusCode != 200 {
		t.Fatalf("CANCEL got %s", res.String()[:40])
	}
	c := e.pbx.request(sip.CANCEL)
	e.pbx.sendTo(got.Source(), responseTo(got, 200, "OK", "pbx-x", "Contact: <sip:101@"+e.pbx.addr()+">"))
	e.pbx.sendTo(c.Source(), responseTo(c, 481, "Call/Transaction Does Not Exist", ""))
	if res := phone.response(sip.INVITE, 200); res.StatusCode != 200 {
		t.Fatalf("the caller got %s, want the callee's 200 (it can then ACK and BYE)", res.String()[:40])
	}
}

func TestChallengeForCallPassesThrough(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	inv := phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101",
		callID: "ch-1", body: "v=0\r\n"}
	phone.sendTo(e.udp, inv.String())
	got := e.pbx.request(sip.INVITE)
	e.pbx.sendTo(got.Source(), responseTo(got, 407, "Proxy Authentication Required", "pbx-2",
		`Proxy-Authenticate: Digest realm="pbx.test", nonce="n1"`))
	res := phone.response(sip.INVITE, 200)
	if res.StatusCode != 407 || res.GetHeader("Proxy-Authenticate") == nil {
		t.Fatalf("phone got %s, want the PBX's 407", res.String()[:40])
	}
	if a := e.pbx.request(sip.ACK); a.CSeq().SeqNo != got.CSeq().SeqNo {
		t.Fatal("the 407 was not acknowledged toward the PBX")
	}
	inv.cseq = 2
	inv.branch = ""
	inv.extra = []string{`Proxy-Authorization: Digest username="100", realm="pbx.test", nonce="n1", uri="sip:101@pbx.test", response="feed"`}
	phone.sendTo(e.udp, inv.String())
	got = e.pbx.request(sip.INVITE)
	if pa := got.GetHeader("Proxy-Authorization"); pa == nil || !strings.Contains(pa.Value(), `response="feed"`) {
		t.Fatalf("Proxy-Authorization did not pass unchanged:\n%s", got)
	}
	if string(got.Body()) != "v=0\r\n" {
		t.Fatalf("body changed: %q", got.Body())
	}
}

func TestMaxForwardsExhausted(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	phone.sendTo(e.udp, phoneRequest{method: "MESSAGE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "mf-1", maxFwd: -1, extra: []string{"Max-Forwards: 0"}}.String())
	if res := phone.response(sip.MESSAGE, 200); res.StatusCode != 483 {
		t.Fatalf("got %s, want 483 Too Many Hops", res.String()[:40])
	}
	e.pbx.quiet(200*time.Millisecond, "a request out of hops must not be forwarded")
}

func TestPBXDownGets503AndPresenceGoesOn(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	e.pbx.conn.Close() // the PBX is gone
	e.waitHealth(false)
	phone := listenPeer(t, "127.0.0.1:0")
	phone.sendTo(e.udp, phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "down-1"}.String())
	res := phone.response(sip.INVITE, 200)
	if res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("INVITE with the PBX down got %s, want 503 with Retry-After", res.String()[:40])
	}
	// Presence is served as ever (digest: this phone never registered).
	phone.sendTo(e.udp, phoneRequest{method: "SUBSCRIBE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "down-2", extra: []string{"Event: dialog", "Expires: 600"}}.String())
	if res := phone.response(sip.SUBSCRIBE, 200); res.StatusCode != 401 {
		t.Fatalf("SUBSCRIBE with the PBX down got %s, want Lamplighter's own 401", res.String()[:40])
	}
}

func TestUnservedPackageGoesToPBX(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	phone.sendTo(e.udp, phoneRequest{method: "SUBSCRIBE", uri: "sip:100@pbx.test", from: phone.addr(), user: "100",
		callID: "mwi-1", extra: []string{"Event: message-summary", "Expires: 600"}}.String())
	got := e.pbx.request(sip.SUBSCRIBE)
	if ev := got.GetHeader("Event"); ev == nil || ev.Value() != "message-summary" {
		t.Fatalf("PBX got a SUBSCRIBE with Event %v", ev)
	}
	e.pbx.sendTo(got.Source(), responseTo(got, 200, "OK", "mwi", "Expires: 600", "Contact: <sip:pbx@"+e.pbx.addr()+">"))
	if res := phone.response(sip.SUBSCRIBE, 200); res.StatusCode != 200 {
		t.Fatalf("phone got %s", res.String()[:40])
	}
	// The PBX's NOTIFY in that dialog follows the Record-Route back.
	rr := got.RecordRoute()
	n := phoneRequest{method: "NOTIFY", uri: "sip:100@" + phone.addr(), from: e.pbx.addr(), user: "100", toUser: "100",
		callID: "mwi-1", toTag: "ft-mwi-1", extra: []string{"Route: " + rr.Value(), "Event: message-summary",
			"Subscription-State: active;expires=600", "Content-Type: application/simple-message-summary"},
		body: "Messages-Waiting: yes\r\n"}
	e.pbx.sendTo(e.udp, n.String())
	got2 := phone.request(sip.NOTIFY)
	if !strings.Contains(string(got2.Body()), "Messages-Waiting: yes") {
		t.Fatalf("NOTIFY body lost: %q", got2.Body())
	}
	phone.sendTo(got2.Source(), responseTo(got2, 200, "OK", ""))
	if res := e.pbx.response(sip.NOTIFY, 200); res.StatusCode != 200 {
		t.Fatalf("PBX got %s for its NOTIFY", res.String()[:40])
	}
}

func TestLoopDetected(t *testing.T) {
	// The "PBX" is Lamplighter itself: the request comes back to it.
	port := freeUDPPort(t, "127.0.0.3")
	self := "127.0.0.3:" + strconv.Itoa(port)
	e := newEnv(t, func(o *Options, so *presenceOptions) {
		o.Targets = []Target{{Name: "pbx", Host: "127.0.0.3", Port: port}}
		// The pings loop too (and end in 482, an answer): a slow
		// machine must not find this PBX down before they do.
		o.HealthInterval = time.Minute
		so.Listen = []presence.Listener{{Transport: "udp", Address: self}, {Transport: "tcp", Address: "127.0.0.3:0"}}
	})
	// Until the proxy has started a request is refused 503; a busy
	// machine got there first.
	select {
	case <-e.px.started:
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy did not start within 10 s")
	}
	phone := listenPeer(t, "127.0.0.1:0")
	phone.sendTo(e.udp, phoneRequest{method: "MESSAGE", uri: "sip:101@" + self, from: phone.addr(), user: "100",
		toUser: "101", callID: "loop-1"}.String())
	if res := phone.response(sip.MESSAGE, 200); res.StatusCode != 482 {
		t.Fatalf("a request that loops got %s, want 482 Loop Detected", res.String()[:40])
	}
}

func TestTimerCCancelsARingingCall(t *testing.T) {
	e := newEnv(t, func(o *Options, _ *presenceOptions) { o.TimerC = 300 * time.Millisecond })
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	phone.sendTo(e.udp, phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "tc-1"}.String())
	got := e.pbx.request(sip.INVITE)
	e.pbx.sendTo(got.Source(), responseTo(got, 180, "Ringing", "pbx-tc"))
	if res := phone.response(sip.INVITE, 200); res.StatusCode != 408 {
		t.Fatalf("a call ringing past Timer C got %s, want 408", res.String()[:40])
	}
	if c := e.pbx.request(sip.CANCEL); c.CallID().Value() != "tc-1" {
		t.Fatal("no CANCEL for the call that rang too long")
	}
}

func TestForwardingBoundGets503(t *testing.T) {
	e := newEnv(t, func(o *Options, _ *presenceOptions) { o.MaxTransactions = 1 })
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	phone.sendTo(e.udp, phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "b-1"}.String())
	first := e.pbx.request(sip.INVITE)
	e.pbx.sendTo(first.Source(), responseTo(first, 180, "Ringing", "pbx-b"))
	phone.sendTo(e.udp, phoneRequest{method: "MESSAGE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "b-2"}.String())
	if res := phone.response(sip.MESSAGE, 200); res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("past max_forwarding got %s, want 503 with Retry-After", res.String()[:40])
	}
	// The first call ends; room again.
	e.pbx.sendTo(first.Source(), responseTo(first, 486, "Busy Here", "pbx-b"))
	if res := phone.response(sip.INVITE, 200); res.StatusCode != 486 {
		t.Fatalf("first call ended with %s, want 486", res.String()[:40])
	}
	e.pbx.request(sip.ACK)
	deadline := time.Now().Add(5 * time.Second)
	for e.px.InFlight() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	phone.sendTo(e.udp, phoneRequest{method: "MESSAGE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "b-3"}.String())
	if m := e.pbx.request(sip.MESSAGE); m.CallID().Value() != "b-3" {
		t.Fatalf("PBX got %s", m.CallID().Value())
	}
}

func TestLargeMessageOverTCP(t *testing.T) {
	pbx := listenTCPPeer(t, "127.0.0.2:0")
	e := newEnv(t, func(o *Options, so *presenceOptions) {
		o.Targets = []Target{{Name: "pbx", Host: "127.0.0.2", Port: pbx.port(), Transport: "tcp"}}
		so.MaxBodyBytes = 256 << 10
	})
	e.waitHealth(true)
	c, err := net.Dial("tcp", e.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := strings.Repeat("x", 100<<10) // more than any UDP datagram holds
	req := phoneRequest{method: "MESSAGE", uri: "sip:101@pbx.test", from: c.LocalAddr().String(), user: "100",
		toUser: "101", callID: "big-1", extra: []string{"Content-Type: text/plain"}, body: body}.String()
	req = strings.Replace(req, "SIP/2.0/UDP", "SIP/2.0/TCP", 1)
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	var got tcpMsg
	select {
	case got = <-pbx.in:
	case <-time.After(5 * time.Second):
		t.Fatal("the large MESSAGE never reached the PBX")
	}
	r := got.msg.(*sip.Request)
	if len(r.Body()) != len(body) || r.Via().Transport != "TCP" {
		t.Fatalf("PBX got a %d-byte body over %s, want %d over TCP", len(r.Body()), r.Via().Transport, len(body))
	}
	got.conn.Write([]byte(responseTo(r, 202, "Accepted", "pbx-big")))
	res, err := newFramer(c).next()
	if err != nil {
		t.Fatal(err)
	}
	if code := res.(*sip.Response).StatusCode; code != 202 {
		t.Fatalf("phone got %d, want the PBX's 202", code)
	}
}

func TestPhoneOverTCPRegistersSubscribesAndIsCalledOnItsConnection(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	c, err := net.Dial("tcp", e.tcp)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	in := newFramer(c)
	me := c.LocalAddr().String()
	send := func(r phoneRequest) {
		t.Helper()
		s := strings.Replace(r.String(), "SIP/2.0/UDP", "SIP/2.0/TCP", 1)
		if _, err := c.Write([]byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	next := func() sip.Message {
		t.Helper()
		m, err := in.next()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	send(phoneRequest{method: "REGISTER", uri: "sip:pbx.test", from: me, user: "100", callID: "treg", extra: []string{"Expires: 300"}})
	reg := e.pbx.request(sip.REGISTER)
	if p := reg.GetHeader("Path"); p == nil || !strings.Contains(p.Value(), tokenPrefix) {
		t.Fatalf("no Path on the REGISTER from a TCP phone:\n%s", reg)
	}
	e.pbx.sendTo(reg.Source(), responseTo(reg, 200, "OK", "r", "Contact: <sip:100@"+me+">;expires=300"))
	if res, ok := next().(*sip.Response); !ok || res.StatusCode != 200 {
		t.Fatalf("phone over TCP did not get the PBX's 200")
	}
	// Presence on the same connection needs no password.
	send(phoneRequest{method: "SUBSCRIBE", uri: "sip:101@pbx.test", from: me, user: "100", toUser: "101",
		callID: "tsub", extra: []string{"Event: dialog", "Expires: 600"}})
	if res, ok := next().(*sip.Response); !ok || res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE on the registered TCP connection was not accepted")
	}
	if n, ok := next().(*sip.Request); !ok || n.Method != sip.NOTIFY {
		t.Fatal("no NOTIFY on the connection")
	} else if _, err := c.Write([]byte(responseTo(n, 200, "OK", ""))); err != nil {
		t.Fatal(err)
	}
	// The PBX's call for the phone arrives on that connection.
	e.pbx.sendTo(e.udp, phoneRequest{method: "INVITE", uri: "sip:100@" + me, from: e.pbx.addr(), user: "200", toUser: "100",
		callID: "tin", extra: []string{"Route: " + reg.GetHeader("Path").Value()}}.String())
	m := next()
	inv, ok := m.(*sip.Request)
	if !ok || inv.Method != sip.INVITE || inv.Via().Transport != "TCP" {
		t.Fatalf("phone got %s on its connection, want the INVITE over TCP", startLine(m))
	}
	if rr := inv.GetHeaders("Record-Route"); len(rr) != 2 {
		t.Errorf("an INVITE from UDP to TCP has %d Record-Routes, want 2 (RFC 5658)", len(rr))
	}
	c.Write([]byte(responseTo(inv, 486, "Busy Here", "busy")))
	if res := e.pbx.response(sip.INVITE, 200); res.StatusCode != 486 {
		t.Fatalf("PBX got %s", res.String()[:40])
	}
}

func TestWatcherRemovedFromTheDirectoryLosesItsFlowSubscription(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	register(t, e, phone, "100")
	phone.sendTo(e.udp, phoneRequest{method: "SUBSCRIBE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "rm-1", extra: []string{"Event: dialog", "Expires: 600"}}.String())
	if res := phone.response(sip.SUBSCRIBE, 200); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE got %s", res.String()[:40])
	}
	first := phone.request(sip.NOTIFY)
	phone.sendTo(first.Source(), responseTo(first, 200, "OK", ""))
	// A reload without debbie (extension 100): her phone still holds a
	// PBX registration, but she is no longer a user here.
	dir, err := bridge.NewDirectory([]bridge.User{
		{ID: "bob", Name: "Bob", Extensions: []string{"101"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/101"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	e.bridge.SetDirectory(dir)
	if n := e.srv.SetCredentials(nil); n != 1 {
		t.Fatalf("%d subscriptions ended, want the removed watcher's one", n)
	}
	last := phone.request(sip.NOTIFY)
	if ss := last.GetHeader("Subscription-State"); ss == nil || !strings.Contains(ss.Value(), "terminated;reason=rejected") {
		t.Fatalf("final NOTIFY has Subscription-State %v, want terminated;reason=rejected", ss)
	}
}

func TestPBXWithoutPathReachesAPhoneBehindNATByItsContact(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	// The phone registers its private address; only the flow reaches it.
	registerAs(t, e, phone, "100", "10.9.9.9:5062")
	e.pbx.sendTo(e.udp, phoneRequest{method: "OPTIONS", uri: "sip:100@10.9.9.9:5062", from: e.pbx.addr(), user: "pbx",
		toUser: "100", callID: "q-1"}.String())
	got := phone.request(sip.OPTIONS)
	if got.Recipient.Host != "10.9.9.9" {
		t.Fatalf("Request-URI changed to %s", got.Recipient.String())
	}
	phone.sendTo(got.Source(), responseTo(got, 200, "OK", "q"))
	if res := e.pbx.response(sip.OPTIONS, 200); res.StatusCode != 200 {
		t.Fatalf("PBX's qualify got %s", res.String()[:40])
	}
}

func TestACallToAClosedTCPFlowGets430AndItsQualifyNothing(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	c, err := net.Dial("tcp", e.tcp)
	if err != nil {
		t.Fatal(err)
	}
	me := c.LocalAddr().String()
	r := phoneRequest{method: "REGISTER", uri: "sip:pbx.test", from: me, user: "100", callID: "creg", extra: []string{"Expires: 300"}}
	c.Write([]byte(strings.Replace(r.String(), "SIP/2.0/UDP", "SIP/2.0/TCP", 1)))
	reg := e.pbx.request(sip.REGISTER)
	e.pbx.sendTo(reg.Source(), responseTo(reg, 200, "OK", "r", "Contact: <sip:100@"+me+">;expires=300"))
	if m, err := newFramer(c).next(); err != nil || m.(*sip.Response).StatusCode != 200 {
		t.Fatalf("REGISTER over TCP: %v", err)
	}
	c.Close() // the phone's connection is gone
	// The PBX calls it by the Path until Lamplighter has seen the close.
	deadline := time.Now().Add(5 * time.Second)
	for n := 0; ; n++ {
		e.pbx.sendTo(e.udp, phoneRequest{method: "INVITE", uri: "sip:100@" + me, from: e.pbx.addr(), user: "200", toUser: "100",
			callID: "closed-" + strconv.Itoa(n), extra: []string{"Route: " + reg.GetHeader("Path").Value()}}.String())
		res := e.pbx.response(sip.INVITE, 200)
		if res.StatusCode == 430 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a call to a closed flow got %s, want 430 Flow Failed", res.String()[:40])
		}
	}
	// The PBX's qualify OPTIONS for it gets no answer at all: Asterisk
	// counts any answer, 430 too, as the phone being reachable. (The
	// INVITEs' answers, sent again until an ACK the test never sends, are
	// let by.)
	e.pbx.sendTo(e.udp, phoneRequest{method: "OPTIONS", uri: "sip:100@" + me, from: e.pbx.addr(), user: "200", toUser: "100",
		callID: "qualify-closed", extra: []string{"Route: " + reg.GetHeader("Path").Value()}}.String())
	for quiet := time.After(1500 * time.Millisecond); ; {
		select {
		case m := <-e.pbx.in:
			if r, ok := m.(*sip.Response); !ok || r.CSeq().MethodName != sip.INVITE {
				t.Fatalf("a qualify of a closed flow gets no answer, yet the PBX got %s", startLine(m))
			}
			continue
		case <-quiet:
		}
		break
	}
}

func TestCallsAndRegistrationsAreObserved(t *testing.T) {
	obs := newCalls()
	e := newEnv(t, func(o *Options, _ *presenceOptions) { o.Calls = obs })
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	register(t, e, phone, "100")
	if r, ok := obs.next(t).(regs); !ok || r != (regs{"pbx", "100", 1}) {
		t.Fatalf("registration observed as %+v", r)
	}
	inv := phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101",
		callID: "obs-1", body: "v=0\r\na=sendrecv\r\n"}
	phone.sendTo(e.udp, inv.String())
	got := e.pbx.request(sip.INVITE)
	if ev := obs.call(t); ev.Step != CallTrying || !ev.Outgoing || ev.User != "100" || ev.Target != "pbx" ||
		ev.RemoteUser != "101" || ev.LocalTag != "ft-obs-1" {
		t.Fatalf("trying: %+v", ev)
	}
	e.pbx.sendTo(got.Source(), responseTo(got, 180, "Ringing", "pbx-o"))
	if ev := obs.call(t); ev.Step != CallEarly || ev.RemoteTag != "pbx-o" {
		t.Fatalf("ringing: %+v", ev)
	}
	e.pbx.sendTo(got.Source(), responseTo(got, 200, "OK", "pbx-o"))
	if ev := obs.call(t); ev.Step != CallConfirmed {
		t.Fatalf("answered: %+v", ev)
	}
	phone.response(sip.INVITE, 200)
	rr := got.RecordRoute().Value()
	// A re-INVITE that holds, then a BYE.
	reinv := phoneRequest{method: "INVITE", uri: "sip:101@" + e.pbx.addr(), from: phone.addr(), user: "100", toUser: "101",
		callID: "obs-1", toTag: "pbx-o", cseq: 2, extra: []string{"Route: " + rr}, body: "v=0\r\na=sendonly\r\n"}
	phone.sendTo(e.udp, reinv.String())
	r2 := e.pbx.request(sip.INVITE)
	e.pbx.sendTo(r2.Source(), responseTo(r2, 200, "OK", ""))
	if ev := obs.call(t); ev.Step != CallHeld || ev.CallID != "obs-1" || ev.User != "" {
		t.Fatalf("hold: %+v", ev)
	}
	bye := phoneRequest{method: "BYE", uri: "sip:101@" + e.pbx.addr(), from: phone.addr(), user: "100", toUser: "101",
		callID: "obs-1", toTag: "pbx-o", cseq: 3, extra: []string{"Route: " + rr}}
	phone.sendTo(e.udp, bye.String())
	b := e.pbx.request(sip.BYE)
	e.pbx.sendTo(b.Source(), responseTo(b, 200, "OK", ""))
	if ev := obs.call(t); ev.Step != CallEnded || ev.CallID != "obs-1" {
		t.Fatalf("bye: %+v", ev)
	}
	// A call that fails ends its leg.
	inv2 := inv
	inv2.callID, inv2.branch = "obs-2", ""
	phone.sendTo(e.udp, inv2.String())
	got2 := e.pbx.request(sip.INVITE)
	obs.call(t) // trying
	e.pbx.sendTo(got2.Source(), responseTo(got2, 486, "Busy Here", "pbx-b"))
	if ev := obs.call(t); ev.Step != CallEnded || ev.CallID != "obs-2" || ev.User != "100" {
		t.Fatalf("busy: %+v", ev)
	}
}

// selfSigned makes a certificate for ip, and a pool that trusts it.
func selfSigned(t *testing.T, ip net.IP) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "pbx test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{ip}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pool
}

func TestForwardsToAPBXOverTLS(t *testing.T) {
	conf, pool := selfSigned(t, net.IPv4(127, 0, 0, 2))
	ln, err := tls.Listen("tcp", "127.0.0.2:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	pbx := serveTCPPeer(t, ln)
	e := newEnv(t, func(o *Options, so *presenceOptions) {
		o.Targets = []Target{{Name: "pbx", Host: "127.0.0.2", Port: pbx.port(), Transport: "tls"}}
		so.ClientTLS = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	})
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	phone.sendTo(e.udp, phoneRequest{method: "MESSAGE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "tls-1", body: "hello"}.String())
	var got tcpMsg
	select {
	case got = <-pbx.in:
	case <-time.After(5 * time.Second):
		t.Fatal("nothing reached the PBX over TLS")
	}
	r := got.msg.(*sip.Request)
	if r.Via().Transport != "TLS" || string(r.Body()) != "hello" {
		t.Fatalf("PBX got %s over %s", startLine(r), r.Via().Transport)
	}
	got.conn.Write([]byte(responseTo(r, 200, "OK", "tls")))
	if res := phone.response(sip.MESSAGE, 200); res.StatusCode != 200 {
		t.Fatalf("phone got %s", startLine(res))
	}
}

func TestPBXOverTLSWithAnUntrustedCertificateGets503(t *testing.T) {
	conf, _ := selfSigned(t, net.IPv4(127, 0, 0, 2))
	ln, err := tls.Listen("tcp", "127.0.0.2:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	pbx := serveTCPPeer(t, ln)
	e := newEnv(t, func(o *Options, _ *presenceOptions) {
		o.Targets = []Target{{Name: "pbx", Host: "127.0.0.2", Port: pbx.port(), Transport: "tls"}}
	})
	phone := listenPeer(t, "127.0.0.1:0")
	phone.sendTo(e.udp, phoneRequest{method: "MESSAGE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "tls-2"}.String())
	if res := phone.response(sip.MESSAGE, 200); res.StatusCode != 503 {
		t.Fatalf("a PBX whose certificate is not trusted: %s, want 503", startLine(res))
	}
	select {
	case m := <-pbx.in:
		t.Fatalf("the PBX got %s over an untrusted connection", startLine(m.msg))
	default:
	}
}

func TestForwardsToAPBXOverIPv6(t *testing.T) {
	if c, err := net.ListenPacket("udp", "[::1]:0"); err != nil {
		t.Skip("no IPv6 loopback here")
	} else {
		c.Close()
	}
	pbx6 := listenPeerWith(t, "[::1]:0", true)
	e := newEnv(t, func(o *Options, so *presenceOptions) {
		o.Targets = []Target{{Name: "pbx", Host: "::1", Port: pbx6.port()}}
		so.Listen = append(so.Listen, presence.Listener{Transport: "udp", Address: "[::1]:0"})
	})
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	callID := "reg6"
	phone.sendTo(e.udp, phoneRequest{method: "REGISTER", uri: "sip:pbx.test", from: phone.addr(), user: "100",
		callID: callID, extra: []string{"Expires: 300"}}.String())
	reg := pbx6.request(sip.REGISTER)
	if v := reg.Via(); v.Host != "::1" {
		t.Fatalf("our Via toward an IPv6 PBX has host %q", v.Host)
	}
	path := reg.GetHeader("Path").Value()
	if !strings.Contains(path, "[::1]") {
		t.Fatalf("Path %s does not name our IPv6 address", path)
	}
	pbx6.sendTo(reg.Source(), responseTo(reg, 200, "OK", "r6", "Contact: <sip:100@"+phone.addr()+">;expires=300"))
	if res := phone.response(sip.REGISTER, 200); res.StatusCode != 200 {
		t.Fatalf("phone got %s", startLine(res))
	}
	// The PBX's call comes back over IPv6 and reaches the IPv4 phone.
	udp6 := e.srv.Addrs()[2].String()
	pbx6.sendTo(udp6, phoneRequest{method: "INVITE", uri: "sip:100@" + phone.addr(), from: "[::1]:" + strconv.Itoa(pbx6.port()),
		user: "200", toUser: "100", callID: "in6", extra: []string{"Route: " + path}}.String())
	inv := phone.request(sip.INVITE)
	if rr := inv.GetHeaders("Record-Route"); len(rr) != 2 {
		t.Fatalf("an INVITE from IPv6 to IPv4 has %d Record-Routes, want 2", len(rr))
	}
	phone.sendTo(inv.Source(), responseTo(inv, 486, "Busy Here", "b6"))
	if res := pbx6.response(sip.INVITE, 200); res.StatusCode != 486 {
		t.Fatalf("PBX got %s", startLine(res))
	}
}

func TestPathFromBeforeARestartStillRoutes(t *testing.T) {
	key := make([]byte, 32)
	rand.Read(key)
	withKey := func(o *Options, _ *presenceOptions) { o.TokenKey = key }
	before := newEnv(t, withKey)
	before.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	// Behind NAT: only its flow reaches it, never its contact.
	path := registerAs(t, before, phone, "100", "10.9.9.9:5062")

	// The next Lamplighter (same key from the state directory, another
	// address here) gets the PBX's call with the Path from before.
	after := newEnv(t, withKey)
	after.waitHealth(true)
	after.pbx.sendTo(after.udp, phoneRequest{method: "INVITE", uri: "sip:100@10.9.9.9:5062", from: after.pbx.addr(),
		user: "200", toUser: "100", callID: "after-1", extra: []string{"Route: " + path}}.String())
	inv := phone.request(sip.INVITE)
	if inv.Route() != nil {
		t.Fatalf("the old Path was not taken off: %s", inv.Route().Value())
	}
	phone.sendTo(inv.Source(), responseTo(inv, 486, "Busy Here", "b"))
	if res := after.pbx.response(sip.INVITE, 200); res.StatusCode != 486 {
		t.Fatalf("PBX got %s", startLine(res))
	}
}

func TestPreloadedRouteToUsIsTakenOff(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	phone.sendTo(e.udp, phoneRequest{method: "MESSAGE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "pre-1", extra: []string{"Route: <sip:" + e.udp + ";lr>"}}.String())
	got := e.pbx.request(sip.MESSAGE)
	if got.Route() != nil {
		t.Fatalf("the phone's outbound-proxy Route went on to the PBX: %s", got.Route().Value())
	}
}

func TestFloodPastTheBoundKeepsNothing(t *testing.T) {
	e := newEnv(t, func(o *Options, _ *presenceOptions) { o.MaxTransactions = 1 })
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	// One request held by the PBX (never answered) fills the bound.
	phone.sendTo(e.udp, phoneRequest{method: "MESSAGE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
		toUser: "101", callID: "hold"}.String())
	e.pbx.request(sip.MESSAGE)
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapInuse
	}
	before := heap()
	const n = 4000
	for i := 0; i < n; i += 50 {
		for j := i; j < i+50; j++ {
			phone.sendTo(e.udp, phoneRequest{method: "MESSAGE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100",
				toUser: "101", callID: "flood-" + strconv.Itoa(j)}.String())
		}
		for range 50 {
			if res := phone.response(sip.MESSAGE, 200); res.StatusCode != 503 {
				t.Fatalf("past the bound: %s", startLine(res))
			}
		}
	}
	// sipgo keeps an answered UDP transaction (~4.5 KiB) for Timer J:
	// 4000 of them would be ~18 MB.
	if grown := int64(heap()) - int64(before); grown > 4<<20 {
		t.Fatalf("heap grew %d KiB for %d refused requests", grown>>10, n)
	}
}

func TestIdleTCPPhoneStaysConnectedWhileRegistered(t *testing.T) {
	e := newEnv(t, func(_ *Options, so *presenceOptions) { so.Streams.IdleTimeout = 300 * time.Millisecond })
	e.waitHealth(true)
	dial := func(register bool) net.Conn {
		c, err := net.Dial("tcp", e.tcp)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		if register {
			me := c.LocalAddr().String()
			r := phoneRequest{method: "REGISTER", uri: "sip:pbx.test", from: me, user: "100", callID: "idle-" + me, extra: []string{"Expires: 300"}}
			c.Write([]byte(strings.Replace(r.String(), "SIP/2.0/UDP", "SIP/2.0/TCP", 1)))
			reg := e.pbx.request(sip.REGISTER)
			e.pbx.sendTo(reg.Source(), responseTo(reg, 200, "OK", "r", "Contact: <sip:100@"+me+">;expires=300"))
			if m, err := newFramer(c).next(); err != nil || m.(*sip.Response).StatusCode != 200 {
				t.Fatalf("REGISTER: %v", err)
			}
		}
		return c
	}
	idle, registered := dial(false), dial(true)
	// The unregistered connection is closed when idle; the registered
	// one stays for the PBX's calls.
	idle.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := idle.Read(make([]byte, 1)); err == nil {
		t.Fatal("an idle connection with nothing on it was kept")
	}
	registered.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := registered.Read(make([]byte, 1)); err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the registered phone's connection: %v, want it still open", err)
	}
}

func TestFeatureKeyAndWatcherInfoAreServedHere(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	register(t, e, phone, "100")
	for i, ev := range []string{"as-feature-event", "presence.winfo"} {
		phone.sendTo(e.udp, phoneRequest{method: "SUBSCRIBE", uri: "sip:100@pbx.test", from: phone.addr(), user: "100",
			callID: "own-" + strconv.Itoa(i), extra: []string{"Event: " + ev, "Expires: 600"}}.String())
		if res := phone.response(sip.SUBSCRIBE, 200); res.StatusCode != 200 {
			t.Fatalf("%s on the registered flow: %s", ev, startLine(res))
		}
		if n := phone.request(sip.NOTIFY); n.GetHeader("Event").Value() != ev {
			t.Fatalf("NOTIFY for %s has Event %s", ev, n.GetHeader("Event").Value())
		} else {
			phone.sendTo(n.Source(), responseTo(n, 200, "OK", ""))
		}
	}
	e.pbx.quiet(200*time.Millisecond, "packages Lamplighter serves are not the PBX's")
}

func TestAnAnswerRightAfterRingingAlwaysReachesTheCaller(t *testing.T) {
	// The INVITE's transaction ends as it hands up its 2xx; a relay loop
	// still busy with the 180 then sees both the 2xx and the end. The
	// 2xx is the answer: never a 503 (seen on the real Asterisk, which
	// answers a pickup a moment after its 180).
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	for i := range 30 {
		inv := phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101",
			callID: fmt.Sprintf("fast-%d", i), branch: fmt.Sprintf("z9hG4bKfast%d", i)}
		phone.sendTo(e.udp, inv.String())
		got := e.pbx.request(sip.INVITE)
		tag := fmt.Sprintf("pbx-f%d", i)
		// the 180 and the 200 back to back
		e.pbx.sendTo(got.Source(), responseTo(got, 180, "Ringing", tag))
		e.pbx.sendTo(got.Source(), responseTo(got, 200, "OK", tag, "Contact: <sip:101@"+e.pbx.addr()+">"))
		if res := phone.response(sip.INVITE, 200); res.StatusCode != 200 {
			t.Fatalf("call %d: the caller got %s, want the callee's 200", i, res.String()[:40])
		}
	}
}

func TestOnlyThePBXReachesAPhoneByItsToken(t *testing.T) {
	// A phone's Path (or a dialog's Record-Route) token is seen on the
	// wire by anyone on the path. A host that is not the PBX, even one
	// on the PBX's own IP address but another port (or a forged UDP
	// source address that gets the port wrong), sending a request with
	// it to the phone gets 403, and the phone hears nothing.
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	route := strings.TrimSpace(register(t, e, phone, "100"))
	pbxIP, _, _ := strings.Cut(e.pbx.addr(), ":")
	for _, stranger := range []*peer{
		listenPeer(t, "127.0.0.3:0"), // another host
		listenPeer(t, pbxIP+":0"),    // the PBX's IP address, another port
	} {
		for i, method := range []string{"INVITE", "MESSAGE", "NOTIFY", "BYE"} {
			r := phoneRequest{method: method, uri: "sip:100@" + phone.addr(), from: stranger.addr(), user: "200",
				toUser: "100", callID: "forged-" + strconv.Itoa(i) + stranger.addr(), extra: []string{"Route: " + route}}
			if method == "BYE" || method == "NOTIFY" {
				r.toTag = "t"
				r.extra = append(r.extra, "Event: dialog", "Subscription-State: active")
			}
			stranger.sendTo(e.udp, r.String())
			if res := stranger.response(sip.RequestMethod(method), 101); res.StatusCode != 403 {
				t.Errorf("%s with the phone's token from %s: %s", method, stranger.addr(), startLine(res))
			}
		}
	}
	phone.quiet(300*time.Millisecond, "nothing reached the phone")
	// The PBX itself still does.
	inv := phoneRequest{method: "INVITE", uri: "sip:100@" + phone.addr(), from: e.pbx.addr(), user: "200",
		toUser: "100", callID: "real-1", extra: []string{"Route: " + route}}
	e.pbx.sendTo(e.udp, inv.String())
	if got := phone.request(sip.INVITE); got.CallID().Value() != "real-1" {
		t.Fatalf("the PBX's INVITE: %s", got.CallID().Value())
	}
}

// TestTargetByUserAndDomain: the proxied PBX of a REGISTER is chosen by
// its address-of-record's user and domain (two tenants may have one
// extension on two PBXs), and the binding keeps the domain: the API
// shows it, and the flow stands for that domain's user.
func TestTargetByUserAndDomain(t *testing.T) {
	var mu sync.Mutex
	var asked [][2]string
	e := newEnv(t, func(o *Options, _ *presenceOptions) {
		o.TargetFor = func(user, domain string) string {
			mu.Lock()
			asked = append(asked, [2]string{user, domain})
			mu.Unlock()
			if user == "100" && domain == "pbx.test" {
				return "pbx"
			}
			return ""
		}
	})
	phone := listenPeer(t, "127.0.0.1:0")
	register(t, e, phone, "100")
	mu.Lock()
	got := slices.Clone(asked)
	mu.Unlock()
	if !slices.Contains(got, [2]string{"100", "pbx.test"}) {
		t.Errorf("TargetFor was asked %v, want 100 at pbx.test", got)
	}
	regs := e.px.Registrations()
	if len(regs) != 1 || regs[0].AOR != "100" || regs[0].Domain != "pbx.test" {
		t.Errorf("registrations %+v", regs)
	}
}
