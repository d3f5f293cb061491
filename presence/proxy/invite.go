package proxy

import (
	"context"
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"
)

// A forwarded INVITE runs in a client transaction of the proxy's own
// (RFC 3261 §17.1.1) rather than sipgo's, whose ACK for a failure copies
// every Via of the request and its Contact where §17.1.1.3 wants the top
// Via alone. Responses reach it from the presence server's transaction
// layer, which hands over every response that matches none of sipgo's
// transactions (Proxy.Response): a response with the branch of one of
// these transactions is its; any other is a stray and goes on statelessly
// (RFC 3261 §16.7), as do CANCELs that match no INVITE (§16.10), so that
// a call ringing across a restart of Lamplighter still ends, or is
// answered, for both sides.

// inviteTx is a forwarded INVITE's client transaction.
type inviteTx struct {
	p      *Proxy
	req    *sip.Request // as sent, our Via on top
	branch string
	conn   sip.Connection

	responses chan *sip.Response
	done      chan struct{}

	mu        sync.Mutex
	state     int // txCalling, txProceeding, txCompleted, txTerminated
	err       error
	ack       *sip.Request // the ACK for a failure, sent again for its retransmissions
	closeOnce sync.Once
}

const (
	txCalling = iota
	txProceeding
	txCompleted
	txTerminated
)

// Timers of RFC 3261 §17.1.1.2 (T1 500 ms).
var (
	timerT1 = 500 * time.Millisecond
	timerB  = 64 * timerT1
	timerD  = 32 * time.Second
)

// sendInvite sends fwd in a new INVITE client transaction.
func (p *Proxy) sendInvite(ctx context.Context, fwd *sip.Request) (*inviteTx, error) {
	v := fwd.Via()
	if v == nil {
		return nil, errors.New("no Via")
	}
	branch, _ := v.Params.Get("branch")
	conn, err := p.server.UserAgent().TransportLayer().ClientRequestConnection(ctx, fwd)
	if err != nil {
		return nil, err
	}
	tx := &inviteTx{p: p, req: fwd, branch: branch, conn: conn,
		responses: make(chan *sip.Response, 8), done: make(chan struct{})}
	if _, dup := p.inviteTxs.LoadOrStore(branch, tx); dup {
		conn.TryClose()
		return nil, errors.New("an INVITE with that branch is in flight")
	}
	if err := conn.WriteMsg(fwd); err != nil {
		p.inviteTxs.Delete(branch)
		conn.TryClose()
		return nil, err
	}
	go tx.run()
	return tx, nil
}

// Responses are the responses passed up: every provisional, the first
// final, and 2xx retransmissions (a proxy forwards them all).
func (tx *inviteTx) Responses() <-chan *sip.Response { return tx.responses }

// Done is closed when the transaction ends.
func (tx *inviteTx) Done() <-chan struct{} { return tx.done }

// Err says why it ended without a final response (timeout, transport).
func (tx *inviteTx) Err() error {
	tx.mu.Lock()
	defer tx.mu.Unlock()
	return tx.err
}

// Terminate ends it, but for a failure's ACK: the transaction keeps
// absorbing (and ACKing) the failure's retransmissions until Timer D.
func (tx *inviteTx) Terminate() {
	tx.mu.Lock()
	completed := tx.state == txCompleted
	tx.mu.Unlock()
	if !completed {
		tx.end(nil)
	}
}

func (tx *inviteTx) end(err error) {
	tx.closeOnce.Do(func() {
		tx.mu.Lock()
		tx.state = txTerminated
		if tx.err == nil {
			tx.err = err
		}
		tx.mu.Unlock()
		tx.p.inviteTxs.Delete(tx.branch)
		tx.conn.TryClose()
		close(tx.done)
	})
}

// run retransmits over UDP (Timer A) and gives up at Timer B; over TCP
// or TLS it ends as soon as the connection is gone (a phone that closed
// it cannot answer on it).
func (tx *inviteTx) run() {
	reliable := !strings.EqualFold(tx.req.Transport(), "UDP")
	interval := timerT1
	resend := time.NewTimer(interval)
	var alive <-chan time.Time
	if reliable {
		resend.Stop()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		alive = t.C
	}
	defer resend.Stop()
	giveUp := time.NewTimer(timerB)
	defer giveUp.Stop()
	for {
		select {
		case <-tx.done:
			return
		case <-resend.C:
			tx.mu.Lock()
			calling := tx.state == txCalling
			tx.mu.Unlock()
			if !calling {
				continue
			}
			if err := tx.conn.WriteMsg(tx.req); err != nil {
				tx.end(errors.Join(err, sip.ErrTransactionTransport))
				return
			}
			interval *= 2 // §17.1.1.2: an INVITE's retransmissions double until Timer B
			resend.Reset(interval)
		case <-alive:
			c, err := tx.p.server.UserAgent().TransportLayer().GetConnection(tx.req.Transport(), tx.req.Destination())
			if err != nil || c == nil {
				tx.end(errors.Join(errors.New("connection closed"), sip.ErrTransactionTransport))
				return
			}
			c.TryClose() // GetConnection took a reference
		case <-giveUp.C:
			tx.mu.Lock()
			waiting := tx.state == txCalling
			tx.mu.Unlock()
			if waiting {
				tx.end(sip.ErrTransactionTimeout)
				return
			}
		}
	}
}

// receive takes a response with the transaction's branch.
func (tx *inviteTx) receive(res *sip.Response) {
	tx.mu.Lock()
	state := tx.state
	switch {
	case state == txTerminated:
		tx.mu.Unlock()
		return
	case res.IsProvisional():
		if state == txCalling {
			tx.state = txProceeding
		}
		tx.mu.Unlock()
		tx.pass(res)
	case res.IsSuccess():
		// The transaction ends; the 2xx (and its retransmissions, which
		// come as strays) goes up to the caller.
		tx.mu.Unlock()
		tx.pass(res)
		tx.end(nil)
	default:
		if state == txCompleted { // a retransmitted failure: ACK again
			ack := tx.ack
			tx.mu.Unlock()
			tx.conn.WriteMsg(ack)
			return
		}
		tx.state = txCompleted
		tx.ack = ackFor(tx.req, res)
		ack := tx.ack
		tx.mu.Unlock()
		tx.conn.WriteMsg(ack)
		tx.pass(res)
		if strings.EqualFold(tx.req.Transport(), "UDP") {
			time.AfterFunc(timerD, func() { tx.end(nil) })
		} else {
			tx.end(nil)
		}
	}
}

// pass hands a response up without blocking the reader for long.
func (tx *inviteTx) pass(res *sip.Response) {
	select {
	case tx.responses <- res:
	case <-tx.done:
	case <-time.After(time.Second):
	}
}

// ackFor is the ACK for a failure to an INVITE (RFC 3261 §17.1.1.3): its
// Request-URI, the INVITE's top Via alone, its Route set, From, Call-ID,
// the response's To (with its tag), the CSeq number with ACK, no body
// and no Contact.
func ackFor(inv *sip.Request, res *sip.Response) *sip.Request {
	return sameHop(inv, sip.ACK, res.To())
}

// sameHop is a request that goes where the INVITE inv went and belongs
// to its transaction (an ACK for its failure, a CANCEL): the INVITE's
// Request-URI, top Via alone (its branch), Route set, From, Call-ID and
// CSeq number, with to as its To, method in CSeq, no body.
func sameHop(inv *sip.Request, method sip.RequestMethod, to *sip.ToHeader) *sip.Request {
	r := sip.NewRequest(method, inv.Recipient)
	r.SipVersion = inv.SipVersion
	r.AppendHeader(inv.Via().Clone())
	for _, h := range inv.GetHeaders("Route") {
		r.AppendHeader(sip.HeaderClone(h))
	}
	mf := sip.MaxForwardsHeader(70)
	r.AppendHeader(&mf)
	if h := inv.From(); h != nil {
		r.AppendHeader(sip.HeaderClone(h))
	}
	if to != nil {
		r.AppendHeader(sip.HeaderClone(to))
	}
	if h := inv.CallID(); h != nil {
		r.AppendHeader(sip.HeaderClone(h))
	}
	r.AppendHeader(&sip.CSeqHeader{SeqNo: inv.CSeq().SeqNo, MethodName: method})
	r.SetBody(nil)
	r.SetTransport(inv.Transport())
	r.SetDestination(inv.Destination())
	r.Laddr = inv.Laddr
	return r
}

// Response takes a response that matched no transaction of sipgo's: one
// for a forwarded INVITE goes to its transaction; any other is forwarded
// statelessly (RFC 3261 §16.7) when its top Via is ours and the next one
// names a party the proxy knows (a PBX, or a phone with a live
// registration through it): a phone's 486 for an INVITE forwarded before
// Lamplighter restarted, a 200 that crossed a CANCEL, 2xx
// retransmissions. It reports whether the response was the proxy's.
func (p *Proxy) Response(res *sip.Response) bool {
	v := res.Via()
	if v == nil {
		return false
	}
	branch, _ := v.Params.Get("branch")
	if tx, ok := p.inviteTxs.Load(branch); ok {
		tx.(*inviteTx).receive(res)
		return true
	}
	if !strings.HasPrefix(branch, branchPrefix) || !p.isUs(sip.Uri{Host: v.Host, Port: v.Port}) {
		return false
	}
	vias := res.GetHeaders("Via")
	if len(vias) < 2 {
		return true // ours, for nobody (an OPTIONS ping's after its timeout)
	}
	next, ok := vias[1].(*sip.ViaHeader)
	if !ok {
		return true
	}
	dest, transport, ok := viaAddress(next)
	if !ok || !p.knownHop(dest, transport) {
		p.log.Debug("a stray response for nobody the proxy knows is dropped", "status", res.StatusCode,
			"call_id", callIDOf(res), "to", dest.String())
		return true
	}
	up := res.Clone()
	up.RemoveHeader("Via")
	if err := p.server.SendStateless(up, transport, dest); err != nil {
		p.log.Debug("cannot forward a stray response", "status", res.StatusCode, "to", dest.String(), "err", err)
		return true
	}
	p.log.Debug("forwarded a stray response statelessly", "status", res.StatusCode, "call_id", callIDOf(res), "to", dest.String())
	return true
}

func callIDOf(m interface{ CallID() *sip.CallIDHeader }) string {
	if c := m.CallID(); c != nil {
		return c.Value()
	}
	return ""
}

// viaAddress is where a response goes for a Via (RFC 3261 §18.2.2 with
// RFC 3581): received and rport where the sender marked them, else its
// sent-by.
func viaAddress(v *sip.ViaHeader) (netip.AddrPort, string, bool) {
	host := v.Host
	if r, ok := v.Params.Get("received"); ok && r != "" {
		host = r
	}
	port := v.Port
	if r, ok := v.Params.Get("rport"); ok && r != "" {
		if n, err := strconv.Atoi(r); err == nil {
			port = n
		}
	}
	transport := strings.ToUpper(v.Transport)
	if port == 0 {
		port = 5060
		if transport == "TLS" {
			port = 5061
		}
	}
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil || port <= 0 || port > 65535 {
		return netip.AddrPort{}, "", false
	}
	return netip.AddrPortFrom(ip.Unmap(), uint16(port)), transport, true
}

// knownHop reports whether a stray may go to dest: a PBX's SIP address,
// or the flow of a live registration through the proxy.
func (p *Proxy) knownHop(dest netip.AddrPort, transport string) bool {
	if p.fromPBX(dest) {
		return true
	}
	_, ok := p.binds.onFlow(flow{transport: transport, addr: dest})
	return ok
}
