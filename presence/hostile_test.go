package presence

import (
	"bufio"
	"fmt"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"github.com/icholy/digest"

	"github.com/lamplighter/lamplighter/bridge"
)

// The hostile-peer suite: each test plays an attacker or a broken peer on
// raw sockets and checks that the server keeps serving the well-behaved
// watchers.

// TestForgedResponsesDropNoSubscription: someone who saw a NOTIFY (its
// branch) answers it with 481 from another address, first while the
// NOTIFY is in flight and then by spraying guesses; the subscription
// stays, and the real watcher's 200 still ends the transaction.
func TestForgedResponsesDropNoSubscription(t *testing.T) {
	env := newEnv(t, trusted)
	watcher := newRawPeer(t, env.udp)
	watcher.answerNotify.Store(0) // hold the first NOTIFY in flight
	subs := watcher.subscribeMany("100", "dialog", 1)
	first := <-watcher.notifies
	branch, _ := first.Via().Params.Get("branch")
	attacker, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer attacker.Close()
	server := watcher.server
	forged := strings.Replace(responseTo(first, 481), "SIP/2.0 481 Answer", "SIP/2.0 481 Call/Transaction Does Not Exist", 1)
	for range 20 {
		attacker.WriteToUDP([]byte(forged), server)
	}
	// Spray guessed branches too, the way the old counter allowed.
	for i := range 200 {
		guess := strings.Replace(forged, branch, branch[:len(branch)-4]+strings.Repeat(string(rune('a'+i%6)), 4), 1)
		attacker.WriteToUDP([]byte(guess), server)
	}
	// The real watcher answers the retransmission.
	watcher.answerNotify.Store(200)
	env.bridge.Apply(ringing("101"))
	waitUntil(t, 5*time.Second, "the watcher sees the ringing", func() bool {
		return strings.Contains(watcher.lastBody(subs[0].callID), "early")
	})
	if n := env.srv.Watchers("debbie"); n != 1 {
		t.Fatalf("forged 481s dropped the subscription: %d watchers", n)
	}
}

// TestAnswerLeavesBeforeFirstNotify: the 200 to a SUBSCRIBE leaves before
// the first NOTIFY of its dialog, even while the watched user's state
// changes all the time (phones that answer an early NOTIFY with 481 lose
// the lamp). Over UDP the peer sees datagrams in the order they were sent.
func TestAnswerLeavesBeforeFirstNotify(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.Coalesce = time.Millisecond })
	peer := newRawPeer(t, env.udp)
	stop := env.flap()
	peer.subscribeMany("100", "dialog", 500)
	stop()
	waitUntil(t, 5*time.Second, "first NOTIFYs", func() bool {
		peer.mu.Lock()
		defer peer.mu.Unlock()
		return len(peer.last) == 500
	})
	if n := peer.notifiedBeforeAnswer(); n != 0 {
		t.Fatalf("%d of 500 dialogs got a NOTIFY before the 200", n)
	}
}

// TestBareLineFeedRequestsAreRead: a request whose lines end in a bare
// LF (some embedded stacks, hand-made tools) is read as one with CRLFs:
// a SUBSCRIBE gets its 200 and its NOTIFY, one with a CSeq naming
// another method its 400 from the bytes. They once got no answer at all:
// the datagram was not taken for a request.
func TestBareLineFeedRequestsAreRead(t *testing.T) {
	env := newEnv(t, trusted)
	peer := newRawPeer(t, env.udp)
	d := &rawSub{callID: "bare-lf", fromTag: "ft", user: "100", event: "dialog"}
	peer.send(strings.ReplaceAll(peer.subscribeMsg(d, 600), "\r\n", "\n"))
	if res := peer.response(d.callID, 5*time.Second); res.StatusCode != 200 {
		t.Fatalf("bare-LF SUBSCRIBE: %d", res.StatusCode)
	}
	waitUntil(t, 5*time.Second, "its NOTIFY", func() bool { return strings.Contains(peer.lastBody(d.callID), "dialog-info") })
	bad := &rawSub{callID: "bare-lf-bad", fromTag: "ft", user: "100", event: "dialog"}
	msg := strings.Replace(peer.subscribeMsg(bad, 600), "1 SUBSCRIBE", "1 INVITE", 1)
	peer.send(strings.ReplaceAll(msg, "\r\n", "\n"))
	if res := peer.response(bad.callID, 5*time.Second); res.StatusCode != 400 {
		t.Fatalf("bare-LF SUBSCRIBE with another method in CSeq: %d", res.StatusCode)
	}
}

// TestMalformedRequestsGetTheirAnswer: requests sipgo alone would drop or
// take get the answer RFC 3261 asks for, and the server keeps serving.
func TestMalformedRequestsGetTheirAnswer(t *testing.T) {
	env := newEnv(t, trusted)
	peer := newRawPeer(t, env.udp)
	pidf := `<?xml version="1.0"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:100@127.0.0.1"><tuple id="t"><status><basic>open</basic></status><note>` +
		strings.Repeat("x", 40<<10) + `</note></tuple></presence>`
	cases := []struct {
		name    string
		method  string
		headers []string
		body    string
		want    int
	}{
		{"CSeq names another method", "SUBSCRIBE", []string{"CSeq: 1 INVITE", "Event: dialog"}, "", 400},
		{"Content-Length not a number", "OPTIONS", []string{"Content-Length: ten"}, "", 400},
		{"Content-Length beyond the datagram", "OPTIONS", []string{"Content-Length: 500"}, "short", 400},
		{"PUBLISH above sipgo's 32 KiB read buffer", "PUBLISH", []string{"Event: presence", "Content-Type: application/pidf+xml", "Expires: 60"}, pidf, 413},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			msg, callID := peer.request(c.method, "100", c.headers, c.body)
			peer.send(msg)
			if res := peer.response(callID, 5*time.Second); res.StatusCode != c.want {
				t.Errorf("answered %d %s, want %d", res.StatusCode, res.Reason, c.want)
			}
		})
	}
	// Expires beyond 2^32-1 counts as 2^32-1 and is shortened to the
	// maximum, not refused (RFC 3261 §20.19).
	d := &rawSub{callID: "huge-expires", fromTag: "ft", user: "100", event: "dialog"}
	msg := strings.Replace(peer.subscribeMsg(d, 600), "Expires: 600", "Expires: 99999999999999999999", 1)
	peer.send(msg)
	res := peer.response(d.callID, 5*time.Second)
	if res.StatusCode != 200 || header(res, "Expires") != "3600" {
		t.Errorf("huge Expires: %d Expires %q, want 200 and 3600", res.StatusCode, header(res, "Expires"))
	}
	// Still serving.
	subs := peer.subscribeMany("100", "presence", 1)
	if subs[0].toTag == "" {
		t.Fatal("no subscription after the malformed requests")
	}
}

// TestPublishedXMLThatStrictParsersRefuse: a PUBLISH whose PIDF repeats
// an attribute or uses an undeclared prefix (encoding/xml takes both) is
// refused with 400, so it never reaches a watcher's document.
func TestPublishedXMLThatStrictParsersRefuse(t *testing.T) {
	env := newEnv(t, trusted)
	peer := newRawPeer(t, env.udp)
	for name, extra := range map[string]string{
		"repeated attribute": `<r:mood a="1" a="2"><r:happy/></r:mood>`,
		"undeclared prefix":  `<q:thing q:a="1"/>`,
		"xml prefix rebound": `<r:mood xmlns:xml="urn:not-xml"/>`,
	} {
		body := `<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" ` +
			`xmlns:r="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:100@127.0.0.1"><dm:person id="p">` + extra +
			`</dm:person></presence>`
		msg, callID := peer.request("PUBLISH", "100", []string{"Event: presence", "Content-Type: application/pidf+xml", "Expires: 60"}, body)
		peer.send(msg)
		if res := peer.response(callID, 5*time.Second); res.StatusCode != 400 {
			t.Errorf("%s: %d, want 400", name, res.StatusCode)
		}
	}
	if n := len(env.srv.Publications()); n != 0 {
		t.Errorf("%d publications kept", n)
	}
}

// TestLargeMessagesAreSent: a response above sipgo's 1,300-byte UDP
// limit (a SUBSCRIBE through six proxies) is sent, not swallowed; a
// NOTIFY too large for any datagram (a user with hundreds of calls) goes
// out compact rather than failing until the watcher is dropped.
func TestLargeMessagesAreSent(t *testing.T) {
	env := newEnv(t, trusted)
	peer := newRawPeer(t, env.udp)
	var extra []string
	for i := range 6 {
		// Loopback addresses: the NOTIFYs of this dialog go nowhere else.
		extra = append(extra, fmt.Sprintf("Record-Route: <sip:127.0.0.%d:9;lr;ftag=%s>", i+2, strings.Repeat("x", 90)))
	}
	d := &rawSub{callID: "via-proxies", fromTag: "ft", user: "100", event: "dialog"}
	msg := peer.subscribeMsg(d, 600, extra...)
	for i := range 6 { // the proxies' Vias below ours
		msg = strings.Replace(msg, "Max-Forwards: 70\r\n", fmt.Sprintf("Via: SIP/2.0/UDP 127.0.1.%d:5060;branch=z9hG4bK%s;received=127.0.1.%d\r\nMax-Forwards: 70\r\n", i, strings.Repeat("b", 40), i), 1)
	}
	peer.send(msg)
	res := peer.response(d.callID, 5*time.Second)
	if res.StatusCode != 200 || len(res.String()) < 1300 {
		t.Fatalf("answer %d of %d bytes", res.StatusCode, len(res.String()))
	}
	// Drop the route set's effect: NOTIFYs would go to the first proxy.
	// A second subscription, direct, watches the user with many calls.
	subs := peer.subscribeMany("100", "dialog", 1)
	for i := range 300 {
		env.bridge.Apply(bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: fmt.Sprintf("c%d", i), Device: "PJSIP/100",
			Direction: bridge.Incoming, State: bridge.CallConfirmed, Remote: bridge.Party{Number: fmt.Sprintf("%04d", i),
				Name: strings.Repeat("Caller ", 20)}, CallID: fmt.Sprintf("call-%d@pbx", i), LocalTag: "lt", RemoteTag: "rt"}})
	}
	// (NOTIFYs of the first calls, small enough, may come first: the
	// one with all 300 is the one that must arrive, compact.)
	waitUntil(t, 10*time.Second, "a compact NOTIFY with the calls (one dialog)", func() bool {
		b := peer.lastBody(subs[0].callID)
		return strings.Contains(b, "confirmed") && strings.Count(b, "<dialog ") == 1
	})
	if env.srv.Watchers("debbie") != 2 {
		t.Errorf("the watcher was dropped")
	}
}

// TestOversizedNotifyGoesOverTCP: a NOTIFY too large for a datagram goes
// whole over TCP to a UDP subscriber that listens on TCP at the same port
// (as phones do), and its 200 there ends the transaction.
func TestOversizedNotifyGoesOverTCP(t *testing.T) {
	env := newEnv(t, trusted)
	peer := newRawPeer(t, env.udp)
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", peer.port()))
	if err != nil {
		t.Skipf("TCP port of the peer taken: %v", err)
	}
	defer ln.Close()
	bodies := make(chan string, 10)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		s := &rawStream{t: t, conn: c, r: bufio.NewReader(c)}
		for {
			m, err := s.readMessage(time.Minute)
			if err != nil {
				return
			}
			// Larger than sipgo's parser takes: answered from the raw text.
			if strings.HasPrefix(m, "NOTIFY ") {
				c.Write(rawResponse([]byte(m), 200, "OK", "peer"))
				_, body, _ := strings.Cut(m, "\r\n\r\n")
				bodies <- body
			}
		}
	}()
	subs := peer.subscribeMany("100", "dialog", 1)
	for i := range 300 {
		env.bridge.Apply(bridge.CallUpdated{Source: "pbx", Call: bridge.Call{ID: fmt.Sprintf("c%d", i), Device: "PJSIP/100",
			Direction: bridge.Incoming, State: bridge.CallConfirmed, Remote: bridge.Party{Number: fmt.Sprintf("%04d", i),
				Name: strings.Repeat("Caller ", 20)}, CallID: fmt.Sprintf("call-%d@pbx", i), LocalTag: "lt", RemoteTag: "rt"}})
	}
	deadline := time.After(10 * time.Second)
	for {
		select {
		case b := <-bodies:
			if n := strings.Count(b, "<dialog "); n == 300 {
				if env.srv.Watchers("debbie") != 1 {
					t.Errorf("the watcher was dropped")
				}
				return
			}
		case <-deadline:
			t.Fatalf("no NOTIFY with the 300 calls over TCP; last over UDP: %d dialogs", strings.Count(peer.lastBody(subs[0].callID), "<dialog "))
		}
	}
}

// TestUnauthenticatedFloodKeepsNoState: 20,000 SUBSCRIBEs without
// credentials, each with its own Call-ID, from one untrusted address are
// all challenged (a To tag, a WWW-Authenticate per algorithm) straight
// from the datagram, and leave nothing behind: with a sipgo server
// transaction each (about 4.5 KiB for 32 s) they held some 90 MB.
func TestUnauthenticatedFloodKeepsNoState(t *testing.T) {
	env := newEnv(t)
	floodKeepsNoState(t, env, udpFlood(t, env, func(int) []string { return nil }))
}

// TestCredentialFloodKeepsNoState: floods that carry credentials (a real
// user's name under a nonce of ours with the wrong password, so that
// each digest is computed; an unknown user), over UDP and over TCP, are
// refused with 401 and keep nothing either. Over UDP each refusal once
// stayed in the transaction queue with its 401 until Timer J: 100,000 of
// them held some 140 MB for 32 s.
func TestCredentialFloodKeepsNoState(t *testing.T) {
	env := newEnv(t)
	peer := newRawPeer(t, env.udp)
	first := &rawSub{callID: "get-a-nonce", fromTag: "ft", user: "100", event: "dialog"}
	peer.send(peer.subscribeMsg(first, 600))
	res := peer.response(first.callID, 5*time.Second)
	chal, err := digest.ParseChallenge(res.GetHeader("WWW-Authenticate").Value())
	if err != nil {
		t.Fatal(err)
	}
	authorization := func(user string) func(int) []string {
		return func(i int) []string {
			c, err := digest.Digest(chal, digest.Options{Method: "SUBSCRIBE", URI: "sip:100@" + env.udp,
				Username: user, Password: "guess", Count: i + 1, Cnonce: "c"})
			if err != nil {
				t.Fatal(err)
			}
			return []string{"Authorization: " + c.String()}
		}
	}
	for _, mode := range []struct {
		name  string
		extra func(int) []string
	}{
		{"wrong password", authorization("bob")},
		{"unknown user", authorization("mallory")},
		{"no credentials", func(int) []string { return nil }},
	} {
		t.Run(mode.name+" over UDP", func(t *testing.T) {
			floodKeepsNoState(t, env, udpFlood(t, env, mode.extra))
		})
		t.Run(mode.name+" over TCP", func(t *testing.T) {
			floodKeepsNoState(t, env, tcpFlood(t, env, mode.extra))
		})
	}
}

// A flood sends its i-th SUBSCRIBE (each with its own Call-ID) and
// hands the responses over.
type flood struct {
	send      func(i int)
	responses <-chan *sip.Response
}

// udpFlood floods from a raw UDP peer on 127.0.0.1 (untrusted).
func udpFlood(t *testing.T, env *testEnv, extra func(int) []string) flood {
	peer := newRawPeer(t, env.udp)
	return flood{responses: peer.responses, send: func(i int) {
		d := &rawSub{callID: fmt.Sprintf("flood-%d-%s", i, strings.Repeat("x", 20)), fromTag: "ft", user: "100", event: "dialog"}
		peer.send(peer.subscribeMsg(d, 600, extra(i)...))
	}}
}

// tcpFlood floods over one TCP connection, the requests written as fast
// as the connection takes them.
func tcpFlood(t *testing.T, env *testEnv, extra func(int) []string) flood {
	c, err := net.Dial("tcp", env.tcp)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	responses := make(chan *sip.Response, 1000)
	go func() {
		s := &rawStream{t: t, conn: c, r: bufio.NewReader(c)}
		for {
			m, err := s.readMessage(time.Minute)
			if err != nil {
				return
			}
			if msg, err := sip.ParseMessage([]byte(m)); err == nil {
				if r, ok := msg.(*sip.Response); ok {
					responses <- r
				}
			}
		}
	}()
	// The UDP peer's rendering, over this connection's address.
	peer := newRawPeer(t, env.udp)
	udpVia := fmt.Sprintf("SIP/2.0/UDP 127.0.0.1:%d", peer.port())
	return flood{responses: responses, send: func(i int) {
		d := &rawSub{callID: fmt.Sprintf("tcp-flood-%d-%s", i, strings.Repeat("x", 20)), fromTag: "ft", user: "100", event: "dialog"}
		msg := strings.Replace(peer.subscribeMsg(d, 600, extra(i)...), udpVia, "SIP/2.0/TCP "+c.LocalAddr().String(), 1)
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
	}}
}

// floodKeepsNoState sends 20,000 SUBSCRIBEs from an untrusted address;
// each must get 401 with a challenge and a To tag, the heap must not
// grow by more than 20 MB per 100,000 (what issue 27 allows), no
// transaction may be held, and a watcher with credentials still gets in.
func floodKeepsNoState(t *testing.T, env *testEnv, f flood) {
	t.Helper()
	const n = 20000
	heldBefore := env.srv.udpTxs.Held()
	var before runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	challenged := 0
	for i := range n {
		f.send(i)
		if i%200 == 199 { // keep within the socket buffers, and count as we go
			for challenged < i-100 {
				select {
				case r := <-f.responses:
					if r.StatusCode != 401 || r.GetHeader("WWW-Authenticate") == nil {
						t.Fatalf("answered %d without a challenge", r.StatusCode)
					}
					if tag, _ := r.To().Params.Get("tag"); tag == "" {
						t.Fatal("a 401 without a To tag")
					}
					challenged++
				case <-time.After(5 * time.Second):
					t.Fatalf("only %d of %d challenged", challenged, i)
				}
			}
		}
	}
	for challenged < n {
		select {
		case <-f.responses:
			challenged++
		case <-time.After(5 * time.Second):
			t.Fatalf("only %d of %d challenged", challenged, n)
		}
	}
	var after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&after)
	grew := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	t.Logf("heap %d → %d bytes after %d challenges", before.HeapAlloc, after.HeapAlloc, n)
	if limit := int64(n) * (20 << 20) / 100000; grew > limit {
		t.Errorf("the heap grew %d KB over %d challenges (at most %d KB): they keep state", grew>>10, n, limit>>10)
	}
	if held := env.srv.udpTxs.Held() - heldBefore; held > 0 {
		t.Errorf("%d transactions held after the flood", held)
	}
	// A watcher with credentials still gets in.
	p := newPhone(t, "UDP")
	p.user, p.password = "bob", "b-secret"
	if res, _ := p.subscribe(env.udp, subReq{user: "100", event: "dialog", expires: 600}); res.StatusCode != 200 {
		t.Errorf("digest SUBSCRIBE after the flood: %d", res.StatusCode)
	}
}
