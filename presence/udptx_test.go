package presence

import (
	"fmt"
	"strconv"
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
	if n := env.srv.udpTxs.size(); n < 201 {
		t.Errorf("%d transactions held, want the 201 just answered (not sipgo's)", n)
	}
	waitUntil(t, sip.Timer_J+5*time.Second, "transactions forgotten after Timer J", func() bool { return env.srv.udpTxs.size() == 0 })
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
	waitUntil(t, 5*time.Second, "no transaction kept", func() bool { return env.srv.udpTxs.size() == 0 })
}

// TestExpiredTransactionsAreLetGo: once expired, no transaction is still
// referenced from the table's queue, also after the queue is compacted
// (its backing array kept copies of moved entries, holding hundreds of
// thousands of responses after a mass set-up).
func TestExpiredTransactionsAreLetGo(t *testing.T) {
	tbl := newUDPTxTable()
	start := time.Now()
	for i := range 3000 {
		key := strconv.Itoa(i)
		tbl.open(key, func() *udpTx { return &udpTx{key: key, created: start.Add(time.Duration(i) * time.Millisecond)} })
	}
	tbl.expire(start.Add(2000 * time.Millisecond)) // the first 2000: compacted
	if n := tbl.size(); n != 1000 {
		t.Fatalf("%d kept, want 1000", n)
	}
	for i, tx := range tbl.queue[:cap(tbl.queue)] {
		if i >= len(tbl.queue) && tx != nil {
			t.Fatalf("slot %d past the queue still holds %s", i, tx.key)
		}
	}
	tbl.expire(start.Add(time.Hour))
	if n := tbl.size(); n != 0 {
		t.Fatalf("%d kept after all expired", n)
	}
	for _, tx := range tbl.queue[:cap(tbl.queue)] {
		if tx != nil {
			t.Fatalf("an expired transaction (%s) is still referenced", tx.key)
		}
	}
}
