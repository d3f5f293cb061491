package presence

import (
	"bufio"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

// rawStream is a SIP peer on a bare TCP (or TLS) connection.
type rawStream struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
	seq  int
}

func dialStream(t *testing.T, addr string, useTLS bool) *rawStream {
	t.Helper()
	var c net.Conn
	var err error
	if useTLS {
		c, err = tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	} else {
		c, err = net.Dial("tcp", addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &rawStream{t: t, conn: c, r: bufio.NewReader(c)}
}

// options renders an OPTIONS request with the given extra header lines
// and Content-Length line ("" for none).
func (s *rawStream) options(contentLength string) string {
	s.seq++
	la := s.conn.LocalAddr().String()
	m := fmt.Sprintf("OPTIONS sip:100@%s;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bKtcp%d\r\n"+
		"Max-Forwards: 70\r\nFrom: <sip:w@127.0.0.1>;tag=f%d\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: tcp-%d@%s\r\nCSeq: %d OPTIONS\r\n",
		s.conn.RemoteAddr(), la, s.seq, s.seq, s.seq, la, s.seq)
	if contentLength != "" {
		m += "Content-Length: " + contentLength + "\r\n"
	}
	return m + "\r\n"
}

// readMessage reads one message (head and body) within d.
func (s *rawStream) readMessage(d time.Duration) (string, error) {
	s.conn.SetReadDeadline(time.Now().Add(d))
	var head strings.Builder
	n := 0
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return head.String(), err
		}
		if line == "\r\n" && head.Len() == 0 {
			continue // a keep-alive answer
		}
		head.WriteString(line)
		if v, ok := strings.CutPrefix(strings.ToLower(line), "content-length:"); ok {
			n, _ = strconv.Atoi(strings.TrimSpace(v))
		}
		if line == "\r\n" {
			break
		}
	}
	body := make([]byte, n)
	_, err := io.ReadFull(s.r, body)
	return head.String() + string(body), err
}

// status reads the next message and returns its status code.
func (s *rawStream) status() int {
	s.t.Helper()
	m, err := s.readMessage(5 * time.Second)
	if err != nil {
		s.t.Fatalf("no response: %v (%q)", err, m)
	}
	code, _ := strconv.Atoi(strings.Fields(m)[1])
	return code
}

// closedWithin asserts that the server closes the connection within d.
func (s *rawStream) closedWithin(d time.Duration) {
	s.t.Helper()
	s.conn.SetReadDeadline(time.Now().Add(d))
	if _, err := io.Copy(io.Discard, s.r); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			s.t.Fatalf("connection still open after %v", d)
		}
	}
}

func streamLimits(l StreamLimits) envOption {
	return func(o *Options) { o.Streams = l }
}

// TestStreamFramingAnswers: a TCP request without Content-Length is
// framed by its head and answered 400, and the connection goes on
// serving; a Content-Length that is not a number is answered 400 and the
// connection closed (nothing after it can be framed); a body above
// max_body_bytes gets 413.
func TestStreamFramingAnswers(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.MaxBodyBytes = 1000 })
	c := dialStream(t, env.tcp, false)
	c.conn.Write([]byte(c.options("")))
	if code := c.status(); code != 400 {
		t.Errorf("no Content-Length: %d, want 400", code)
	}
	c.conn.Write([]byte(c.options("0")))
	if code := c.status(); code != 200 {
		t.Errorf("the next request on the connection: %d, want 200", code)
	}
	// A ping between messages gets its pong, and framing goes on.
	c.conn.Write([]byte("\r\n\r\n" + c.options("0")))
	if code := c.status(); code != 200 {
		t.Errorf("after a keep-alive: %d", code)
	}
	c.conn.Write([]byte(c.options("many")))
	if code := c.status(); code != 400 {
		t.Errorf("bad Content-Length: %d, want 400", code)
	}
	c.closedWithin(5 * time.Second)

	big := dialStream(t, env.tcp, false)
	big.conn.Write([]byte(big.options("5000")))
	if code := big.status(); code != 413 {
		t.Errorf("body above max_body_bytes: %d, want 413", code)
	}
	big.closedWithin(5 * time.Second)
}

// TestStreamConnectionCaps: connections past the per-address cap are
// closed at once; one closed makes room again.
func TestStreamConnectionCaps(t *testing.T) {
	env := newEnv(t, trusted, streamLimits(StreamLimits{MaxPerAddress: 3, MaxConnections: 1000}))
	var held []*rawStream
	for range 3 {
		c := dialStream(t, env.tcp, false)
		c.conn.Write([]byte(c.options("0")))
		if code := c.status(); code != 200 {
			t.Fatalf("connection within the cap: %d", code)
		}
		held = append(held, c)
	}
	extra := dialStream(t, env.tcp, false)
	extra.conn.Write([]byte(extra.options("0")))
	extra.closedWithin(5 * time.Second)
	held[0].conn.Close()
	waitUntil(t, 5*time.Second, "a place freed", func() bool { return env.srv.StreamConnections() == 2 })
	again := dialStream(t, env.tcp, false)
	again.conn.Write([]byte(again.options("0")))
	if code := again.status(); code != 200 {
		t.Errorf("after one closed: %d", code)
	}
}

// TestStreamTotalCap: the total cap holds across addresses.
func TestStreamTotalCap(t *testing.T) {
	env := newEnv(t, trusted, streamLimits(StreamLimits{MaxConnections: 2}))
	a, b := dialStream(t, env.tcp, false), dialStream(t, env.tcp, false)
	for _, c := range []*rawStream{a, b} {
		c.conn.Write([]byte(c.options("0")))
		if code := c.status(); code != 200 {
			t.Fatal(code)
		}
	}
	third := dialStream(t, env.tcp, false)
	third.closedWithin(5 * time.Second)
}

// TestSlowSendersAndIdlersAreClosed: a message dribbled byte by byte is
// cut off at the message deadline, a TLS client that never finishes its
// handshake at the handshake deadline, and a connection that idles
// without a subscription at the idle deadline; one holding a subscription
// stays open past it and still gets its NOTIFYs. Meanwhile the server
// answers everyone else.
func TestSlowSendersAndIdlersAreClosed(t *testing.T) {
	lim := StreamLimits{MessageTimeout: 400 * time.Millisecond, HandshakeTimeout: 400 * time.Millisecond,
		IdleTimeout: 400 * time.Millisecond}
	env := newEnv(t, trusted, streamLimits(lim), func(o *Options) {
		o.Listen = append(o.Listen, Listener{Transport: "tls", Address: "127.0.0.1:0", TLS: selfSigned(t)})
	})
	tlsAddr := env.srv.Addrs()[2].String()

	slow := dialStream(t, env.tcp, false)
	msg := slow.options("0")
	start := time.Now()
	go func() {
		for i := 0; i < len(msg)-1; i++ {
			if _, err := slow.conn.Write([]byte{msg[i]}); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	slow.closedWithin(5 * time.Second)
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("slow sender closed after %v", took)
	}

	raw, err := net.Dial("tcp", tlsAddr) // TCP only: no ClientHello ever
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	(&rawStream{t: t, conn: raw, r: bufio.NewReader(raw)}).closedWithin(5 * time.Second)

	idle := dialStream(t, env.tcp, false)
	idle.conn.Write([]byte(idle.options("0")))
	if code := idle.status(); code != 200 {
		t.Fatal(code)
	}
	idle.closedWithin(5 * time.Second)

	// A subscriber over TCP keeps its connection, and its NOTIFYs.
	p := newPhone(t, "TCP")
	if res, _ := p.subscribe(env.tcp, subReq{user: "100", event: "dialog", expires: 600}); res.StatusCode != 200 {
		t.Fatalf("TCP SUBSCRIBE: %d", res.StatusCode)
	}
	p.nextNotify(5 * time.Second)
	time.Sleep(3 * lim.IdleTimeout)
	env.bridge.Apply(ringing("101"))
	n := p.notifyWhere("early", 5*time.Second)
	if n.Source() != env.tcp {
		t.Errorf("NOTIFY came from %s, not on the subscriber's connection to %s", n.Source(), env.tcp)
	}
	if c := env.srv.StreamConnections(); c != 1 {
		t.Errorf("%d stream connections held, want the subscriber's alone", c)
	}
}

// TestWritesHaveADeadline: a peer that never reads cannot hold a writer.
func TestWritesHaveADeadline(t *testing.T) {
	env := newEnv(t, trusted)
	a, b := net.Pipe()
	defer b.Close()
	sl := &streamListener{s: env.srv, lim: StreamLimits{WriteTimeout: 200 * time.Millisecond}}
	c := newGuardedConn(a, sl)
	done := make(chan error, 1)
	go func() { _, err := c.Write([]byte("NOTIFY nobody reads")); done <- err }()
	select {
	case err := <-done:
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("write to a peer that never reads: %v, want a timeout", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("write still blocked after 5s")
	}
	c.Close()
}

// TestNotifyKeepsStreamReferencesBalanced: every reference to a stream
// connection that sipgo's pool hands out for a NOTIFY is given back, so
// that sipgo's count stays what it was (it grew by one per NOTIFY).
func TestNotifyKeepsStreamReferencesBalanced(t *testing.T) {
	env := newEnv(t, trusted)
	p := newPhone(t, "TCP")
	res, _ := p.subscribe(env.tcp, subReq{user: "100", event: "dialog", expires: 600})
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
	}
	p.nextNotify(5 * time.Second)
	var source string
	for _, s := range env.srv.subs.all() {
		source = s.Source
	}
	refs := func() int {
		c, err := env.srv.ua.TransportLayer().GetConnection("tcp", source)
		if err != nil || c == nil {
			t.Fatalf("no connection to %s: %v", source, err)
		}
		defer c.TryClose()
		return c.Ref(0) - 1 // less the look itself
	}
	// Measured once the first NOTIFY's answer is in: a NOTIFY in flight
	// holds a reference of its own.
	waitUntil(t, 5*time.Second, "the first NOTIFY answered", func() bool { return env.srv.notifier.Pending() == 0 })
	before := refs()
	for i := range 20 {
		if i%2 == 0 {
			env.bridge.Apply(ringing("101"))
			p.notifyWhere("early", 5*time.Second)
		} else {
			env.bridge.Apply(answered("101"))
			p.notifyWhere("confirmed", 5*time.Second)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for last := refs(); last != before; last = refs() {
		if time.Now().After(deadline) {
			t.Fatalf("references %d, not back to %d within 5s (NOTIFYs in flight: %d)", last, before, env.srv.notifier.Pending())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestForgedResponseOnAnotherConnection: over TCP a NOTIFY's answer
// counts only on the subscriber's own connection: a 481 with the right
// branch sent on another connection drops nothing.
func TestForgedResponseOnAnotherConnection(t *testing.T) {
	env := newEnv(t, trusted)
	p := newPhone(t, "TCP")
	p.answer.Store(0) // hold the first NOTIFY in flight
	if res, _ := p.subscribe(env.tcp, subReq{user: "100", event: "dialog", expires: 600}); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE: %d", res.StatusCode)
	}
	n := p.nextNotify(5 * time.Second)
	attacker := dialStream(t, env.tcp, false)
	forged := responseTo(n, 481)
	attacker.conn.Write([]byte(forged))
	p.answer.Store(200)
	env.bridge.Apply(ringing("101"))
	p.notifyWhere("early", 10*time.Second)
	if w := env.srv.Watchers("debbie"); w != 1 {
		t.Fatalf("a forged 481 on another connection dropped the subscription (%d watchers)", w)
	}
}

// TestAnswerLeavesBeforeFirstNotifyOverTCP: on a stream too, the 200 to a
// SUBSCRIBE comes before the first NOTIFY of its dialog while the watched
// user's state changes all the time.
func TestAnswerLeavesBeforeFirstNotifyOverTCP(t *testing.T) {
	env := newEnv(t, trusted, func(o *Options) { o.Coalesce = time.Millisecond })
	c := dialStream(t, env.tcp, false)
	defer env.flap()()
	la := c.conn.LocalAddr().String()
	const n = 50
	for i := range n {
		fmt.Fprintf(c.conn, "SUBSCRIBE sip:100@%s;transport=tcp SIP/2.0\r\nVia: SIP/2.0/TCP %s;branch=z9hG4bKs%d\r\n"+
			"Max-Forwards: 70\r\nFrom: <sip:w@127.0.0.1>;tag=f%d\r\nTo: <sip:100@127.0.0.1>\r\nCall-ID: order-%d\r\n"+
			"CSeq: 1 SUBSCRIBE\r\nContact: <sip:w@%s;transport=tcp>\r\nEvent: dialog\r\nExpires: 600\r\nContent-Length: 0\r\n\r\n",
			env.tcp, la, i, i, i, la)
	}
	answered := map[string]bool{}
	for len(answered) < n {
		m, err := c.readMessage(10 * time.Second)
		if err != nil {
			t.Fatalf("after %d answers: %v", len(answered), err)
		}
		callID := ""
		for _, line := range strings.Split(m, "\r\n") {
			if v, ok := strings.CutPrefix(line, "Call-ID: "); ok {
				callID = v
			}
		}
		switch {
		case strings.HasPrefix(m, "SIP/2.0 200"):
			answered[callID] = true
		case strings.HasPrefix(m, "NOTIFY ") && !answered[callID]:
			t.Fatalf("a NOTIFY of %s came before its 200", callID)
		}
	}
}
