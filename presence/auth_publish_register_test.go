package presence

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// request builds an out-of-dialog request from the phone to the server.
func (p *phone) request(server string, method sip.RequestMethod, user string, hdrs map[string]string, body []byte) *sip.Request {
	req := sip.NewRequest(method, p.target(server, user))
	fromUser := p.user
	if fromUser == "" {
		fromUser = "anonymous"
	}
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: fromUser, Host: "127.0.0.1"}, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(10))
	req.AppendHeader(from)
	toUser := user
	if method == sip.REGISTER {
		toUser = p.user
	}
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: toUser, Host: "127.0.0.1"}})
	cid := sip.CallIDHeader(sip.GenerateTagN(16) + "@test")
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: 1, MethodName: method})
	mf := sip.MaxForwardsHeader(70)
	req.AppendHeader(&mf)
	for k, v := range hdrs {
		req.AppendHeader(sip.NewHeader(k, v))
	}
	req.SetBody(body)
	req.Laddr = sip.Addr{IP: p.addr.IP, Port: p.addr.Port}
	return req
}

func withCreds(p *phone, user, pw string) *phone {
	p.user, p.password = user, pw
	return p
}

func TestUnauthenticatedLearnNothing(t *testing.T) {
	env := newEnv(t) // no trusted networks
	p := newPhone(t, "UDP")
	for _, user := range []string{"100", "999"} {
		res, _ := p.subscribe(env.udp, subReq{user: user, event: "presence", expires: 600})
		if res.StatusCode != 401 {
			t.Errorf("SUBSCRIBE to %s without credentials: %d, want 401 (never 404)", user, res.StatusCode)
		}
		hs := res.GetHeaders("WWW-Authenticate")
		if len(hs) != 2 || !strings.Contains(hs[0].Value(), "algorithm=SHA-256") || !strings.Contains(hs[1].Value(), "algorithm=MD5") {
			t.Errorf("challenges: %v", hs)
		}
	}
	// Wrong password: still 401, still no state.
	withCreds(p, "bob", "wrong")
	res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600})
	if res.StatusCode != 401 {
		t.Errorf("wrong password: %d", res.StatusCode)
	}
	// A known user with the right password and an unknown presentity: 404
	// only now that the caller is known.
	withCreds(p, "bob", "b-secret")
	if res, _ := p.subscribe(env.udp, subReq{user: "999", event: "presence", expires: 600}); res.StatusCode != 404 {
		t.Errorf("authenticated, unknown presentity: %d", res.StatusCode)
	}
	p.noNotify(200 * time.Millisecond)
}

func TestDigestSHA256(t *testing.T) {
	env := newEnv(t)
	p := withCreds(newPhone(t, "UDP"), "bob", "b-secret")
	res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600})
	if res.StatusCode != 200 {
		t.Fatalf("SHA-256 digest: %d", res.StatusCode)
	}
	p.nextNotify(2 * time.Second)
}

func TestDigestMD5(t *testing.T) {
	env := newEnv(t)
	p := newPhone(t, "UDP")
	p.user = "debbie"
	req := p.request(env.udp, sip.REGISTER, "", map[string]string{"Expires": "600",
		"Contact": "<sip:debbie@127.0.0.1:" + strconv.Itoa(p.addr.Port) + ">"}, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := p.client.Do(ctx, req)
	if err != nil || res.StatusCode != 401 {
		t.Fatalf("first REGISTER: %v %v", res, err)
	}
	var md5 *digest.Challenge
	for _, h := range res.GetHeaders("WWW-Authenticate") {
		if c, err := digest.ParseChallenge(h.Value()); err == nil && c.Algorithm == "MD5" {
			md5 = c
		}
	}
	if md5 == nil {
		t.Fatal("no MD5 challenge")
	}
	cred, err := digest.Digest(md5, digest.Options{Method: "REGISTER", URI: req.Recipient.Addr(), Username: "debbie", Password: "d-secret"})
	if err != nil {
		t.Fatal(err)
	}
	req2 := req.Clone()
	req2.RemoveHeader("Via")
	req2.CSeq().SeqNo++
	req2.AppendHeader(sip.NewHeader("Authorization", cred.String()))
	res, err = p.client.Do(ctx, req2)
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("MD5 REGISTER: %v %v", res, err)
	}
}

func TestStaleNonce(t *testing.T) {
	a := newAuthenticator("r", nil, nil, []Credential{{Username: "u", UserID: "u", Password: "p"}})
	// A request from 192.0.2.1 in dialog c, with an Authorization.
	request := func(authorization, callID, from string) *sipmsg.Request {
		req, err := sipmsg.ParseString("SUBSCRIBE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP " + from + ";branch=z9hG4bK1\r\n" +
			"From: <sip:u@h>;tag=1\r\nTo: <sip:1@h>\r\nCall-ID: " + callID + "\r\nCSeq: 1 SUBSCRIBE\r\n" +
			"Authorization: " + authorization + "\r\n\r\n")
		if err != nil {
			t.Fatal(err)
		}
		req.Peer = netip.MustParseAddrPort(from)
		req.Source = req.Peer.String()
		return req
	}
	withAuth := func(authorization string) *sipmsg.Request { return request(authorization, "c", "192.0.2.1:5060") }
	nonceFor := func() string { return a.nonceFor(withAuth("x")) }
	past := time.Now().Add(-time.Hour)
	a.now = func() time.Time { return past }
	old := nonceFor()
	a.now = time.Now
	ip, _ := netip.MustParseAddr("192.0.2.1").MarshalBinary()
	if c := a.macs.check(old, ip, "c", time.Now(), a.nonceTTL); c.fresh || !c.ours || !c.bound {
		t.Errorf("hour-old nonce: %+v", c)
	}
	// Two hex digits changed, to anything but what they were (a fixed
	// "00" was the nonce itself one time in 256).
	other := func(hex string) string {
		if hex == "00" {
			return "01"
		}
		return "00"
	}
	if c := a.macs.check(old[:len(old)-2]+other(old[len(old)-2:]), ip, "c", time.Now(), a.nonceTTL); c.bound {
		t.Error("tampered nonce accepted")
	}
	if c := a.macs.check(old[:36]+other(old[36:38])+old[38:], ip, "c", time.Now(), a.nonceTTL); c.ours {
		t.Error("a nonce with a tampered first MAC taken for ours")
	}
	if c := a.macs.check("zz", ip, "c", time.Now(), a.nonceTTL); c.ours {
		t.Error("garbage nonce accepted")
	}
	sign := func(nonce, uri string, nc int) string {
		cred, _ := digest.Digest(&digest.Challenge{Realm: "r", Nonce: nonce, Algorithm: "MD5", QOP: []string{"auth"}},
			digest.Options{Method: "SUBSCRIBE", URI: uri, Username: "u", Password: "p", Count: nc, Cnonce: "cn"})
		return cred.String()
	}
	// The right password on an expired nonce gives stale, not failure.
	if _, out := a.check(withAuth(sign(old, "sip:1@h", 1))); out != authStale {
		t.Errorf("right password, old nonce: %v, want stale", out)
	}
	// The digest-uri must name the request's target.
	if _, out := a.check(withAuth(sign(nonceFor(), "sip:2@h", 1))); out != authFailed {
		t.Errorf("digest for another URI: %v, want failure", out)
	}
	// A nonce serves the host and dialog it was issued for, with each
	// count once.
	n := nonceFor()
	first := sign(n, "sip:1@h", 1)
	if _, out := a.check(request(first, "c", "192.0.2.9:5060")); out != authStale {
		t.Errorf("the Authorization replayed from another host: %v, want stale", out)
	}
	if _, out := a.check(request(first, "d", "192.0.2.1:5060")); out != authStale {
		t.Errorf("the nonce used for another dialog: %v, want stale", out)
	}
	if _, out := a.check(withAuth(first)); out != authOK {
		t.Errorf("the first use: %v", out)
	}
	if _, out := a.check(withAuth(first)); out != authReplay {
		t.Errorf("the same Authorization again: %v, want replay", out)
	}
	if _, out := a.check(withAuth(sign(n, "sip:1@h", 2))); out != authOK {
		t.Errorf("the next count: %v", out)
	}
	if _, out := a.check(withAuth(sign(n, "sip:1@h", 2))); out != authReplay {
		t.Errorf("the second count again: %v, want replay", out)
	}
	// Without qop (RFC 2069) a nonce serves once.
	n = nonceFor()
	plain, _ := digest.Digest(&digest.Challenge{Realm: "r", Nonce: n, Algorithm: "MD5"},
		digest.Options{Method: "SUBSCRIBE", URI: "sip:1@h", Username: "u", Password: "p"})
	if _, out := a.check(withAuth(plain.String())); out != authOK {
		t.Errorf("without qop, first use: %v", out)
	}
	if _, out := a.check(withAuth(plain.String())); out != authReplay {
		t.Errorf("without qop, again: %v, want replay", out)
	}
}

func TestNonceUsesAreBounded(t *testing.T) {
	// Past its bound the oldest nonce is forgotten: a later count with it
	// is refused (its client takes a fresh nonce), never taken on trust.
	u := newNonceUses(3)
	var raws [4][nonceBytes]byte
	for i := range raws {
		raws[i][0] = byte(i + 1)
		if !u.use(raws[i], 1) {
			t.Fatalf("first use of nonce %d refused", i)
		}
	}
	if u.len() != 3 {
		t.Errorf("%d nonces kept, bound 3", u.len())
	}
	if u.use(raws[0], 2) {
		t.Error("a forgotten nonce's next count was taken")
	}
	if !u.use(raws[3], 2) || u.use(raws[3], 2) {
		t.Error("a remembered nonce: the next count must pass once")
	}
}

const meetingPIDF = `<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
 xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:debbie@127.0.0.1">
 <tuple id="t1"><status><basic>open</basic></status></tuple>
 <dm:person id="p1"><rpid:activities><rpid:meeting/></rpid:activities><dm:note>Budget review</dm:note></dm:person>
</presence>`

func TestPublish(t *testing.T) {
	env := newEnv(t)
	watcher := withCreds(newPhone(t, "UDP"), "bob", "b-secret")
	if res, _ := watcher.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	watcher.nextNotify(2 * time.Second)

	pub := withCreds(newPhone(t, "UDP"), "debbie", "d-secret")
	publish := func(hdrs map[string]string, body string) *sip.Response {
		if _, ok := hdrs["Event"]; !ok {
			hdrs["Event"] = "presence"
		}
		if body != "" {
			hdrs["Content-Type"] = "application/pidf+xml"
		}
		var b []byte
		if body != "" {
			b = []byte(body)
		}
		return pub.do(pub.request(env.udp, sip.PUBLISH, "100", hdrs, b))
	}
	res := publish(map[string]string{"Expires": "600"}, meetingPIDF)
	etag := header(res, "SIP-ETag")
	if res.StatusCode != 200 || etag == "" || header(res, "Expires") != "600" {
		t.Fatalf("PUBLISH: %d etag %q expires %q", res.StatusCode, etag, header(res, "Expires"))
	}
	n := watcher.notifyWhere("Budget review", 2*time.Second)
	if !strings.Contains(string(n.Body()), "<rpid:meeting/>") {
		t.Errorf("watcher does not see the meeting:\n%s", n.Body())
	}
	// Refresh without a body: a new entity tag, the old one is gone.
	res = publish(map[string]string{"Expires": "600", "SIP-If-Match": etag}, "")
	etag2 := header(res, "SIP-ETag")
	if res.StatusCode != 200 || etag2 == "" || etag2 == etag {
		t.Errorf("refresh: %d etag %q", res.StatusCode, etag2)
	}
	if res := publish(map[string]string{"Expires": "600", "SIP-If-Match": etag}, ""); res.StatusCode != 412 {
		t.Errorf("stale entity tag: %d, want 412", res.StatusCode)
	}
	if st, _ := env.bridge.State("debbie"); !st.Person.Has("meeting") {
		t.Errorf("refresh lost the published state: %+v", st.Person)
	}
	// Removal.
	if res := publish(map[string]string{"Expires": "0", "SIP-If-Match": etag2}, ""); res.StatusCode != 200 {
		t.Errorf("removal: %d", res.StatusCode)
	}
	n = watcher.nextNotify(2 * time.Second)
	if strings.Contains(string(n.Body()), "Budget review") {
		t.Errorf("removed publication still shown:\n%s", n.Body())
	}
	// Errors.
	if res := publish(map[string]string{"Expires": "600", "Event": "dialog"}, meetingPIDF); res.StatusCode != 489 {
		t.Errorf("Event: dialog: %d", res.StatusCode)
	}
	r := pub.request(env.udp, sip.PUBLISH, "100", map[string]string{"Event": "presence", "Content-Type": "text/plain"}, []byte("hi"))
	if res := pub.do(r); res.StatusCode != 415 || header(res, "Accept") == "" {
		t.Errorf("text/plain: %d", res.StatusCode)
	}
	if res := publish(map[string]string{"Expires": "600"}, "<presence"); res.StatusCode != 400 {
		t.Errorf("bad XML: %d", res.StatusCode)
	}
	if res := publish(map[string]string{"Expires": "5"}, meetingPIDF); res.StatusCode != 423 {
		t.Errorf("too brief: %d", res.StatusCode)
	}
	if res := publish(map[string]string{"Expires": "600"}, ""); res.StatusCode != 400 {
		t.Errorf("initial PUBLISH without body: %d", res.StatusCode)
	}
	// Bob may not publish for Debbie.
	bobPub := withCreds(newPhone(t, "UDP"), "bob", "b-secret")
	r = bobPub.request(env.udp, sip.PUBLISH, "100", map[string]string{"Event": "presence", "Content-Type": "application/pidf+xml"}, []byte(meetingPIDF))
	if res := bobPub.do(r); res.StatusCode != 403 {
		t.Errorf("publishing for another user: %d, want 403", res.StatusCode)
	}
}

func TestPublicationExpires(t *testing.T) {
	env := newEnv(t, func(o *Options) { o.MinExpires = 1 })
	pub := withCreds(newPhone(t, "UDP"), "debbie", "d-secret")
	r := pub.request(env.udp, sip.PUBLISH, "100", map[string]string{"Event": "presence", "Expires": "1",
		"Content-Type": "application/pidf+xml"}, []byte(meetingPIDF))
	if res := pub.do(r); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	waitUntil(t, 5*time.Second, "publication expires", func() bool {
		st, _ := env.bridge.State("debbie")
		return st.Person.IsZero() && len(env.srv.Publications()) == 0
	})
}

func TestRegister(t *testing.T) {
	env := newEnv(t)
	p := withCreds(newPhone(t, "UDP"), "debbie", "d-secret")
	contact := "<sip:debbie@127.0.0.1:" + strconv.Itoa(p.addr.Port) + ">"
	res := p.do(p.request(env.udp, sip.REGISTER, "", map[string]string{"Contact": contact, "Expires": "7200"}, nil))
	if res.StatusCode != 200 {
		t.Fatalf("REGISTER: %d", res.StatusCode)
	}
	if c := header(res, "Contact"); !strings.Contains(c, "expires=3600") && !strings.Contains(c, "expires=3599") {
		t.Errorf("binding not clamped to max_expires: %q", c)
	}
	if header(res, "Date") == "" || !strings.HasSuffix(header(res, "Date"), "GMT") {
		t.Errorf("Date: %q", header(res, "Date"))
	}
	regs := env.srv.Registrations()
	if len(regs) != 1 || regs[0].UserID != "debbie" {
		t.Fatalf("registrations: %+v", regs)
	}
	// Registration is not a PBX device: the state does not change.
	if st, _ := env.bridge.State("debbie"); len(st.Devices) != 1 {
		t.Errorf("registration changed devices: %+v", st.Devices)
	}
	if res := p.do(p.request(env.udp, sip.REGISTER, "", map[string]string{"Contact": contact, "Expires": "10"}, nil)); res.StatusCode != 423 {
		t.Errorf("too brief: %d", res.StatusCode)
	}
	// Bob may not register Debbie's line.
	bob := withCreds(newPhone(t, "UDP"), "bob", "b-secret")
	r := bob.request(env.udp, sip.REGISTER, "", map[string]string{"Contact": contact, "Expires": "600"}, nil)
	r.To().Address.User = "debbie"
	if res := bob.do(r); res.StatusCode != 403 {
		t.Errorf("registering another user: %d, want 403", res.StatusCode)
	}
	if res := p.do(p.request(env.udp, sip.REGISTER, "", map[string]string{"Contact": "*", "Expires": "0"}, nil)); res.StatusCode != 200 {
		t.Errorf("unregister all: %d", res.StatusCode)
	}
	if regs := env.srv.Registrations(); len(regs) != 0 {
		t.Errorf("bindings left: %+v", regs)
	}
}

// linphoneBody is the PIDF body of a recorded Linphone 5.1 PUBLISH.
func linphoneBody(t *testing.T, name string) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("../../shared/fixtures/linphone", name))
	if err != nil {
		t.Skipf("fixture: %v", err)
	}
	_, b, ok := strings.Cut(strings.ReplaceAll(string(raw), "\r\n", "\n"), "\n\n")
	if !ok {
		t.Fatalf("%s has no body", name)
	}
	return b
}

// publishAs sends a PIDF PUBLISH for 100 (a refresh of etag when it is
// set) and returns the new entity tag; anything but 200 fails the test.
func publishAs(t *testing.T, pub *phone, server, body, etag, expires string) string {
	t.Helper()
	hdrs := map[string]string{"Event": "presence", "Expires": expires, "Content-Type": "application/pidf+xml"}
	if etag != "" {
		hdrs["SIP-If-Match"] = etag
	}
	res := pub.do(pub.request(server, sip.PUBLISH, "100", hdrs, []byte(body)))
	if res.StatusCode != 200 {
		t.Fatalf("PUBLISH: %d", res.StatusCode)
	}
	return header(res, "SIP-ETag")
}

// TestRepublishedStateNotifiesNobody: Linphone refreshes its PUBLISH by
// sending the whole document again (a new timestamp, a new expiry);
// watchers see nothing new and get no NOTIFY. A real change still
// reaches them.
func TestRepublishedStateNotifiesNobody(t *testing.T) {
	env := newEnv(t, trusted)
	watcher := newPhone(t, "UDP")
	if res, _ := watcher.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	watcher.nextNotify(2 * time.Second)
	pub := newPhone(t, "UDP")
	away := linphoneBody(t, "publish-02-open-away.txt")
	publish := func(body, etag string) string { t.Helper(); return publishAs(t, pub, env.udp, body, etag, "600") }
	etag := publish(away, "")
	watcher.notifyWhere("<rpid:away/>", 2*time.Second)
	for i := range 3 { // three refreshes, each with a new timestamp
		later := strings.ReplaceAll(away, "12:08:35", fmt.Sprintf("12:1%d:00", i))
		etag = publish(later, etag)
	}
	watcher.noNotify(500 * time.Millisecond)
	publish(linphoneBody(t, "publish-07-open-meeting.txt"), etag)
	watcher.notifyWhere("<rpid:meeting/>", 2*time.Second)
}

// TestRegisterKeepsInstance: the 200 to a REGISTER echoes the Contact's
// +sip.instance and reg-id (Linphone matches its binding by them; they
// were dropped), with the binding's own expires, also on a refresh.
func TestRegisterKeepsInstance(t *testing.T) {
	env := newEnv(t)
	p := withCreds(newPhone(t, "UDP"), "debbie", "d-secret")
	uri := "sip:debbie@127.0.0.1:" + strconv.Itoa(p.addr.Port)
	contact := "<" + uri + `>;expires=600;+sip.instance="<urn:uuid:1b4f0c2a-4b7e-4a53-9a0e-2f9f1c3d5e6f>";reg-id=1`
	for range 2 { // a registration and its refresh
		res := p.do(p.request(env.udp, sip.REGISTER, "", map[string]string{"Contact": contact}, nil))
		if res.StatusCode != 200 {
			t.Fatalf("REGISTER: %d", res.StatusCode)
		}
		c := header(res, "Contact")
		if !strings.Contains(c, `+sip.instance="<urn:uuid:1b4f0c2a-4b7e-4a53-9a0e-2f9f1c3d5e6f>"`) ||
			!strings.Contains(c, "reg-id=1") || strings.Count(c, "expires=") != 1 {
			t.Errorf("Contact in the 200: %q", c)
		}
	}
	regs := env.srv.Registrations()
	if len(regs) != 1 || !strings.Contains(regs[0].Params, "+sip.instance") || strings.Contains(regs[0].Params, "expires") {
		t.Fatalf("bindings: %+v", regs)
	}
}

// TestSoftClientOpenAndClosedWin: what a person says through a soft client
// wins over the PBX's devices. Linphone online makes a person whose desk
// phone is off the network reachable; Linphone offline (closed) makes one
// whose desk phone is idle unreachable; withdrawn, the devices rule again.
func TestSoftClientOpenAndClosedWin(t *testing.T) {
	env := newEnv(t, trusted)
	watcher := newPhone(t, "UDP")
	if res, _ := watcher.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	watcher.notifyWhere("<basic>open</basic>", 2*time.Second) // the desk phone is idle
	pub := newPhone(t, "UDP")
	publish := func(body, etag, expires string) string {
		t.Helper()
		return publishAs(t, pub, env.udp, body, etag, expires)
	}
	etag := publish(linphoneBody(t, "publish-06-closed-away.txt"), "", "600")
	watcher.notifyWhere("<basic>closed</basic>", 2*time.Second)
	// The desk phone drops off the network; Linphone comes online.
	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/100", State: bridge.DeviceUnavailable})
	etag = publish(linphoneBody(t, "publish-01-open-pidfonline.txt"), etag, "600")
	watcher.notifyWhere("<basic>open</basic>", 2*time.Second)
	// Linphone quits: only the devices speak, and none is reachable.
	publish("", etag, "0")
	watcher.notifyWhere("<basic>closed</basic>", 2*time.Second)
}

// TestChallengesAreBoundToTheRequest: one challenge per algorithm, in
// order, under one nonce that is ours, fresh and bound to the request's
// host and Call-ID (another host or dialog gets another nonce); the
// stale flag only where asked; the header fields as written on the
// wire.
func TestChallengesAreBoundToTheRequest(t *testing.T) {
	a := newAuthenticator("r", []string{"SHA-256", "MD5"}, nil, nil)
	now := time.Unix(1_800_000_000, 0)
	a.now = func() time.Time { return now }
	nonceOf := func(c string) string {
		ch, err := digest.ParseChallenge(c)
		if err != nil {
			t.Fatalf("%q: %v", c, err)
		}
		return ch.Nonce
	}
	req := func(callID, from string) *sipmsg.Request {
		r, err := sipmsg.ParseString("SUBSCRIBE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP " + from + ";branch=z9hG4bK1\r\n" +
			"From: <sip:u@h>;tag=1\r\nTo: <sip:1@h>\r\nCall-ID: " + callID + "\r\nCSeq: 1 SUBSCRIBE\r\n\r\n")
		if err != nil {
			t.Fatal(err)
		}
		r.Peer = netip.MustParseAddrPort(from)
		r.Source = r.Peer.String()
		return r
	}
	r := req("c1", "192.0.2.1:5060")
	first := a.challenges(r, false)
	if len(first) != 2 || !strings.Contains(first[0], "SHA-256") || !strings.Contains(first[1], "MD5") {
		t.Fatalf("challenges %q: one per algorithm, in order", first)
	}
	for _, c := range first {
		if strings.Contains(strings.ToLower(c), "stale") {
			t.Errorf("fresh challenge says stale: %q", c)
		}
	}
	if nonceOf(first[0]) != nonceOf(first[1]) {
		t.Errorf("two nonces in one 401: %q", first)
	}
	stale := a.challenges(r, true)
	if len(stale) != 2 || !strings.Contains(strings.ToLower(stale[0]), "stale=true") || strings.Contains(strings.ToLower(stale[0]), "stale=true, stale") {
		t.Errorf("stale challenges %q", stale)
	}
	ip, _ := netip.MustParseAddr("192.0.2.1").MarshalBinary()
	if c := a.macs.check(nonceOf(first[0]), ip, "c1", now, a.nonceTTL); !c.ours || !c.bound || !c.fresh {
		t.Errorf("the challenge's nonce: %+v", c)
	}
	for _, other := range []*sipmsg.Request{req("c2", "192.0.2.1:5060"), req("c1", "192.0.2.2:5060")} {
		if nonceOf(a.challenges(other, false)[0]) == nonceOf(first[0]) {
			t.Errorf("the same nonce for %s in %s", other.Source, other.CallID)
		}
	}
	if again := a.challenges(r, false); nonceOf(again[0]) == nonceOf(first[0]) {
		t.Error("the same nonce twice: a client starts its counts again with each challenge")
	}
	// On the wire: the same fields, each challenge's own nonce.
	wire := string(a.appendChallenges(nil, "WWW-Authenticate", r, false))
	n := nonceOf(strings.TrimPrefix(strings.Split(wire, "\r\n")[0], "WWW-Authenticate: "))
	want := "WWW-Authenticate: " + first[0] + "\r\nWWW-Authenticate: " + first[1] + "\r\n"
	if wire != strings.ReplaceAll(want, nonceOf(first[0]), n) {
		t.Errorf("on the wire:\n%s\nwant:\n%s", wire, want)
	}
}

func TestADialogIsRefreshedOnlyByItsOwnWatcher(t *testing.T) {
	// The identifiers of a subscription dialog, seen on the wire, must
	// not let anyone else keep it alive (or move its NOTIFYs to
	// themselves): only the flow it was made on refreshes it with them
	// alone; from anywhere else the refresh authenticates as its watcher.
	env := newEnv(t)
	bob := newPhone(t, "UDP")
	bob.user, bob.password = "bob", "b-secret"
	res, d := bob.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
	}
	bob.nextNotify(3 * time.Second)
	refresh := func(p *phone) int {
		res := p.refresh(d, 600)
		if res.CSeq() != nil && res.CSeq().SeqNo > d.cseq {
			d.cseq = res.CSeq().SeqNo
		}
		return res.StatusCode
	}
	bob.user = "" // no credentials: the dialog's identifiers alone
	if code := refresh(bob); code != 200 {
		t.Errorf("bob's refresh from his own address: %d", code)
	}
	thief := newPhone(t, "UDP")
	if code := refresh(thief); code != 401 {
		t.Errorf("a refresh from another host with the identifiers alone: %d, want 401", code)
	}
	mallory := newPhone(t, "UDP")
	mallory.user, mallory.password = "debbie", "d-secret"
	if code := refresh(mallory); code != 403 {
		t.Errorf("a refresh from another host as another user: %d, want 403", code)
	}
	moved := newPhone(t, "UDP") // bob's phone behind a NAT that moved
	moved.user, moved.password = "bob", "b-secret"
	if code := refresh(moved); code != 200 {
		t.Errorf("bob's refresh from a new address, authenticated: %d, want 200", code)
	}
}
