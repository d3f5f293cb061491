package presence

import (
	"encoding/xml"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
)

func TestSubscribePresenceUDP(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.MaxExpires = 1800 })
	p := newPhone(t, "UDP")
	res, d := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 7200})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d %s", res.StatusCode, res.Reason)
	}
	if d.toTag == "" || res.Contact() == nil || header(res, "Expires") != "1800" {
		t.Errorf("200 lacks To-tag, Contact or a clamped Expires: %s", res)
	}
	n := p.nextNotify(2 * time.Second)
	if header(n, "Event") != "presence" || !strings.HasPrefix(header(n, "Subscription-State"), "active;expires=") ||
		header(n, "Content-Type") != "application/pidf+xml" {
		t.Errorf("first NOTIFY headers:\n%s", n)
	}
	if n.CallID().Value() != d.callID || n.From().Params.GetOr("tag", "") != d.toTag || n.To().Params.GetOr("tag", "") != d.fromTag {
		t.Errorf("NOTIFY is not in the dialog: %s", n)
	}
	if n.Recipient.Port != p.addr.Port {
		t.Errorf("Request-URI %s is not the subscriber's Contact", n.Recipient.String())
	}
	if n.Source() != env.udp {
		t.Errorf("NOTIFY came from %s, not the listening socket %s", n.Source(), env.udp)
	}
	var doc struct {
		Entity string `xml:"entity,attr"`
		Basic  string `xml:"tuple>status>basic"`
		Note   string `xml:"tuple>note"`
	}
	if err := xml.Unmarshal(n.Body(), &doc); err != nil {
		t.Fatal(err)
	}
	wantEntity := "sip:100@" + strings.Split(env.udp, ":")[0] + ":" + strings.Split(env.udp, ":")[1]
	if doc.Entity != wantEntity || doc.Basic != "open" || doc.Note != "Ready" {
		t.Errorf("first document: %+v (want entity %s)", doc, wantEntity)
	}
	first := n.CSeq().SeqNo

	env.bridge.Apply(ringing("101"))
	n = p.notifyWhere("Ringing: Caller 101 (101)", 2*time.Second)
	if n.CSeq().SeqNo <= first {
		t.Errorf("CSeq did not grow: %d then %d", first, n.CSeq().SeqNo)
	}
	env.bridge.Apply(answered("101"))
	n2 := p.notifyWhere("On the phone", 2*time.Second)
	if n2.CSeq().SeqNo <= n.CSeq().SeqNo {
		t.Errorf("CSeq did not grow: %d then %d", n.CSeq().SeqNo, n2.CSeq().SeqNo)
	}
	if total, byPkg := env.srv.Subscriptions(); total != 1 || byPkg[PackagePresence] != 1 {
		t.Errorf("subscriptions %d %v", total, byPkg)
	}
}

func TestSubscribeDialogTCPOnOwnConnection(t *testing.T) {
	env := newEnv(t, trusted)
	// This phone listens on UDP only: a NOTIFY can reach it over TCP
	// only on the connection its SUBSCRIBE opened.
	p := newPhone(t, "TCP")
	res, _ := p.subscribe(env.tcp, subReq{user: "debbie", event: "dialog", expires: 600,
		accept: "application/dialog-info+xml"})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
	}
	if c := res.Contact(); c == nil || c.Address.UriParams.GetOr("transport", "") != "tcp" {
		t.Errorf("Contact over TCP lacks transport=tcp: %v", c)
	}
	type dialogInfo struct {
		Version int    `xml:"version,attr"`
		Entity  string `xml:"entity,attr"`
		Dialogs []struct {
			CallID    string `xml:"call-id,attr"`
			Direction string `xml:"direction,attr"`
			State     string `xml:"state"`
			Remote    string `xml:"remote>identity"`
		} `xml:"dialog"`
	}
	read := func(n *sip.Request) dialogInfo {
		var d dialogInfo
		if err := xml.Unmarshal(n.Body(), &d); err != nil {
			t.Fatalf("%v\n%s", err, n.Body())
		}
		return d
	}
	n := p.nextNotify(2 * time.Second)
	if n.Transport() != "TCP" {
		t.Errorf("NOTIFY over %s", n.Transport())
	}
	d0 := read(n)
	if d0.Version != 0 || len(d0.Dialogs) != 0 || !strings.HasPrefix(d0.Entity, "sip:debbie@") {
		t.Errorf("idle document: %+v", d0)
	}
	env.bridge.Apply(ringing("101"))
	d1 := read(p.notifyWhere("early", 2*time.Second))
	if d1.Version != 1 || len(d1.Dialogs) != 1 || d1.Dialogs[0].CallID != "abc@pbx" || d1.Dialogs[0].Direction != "recipient" {
		t.Errorf("ringing document: %+v", d1)
	}
	env.bridge.Apply(bridge.CallEnded{Source: "pbx", CallID: "c1"})
	d2 := read(p.nextNotify(2 * time.Second))
	if d2.Version != 2 || len(d2.Dialogs) != 0 {
		t.Errorf("idle again: %+v", d2)
	}
}

func TestSubscribeErrors(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.MaxBodyBytes = 2048 })
	p := newPhone(t, "UDP")
	cases := []struct {
		name   string
		r      subReq
		code   int
		header string // a header the response must carry
	}{
		{"unknown package", subReq{user: "100", event: "message-summary", expires: 600}, 489, "Allow-Events"},
		{"no event", subReq{user: "100", expires: 600}, 489, "Allow-Events"},
		{"unacceptable accept", subReq{user: "100", event: "presence", expires: 600, accept: "application/cpim-pidf+xml"}, 406, "Accept"}, // xpidf is served since issue 15
		{"unknown presentity", subReq{user: "555", event: "presence", expires: 600}, 404, ""},
		{"too brief", subReq{user: "100", event: "presence", expires: 5}, 423, "Min-Expires"},
		{"no contact", subReq{user: "100", event: "presence", expires: 600, noContact: true}, 400, ""},
	}
	for _, c := range cases {
		res, _ := p.subscribe(env.udp, c.r)
		if res.StatusCode != c.code {
			t.Errorf("%s: %d %s, want %d", c.name, res.StatusCode, res.Reason, c.code)
		}
		if c.header != "" && header(res, c.header) == "" {
			t.Errorf("%s: response lacks %s", c.name, c.header)
		}
	}
	// A body too large for UDP goes over TCP, and is refused.
	if res, _ := newPhone(t, "TCP").subscribe(env.tcp, subReq{user: "100", event: "presence", expires: 600,
		body: make([]byte, 8<<10)}); res.StatusCode != 413 {
		t.Errorf("huge body: %d, want 413", res.StatusCode)
	}
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 5}); header(res, "Min-Expires") != "60" {
		t.Errorf("Min-Expires = %q", header(res, "Min-Expires"))
	}
	// An in-dialog SUBSCRIBE for a dialog that does not exist.
	d := &dialog{callID: "nope@test", fromTag: "x", toTag: "unknown", uri: p.target(env.udp, "100"), event: "presence"}
	if res := p.refresh(d, 600); res.StatusCode != 481 {
		t.Errorf("unknown dialog: %d, want 481", res.StatusCode)
	}
	// Accept lists and wildcards that do include the type are fine.
	for _, acc := range []string{"application/pidf+xml;q=1, application/xpidf+xml", "*/*", "application/*"} {
		if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600, accept: acc}); res.StatusCode != 200 {
			t.Errorf("Accept %q: %d", acc, res.StatusCode)
		}
	}
	if total, _ := env.srv.Subscriptions(); total != 3 {
		t.Errorf("%d subscriptions, want the 3 accepted ones", total)
	}
}

func TestRefreshAndUnsubscribe(t *testing.T) {
	env := newEnv(t, trusted)
	p := newPhone(t, "UDP")
	res, d := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600})
	if res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	n1 := p.nextNotify(2 * time.Second)
	if res := p.refresh(d, 300); res.StatusCode != 200 || header(res, "Expires") != "300" {
		t.Fatalf("refresh: %d Expires %q", res.StatusCode, header(res, "Expires"))
	}
	n2 := p.nextNotify(2 * time.Second)
	if n2.CSeq().SeqNo <= n1.CSeq().SeqNo || !strings.Contains(header(n2, "Subscription-State"), "expires=") {
		t.Errorf("refresh NOTIFY: %s", n2)
	}
	if res := p.refresh(d, 0); res.StatusCode != 200 {
		t.Fatalf("unsubscribe: %d", res.StatusCode)
	}
	n3 := p.nextNotify(2 * time.Second)
	if header(n3, "Subscription-State") != "terminated" || n3.CSeq().SeqNo <= n2.CSeq().SeqNo {
		t.Errorf("final NOTIFY: %s", n3)
	}
	if res := p.refresh(d, 600); res.StatusCode != 481 {
		t.Errorf("refresh after unsubscribe: %d, want 481", res.StatusCode)
	}
	if total, _ := env.srv.Subscriptions(); total != 0 {
		t.Errorf("%d subscriptions left", total)
	}
}

func TestFetch(t *testing.T) {
	env := newEnv(t, trusted)
	p := newPhone(t, "UDP")
	res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 0})
	if res.StatusCode != 200 || header(res, "Expires") != "0" {
		t.Fatalf("fetch: %d %q", res.StatusCode, header(res, "Expires"))
	}
	n := p.nextNotify(2 * time.Second)
	if header(n, "Subscription-State") != "terminated;reason=timeout" || len(n.Body()) == 0 {
		t.Errorf("fetch NOTIFY: %s", n)
	}
	if total, _ := env.srv.Subscriptions(); total != 0 {
		t.Errorf("a fetch left %d subscriptions", total)
	}
}

func TestExpiry(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.MinExpires = 1 })
	p := newPhone(t, "UDP")
	res, _ := p.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 1})
	if res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	p.nextNotify(2 * time.Second)
	n := p.nextNotify(3 * time.Second)
	if header(n, "Subscription-State") != "terminated;reason=timeout" {
		t.Errorf("expiry NOTIFY: %s", n)
	}
	waitUntil(t, 2*time.Second, "expired subscription removed", func() bool { total, _ := env.srv.Subscriptions(); return total == 0 })
}

func TestNotify481EndsSubscription(t *testing.T) {
	env := newEnv(t, trusted)
	p := newPhone(t, "UDP")
	p.answer.Store(481)
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	p.nextNotify(2 * time.Second)
	waitUntil(t, 2*time.Second, "481 ends the subscription", func() bool { total, _ := env.srv.Subscriptions(); return total == 0 })
	env.bridge.Apply(ringing("101"))
	p.noNotify(300 * time.Millisecond)
}

func TestNotifyTimeoutIsRetriedNotFatal(t *testing.T) {
	m := newTestMetrics()
	env := newEnv(t, trusted, func(o *Options) { o.Metrics = m })
	p := newPhone(t, "UDP")
	p.answer.Store(0) // a phone that does not answer for a while
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	first := p.nextNotify(2 * time.Second)
	// Wait for the NOTIFY transaction to time out (Timer F = 64*T1 =
	// 3.2s here), then answer again: the retry must come with a higher
	// CSeq, and the subscription must still be there.
	select {
	case reason := <-m.failed:
		if reason != "timeout" {
			t.Fatalf("failure %q, want timeout", reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the unanswered NOTIFY never timed out")
	}
	p.answer.Store(200)
	if total, _ := env.srv.Subscriptions(); total != 1 {
		t.Fatalf("one timeout ended the subscription")
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case n := <-p.notifies:
			if n.CSeq().SeqNo > first.CSeq().SeqNo {
				return
			}
		case <-deadline:
			t.Fatal("no retried NOTIFY after a timeout")
		}
	}
}

func TestRepeatedTimeoutsEndSubscription(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.NotifyRetries = 2 })
	p := newPhone(t, "UDP")
	p.answer.Store(0)
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	waitUntil(t, 20*time.Second, "repeated timeouts end the subscription", func() bool {
		total, _ := env.srv.Subscriptions()
		return total == 0
	})
}

func TestUrgentAndCoalesced(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.Coalesce = 300 * time.Millisecond })
	p := newPhone(t, "UDP")
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	p.nextNotify(2 * time.Second)
	// Ringing is never held back by the coalescing window.
	start := time.Now()
	env.bridge.Apply(ringing("101"))
	p.notifyWhere("ringing", 2*time.Second)
	if d := time.Since(start); d >= 300*time.Millisecond {
		t.Errorf("ringing NOTIFY took %v, longer than the coalescing window", d)
	}
	// A burst of other changes becomes one NOTIFY with the last state.
	env.bridge.Apply(answered("101"))
	env.bridge.Apply(bridge.CallEnded{Source: "pbx", CallID: "c1"})
	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/100", State: bridge.DeviceUnavailable})
	n := p.nextNotify(2 * time.Second)
	if !strings.Contains(string(n.Body()), "offline") {
		t.Errorf("coalesced NOTIFY does not carry the last state:\n%s", n.Body())
	}
	p.noNotify(500 * time.Millisecond)
	// After a quiet spell, the first change goes at once.
	start = time.Now()
	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/100", State: bridge.DeviceIdle})
	n = p.nextNotify(2 * time.Second)
	if d := time.Since(start); d >= 300*time.Millisecond {
		t.Errorf("the first change after a quiet spell took %v, as long as the coalescing window", d)
	}
	if strings.Contains(string(n.Body()), "offline") {
		t.Errorf("NOTIFY after the quiet spell still says offline:\n%s", n.Body())
	}
}

func TestPerSourceLimit(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.MaxSubscriptionsPerSource = 2 })
	p := newPhone(t, "UDP")
	for i := range 2 {
		if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
			t.Fatalf("subscription %d: %d", i, res.StatusCode)
		}
	}
	res, _ := p.subscribe(env.udp, subReq{user: "101", event: "dialog", expires: 600})
	if res.StatusCode != 503 || header(res, "Retry-After") == "" {
		t.Errorf("third subscription: %d, want 503 with Retry-After", res.StatusCode)
	}
}

func TestOptionsAndUnknownMethods(t *testing.T) {
	env := newEnv(t)
	p := newPhone(t, "UDP")
	req := sip.NewRequest(sip.OPTIONS, p.target(env.udp, "100"))
	req.Laddr = sip.Addr{IP: p.addr.IP, Port: p.addr.Port}
	res := p.do(req)
	if res.StatusCode != 200 || !strings.Contains(header(res, "Allow"), "SUBSCRIBE") || header(res, "Allow-Events") == "" {
		t.Errorf("OPTIONS: %s", res)
	}
	req = sip.NewRequest(sip.MESSAGE, p.target(env.udp, "100"))
	req.Laddr = sip.Addr{IP: p.addr.IP, Port: p.addr.Port}
	if res := p.do(req); res.StatusCode != 405 || header(res, "Allow") == "" {
		t.Errorf("MESSAGE: %d", res.StatusCode)
	}
}

func TestMalformedRequestsKeepServerServing(t *testing.T) {
	env := newEnv(t, trusted)
	conn, err := net.Dial("udp", env.udp)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	local := conn.LocalAddr().String()
	garbage := []string{
		"\x00\x01\x02 not sip at all",
		"SUBSCRIBE sip:100@x SIP/2.0\r\n\r\n",
		"SUBSCRIBE sip:100@x SIP/2.0\r\nVia: SIP/2.0/UDP " + local + ";branch=z9hG4bKbad1\r\nCSeq: x y\r\n\r\n",
		strings.Repeat("A", 9000),
	}
	for _, g := range garbage {
		conn.Write([]byte(g))
	}
	// A request with good framing but a bad Expires gets 400, not silence.
	bad := "SUBSCRIBE sip:100@127.0.0.1 SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP " + local + ";branch=z9hG4bKbad2\r\n" +
		"From: <sip:w@127.0.0.1>;tag=a\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: bad2@test\r\n" +
		"CSeq: 1 SUBSCRIBE\r\nContact: <sip:w@" + local + ">\r\nEvent: presence\r\nExpires: soon\r\n" +
		"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
	conn.Write([]byte(bad))
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	n, err := conn.Read(buf)
	if err != nil || !strings.HasPrefix(string(buf[:n]), "SIP/2.0 400") {
		t.Errorf("bad Expires: %v %q", err, buf[:n])
	}
	// And the server still serves a good request.
	p := newPhone(t, "UDP")
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Errorf("after garbage: %d", res.StatusCode)
	}
	p.nextNotify(2 * time.Second)
}

func TestSingleDialogPolicy(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) {
		o.SingleDialog = func(ua, watcher string) bool { return strings.HasPrefix(ua, "TestPhone") }
	})
	p := newPhone(t, "UDP")
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	p.nextNotify(2 * time.Second)
	env.bridge.Apply(answered("101"))
	second := bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: "c2", Device: "PJSIP/100", Direction: bridge.Incoming,
		State: bridge.CallEarly, Remote: bridge.Party{Number: "102"}}}
	env.bridge.Apply(second)
	n := p.notifyWhere("sip:102@", 2*time.Second)
	if c := strings.Count(string(n.Body()), "<dialog "); c != 1 {
		t.Errorf("single-dialog phone got %d dialogs:\n%s", c, n.Body())
	}
}

func TestUserRemovedEndsSubscriptions(t *testing.T) {
	env := newEnv(t, trusted)
	p := newPhone(t, "UDP")
	if res, _ := p.subscribe(env.udp, subReq{user: "101", event: "presence", expires: 600}); res.StatusCode != 200 {
		t.Fatal(res.StatusCode)
	}
	p.nextNotify(2 * time.Second)
	dir, _ := bridge.NewDirectory([]bridge.User{{ID: "debbie", Name: "Debbie Harry", Extensions: []string{"100"},
		Aliases: []string{"debbie"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/100"}}}})
	env.bridge.SetDirectory(dir)
	n := p.nextNotify(2 * time.Second)
	if header(n, "Subscription-State") != "terminated;reason=noresource" {
		t.Errorf("removed user: %s", n)
	}
}
