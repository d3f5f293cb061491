package presence

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lamplighter/lamplighter/netlimit"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// SIP over TCP and TLS goes through a guard before sipgo reads it: the
// listener caps connections in total and per address and never stops on
// an accept error; each connection frames messages itself, so that it can
// answer a request without a usable Content-Length (400) or too large
// (413), hold a slow sender to a deadline for the whole message, close a
// connection that idles without holding a subscription, and bound every
// write. sipgo only ever reads whole, well-framed messages.

// StreamLimits bound what SIP connections over TCP and TLS may hold.
// Zero values get the defaults noted.
type StreamLimits struct {
	// MaxConnections caps accepted connections in total (default 10000).
	MaxConnections int
	// MaxPerAddress caps accepted connections from one IP address
	// (default 100: a site's phones behind one NAT address).
	MaxPerAddress int
	// MessageTimeout is how long a message may take from its first byte
	// to its last (default 10s).
	MessageTimeout time.Duration
	// HandshakeTimeout bounds the TLS handshake (default 10s).
	HandshakeTimeout time.Duration
	// IdleTimeout closes a connection that has sent nothing for this long
	// and holds no subscription (default 2m).
	IdleTimeout time.Duration
	// WriteTimeout bounds each write, so that a peer that stops reading
	// cannot hold a NOTIFY worker (default 10s).
	WriteTimeout time.Duration
}

// Defaults of StreamLimits.
const (
	DefaultMaxConnections   = 10000
	DefaultMaxPerAddress    = 100
	DefaultMessageTimeout   = 10 * time.Second
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultIdleTimeout      = 2 * time.Minute
	DefaultWriteTimeout     = 10 * time.Second
)

func (l *StreamLimits) defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	if l.MaxConnections == 0 {
		l.MaxConnections = DefaultMaxConnections
	}
	if l.MaxPerAddress == 0 {
		l.MaxPerAddress = DefaultMaxPerAddress
	}
	set(&l.MessageTimeout, DefaultMessageTimeout)
	set(&l.HandshakeTimeout, DefaultHandshakeTimeout)
	set(&l.IdleTimeout, DefaultIdleTimeout)
	set(&l.WriteTimeout, DefaultWriteTimeout)
}

// maxHeadBytes bounds a message's start line and headers on a stream.
const maxHeadBytes = 32 << 10

// streamListener is the guard's listener (see the top of this file): a
// netlimit.Listener for the caps and the accept retries, and a guard
// around each connection.
type streamListener struct {
	*netlimit.Listener
	s       *Server
	tlsConf *tls.Config // nil for TCP
	lim     StreamLimits
}

func newStreamListener(s *Server, ln net.Listener, tlsConf *tls.Config) *streamListener {
	nl := netlimit.New(ln, s.opt.Streams.MaxConnections, s.opt.Streams.MaxPerAddress)
	var lastLog atomic.Int64
	nl.OnAcceptError = func(err error) {
		s.opt.Metrics.ConnectionRefused("accept_error")
		if now := time.Now().UnixNano(); now-lastLog.Load() > int64(10*time.Second) {
			lastLog.Store(now)
			s.log.Warn("sip accept failed; retrying", "address", ln.Addr().String(), "err", err)
		}
	}
	nl.OnRefuse = func(reason string, remote net.Addr) {
		s.opt.Metrics.ConnectionRefused(reason)
		s.log.Debug("sip connection refused", "source", remote.String(), "reason", reason)
	}
	return &streamListener{Listener: nl, s: s, tlsConf: tlsConf, lim: s.opt.Streams}
}

// Accept returns the next admitted connection, guarded (see
// netlimit.Listener for the caps and retries).
func (l *streamListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if l.tlsConf != nil {
		c = tls.Server(c, l.tlsConf)
	}
	return newGuardedConn(c, l), nil
}

// guardedConn frames what a stream connection sends before sipgo reads
// it (see the top of this file).
type guardedConn struct {
	net.Conn
	l        *streamListener
	remote   string // the peer's address, as subscriptions record it
	buf      []byte // one read
	in       []byte // read, not yet a whole message
	out      []byte // whole messages for sipgo
	msgStart time.Time
	shaken   bool
	fatal    error      // set once the stream cannot be framed any more
	wmu      sync.Mutex // one message at a time: held across one write, under the write deadline; a leaf
}

func newGuardedConn(c net.Conn, l *streamListener) *guardedConn {
	return &guardedConn{Conn: c, l: l, remote: c.RemoteAddr().String(), buf: make([]byte, 4096)}
}

// Read hands sipgo whole messages only.
func (c *guardedConn) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.fatal != nil {
			return 0, c.fatal
		}
		if err := c.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	if len(c.out) == 0 {
		c.out = c.out[:0:0] // let a large message go
	}
	return n, nil
}

// fill reads until at least one whole message is framed (or the stream
// ends), under the handshake, message and idle deadlines.
func (c *guardedConn) fill() error {
	lim := &c.l.lim
	if tc, ok := c.Conn.(*tls.Conn); ok && !c.shaken {
		ctx, cancel := context.WithTimeout(context.Background(), lim.HandshakeTimeout)
		err := tc.HandshakeContext(ctx)
		cancel()
		if err != nil {
			c.l.s.opt.Metrics.ConnectionRefused("tls_handshake")
			return err
		}
		c.shaken = true
	}
	for len(c.out) == 0 && c.fatal == nil {
		deadline := time.Now().Add(lim.IdleTimeout)
		if len(c.in) > 0 {
			deadline = c.msgStart.Add(lim.MessageTimeout)
		}
		_ = c.Conn.SetReadDeadline(deadline)
		n, err := c.Conn.Read(c.buf)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				if len(c.in) == 0 && c.l.s.streamNeeded(c.transport(), c.remote) {
					continue // idle, but its subscriptions or its phone's calls need it
				}
				reason := "idle_timeout"
				if len(c.in) > 0 {
					reason = "message_timeout"
				}
				c.l.s.opt.Metrics.ConnectionRefused(reason)
				c.l.s.log.Debug("closing a sip connection", "source", c.remote, "reason", reason)
			}
			return err
		}
		if len(c.in) == 0 {
			c.msgStart = time.Now()
		}
		c.in = append(c.in, c.buf[:n]...)
		c.frame()
	}
	return nil
}

// frame moves every whole message from in to out; requests that cannot
// be taken are answered here and left out.
func (c *guardedConn) frame() {
	for c.fatal == nil {
		// RFC 5626 keep-alives between messages: a double CRLF gets a
		// single CRLF back, a lone CRLF is skipped.
		if bytes.HasPrefix(c.in, []byte("\r\n")) {
			switch {
			case bytes.HasPrefix(c.in, []byte("\r\n\r\n")):
				c.consume(4)
				_, _ = c.Write([]byte("\r\n"))
			case len(c.in) == 3 && c.in[2] == '\r':
				return // the rest of a double CRLF may follow
			default:
				c.consume(2)
			}
			continue
		}
		if len(c.in) == 0 {
			return
		}
		end := bytes.Index(c.in, []byte("\r\n\r\n"))
		if end < 0 {
			if len(c.in) > maxHeadBytes {
				c.refuse(c.in, 413, "Message Too Large")
			}
			return
		}
		if end+4 > maxHeadBytes {
			c.refuse(c.in, 413, "Message Too Large")
			return
		}
		value, found := rawContentLength(c.in[:end])
		if !found {
			// RFC 3261 §18.3: a stream message must say its length. With
			// none it is taken to end with its head: framed, and refused.
			if res := rawResponse(c.in[:end+4], 400, "Missing Content-Length", c.l.s.opt.UserAgent); res != nil {
				c.answer(c.in, res, 400)
			}
			c.consume(end + 4)
			continue
		}
		n, err := strconv.ParseUint(string(value), 10, 31)
		if err != nil {
			c.refuse(c.in, 400, "Bad Content-Length") // no way to find the next message
			return
		}
		if int(n) > c.l.s.opt.MaxBodyBytes {
			c.refuse(c.in, 413, "Request Entity Too Large")
			return
		}
		total := end + 4 + int(n)
		if len(c.in) < total {
			return
		}
		if !c.serve(c.in[:total]) {
			c.out = append(c.out, c.in[:total]...)
		}
		c.consume(total)
	}
}

// consume drops n framed bytes from in.
// serve runs a request the server answers itself on Lamplighter's own
// path, in order with the connection's other messages, and ends the
// NOTIFY transaction a response answers; it reports false for what sipgo
// should read instead (other responses, other methods). Over a
// stream there are no retransmissions to absorb: the response is written
// on the connection and nothing is kept.
func (c *guardedConn) serve(msg []byte) bool {
	if !isRawRequest(msg) {
		// A response to one of our NOTIFYs ends its transaction here, as
		// over UDP; any other goes to sipgo.
		return c.l.s.notifier.Streamed(msg, c.remote)
	}
	handler, ok := c.l.s.handlerFor(rawMethod(msg))
	if !ok {
		return false
	}
	peer := parseAddrPort(c.remote)
	if !c.l.s.admitSource(peer.Addr()) {
		return true // dropped unanswered (admit.go)
	}
	req, err := sipmsg.Parse(msg)
	if err != nil {
		code, reason := readFailure(err)
		if res := rawResponse(msg, code, reason, c.l.s.opt.UserAgent); res != nil {
			c.answer(msg, res, code)
		}
		return true
	}
	req.Transport, req.Source, req.Peer = c.transport(), c.remote, peer
	switch c.l.s.admit(req) {
	case admitForward:
		return false // sipgo reads it, for the Forwarder
	case admitChallenge:
		c.l.s.challenge(req, streamTx{c}, false, nil)
		return true
	}
	if why := c.l.s.overloaded(req); why != "" {
		c.l.s.noteShed(why)
		if res := rawResponse(msg, 503, "Service Unavailable", c.l.s.opt.UserAgent, c.l.s.retryAfter()); res != nil {
			c.answer(msg, res, 503)
		}
		return true
	}
	handler(req, streamTx{c})
	return true
}

// transport is the name of the connection's transport in Via and
// subscriptions.
func (c *guardedConn) transport() string {
	if c.l.tlsConf != nil {
		return "TLS"
	}
	return "TCP"
}

// streamTx answers a request on the connection it came on.
type streamTx struct{ c *guardedConn }

func (t streamTx) respond(b []byte, _ int) error {
	_, err := t.c.Write(b)
	return err
}

func (t streamTx) done() {}

func (c *guardedConn) consume(n int) {
	rest := copy(c.in, c.in[n:])
	c.in = c.in[:rest]
	if rest == 0 && cap(c.in) > 64<<10 {
		c.in = nil // let a large message go
	}
	c.msgStart = time.Now()
}

// refuse answers the request at the head of data, if it is one, and ends
// the stream: after it nothing can be framed.
func (c *guardedConn) refuse(data []byte, code int, reason string) {
	if res := rawResponse(data, code, reason, c.l.s.opt.UserAgent); res != nil {
		c.answer(data, res, code)
	}
	c.l.s.log.Debug("sip stream cannot be framed: closing", "source", c.remote, "status", code, "reason", reason)
	c.in, c.fatal = nil, io.ErrUnexpectedEOF
}

func (c *guardedConn) answer(req, res []byte, code int) {
	_, _ = c.Write(res)
	c.l.s.opt.Metrics.Response(methodLabel(rawMethod(req)), code)
}

// Write writes under the write deadline, one message at a time.
func (c *guardedConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.Conn.SetWriteDeadline(time.Now().Add(c.l.lim.WriteTimeout))
	return c.Conn.Write(p)
}

// SetReadDeadline is the guard's own: sipgo's would cut a message short.
func (c *guardedConn) SetReadDeadline(time.Time) error { return nil }
