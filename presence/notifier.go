package presence

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// NOTIFY client transactions (RFC 3261 §17.1.2, non-INVITE) are run here
// rather than by sipgo: a NOTIFY is rendered straight into bytes from the
// subscription's dialog, written to the UDP listener (or the subscriber's
// stream connection), retransmitted on Timer E and given up on Timer F.
// Responses are read from their bytes by the UDP readers and by the
// guard of each stream connection we accepted (raw); on a connection we
// opened ourselves they come through sipgo's handler for responses that
// match no sipgo transaction. This halves the CPU a NOTIFY costs and keeps no
// per-transaction goroutine (see BENCHMARKS.md).

// notifier holds the NOTIFY transactions in flight, by Via branch.
// Branches are random (a CSPRNG seeded from the kernel), so that nobody who
// saw one NOTIFY can guess the next and answer it with a forged 481.
type notifier struct {
	randMu sync.Mutex // guards rand; a leaf (taken under Subscription.mu)
	rand   *mrand.ChaCha8
	// mu guards txs and closed. Under it only a UDP transaction's
	// sending (fire); start takes it under sending. The outcome (done)
	// is reported with it released.
	mu     sync.Mutex
	txs    map[string]*notifyTx
	closed bool
	bufs   sync.Pool
	done   func(tx *notifyTx, res notifyResponse, failure string, err error)
}

// notifyResponse is the final response that ended a NOTIFY transaction:
// all its outcome needs (code 0: none came).
type notifyResponse struct {
	code   int
	reason string
}

// notifyTx is one NOTIFY in flight.
type notifyTx struct {
	sub      *Subscription
	branch   string
	buf      *[]byte // the message, kept for retransmission
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
	// write. Under it only the notifier's mu (start).
	sending sync.Mutex
}

func newNotifier(done func(*notifyTx, notifyResponse, string, error)) *notifier {
	var seed [32]byte
	if _, err := rand.Read(seed[:]); err != nil {
		panic("presence: no randomness for NOTIFY branches: " + err.Error())
	}
	n := &notifier{rand: mrand.NewChaCha8(seed), txs: map[string]*notifyTx{}, done: done}
	n.bufs.New = func() any { b := make([]byte, 0, 2048); return &b }
	return n
}

// branchPrefix starts every NOTIFY branch: the RFC 3261 magic cookie and
// a mark that tells our late answers from other traffic.
const branchPrefix = "z9hG4bK.LL."

// newTx starts a transaction record with a fresh branch and buffer.
func (n *notifier) newTx(sub *Subscription) *notifyTx {
	var r [16]byte
	n.randMu.Lock()
	_, _ = n.rand.Read(r[:])
	n.randMu.Unlock()
	var b [len(branchPrefix) + 32]byte
	copy(b[:], branchPrefix)
	hex.Encode(b[len(branchPrefix):], r[:])
	return &notifyTx{sub: sub, branch: string(b[:]), buf: n.bufs.Get().(*[]byte)}
}

// start sends tx and arms its timers (sipgo's T1, T2 and Timer F, so
// that sip.SetTimers applies here too); on error nothing is left behind.
func (n *notifier) start(tx *notifyTx) error {
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
		n.release(tx)
		return net.ErrClosed
	}
	n.txs[tx.branch] = tx
	tx.timer = time.AfterFunc(first, func() { n.fire(tx) })
	n.mu.Unlock()
	err := tx.send()
	tx.sending.Unlock()
	if err != nil {
		n.mu.Lock()
		removed := n.txs[tx.branch] == tx
		delete(n.txs, tx.branch)
		tx.timer.Stop()
		n.mu.Unlock()
		if removed {
			n.release(tx)
		}
		return err
	}
	return nil
}

func (tx *notifyTx) send() error {
	if tx.udp != nil {
		_, err := tx.udp.WriteToUDPAddrPort(*tx.buf, tx.to)
		return err
	}
	// Connections we opened ourselves are not guarded: bound the write
	// here too, so that a peer that stops reading cannot hold a worker.
	if c, ok := tx.stream.(interface{ SetWriteDeadline(time.Time) error }); ok {
		_ = c.SetWriteDeadline(time.Now().Add(DefaultWriteTimeout))
	}
	return tx.stream.WriteMsg(rawMessage{Request: tx.stub, data: *tx.buf})
}

// fire is Timer E (retransmit over UDP) and Timer F (give up).
func (n *notifier) fire(tx *notifyTx) {
	now := time.Now()
	n.mu.Lock()
	if n.txs[tx.branch] != tx {
		n.mu.Unlock()
		return // answered meanwhile
	}
	if !now.Before(tx.deadline) {
		delete(n.txs, tx.branch)
		n.mu.Unlock()
		n.release(tx)
		n.done(tx, notifyResponse{}, "timeout", fmt.Errorf("no final response within %v", sip.Timer_F))
		return
	}
	tx.interval = min(2*tx.interval, tx.t2)
	tx.timer.Reset(min(tx.interval, tx.deadline.Sub(now)))
	tx.sending.Lock()
	n.mu.Unlock()
	_ = tx.send() // a lost retransmission is retried by the next
	tx.sending.Unlock()
}

// response takes a response that no sipgo transaction matched (over a
// stream transport, or one the datagram filter left to sipgo); it reports
// whether it answered a NOTIFY of ours in flight.
func (n *notifier) response(res *sip.Response) bool {
	via := res.Via()
	if via == nil || res.CSeq() == nil || res.CSeq().MethodName != sip.NOTIFY {
		return false
	}
	branch, _ := via.Params.Get("branch")
	return n.answer([]byte(branch), res.StatusCode, func(tx *notifyTx) bool { return tx.cameFrom(res) }, func() string { return res.Reason })
}

// cameFrom reports whether a response reached us the way tx's NOTIFY
// left: on the same stream connection, or from the address it was sent
// to over UDP. Anything else is a forgery (or a stray) and is ignored.
func (tx *notifyTx) cameFrom(res *sip.Response) bool {
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
func (n *notifier) answer(branch []byte, code int, from func(*notifyTx) bool, reason func() string) bool {
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
	delete(n.txs, tx.branch)
	n.mu.Unlock()
	tx.timer.Stop()
	n.release(tx)
	n.done(tx, notifyResponse{code: code, reason: reason()}, "", nil)
	return true
}

// datagram takes a UDP datagram before sipgo parses it: a response to one
// of our NOTIFYs is matched here by its top Via branch, without building
// a sip.Response (it is the bulk of what a fan-out receives). It returns
// the datagram for sipgo, or nil when it was handled. A response from
// any address but the one the NOTIFY went to is dropped.
func (n *notifier) datagram(data []byte, from netip.AddrPort) []byte {
	from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if n.raw(data, func(tx *notifyTx) bool { return tx.stream == nil && tx.to == from }) {
		return nil
	}
	return data
}

// streamed takes a response read on a guarded stream connection whose
// peer is remote, as datagram does for UDP: it reports whether the
// response was handled (else sipgo reads it). A response is taken for a
// NOTIFY that left on a connection to the same peer only.
func (n *notifier) streamed(msg []byte, remote string) bool {
	return n.raw(msg, func(tx *notifyTx) bool {
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
func (n *notifier) raw(data []byte, from func(*notifyTx) bool) bool {
	const prefix = "SIP/2.0 "
	if len(data) < len(prefix)+3 || string(data[:len(prefix)]) != prefix {
		return false
	}
	code, err := strconv.Atoi(string(data[len(prefix) : len(prefix)+3]))
	if err != nil || code < 100 || code > 699 {
		return false
	}
	head, _, _ := rawHead(data)
	status, rest := rawLine(head)
	var branch []byte
	notify, viaSeen := false, false
	for len(rest) > 0 {
		var line []byte
		line, rest = rawLine(rest)
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
	return ours || bytes.HasPrefix(branch, []byte(branchPrefix))
}

// release returns tx's buffer to the pool once no write uses it, and the
// reference to its stream connection that sipgo's pool took for it.
func (n *notifier) release(tx *notifyTx) {
	tx.sending.Lock()
	defer tx.sending.Unlock()
	if tx.stream != nil {
		tx.stream.TryClose()
		tx.stream = nil
	}
	if tx.buf != nil && cap(*tx.buf) <= 16<<10 {
		*tx.buf = (*tx.buf)[:0]
		n.bufs.Put(tx.buf)
	}
	tx.buf = nil
}

// close stops every transaction; their outcome is never reported.
// pending is the number of NOTIFYs in flight.
func (n *notifier) pending() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.txs)
}

func (n *notifier) close() {
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

// address picks where a NOTIFY goes: the first route of the route set,
// else back to the address the SUBSCRIBE came from (so NAT works), on the
// subscriber's own connection for TCP/TLS while it is open, else to the
// remote target. Called with sub.mu held.
func (s *Server) address(sub *Subscription) (network, addr string) {
	network = strings.ToLower(sub.Transport)
	switch {
	case sub.routeAddr != "":
		return network, sub.routeAddr
	case network == "udp":
		return network, sub.Source
	}
	if c, err := s.ua.TransportLayer().GetConnection(network, sub.Source); err == nil && c != nil {
		c.TryClose() // GetConnection took a reference: only a look
		return network, sub.Source
	}
	return network, sub.targetAddr
}

// connect readies tx to go to addr over network: the UDP listener of the
// address's family, or a stream connection (the subscriber's, or a new
// one).
func (s *Server) connect(ctx context.Context, tx *notifyTx, network, addr string, h hop) error {
	if network == "udp" {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil {
			ua, rerr := net.ResolveUDPAddr("udp", addr)
			if rerr != nil {
				return rerr
			}
			ap = ua.AddrPort()
		}
		tx.to = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
		tx.udp = s.udpListenerFor(tx.to.Addr())
		if tx.udp == nil {
			return fmt.Errorf("no UDP listener to reach %s", addr)
		}
		return nil
	}
	host, port, err := sip.ParseAddr(addr)
	if err != nil {
		return err
	}
	req := sip.NewRequest(sip.NOTIFY, sip.Uri{Scheme: "sip", Host: host, Port: port})
	via := &sip.ViaHeader{ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: h.Transport,
		Host: h.Host, Port: h.Port, Params: sip.NewParams()}
	via.Params.Add("branch", tx.branch)
	req.AppendHeader(via)
	req.SetTransport(h.Transport)
	req.SetDestination(addr)
	// A connection that must be opened gets a few seconds: a NOTIFY
	// worker waits on it.
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c, err := s.ua.TransportLayer().ClientRequestConnection(ctx, req)
	if err != nil {
		return err
	}
	tx.stream, tx.stub = c, req
	return nil
}

// udpListenerFor returns the UDP listener for sending to ip: one bound to
// its address family, else a wildcard one.
func (s *Server) udpListenerFor(ip netip.Addr) *net.UDPConn {
	var wildcard *net.UDPConn
	for _, c := range s.udpConns {
		la := c.LocalAddr().(*net.UDPAddr)
		lip, _ := netip.AddrFromSlice(la.IP)
		lip = lip.Unmap()
		switch {
		case lip.IsUnspecified() && (lip.Is6() || ip.Is4()):
			if wildcard == nil {
				wildcard = c
			}
		case lip.Is4() == ip.Is4():
			return c
		}
	}
	return wildcard
}
