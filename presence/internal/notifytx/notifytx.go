// Package notifytx runs the presence server's NOTIFY client
// transactions (RFC 3261 §17.1.2, non-INVITE) rather than sipgo: a
// NOTIFY already rendered to bytes is written to a UDP listener or a
// stream connection, retransmitted on Timer E and given up on Timer F.
// Responses are read from their bytes by the UDP readers and by the
// guard of each stream connection the server accepted (Datagram,
// Streamed); on a connection the server opened itself they come through
// sipgo's handler for responses that match no sipgo transaction
// (Response). This halves the CPU a NOTIFY costs and keeps no
// per-transaction goroutine (see BENCHMARKS.md). A transaction knows
// nothing of subscriptions: it carries its owner, and its outcome goes
// to one callback.
//
// Locks: Table's mu guards the transactions in flight; under it only a
// UDP transaction's sending (fire, whose write does not block). Start
// takes mu under sending, before the transaction is in the table (so
// fire cannot hold mu for it). The outcome is reported with mu released.
package notifytx

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Table holds the NOTIFY transactions in flight, by Via branch.
// Branches are random (a CSPRNG seeded from the kernel), so that nobody who
// saw one NOTIFY can guess the next and answer it with a forged 481.
type Table[O any] struct {
	randMu sync.Mutex // guards rand; a leaf
	rand   *mrand.ChaCha8
	// mu guards txs and closed (see the package's lock notes).
	mu           sync.Mutex
	txs          map[string]*Tx[O]
	closed       bool
	bufs         sync.Pool
	writeTimeout time.Duration
	done         func(tx *Tx[O], res Outcome, failure string, err error)
}

// Outcome is the final response that ended a NOTIFY transaction: all
// its outcome needs (Code 0: none came).
type Outcome struct {
	Code   int
	Reason string
}

// Tx is one NOTIFY in flight, for its owner.
type Tx[O any] struct {
	Owner    O
	Branch   string  // its top Via's branch
	Buf      *[]byte // the message, kept for retransmission; the owner renders it
	udp      *net.UDPConn
	to       netip.AddrPort
	stream   sip.Connection
	stub     *sip.Request // what sipgo's stream connection needs around the bytes
	timer    *time.Timer
	interval time.Duration // Timer E, doubling up to t2
	t2       time.Duration
	deadline time.Time // Timer F

	// sending is held while the message bytes are in use, so that the
	// buffer goes back to the pool only after the last write: across one
	// write. Under it only the table's mu (Start).
	sending sync.Mutex
}

// New makes a table whose transactions report their outcome to done; a
// write to a stream connection the server opened itself is bounded by
// writeTimeout.
func New[O any](done func(*Tx[O], Outcome, string, error), writeTimeout time.Duration) *Table[O] {
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		panic("presence: no randomness for NOTIFY branches: " + err.Error())
	}
	n := &Table[O]{rand: mrand.NewChaCha8(seed), txs: map[string]*Tx[O]{}, done: done, writeTimeout: writeTimeout}
	n.bufs.New = func() any { b := make([]byte, 0, 2048); return &b }
	return n
}

// BranchPrefix starts every NOTIFY branch: the RFC 3261 magic cookie and
// a mark that tells our late answers from other traffic.
const BranchPrefix = "z9hG4bK.LL."

// NewTx starts a transaction record for owner with a fresh branch and
// buffer.
func (n *Table[O]) NewTx(owner O) *Tx[O] {
	var r [16]byte
	n.randMu.Lock()
	_, _ = n.rand.Read(r[:])
	n.randMu.Unlock()
	var b [len(BranchPrefix) + 32]byte
	copy(b[:], BranchPrefix)
	hex.Encode(b[len(BranchPrefix):], r[:])
	return &Tx[O]{Owner: owner, Branch: string(b[:]), Buf: n.bufs.Get().(*[]byte)}
}

// ToUDP sends tx from conn to a UDP peer.
func (tx *Tx[O]) ToUDP(conn *net.UDPConn, to netip.AddrPort) { tx.udp, tx.to = conn, to }

// ToStream sends tx on a stream connection (with the request sipgo's
// connection needs around the bytes: transport and destination).
func (tx *Tx[O]) ToStream(c sip.Connection, stub *sip.Request) { tx.stream, tx.stub = c, stub }

// Scratch lends a buffer of the table's pool (give it back with
// PutScratch).
func (n *Table[O]) Scratch() *[]byte { return n.bufs.Get().(*[]byte) }

// PutScratch gives a lent buffer back.
func (n *Table[O]) PutScratch(b *[]byte) { n.bufs.Put(b) }

// Start sends tx and arms its timers (sipgo's T1, T2 and Timer F, so
// that sip.SetTimers applies here too); on error nothing is left behind.
func (n *Table[O]) Start(tx *Tx[O]) error {
	tx.deadline, tx.t2 = time.Now().Add(sip.Timer_F), sip.T2
	first := sip.Timer_F
	if tx.udp != nil {
		tx.interval, first = sip.T1, sip.T1
	}
	tx.sending.Lock()
	n.mu.Lock()
	if n.closed {
		n.mu.Unlock()
		tx.sending.Unlock()
		n.Release(tx)
		return net.ErrClosed
	}
	n.txs[tx.Branch] = tx
	tx.timer = time.AfterFunc(first, func() { n.fire(tx) })
	n.mu.Unlock()
	err := tx.send(n.writeTimeout)
	tx.sending.Unlock()
	if err != nil {
		n.mu.Lock()
		removed := n.txs[tx.Branch] == tx
		delete(n.txs, tx.Branch)
		tx.timer.Stop()
		n.mu.Unlock()
		if removed {
			n.Release(tx)
		}
		return err
	}
	return nil
}

func (tx *Tx[O]) send(writeTimeout time.Duration) error {
	if tx.udp != nil {
		_, err := tx.udp.WriteToUDPAddrPort(*tx.Buf, tx.to)
		return err
	}
	// Connections we opened ourselves are not guarded: bound the write
	// here too, so that a peer that stops reading cannot hold a worker.
	if c, ok := tx.stream.(interface{ SetWriteDeadline(time.Time) error }); ok {
		_ = c.SetWriteDeadline(time.Now().Add(writeTimeout))
	}
	return tx.stream.WriteMsg(rawMessage{Request: tx.stub, data: *tx.Buf})
}

// fire is Timer E (retransmit over UDP) and Timer F (give up).
func (n *Table[O]) fire(tx *Tx[O]) {
	now := time.Now()
	n.mu.Lock()
	if n.txs[tx.Branch] != tx {
		n.mu.Unlock()
		return // answered meanwhile
	}
	if !now.Before(tx.deadline) {
		delete(n.txs, tx.Branch)
		n.mu.Unlock()
		n.Release(tx)
		n.done(tx, Outcome{}, "timeout", fmt.Errorf("no final response within %v", sip.Timer_F))
		return
	}
	tx.interval = min(2*tx.interval, tx.t2)
	tx.timer.Reset(min(tx.interval, tx.deadline.Sub(now)))
	tx.sending.Lock()
	n.mu.Unlock()
	_ = tx.send(n.writeTimeout) // a lost retransmission is retried by the next
	tx.sending.Unlock()
}

// Response takes a response that no sipgo transaction matched (over a
// stream transport, or one the datagram filter left to sipgo); it reports
// whether it answered a NOTIFY of ours in flight.
func (n *Table[O]) Response(res *sip.Response) bool {
	via := res.Via()
	if via == nil || res.CSeq() == nil || res.CSeq().MethodName != sip.NOTIFY {
		return false
	}
	branch, _ := via.Params.Get("branch")
	return n.answer([]byte(branch), res.StatusCode, func(tx *Tx[O]) bool { return tx.cameFrom(res) }, func() string { return res.Reason })
}

// cameFrom reports whether a response reached us the way tx's NOTIFY
// left: on the same stream connection, or from the address it was sent
// to over UDP. Anything else is a forgery (or a stray) and is ignored.
func (tx *Tx[O]) cameFrom(res *sip.Response) bool {
	if tx.stream == nil {
		ap, err := netip.ParseAddrPort(res.Source())
		return err == nil && netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) == tx.to
	}
	if c, ok := tx.stream.(interface{ RemoteAddr() net.Addr }); ok {
		return res.Source() == c.RemoteAddr().String()
	}
	return res.Source() == tx.stub.Destination()
}

// answer ends the transaction of branch on a final response (res builds
// it) when from accepts where it came from; a provisional one only says
// the peer is there. It reports whether the transaction was in flight.
func (n *Table[O]) answer(branch []byte, code int, from func(*Tx[O]) bool, reason func() string) bool {
	n.mu.Lock()
	tx := n.txs[string(branch)] // no copy for the lookup
	if tx != nil && !from(tx) {
		n.mu.Unlock()
		return false
	}
	if tx == nil || code < 200 {
		n.mu.Unlock()
		return tx != nil
	}
	delete(n.txs, tx.Branch)
	n.mu.Unlock()
	tx.timer.Stop()
	n.Release(tx)
	n.done(tx, Outcome{Code: code, Reason: reason()}, "", nil)
	return true
}

// Datagram takes a UDP datagram before sipgo parses it: a response to one
// of our NOTIFYs is matched here by its top Via branch, without building
// a sip.Response (it is the bulk of what a fan-out receives). It returns
// the datagram for sipgo, or nil when it was handled. A response from
// any address but the one the NOTIFY went to is dropped.
func (n *Table[O]) Datagram(data []byte, from netip.AddrPort) []byte {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if n.raw(data, func(tx *Tx[O]) bool { return tx.stream == nil && tx.to == from }) {
		return nil
	}
	return data
}

// Streamed takes a response read on a guarded stream connection whose
// peer is remote, as datagram does for UDP: it reports whether the
// response was handled (else sipgo reads it). A response is taken for a
// NOTIFY that left on a connection to the same peer only.
func (n *Table[O]) Streamed(msg []byte, remote string) bool {
	return n.raw(msg, func(tx *Tx[O]) bool {
		if tx.stream == nil {
			return false
		}
		if c, ok := tx.stream.(interface{ RemoteAddr() net.Addr }); ok {
			return c.RemoteAddr().String() == remote
		}
		return tx.stub.Destination() == remote
	})
}

// raw reads a response to a NOTIFY from its bytes (status, top Via's
// branch, CSeq) and ends its transaction when from accepts the
// transaction; it reports whether the response is done with: handled,
// a late copy of an answered one, or a forgery of our branch. Anything
// it cannot read plainly (folded lines) is left to sipgo's parser.
func (n *Table[O]) raw(data []byte, from func(*Tx[O]) bool) bool {
	const prefix = "SIP/2.0 "
	if len(data) < len(prefix)+3 || string(data[:len(prefix)]) != prefix {
		return false
	}
	code, err := strconv.Atoi(string(data[len(prefix) : len(prefix)+3]))
	if err != nil || code < 100 || code > 699 {
		return false
	}
	head, _, _ := sipmsg.CutHead(data)
	status, rest := sipmsg.CutLine(head)
	var branch []byte
	notify, viaSeen := false, false
	for len(rest) > 0 {
		var line []byte
		line, rest = sipmsg.CutLine(rest)
		name, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			return false // folded or odd: leave it to sipgo's parser
		}
		name = bytes.TrimSpace(name)
		switch {
		case !viaSeen && (bytes.EqualFold(name, []byte("Via")) || bytes.EqualFold(name, []byte("v"))):
			viaSeen = true
			first, _, _ := bytes.Cut(value, []byte(","))
			if _, after, found := bytes.Cut(first, []byte(";branch=")); found {
				end := bytes.IndexAny(after, "; \t")
				if end < 0 {
					end = len(after)
				}
				branch = after[:end]
			}
		case bytes.EqualFold(name, []byte("CSeq")):
			notify = bytes.HasSuffix(bytes.TrimSpace(value), []byte(" NOTIFY"))
		}
	}
	if !notify || branch == nil {
		return false
	}
	ours := n.answer(branch, code, from, func() string {
		if code >= 200 && code < 300 {
			return "" // read only to say why a NOTIFY failed
		}
		if len(status) > len(prefix)+4 {
			return string(status[len(prefix)+4:])
		}
		return ""
	})
	return ours || bytes.HasPrefix(branch, []byte(BranchPrefix))
}

// Release returns tx's buffer to the pool once no write uses it, and the
// reference to its stream connection that sipgo's pool took for it.
func (n *Table[O]) Release(tx *Tx[O]) {
	tx.sending.Lock()
	defer tx.sending.Unlock()
	if tx.stream != nil {
		tx.stream.TryClose()
		tx.stream = nil
	}
	if tx.Buf != nil && cap(*tx.Buf) <= 16<<10 {
		*tx.Buf = (*tx.Buf)[:0]
		n.bufs.Put(tx.Buf)
	}
	tx.Buf = nil
}

// Pending is the number of NOTIFYs in flight.
func (n *Table[O]) Pending() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.txs)
}

// Close stops every transaction; their outcome is never reported.
func (n *Table[O]) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.closed = true
	for b, tx := range n.txs {
		tx.timer.Stop()
		delete(n.txs, b)
	}
}

// rawMessage is a request already rendered to bytes, for sipgo's stream
// connections: they write whatever StringWrite gives. The embedded
// request only carries the transport and destination.
type rawMessage struct {
	*sip.Request
	data []byte
}

// StringWrite writes the rendered bytes.
func (m rawMessage) StringWrite(w io.StringWriter) {
	if bw, ok := w.(io.Writer); ok {
		bw.Write(m.data)
		return
	}
	w.WriteString(string(m.data))
}

// String returns the rendered message.
func (m rawMessage) String() string { return string(m.data) }
