package presence

import (
	"bytes"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Requests over UDP run on Lamplighter's own path: the datagram filter
// parses a SUBSCRIBE, PUBLISH, REGISTER or OPTIONS and hands it to its
// handler with a server transaction of ours (RFC 3261 §17.2.2, non-INVITE)
// instead of sipgo's: a retransmission gets the last response again, and a
// finished transaction holds only that response, the key and a time until
// Timer J, in a table swept in creation order — no goroutine, timer or
// connection reference per transaction. Anything else (INVITE, ACK,
// CANCEL, responses, what does not parse) still goes to sipgo.

// udpTx is one server transaction for a request that came over UDP. It
// implements sip.ServerTransaction for the handlers.
type udpTx struct {
	key     string
	conn    *net.UDPConn
	to      netip.AddrPort
	created time.Time
	table   *udpTxTable // nil: kept nowhere (OPTIONS)

	mu    sync.Mutex
	last  []byte // the last response sent, sent again on a retransmission
	final bool
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Respond sends res to where the request came from (RFC 3581: the
// handlers' responses carry received and rport) and keeps it for
// retransmissions of the request.
func (tx *udpTx) Respond(res *sip.Response) error {
	b := []byte(res.String())
	tx.mu.Lock()
	if tx.final { // a transaction answers once
		tx.mu.Unlock()
		return nil
	}
	tx.last, tx.final = b, res.StatusCode >= 200
	tx.mu.Unlock()
	_, err := tx.conn.WriteToUDPAddrPort(b, tx.to)
	if res.StatusCode >= 300 && tx.table != nil {
		// A refusal is kept by no one: a retransmission is refused again
		// (the handlers' refusals change nothing), and a flood of bad
		// requests leaves no state behind. Only what took effect (2xx)
		// is kept, so that its retransmission does not take effect twice.
		tx.table.forget(tx)
	}
	return err
}

// retransmitted answers a retransmission of the request with the last
// response, if any yet (none: the handler is still at work).
func (tx *udpTx) retransmitted() {
	tx.mu.Lock()
	b := tx.last
	tx.mu.Unlock()
	if b != nil {
		_, _ = tx.conn.WriteToUDPAddrPort(b, tx.to)
	}
}

func (tx *udpTx) Acks() <-chan *sip.Request          { return nil }
func (tx *udpTx) OnCancel(sip.FnTxCancel) bool       { return false }
func (tx *udpTx) Terminate()                         {}
func (tx *udpTx) OnTerminate(sip.FnTxTerminate) bool { return false }
func (tx *udpTx) Done() <-chan struct{}              { return closedChan }
func (tx *udpTx) Err() error                         { return nil }

var _ sip.ServerTransaction = (*udpTx)(nil)

// udpTxTable holds the UDP server transactions until Timer J, by key;
// they expire in the order they were made.
type udpTxTable struct {
	mu    sync.Mutex
	byKey map[string]*udpTx
	queue []*udpTx // by creation; queue[head:] are live
	head  int
}

func newUDPTxTable() *udpTxTable { return &udpTxTable{byKey: map[string]*udpTx{}} }

// open returns the transaction of key, made now when it is new (new is
// then true).
func (t *udpTxTable) open(key string, mk func() *udpTx) (tx *udpTx, isNew bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if tx := t.byKey[key]; tx != nil {
		return tx, false
	}
	tx = mk()
	t.byKey[key] = tx
	t.queue = append(t.queue, tx)
	return tx, true
}

// forget drops tx at once (its slot in the queue goes at expiry).
func (t *udpTxTable) forget(tx *udpTx) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byKey[tx.key] == tx {
		delete(t.byKey, tx.key)
	}
}

// expire forgets the transactions made before cutoff.
func (t *udpTxTable) expire(cutoff time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.head < len(t.queue) && t.queue[t.head].created.Before(cutoff) {
		tx := t.queue[t.head]
		if t.byKey[tx.key] == tx {
			delete(t.byKey, tx.key)
		}
		t.queue[t.head] = nil
		t.head++
	}
	if t.head > 1024 && t.head*2 > len(t.queue) { // compact
		t.queue = append(t.queue[:0], t.queue[t.head:]...)
		t.head = 0
	}
}

// size returns how many transactions are held.
func (t *udpTxTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byKey)
}

// udpHandled are the methods run on Lamplighter's own path over UDP.
func (s *Server) udpHandler(m sip.RequestMethod) (sipgoHandler, bool) {
	switch m {
	case sip.SUBSCRIBE:
		return s.checked(s.handleSubscribe), true
	case sip.PUBLISH:
		return s.checked(s.handlePublish), true
	case sip.REGISTER:
		return s.checked(s.handleRegister), true
	case sip.OPTIONS:
		return s.checked(s.handleOptions), true
	}
	return nil, false
}

type sipgoHandler = func(req *sip.Request, tx sip.ServerTransaction)

// serveDatagram runs a request datagram on Lamplighter's own path; it
// reports false for what sipgo should take instead.
func (s *Server) serveDatagram(local *net.UDPConn, from netip.AddrPort, data []byte) bool {
	// A copy: the read buffer is reused while the handler runs.
	msg, err := s.parser.ParseSIP(bytes.Clone(data))
	if err != nil {
		return false // sipgo's parser says why, at debug level
	}
	req, ok := msg.(*sip.Request)
	if !ok {
		return false
	}
	handler, ok := s.udpHandler(req.Method)
	if !ok {
		return false
	}
	via := req.Via()
	if via == nil || req.CSeq() == nil || req.CallID() == nil {
		return false
	}
	req.SetTransport("UDP")
	req.SetSource(from.String())
	req.SetDestination(local.LocalAddr().String())
	if req.Method == sip.OPTIONS {
		// Anyone may ask; the answer changes nothing: kept nowhere.
		go handler(req, &udpTx{conn: local, to: from})
		return true
	}
	key := udpTxKey(req, via, from)
	tx, isNew := s.udpTxs.open(key, func() *udpTx {
		return &udpTx{key: key, conn: local, to: from, created: time.Now(), table: s.udpTxs}
	})
	if !isNew {
		tx.retransmitted()
		return true
	}
	go handler(req, tx)
	return true
}

// udpTxKey matches a request to its transaction (RFC 3261 §17.2.3): the
// top Via's branch, sent-by and the method; for a branch without the
// magic cookie (RFC 2543 peers), the Call-ID, CSeq and source too.
func udpTxKey(req *sip.Request, via *sip.ViaHeader, from netip.AddrPort) string {
	branch, _ := via.Params.Get("branch")
	var b strings.Builder
	b.WriteString(branch)
	b.WriteByte('|')
	b.WriteString(via.Host)
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(via.Port))
	b.WriteByte('|')
	b.WriteString(string(req.Method))
	if !strings.HasPrefix(branch, sip.RFC3261BranchMagicCookie) {
		b.WriteByte('|')
		b.WriteString(req.CallID().Value())
		b.WriteByte('|')
		b.WriteString(strconv.FormatUint(uint64(req.CSeq().SeqNo), 10))
		b.WriteByte('|')
		b.WriteString(from.String())
	}
	return b.String()
}

// sweepUDPTxs forgets finished UDP transactions after Timer J, once a
// second, until done is closed.
func (s *Server) sweepUDPTxs(done <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case now := <-t.C:
			s.udpTxs.expire(now.Add(-sip.Timer_J))
		}
	}
}
