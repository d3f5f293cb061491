package presence

import (
	"fmt"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestUDPRequestsOnOwnPath: a SUBSCRIBE over UDP runs on Lamplighter's
// own transactions: a retransmission gets the same 200 (same To tag) and
// makes no second subscription, and the table is empty again once Timer J
// has passed.
func TestUDPRequestsOnOwnPath(t *testing.T) {
	env := newEnv(t, trusted)
	peer := newRawPeer(t, env.udp)
	d := &rawSub{callID: "retransmitted", fromTag: "ft", user: "100", event: "dialog"}
	msg := peer.subscribeMsg(d, 600)
	peer.send(msg)
	first := peer.response(d.callID, 5*time.Second)
	peer.send(msg) // the same datagram again: a retransmission
	again := peer.response(d.callID, 5*time.Second)
	t1, _ := first.To().Params.Get("tag")
	t2, _ := again.To().Params.Get("tag")
	if first.StatusCode != 200 || again.StatusCode != 200 || t1 == "" || t1 != t2 {
		t.Fatalf("answers %d (tag %q) then %d (tag %q): want the same 200", first.StatusCode, t1, again.StatusCode, t2)
	}
	if n := env.srv.Watchers("debbie"); n != 1 {
		t.Errorf("%d subscriptions from one SUBSCRIBE and its retransmission", n)
	}
	peer.subscribeMany("100", "presence", 200)
	if n := env.srv.udpTxs.Size(); n < 201 {
		t.Errorf("%d transactions held, want the 201 just answered (not sipgo's)", n)
	}
	waitUntil(t, sip.Timer_J+5*time.Second, "transactions forgotten after Timer J", func() bool { return env.srv.udpTxs.Size() == 0 })
}

// TestRefusalsAndOptionsKeepNoTransaction: what changes nothing keeps
// nothing: OPTIONS from anyone, and requests refused (wrong credentials
// here), each with its own branch, leave the table empty, so a flood of
// them costs no memory; a retransmission of a refusal is refused again.
func TestRefusalsAndOptionsKeepNoTransaction(t *testing.T) {
	env := newEnv(t)
	peer := newRawPeer(t, env.udp)
	const n = 2000
	for i := range n {
		msg, id := peer.request("OPTIONS", "100", nil, "")
		peer.send(msg)
		if i%100 == 99 {
			peer.response(id, 5*time.Second)
		}
	}
	bad := `Authorization: Digest username="bob", realm="test.invalid", nonce="00", uri="sip:100@127.0.0.1", response="00000000000000000000000000000000", algorithm=MD5`
	for i := range n {
		d := &rawSub{callID: fmt.Sprintf("bad-%d", i), fromTag: "ft", user: "100", event: "dialog"}
		msg := peer.subscribeMsg(d, 600, bad)
		peer.send(msg)
		if i%100 == 99 {
			if res := peer.response(d.callID, 5*time.Second); res.StatusCode != 401 {
				t.Fatalf("wrong credentials: %d", res.StatusCode)
			}
			peer.send(msg) // a retransmission: refused again
			if res := peer.response(d.callID, 5*time.Second); res.StatusCode != 401 {
				t.Fatalf("retransmission of a refusal: %d", res.StatusCode)
			}
		}
	}
	waitUntil(t, 5*time.Second, "no transaction kept", func() bool { return env.srv.udpTxs.Size() == 0 })
}
