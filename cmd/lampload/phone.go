package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// sub is one subscription of a simulated phone.
type sub struct {
	phone  *phone
	user   *user
	pkg    string // "presence" or "dialog"
	callID string
	tag    string

	lastCSeq atomic.Uint32 // highest NOTIFY CSeq answered
	notifies atomic.Int64
	status   atomic.Int32 // final response to the SUBSCRIBE, 0 while none

	// The SUBSCRIBE in flight, guarded by phones.pendingMu: sent at
	// sentAt (first at firstAt), retransmitted after interval; attempt
	// counts the transactions (a 503 with Retry-After makes a new one at
	// retryAt, as a phone does).
	sentAt   time.Time
	firstAt  time.Time
	interval time.Duration
	attempt  int
	toTag    string // the server's tag from the 2xx: later SUBSCRIBEs refresh the dialog
	retryAt  time.Time
}

// notice is one NOTIFY as a phone received it.
type notice struct {
	sub        *sub
	at         time.Time // when the datagram or segment was read
	cseq       uint32
	phoneState string
	terminated bool
	round      int // the publisher's round the body names (-compare), 0 for none
}

// phones holds every simulated phone and dispatches what they receive.
type phones struct {
	server  string          // Lamplighter's SIP address, host:port
	byCall  map[string]*sub // filled while building, then sealed
	sealed  atomic.Pointer[map[string]*sub]
	list    []*phone
	handler atomic.Pointer[func(notice)]
	rounds  bool // read the publisher's round from NOTIFY bodies (-compare)

	pendingMu sync.Mutex
	pending   map[*sub]struct{}
	answered  atomic.Pointer[func(*sub)] // what a final response to a SUBSCRIBE is handed to

	duplicates    atomic.Int64 // NOTIFYs received again (server retransmissions)
	shed          atomic.Int64 // SUBSCRIBEs answered 503 with Retry-After
	retransmitted atomic.Int64 // SUBSCRIBEs we sent again
	terminated    atomic.Int64 // NOTIFYs ending a subscription
	malformed     atomic.Int64
	notifies      atomic.Int64
}

// phone is one simulated phone: a UDP socket, or a TCP connection plus a
// listener on the same port (where Lamplighter connects after a restart).
type phone struct {
	ps        *phones
	id        int
	transport string // "UDP" or "TCP"
	port      int
	udp       *net.UDPConn
	server    *net.UDPAddr
	ln        net.Listener
	connMu    sync.Mutex
	conn      net.Conn // TCP: the connection SUBSCRIBEs go out on
	subs      []*sub
}

func newPhones(server string) *phones {
	return &phones{server: server, byCall: map[string]*sub{}, pending: map[*sub]struct{}{}}
}

// reusable lets a TCP phone listen and dial from one port.
func reusable(_, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1); serr != nil {
			return
		}
		serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1)
	})
	return errors.Join(err, serr)
}

// add opens a phone on loopback.
func (ps *phones) add(ctx context.Context, transport string) (*phone, error) {
	p := &phone{ps: ps, id: len(ps.list), transport: transport}
	switch transport {
	case "UDP":
		c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			return nil, err
		}
		_ = c.SetReadBuffer(4 << 20)
		_ = c.SetWriteBuffer(1 << 20)
		if p.server, err = net.ResolveUDPAddr("udp", ps.server); err != nil {
			return nil, err
		}
		p.udp, p.port = c, c.LocalAddr().(*net.UDPAddr).Port
		go p.readUDP()
	case "TCP":
		lc := net.ListenConfig{Control: reusable}
		ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		p.ln, p.port = ln, ln.Addr().(*net.TCPAddr).Port
		go p.accept()
		if err := p.dial(ctx); err != nil {
			ln.Close()
			return nil, err
		}
	}
	ps.list = append(ps.list, p)
	return p, nil
}

func (p *phone) dial(ctx context.Context) error {
	d := net.Dialer{Control: reusable, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: p.port}}
	c, err := d.DialContext(ctx, "tcp", p.ps.server)
	if err != nil {
		return fmt.Errorf("TCP phone: %w", err)
	}
	p.connMu.Lock()
	p.conn = c
	p.connMu.Unlock()
	go p.readTCP(c)
	return nil
}

func (p *phone) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.readTCP(c)
	}
}

func (p *phone) close() {
	if p.udp != nil {
		p.udp.Close()
	}
	if p.ln != nil {
		p.ln.Close()
	}
	p.connMu.Lock()
	if p.conn != nil {
		p.conn.Close()
	}
	p.connMu.Unlock()
}

// newSub adds a subscription to u's state with package pkg.
func (p *phone) newSub(u *user, pkg string) *sub {
	n := len(p.ps.byCall)
	s := &sub{phone: p, user: u, pkg: pkg, callID: "ll" + strconv.Itoa(n) + "-" + strconv.Itoa(p.port) + "@lampload",
		tag: "t" + strconv.Itoa(n)}
	p.subs = append(p.subs, s)
	p.ps.byCall[s.callID] = s
	u.watchers++
	return s
}

// subscribe sends s's initial SUBSCRIBE and notes it as pending.
func (p *phone) subscribe(s *sub, expires int) error {
	p.ps.pendingMu.Lock()
	s.sentAt, s.firstAt, s.interval = time.Now(), time.Now(), 500*time.Millisecond
	p.ps.pending[s] = struct{}{}
	b := p.subscribeRequest(s, expires)
	p.ps.pendingMu.Unlock()
	return p.send(b)
}

// subscribeRequest renders s's SUBSCRIBE for its current attempt (each a
// transaction of its own: branch and CSeq). Called with pendingMu held.
func (p *phone) subscribeRequest(s *sub, expires int) []byte {
	accept := "application/pidf+xml"
	if s.pkg == "dialog" {
		accept = "application/dialog-info+xml"
	}
	// Written with appends, not fmt: the phones share the machine with
	// the server they measure, so what they spend is taken from it.
	host := "127.0.0.1:" + strconv.Itoa(p.port)
	b := make([]byte, 0, 512)
	b = append(b, "SUBSCRIBE sip:"...)
	b = append(b, s.user.ext...)
	b = append(b, '@')
	if s.user.tenant {
		b = append(b, s.user.domain...) // sent to the server's address all the same
	} else {
		b = append(b, p.ps.server...)
	}
	b = append(b, " SIP/2.0\r\nVia: SIP/2.0/"...)
	b = append(b, p.transport...)
	b = append(b, ' ')
	b = append(b, host...)
	b = append(b, ";branch=z9hG4bK-"...)
	b = append(b, s.tag...)
	b = append(b, '-')
	b = append(b, s.callID...)
	b = append(b, '-')
	b = strconv.AppendInt(b, int64(s.attempt), 10)
	b = append(b, ";rport\r\nMax-Forwards: 70\r\nFrom: <sip:phone"...)
	b = strconv.AppendInt(b, int64(p.id), 10)
	b = append(b, '@')
	b = append(b, s.user.host()...)
	b = append(b, ">;tag="...)
	b = append(b, s.tag...)
	b = append(b, "\r\nTo: <sip:"...)
	b = append(b, s.user.ext...)
	b = append(b, '@')
	b = append(b, s.user.host()...)
	b = append(b, '>')
	b = append(b, toTagParam(s.toTag)...)
	b = append(b, "\r\nCall-ID: "...)
	b = append(b, s.callID...)
	b = append(b, "\r\nCSeq: "...)
	b = strconv.AppendInt(b, int64(s.attempt+1), 10)
	b = append(b, " SUBSCRIBE\r\nContact: <sip:phone"...)
	b = strconv.AppendInt(b, int64(p.id), 10)
	b = append(b, '@')
	b = append(b, host...)
	b = append(b, ";transport="...)
	b = append(b, lower(p.transport)...)
	b = append(b, ">\r\nEvent: "...)
	b = append(b, s.pkg...)
	b = append(b, "\r\nAccept: "...)
	b = append(b, accept...)
	b = append(b, "\r\nExpires: "...)
	b = strconv.AppendInt(b, int64(expires), 10)
	return append(b, "\r\nUser-Agent: lampload\r\nContent-Length: 0\r\n\r\n"...)
}

func lower(t string) string {
	if t == "TCP" {
		return "tcp"
	}
	return "udp"
}

// send writes a message to Lamplighter.
func (p *phone) send(b []byte) error {
	if p.udp != nil {
		_, err := p.udp.WriteToUDP(b, p.server)
		return err
	}
	p.connMu.Lock()
	defer p.connMu.Unlock()
	if p.conn == nil {
		return errors.New("TCP phone not connected")
	}
	_, err := p.conn.Write(b)
	return err
}

func (p *phone) readUDP() {
	buf := make([]byte, 65536)
	out := make([]byte, 0, 1024)
	for {
		n, from, err := p.udp.ReadFromUDP(buf)
		if err != nil {
			return
		}
		at := time.Now()
		m, _, err := parseMessage(buf[:n])
		if err != nil {
			p.ps.malformed.Add(1)
			continue
		}
		if out = p.ps.handle(&m, at, out[:0]); len(out) > 0 {
			p.udp.WriteToUDP(out, from)
		}
	}
}

func (p *phone) readTCP(c net.Conn) {
	defer c.Close()
	// The dialed connection is shared with SUBSCRIBEs: writes take connMu.
	if errors.Is(readStream(c, &p.connMu, p.ps.handle), errMalformed) {
		p.ps.malformed.Add(1)
	}
}

// readStream reads SIP messages from c until it fails, handing each to
// handle with the time its bytes were read; what handle appends to out
// is written back once per read, under lock. It returns the error that
// ended it (errMalformed for a message it could not read).
func readStream(c net.Conn, lock sync.Locker, handle func(m *message, at time.Time, out []byte) []byte) error {
	buf := make([]byte, 0, 65536)
	chunk := make([]byte, 65536)
	out := make([]byte, 0, 4096)
	for {
		n, err := c.Read(chunk)
		if err != nil {
			return err
		}
		at := time.Now()
		buf = append(buf, chunk[:n]...)
		out = out[:0]
		for {
			m, used, err := parseMessage(buf)
			if errors.Is(err, errShort) {
				break
			}
			if err != nil {
				return err
			}
			out = handle(&m, at, out)
			buf = buf[:copy(buf, buf[used:])]
		}
		if len(out) > 0 {
			lock.Lock()
			_, err := c.Write(out)
			lock.Unlock()
			if err != nil {
				return err
			}
		}
	}
}

// handle deals with one message a phone received and appends the reply
// to send, if any, to out.
func (ps *phones) handle(m *message, at time.Time, out []byte) []byte {
	if m.method == nil {
		if m.isSubscribe() && m.status >= 200 {
			if s := ps.lookup(m.callID); s != nil {
				ps.pendingMu.Lock()
				_, waiting := ps.pending[s]
				if waiting && m.status == 503 && m.retryAfter > 0 {
					// Shed: try again when told, as a phone does.
					if s.retryAt.IsZero() {
						ps.shed.Add(1)
						s.retryAt = at.Add(time.Duration(m.retryAfter) * time.Second)
					}
					ps.pendingMu.Unlock()
					return out
				}
				delete(ps.pending, s)
				if waiting && m.status < 300 {
					if tag := tagOf(m.to); tag != "" && s.toTag == "" {
						s.toTag = tag
					}
				}
				ps.pendingMu.Unlock()
				if waiting {
					s.status.Store(int32(m.status))
					ps.answer(s)
				}
			}
		}
		return out
	}
	if string(m.method) != "NOTIFY" {
		return appendResponse(out, m, "405 Method Not Allowed")
	}
	s := ps.lookup(m.callID)
	if s == nil {
		return appendResponse(out, m, "481 Subscription Does Not Exist")
	}
	out = appendResponse(out, m, "200 OK")
	for {
		last := s.lastCSeq.Load()
		if m.cseqNum <= last {
			ps.duplicates.Add(1)
			return out
		}
		if s.lastCSeq.CompareAndSwap(last, m.cseqNum) {
			break
		}
	}
	s.notifies.Add(1)
	ps.notifies.Add(1)
	n := notice{sub: s, at: at, cseq: m.cseqNum, phoneState: phoneState(m.body),
		terminated: len(m.subState) >= 10 && string(m.subState[:10]) == "terminated"}
	if ps.rounds {
		n.round = roundOf(m.body)
	}
	if n.terminated {
		ps.terminated.Add(1)
	}
	if h := ps.handler.Load(); h != nil {
		(*h)(n)
	}
	return out
}

// onAnswer sets what every final response to a SUBSCRIBE (and each that
// never came, as 408) is handed to, on the goroutine that read it (nil:
// nothing).
func (ps *phones) onAnswer(h func(*sub)) {
	if h == nil {
		ps.answered.Store(nil)
		return
	}
	ps.answered.Store(&h)
}

// answer hands s, just answered, to the onAnswer handler.
func (ps *phones) answer(s *sub) {
	if h := ps.answered.Load(); h != nil {
		(*h)(s)
	}
}

// seal publishes the subscriptions to the phones' readers; none may be
// added after.
func (ps *phones) seal() { m := ps.byCall; ps.sealed.Store(&m) }

// lookup finds a subscription by Call-ID.
func (ps *phones) lookup(callID []byte) *sub {
	m := ps.sealed.Load()
	if m == nil {
		return nil
	}
	return (*m)[string(callID)]
}

// onNotify sets what every received NOTIFY is handed to (nil: nothing).
func (ps *phones) onNotify(h func(notice)) {
	if h == nil {
		ps.handler.Store(nil)
		return
	}
	ps.handler.Store(&h)
}

// retransmit resends SUBSCRIBEs over UDP that have had no final response,
// doubling the interval from 500 ms to 4 s (RFC 3261 Timer E), and gives
// up on those pending for 32 s (Timer F).
func (ps *phones) retransmit(ctx context.Context, expires int) {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			type resend struct {
				s   *sub
				msg []byte
			}
			var resends, retries []resend
			var expired []*sub
			ps.pendingMu.Lock()
			for s := range ps.pending {
				switch {
				case !s.retryAt.IsZero():
					if now.Before(s.retryAt) {
						continue
					}
					// A new transaction after a 503's Retry-After.
					s.attempt++
					s.retryAt, s.sentAt, s.firstAt, s.interval = time.Time{}, now, now, 500*time.Millisecond
					retries = append(retries, resend{s, s.phone.subscribeRequest(s, expires)})
				case now.Sub(s.firstAt) > 32*time.Second:
					delete(ps.pending, s)
					expired = append(expired, s)
				case s.phone.udp != nil && now.Sub(s.sentAt) >= s.interval:
					s.sentAt, s.interval = now, min(2*s.interval, 4*time.Second)
					resends = append(resends, resend{s, s.phone.subscribeRequest(s, expires)})
				}
			}
			ps.pendingMu.Unlock()
			for _, r := range resends {
				ps.retransmitted.Add(1)
				r.s.phone.send(r.msg)
			}
			for _, r := range retries {
				r.s.phone.send(r.msg)
			}
			for _, s := range expired {
				s.status.Store(408)
				ps.answer(s)
			}
		}
	}
}

// tagOf returns the tag parameter of a From or To value.
func tagOf(v []byte) string {
	_, after, ok := bytes.Cut(v, []byte(";tag="))
	if !ok {
		return ""
	}
	if i := bytes.IndexAny(after, "; \t"); i >= 0 {
		after = after[:i]
	}
	return string(after)
}

// toTagParam is the To header's tag parameter, when the dialog has one.
func toTagParam(tag string) string {
	if tag == "" {
		return ""
	}
	return ";tag=" + tag
}
