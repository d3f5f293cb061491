// Package udptx keeps the presence server's non-INVITE server
// transactions over UDP (RFC 3261 §17.2.2): a retransmission of a
// request gets the last response again, and a finished transaction holds
// only that response, its key and a time until Timer J, in a table swept
// in creation order: no goroutine, timer or connection reference per
// transaction. A refusal (3xx and up) is kept by no one, so that a flood
// of bad requests leaves nothing behind.
//
// Locks: Table.mu guards the table, Tx.mu a transaction's response; both
// are leaves, and no write happens under either.
package udptx

import (
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Tx is one server transaction for a request that came over UDP.
type Tx struct {
	key     string
	conn    *net.UDPConn
	to      netip.AddrPort
	created time.Time
	table   *Table // nil: kept nowhere (Stateless)
	slot    int    // its index in table.queue; guarded by table.mu

	mu    sync.Mutex // guards last and final; a leaf, released before the write
	last  []byte     // the last response sent, sent again on a retransmission
	final bool
}

// Stateless is a transaction kept nowhere: for a request whose answer
// changes nothing (OPTIONS, a challenge), which a retransmission gets
// again from scratch.
func Stateless(conn *net.UDPConn, to netip.AddrPort) *Tx { return &Tx{conn: conn, to: to} }

// Done ends tx with no response of the server's (the request went on
// statelessly, and the next hop answers): nothing is kept, so that a
// retransmission goes on too.
func (tx *Tx) Done() {
	if tx.table != nil {
		tx.table.Forget(tx)
	}
}

// Respond sends b to where the request came from (RFC 3581: responses
// carry received and rport) and keeps it for retransmissions of the
// request.
func (tx *Tx) Respond(b []byte, code int) error {
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
		tx.table.Forget(tx)
	}
	return err
}

// Retransmitted answers a retransmission of the request with the last
// response, if any yet (none: the handler is still at work).
func (tx *Tx) Retransmitted() {
	tx.mu.Lock()
	b := tx.last
	tx.mu.Unlock()
	if b != nil {
		_, _ = tx.conn.WriteToUDPAddrPort(b, tx.to)
	}
}

// Table holds the UDP server transactions until Timer J, by key; they
// expire in the order they were made.
type Table struct {
	mu    sync.Mutex // guards the rest; a leaf
	byKey map[string]*Tx
	queue []*Tx // by creation; queue[head:] are live
	head  int
}

// NewTable makes an empty table.
func NewTable() *Table { return &Table{byKey: map[string]*Tx{}} }

// Open returns the transaction of key, made now for a request from to
// (answered from conn) when it is new (isNew is then true).
func (t *Table) Open(key string, conn *net.UDPConn, to netip.AddrPort) (tx *Tx, isNew bool) {
	return t.open(key, func() *Tx { return &Tx{key: key, conn: conn, to: to, created: time.Now(), table: t} })
}

func (t *Table) open(key string, mk func() *Tx) (tx *Tx, isNew bool) {
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

// Forget drops tx at once, its slot in the queue too: nothing of a
// refused request (its response, its key) stays until Timer J.
func (t *Table) Forget(tx *Tx) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.byKey[tx.key] == tx {
		delete(t.byKey, tx.key)
	}
	if tx.slot >= t.head && tx.slot < len(t.queue) && t.queue[tx.slot] == tx {
		t.queue[tx.slot] = nil
	}
}

// Expire forgets the transactions made before cutoff (now less Timer J).
func (t *Table) Expire(cutoff time.Time) {
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

// Held returns how many transactions the queue still holds until
// Timer J (those that took effect).
func (t *Table) Held() int {
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

// Size returns how many transactions are held.
func (t *Table) Size() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byKey)
}

// Key matches a request to its transaction (RFC 3261 §17.2.3): the
// top Via's branch, sent-by and the method; for a branch without the
// magic cookie (RFC 2543 peers), the Call-ID, CSeq and source too.
func Key(req *sipmsg.Request, from netip.AddrPort) string {
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
