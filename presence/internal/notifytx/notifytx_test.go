package notifytx

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// TestDatagramMatchesNotifyResponses: a 200 to a NOTIFY in flight is
// taken from the raw datagram (sipgo never sees it) and ends that
// transaction; a provisional response or a late copy is swallowed too;
// anything else goes on to sipgo unchanged.
func TestDatagramMatchesNotifyResponses(t *testing.T) {
	type outcome struct {
		tx   *Tx[string]
		code int
	}
	done := make(chan outcome, 4)
	n := New(func(tx *Tx[string], res Outcome, _ string, _ error) { done <- outcome{tx, res.Code} }, time.Second)
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tx := n.NewTx("a subscription")
	*tx.Buf = append(*tx.Buf, "NOTIFY sip:w@127.0.0.1 SIP/2.0\r\n\r\n"...)
	tx.ToUDP(conn, conn.LocalAddr().(*net.UDPAddr).AddrPort())
	if err := n.Start(tx); err != nil {
		t.Fatal(err)
	}
	response := func(status, branch, method string) []byte {
		return []byte("SIP/2.0 " + status + "\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=" + branch +
			";rport=5060\r\nCSeq: 7 " + method + "\r\nContent-Length: 0\r\n\r\n")
	}
	if got := n.Datagram(response("100 Trying", tx.Branch, "NOTIFY"), tx.to); got != nil {
		t.Errorf("provisional response passed on to sipgo")
	}
	if got := n.Datagram(response("200 OK", tx.Branch, "SUBSCRIBE"), tx.to); got == nil {
		t.Errorf("a SUBSCRIBE's response was swallowed")
	}
	if got := n.Datagram(response("200 OK", "z9hG4bK-someone-else", "NOTIFY"), tx.to); got == nil {
		t.Errorf("a response to another's NOTIFY was swallowed")
	}
	if got := n.Datagram([]byte("NOTIFY sip:x SIP/2.0\r\n\r\n"), tx.to); got == nil {
		t.Errorf("a request was swallowed")
	}
	forger := netip.AddrPortFrom(tx.to.Addr(), tx.to.Port()+1)
	if got := n.Datagram(response("481 Gone", tx.Branch, "NOTIFY"), forger); got != nil {
		t.Errorf("a forged 481 was passed on to sipgo")
	}
	select {
	case o := <-done:
		t.Fatalf("a 481 from another address ended the transaction (%d)", o.code)
	default:
	}
	if got := n.Datagram(response("200 OK", tx.Branch, "NOTIFY"), tx.to); got != nil {
		t.Errorf("the NOTIFY's 200 was passed on to sipgo")
	}
	select {
	case o := <-done:
		if o.tx != tx || o.code != 200 {
			t.Errorf("transaction ended with %d", o.code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the 200 did not end the transaction")
	}
	if got := n.Datagram(response("200 OK", tx.Branch, "NOTIFY"), tx.to); got != nil {
		t.Errorf("a late copy of the 200 was passed on to sipgo")
	}
	select {
	case o := <-done:
		t.Errorf("a late copy ended a transaction again (%d)", o.code)
	default:
	}
}

// TestNotifyBranchesAreRandom: branches carry 128 random bits after a
// fixed mark, so that seeing one NOTIFY tells nothing of the next.
func TestNotifyBranchesAreRandom(t *testing.T) {
	n := New[string](nil, time.Second)
	seen := map[string]bool{}
	prev := ""
	for range 1000 {
		b := n.NewTx("").Branch
		rnd, ok := strings.CutPrefix(b, BranchPrefix)
		if !ok || len(rnd) != 32 || !strings.HasPrefix(b, "z9hG4bK") {
			t.Fatalf("branch %q: want the cookie, the mark and 32 hex digits", b)
		}
		if seen[rnd] {
			t.Fatalf("branch %q repeated", b)
		}
		// A counter shares its leading digits with the one before.
		if prev != "" && rnd[:8] == prev[:8] {
			t.Fatalf("consecutive branches %q and %q share their first 32 bits", prev, rnd)
		}
		seen[rnd], prev = true, rnd
	}
}
