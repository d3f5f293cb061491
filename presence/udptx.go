package presence

import (
	"bytes"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Requests over UDP run on Lamplighter's own path: the datagram filter
// reads a SUBSCRIBE, PUBLISH, REGISTER or OPTIONS with sipmsg and hands it
// to its handler with a server transaction of ours (RFC 3261 §17.2.2,
// non-INVITE) instead of sipgo's: a retransmission gets the last response
// again, and a finished transaction holds only that response, the key and
// a time until Timer J, in a table swept in creation order — no
// goroutine, timer or connection reference per transaction. Anything else
// (INVITE, ACK, CANCEL, other methods) still goes to sipgo.

// udpTx is one server transaction for a request that came over UDP.
type udpTx struct {
	key     string
	conn    *net.UDPConn
	to      netip.AddrPort
	created time.Time
	table   *udpTxTable // nil: kept nowhere (OPTIONS)
	slot    int         // its index in table.queue; guarded by table.mu

	mu    sync.Mutex // guards last and final; a leaf, released before the write
	last  []byte     // the last response sent, sent again on a retransmission
	final bool
}

func (tx *udpTx) done() {
	if tx.table != nil {
		tx.table.forget(tx)
	}
}

// respond sends b to where the request came from (RFC 3581: responses
// carry received and rport) and keeps it for retransmissions of the
// request.
func (tx *udpTx) respond(b []byte, code int) error {
	tx.mu.Lock()
	if tx.final { // a transaction answers once
		tx.mu.Unlock()
		return nil
	}
	tx.last, tx.final = b, code >= 200
	tx.mu.Unlock()
	_, err := tx.conn.WriteToUDPAddrPort(b, tx.to)
	if code >= 300 && tx.table != nil {
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

// udpTxTable holds the UDP server transactions until Timer J, by key;
// they expire in the order they were made.
type udpTxTable struct {
	mu    sync.Mutex // guards the rest; a leaf
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
	tx.slot = len(t.queue)
	t.byKey[key] = tx
	t.queue = append(t.queue, tx)
	return tx, true
}

// forget drops tx at once, its slot in the queue too: nothing of a
// refused request (its response, its key) stays until Timer J.
func (t *udpTxTable) forget(tx *udpTx) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byKey[tx.key] == tx {
		delete(t.byKey, tx.key)
	}
	if tx.slot >= t.head && tx.slot < len(t.queue) && t.queue[tx.slot] == tx {
		t.queue[tx.slot] = nil
	}
}

// expire forgets the transactions made before cutoff.
func (t *udpTxTable) expire(cutoff time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for t.head < len(t.queue) {
		tx := t.queue[t.head]
		if tx != nil { // nil: forgotten already
			if !tx.created.Before(cutoff) {
				break
			}
			if t.byKey[tx.key] == tx {
				delete(t.byKey, tx.key)
			}
			t.queue[t.head] = nil
		}
		t.head++
	}
	if t.head > 1024 && t.head*2 > len(t.queue) { // compact
		live := copy(t.queue, t.queue[t.head:])
		// The moved entries' old slots still point at them: cleared, or
		// the backing array would keep expired transactions alive.
		clear(t.queue[live:])
		t.queue = t.queue[:live]
		t.head = 0
		for i, tx := range t.queue {
			if tx != nil {
				tx.slot = i
			}
		}
	}
	if t.head == len(t.queue) && cap(t.queue) > 4096 {
		t.queue, t.head = nil, 0 // all expired: let a burst's array go
	}
}

// held returns how many transactions the queue still holds until
// Timer J (those that took effect).
func (t *udpTxTable) held() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, tx := range t.queue[t.head:] {
		if tx != nil {
			n++
		}
	}
	return n
}

// size returns how many transactions are held.
func (t *udpTxTable) size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byKey)
}

// queueDatagram hands a request datagram to the workers (a copy: the
// read buffer is reused), or sheds it when the queue is full.
func (s *Server) queueDatagram(local *net.UDPConn, from netip.AddrPort, data []byte) {
	if s.queuedBytes.Load()+int64(len(data)) > maxQueuedBytes {
		s.shed(local, from, data, "requests")
		return
	}
	s.queuedBytes.Add(int64(len(data)))
	select {
	case s.work <- udpJob{conn: local, from: from, data: s.datagramCopy(data)}:
	default:
		s.queuedBytes.Add(-int64(len(data)))
		s.shed(local, from, data, "requests")
	}
}

// serveDatagram runs a request datagram on Lamplighter's own path, in a
// worker: read by sipmsg (what cannot be read is answered 400 from the
// bytes), then run with a transaction of ours, or with none when the
// answer cannot change anything.
func (s *Server) serveDatagram(local *net.UDPConn, from netip.AddrPort, data []byte) {
	// The job's copy is ours and not written again while the request's
	// strings share it: only a request answered and forgotten at once
	// (challenged, refused, shed) gives it and its Request back for
	// reuse; one that may leave strings behind leaves both to the
	// collector.
	req := s.requests.Get().(*sipmsg.Request)
	if err := sipmsg.ParseInto(req, unsafe.String(&data[0], len(data))); err != nil {
		// What cannot be read is answered from the bytes when it can be,
		// and kept nowhere.
		code, reason := readFailure(err)
		s.answerDatagram(local, from, data, code, reason)
		s.recycle(req, data)
		return
	}
	handler, ok := s.handlerFor(req.Method)
	if !ok {
		return // onDatagram let only served methods in: cannot happen
	}
	req.Transport, req.Peer, req.Source = "UDP", from, from.String()
	switch s.admit(req) {
	case admitForward:
		if sc := s.toSipgo[local]; sc != nil {
			sc.pass(data, from)
		}
		return
	case admitChallenge:
		// Kept nowhere: a retransmission is challenged again, and a
		// flood of them costs no memory and next to no garbage.
		s.challengeDatagram(local, from, req)
		s.recycle(req, data)
		return
	}
	switch {
	case req.Method == "OPTIONS":
		// Anyone may ask; the answer changes nothing: kept nowhere.
		handler(req, &udpTx{conn: local, to: from})
		return
	}
	key := udpTxKey(req, from)
	tx, isNew := s.udpTxs.open(key, func() *udpTx {
		return &udpTx{key: key, conn: local, to: from, created: time.Now(), table: s.udpTxs}
	})
	if !isNew {
		tx.retransmitted()
		return
	}
	if why := s.overloaded(req); why != "" {
		s.udpTxs.forget(tx) // its retransmission is a new request
		s.shed(local, from, data, why)
		s.recycle(req, data)
		return
	}
	handler(req, tx)
}

// challengeDatagram answers req, which carries no credentials
// (mustChallenge), as authenticate would, in a reused buffer and with a
// transaction kept nowhere.
func (s *Server) challengeDatagram(local *net.UDPConn, from netip.AddrPort, req *sipmsg.Request) {
	bp := s.datagrams.Get().(*[]byte)
	s.challenge(req, &udpTx{conn: local, to: from}, false, (*bp)[:0])
	s.datagrams.Put(bp) // written by now; a copy grown past it is the collector's
}

// datagramBytes is the size of the buffers request datagrams are copied
// into for the workers (most requests fit; a larger one gets a buffer of
// its own, never reused).
const datagramBytes = 2048

// datagramCopy copies a request datagram out of the read buffer for a
// worker, into a reused buffer when one is free.
func (s *Server) datagramCopy(data []byte) []byte {
	if len(data) > datagramBytes {
		return bytes.Clone(data)
	}
	b := s.datagrams.Get().(*[]byte)
	return append((*b)[:0], data...)
}

// recycle gives a request answered and forgotten, and the datagram it
// was read from, back for reuse. Nothing may refer to either after.
func (s *Server) recycle(req *sipmsg.Request, data []byte) {
	*req = sipmsg.Request{} // drops what it pointed at
	s.requests.Put(req)
	if cap(data) == datagramBytes {
		data = data[:0]
		s.datagrams.Put(&data)
	}
}

// udpTxKey matches a request to its transaction (RFC 3261 §17.2.3): the
// top Via's branch, sent-by and the method; for a branch without the
// magic cookie (RFC 2543 peers), the Call-ID, CSeq and source too.
func udpTxKey(req *sipmsg.Request, from netip.AddrPort) string {
	via, _ := req.TopVia() // sipmsg has read every Via
	branch := via.Branch()
	b := make([]byte, 0, len(branch)+len(via.Host)+len(req.Method)+16)
	b = append(b, branch...)
	b = append(b, '|')
	b = append(b, via.Host...)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(via.Port), 10)
	b = append(b, '|')
	b = append(b, req.Method...)
	if !strings.HasPrefix(branch, sip.RFC3261BranchMagicCookie) {
		b = append(b, '|')
		b = append(b, req.CallID...)
		b = append(b, '|')
		b = strconv.AppendUint(b, uint64(req.CSeq), 10)
		b = append(b, '|')
		b = from.AppendTo(b)
	}
	return string(b)
}
