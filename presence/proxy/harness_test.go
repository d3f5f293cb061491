package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence"
)

func TestMain(m *testing.M) {
	// Short SIP timers: Timer B and F (64*T1) are 3.2 s.
	sip.SetTimers(50*time.Millisecond, 400*time.Millisecond, 500*time.Millisecond)
	sip.SetDefaultLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	os.Exit(m.Run())
}

// env is a presence server in proxy mode on 127.0.0.1 and a PBX of raw
// sockets on 127.0.0.2 (another address: the proxy tells a PBX's
// requests by its address).
type env struct {
	t      *testing.T
	bridge *bridge.Bridge
	srv    *presence.Server
	px     *Proxy
	udp    string // Lamplighter's UDP address
	tcp    string // Lamplighter's TCP address
	pbx    *peer  // the PBX's UDP socket
	stop   func() // ends the server and the proxy (once)
}

type envOpt func(*Options, *presenceOptions)

// presenceOptions are the presence server's options in a test.
type presenceOptions = presence.Options

func newEnv(t *testing.T, opts ...envOpt) *env {
	t.Helper()
	return newEnvWith(t, nil, opts...)
}

// newEnvAt stops prev and starts a new server and proxy on its addresses,
// with its PBX: Lamplighter restarted.
func newEnvAt(t *testing.T, prev *env, opts ...envOpt) *env {
	t.Helper()
	prev.stop()
	listen := func(_ *Options, s *presenceOptions) {
		s.Listen = []presence.Listener{{Transport: "udp", Address: prev.udp}, {Transport: "tcp", Address: prev.tcp}}
	}
	return newEnvWith(t, prev.pbx, append([]envOpt{listen}, opts...)...)
}

// newEnvWith is newEnv with a PBX peer of an earlier env (nil: a new one).
func newEnvWith(t *testing.T, pbx *peer, opts ...envOpt) *env {
	t.Helper()
	dir, err := bridge.NewDirectory([]bridge.User{
		{ID: "debbie", Name: "Debbie", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/100"}}},
		{ID: "bob", Name: "Bob", Extensions: []string{"101"}, Devices: []bridge.DeviceRef{{Source: "pbx", Device: "PJSIP/101"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	b := bridge.New(dir)
	b.Apply(bridge.Snapshot{Source: "pbx", Devices: map[string]bridge.DeviceState{
		"PJSIP/100": bridge.DeviceIdle, "PJSIP/101": bridge.DeviceIdle}})
	if pbx == nil {
		pbx = listenPeerWith(t, "127.0.0.2:0", true)
	}
	popt := Options{
		Targets:        []Target{{Name: "pbx", Host: "127.0.0.2", Port: pbx.port()}},
		HealthInterval: time.Second, // and so a ping unanswered for 1 s: generous on a busy machine
	}
	sopt := presence.Options{
		Realm:       "test.invalid",
		Listen:      []presence.Listener{{Transport: "udp", Address: "127.0.0.1:0"}, {Transport: "tcp", Address: "127.0.0.1:0"}},
		Credentials: []presence.Credential{{Username: "100", UserID: "debbie", Password: "secret"}},
	}
	if testing.Verbose() {
		l := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
		popt.Logger, sopt.Logger = l, l
	}
	for _, o := range opts {
		o(&popt, &sopt)
	}
	px, err := New(popt)
	if err != nil {
		t.Fatal(err)
	}
	sopt.Forwarder = px
	srv, err := presence.New(b, sopt)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	select {
	case <-srv.Ready():
	case <-time.After(5 * time.Second):
		t.Fatal("server not ready")
	}
	select {
	case <-px.started:
	case <-time.After(5 * time.Second):
		t.Fatal("proxy not started")
	}
	e := &env{t: t, bridge: b, srv: srv, px: px, pbx: pbx, stop: stop}
	e.udp = srv.Addrs()[0].String()
	e.tcp = srv.Addrs()[1].String()
	return e
}

// waitHealth waits until the proxy's OPTIONS found the PBX up (or down).
func (e *env) waitHealth(up bool) {
	e.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if v, ok := e.px.Health()["pbx"]; ok && v == up {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.t.Fatalf("PBX never found up=%v: %v", up, e.px.Health())
}

// peer is a raw UDP socket playing a phone or a PBX: what it reads is
// parsed by sipgo and queued.
type peer struct {
	t           *testing.T
	conn        *net.UDPConn
	in          chan sip.Message
	autoOptions bool // answer OPTIONS addressed to it with 200 (PBX pings)
	pings       atomic.Int64
}

func listenPeer(t *testing.T, addr string) *peer { return listenPeerWith(t, addr, false) }

// listenPeerWith makes a peer that answers OPTIONS pings itself when
// autoOptions is set (a PBX).
func listenPeerWith(t *testing.T, addr string, autoOptions bool) *peer {
	t.Helper()
	c, err := net.ListenPacket("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{t: t, conn: c.(*net.UDPConn), in: make(chan sip.Message, 64), autoOptions: autoOptions}
	t.Cleanup(func() { p.conn.Close() })
	go p.read()
	return p
}

func (p *peer) read() {
	buf := make([]byte, 70000)
	for {
		n, from, err := p.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		msg, err := sip.ParseMessage(append([]byte(nil), buf[:n]...))
		if err != nil {
			p.t.Logf("peer %s: unreadable datagram from %s: %v", p.addr(), from, err)
			continue
		}
		msg.SetSource(from.String())
		if req, ok := msg.(*sip.Request); ok && p.autoOptions && req.Method == sip.OPTIONS && req.Route() == nil &&
			req.Recipient.User == "" {
			p.pings.Add(1)
			p.sendTo(from.String(), responseTo(req, 200, "OK", ""))
			continue
		}
		select {
		case p.in <- msg:
		default:
			p.t.Logf("peer %s: queue full, dropped %s", p.addr(), startLine(msg))
		}
	}
}

func (p *peer) addr() string { return p.conn.LocalAddr().String() }

func (p *peer) port() int { return p.conn.LocalAddr().(*net.UDPAddr).Port }

func (p *peer) sendTo(to string, msg string) {
	p.t.Helper()
	ap := netip.MustParseAddrPort(to)
	if _, err := p.conn.WriteToUDPAddrPort([]byte(msg), ap); err != nil {
		p.t.Fatal(err)
	}
}

// request waits for the next request of a method, skipping others
// (retransmissions, responses) it logs.
func (p *peer) request(method sip.RequestMethod) *sip.Request {
	p.t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		select {
		case m := <-p.in:
			if r, ok := m.(*sip.Request); ok && r.Method == method {
				return r
			}
			p.t.Logf("peer %s: skipping %s", p.addr(), startLine(m))
		case <-deadline:
			p.t.Fatalf("peer %s: no %s within 5 s", p.addr(), method)
			return nil
		}
	}
}

// response waits for the next response to a CSeq method with a status
// of at least min, skipping others.
func (p *peer) response(method sip.RequestMethod, min int) *sip.Response {
	p.t.Helper()
	deadline := time.After(6 * time.Second)
	for {
		select {
		case m := <-p.in:
			if r, ok := m.(*sip.Response); ok && r.CSeq().MethodName == method && r.StatusCode >= min {
				return r
			}
			p.t.Logf("peer %s: skipping %s", p.addr(), startLine(m))
		case <-deadline:
			p.t.Fatalf("peer %s: no response >= %d to %s within 6 s", p.addr(), min, method)
			return nil
		}
	}
}

// quiet checks that nothing but skipped kinds arrives for d.
func (p *peer) quiet(d time.Duration, what string) {
	p.t.Helper()
	select {
	case m := <-p.in:
		p.t.Fatalf("peer %s: %s, yet got %s", p.addr(), what, startLine(m))
	case <-time.After(d):
	}
}

// responseTo writes a response to a parsed request, echoing its Vias,
// From, To (with a tag when toTag is set), Call-ID, CSeq and
// Record-Routes.
func responseTo(req *sip.Request, code int, reason, toTag string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "SIP/2.0 %d %s\r\n", code, reason)
	for _, v := range req.GetHeaders("Via") {
		fmt.Fprintf(&b, "Via: %s\r\n", v.Value())
	}
	if code > 100 && code < 300 {
		for _, v := range req.GetHeaders("Record-Route") {
			fmt.Fprintf(&b, "Record-Route: %s\r\n", v.Value())
		}
	}
	fmt.Fprintf(&b, "From: %s\r\n", req.From().Value())
	to := req.To().Value()
	if toTag != "" && !strings.Contains(to, "tag=") {
		to += ";tag=" + toTag
	}
	fmt.Fprintf(&b, "To: %s\r\n", to)
	fmt.Fprintf(&b, "Call-ID: %s\r\n", req.CallID().Value())
	fmt.Fprintf(&b, "CSeq: %s\r\n", req.CSeq().Value())
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	return b.String()
}

// phoneRequest writes a request from a phone at from.
type phoneRequest struct {
	method  string
	uri     string
	from    string // the phone's address
	user    string // its user
	toUser  string
	callID  string
	cseq    int
	branch  string
	toTag   string
	extra   []string
	body    string
	maxFwd  int // -1: none
	viaHost string
	contact string // the Contact's host:port (default from)
}

func (r phoneRequest) String() string {
	if r.branch == "" {
		r.branch = "z9hG4bK" + strconv.FormatInt(time.Now().UnixNano(), 36)
	}
	if r.cseq == 0 {
		r.cseq = 1
	}
	if r.toUser == "" {
		r.toUser = r.user
	}
	viaHost := r.from
	if r.viaHost != "" {
		viaHost = r.viaHost
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s SIP/2.0\r\n", r.method, r.uri)
	fmt.Fprintf(&b, "Via: SIP/2.0/UDP %s;branch=%s;rport\r\n", viaHost, r.branch)
	if r.maxFwd >= 0 {
		mf := r.maxFwd
		if mf == 0 {
			mf = 70
		}
		fmt.Fprintf(&b, "Max-Forwards: %d\r\n", mf)
	}
	fmt.Fprintf(&b, "From: <sip:%s@pbx.test>;tag=ft-%s\r\n", r.user, r.callID)
	to := fmt.Sprintf("<sip:%s@pbx.test>", r.toUser)
	if r.toTag != "" {
		to += ";tag=" + r.toTag
	}
	fmt.Fprintf(&b, "To: %s\r\n", to)
	fmt.Fprintf(&b, "Call-ID: %s\r\n", r.callID)
	fmt.Fprintf(&b, "CSeq: %d %s\r\n", r.cseq, r.method)
	contact := r.from
	if r.contact != "" {
		contact = r.contact
	}
	fmt.Fprintf(&b, "Contact: <sip:%s@%s>\r\n", r.user, contact)
	for _, h := range r.extra {
		b.WriteString(h + "\r\n")
	}
	fmt.Fprintf(&b, "Content-Length: %d\r\n\r\n%s", len(r.body), r.body)
	return b.String()
}

// startLine is a message's first line, for logs.
func startLine(m sip.Message) string {
	s, _, _ := strings.Cut(m.String(), "\r\n")
	return s
}

// tcpPeer is a raw TCP listener playing a PBX over TCP: each message
// read is parsed and queued with its connection.
type tcpPeer struct {
	t  *testing.T
	ln net.Listener
	in chan tcpMsg
}

type tcpMsg struct {
	msg  sip.Message
	conn net.Conn
}

func listenTCPPeer(t *testing.T, addr string) *tcpPeer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	return serveTCPPeer(t, ln)
}

// serveTCPPeer plays a PBX on a stream listener (TCP or TLS).
func serveTCPPeer(t *testing.T, ln net.Listener) *tcpPeer {
	t.Helper()
	p := &tcpPeer{t: t, ln: ln, in: make(chan tcpMsg, 16)}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go p.serve(c)
		}
	}()
	return p
}

func (p *tcpPeer) port() int { return p.ln.Addr().(*net.TCPAddr).Port }

func (p *tcpPeer) serve(c net.Conn) {
	r := newFramer(c)
	for {
		msg, err := r.next()
		if err != nil {
			return
		}
		if req, ok := msg.(*sip.Request); ok && req.Method == sip.OPTIONS && req.Route() == nil && req.Recipient.User == "" {
			c.Write([]byte(responseTo(req, 200, "OK", "")))
			continue
		}
		p.in <- tcpMsg{msg, c}
	}
}

// framer reads SIP messages from a stream by their Content-Length.
type framer struct {
	c   net.Conn
	buf []byte
}

func newFramer(c net.Conn) *framer { return &framer{c: c} }

func (f *framer) next() (sip.Message, error) {
	tmp := make([]byte, 64<<10)
	for {
		if end := strings.Index(string(f.buf), "\r\n\r\n"); end >= 0 {
			head := string(f.buf[:end])
			n := 0
			for _, line := range strings.Split(head, "\r\n") {
				k, v, _ := strings.Cut(line, ":")
				if strings.EqualFold(strings.TrimSpace(k), "Content-Length") || strings.TrimSpace(k) == "l" {
					n, _ = strconv.Atoi(strings.TrimSpace(v))
				}
			}
			if len(f.buf) >= end+4+n {
				raw := append([]byte(nil), f.buf[:end+4+n]...)
				f.buf = f.buf[end+4+n:]
				parser := sip.NewParser()
				parser.MaxMessageLength = 1 << 20
				return parser.ParseSIP(raw)
			}
		}
		_ = f.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		k, err := f.c.Read(tmp)
		if err != nil {
			return nil, err
		}
		f.buf = append(f.buf, tmp[:k]...)
	}
}

// freeUDPPort returns a UDP port free on addr a moment ago.
func freeUDPPort(t *testing.T, host string) int {
	t.Helper()
	c, err := net.ListenPacket("udp", host+":0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

// calls records what the proxy observes.
type calls struct {
	ch chan any // CallEvent, or regs
}

type regs struct {
	target, user string
	n            int
}

func newCalls() *calls { return &calls{ch: make(chan any, 64)} }

func (c *calls) ObserveCall(e CallEvent) { c.ch <- e }

func (c *calls) ObserveRegistrations(target, user string, n int) { c.ch <- regs{target, user, n} }

// next waits for the next observation.
func (c *calls) next(t *testing.T) any {
	t.Helper()
	select {
	case v := <-c.ch:
		return v
	case <-time.After(5 * time.Second):
		t.Fatal("nothing observed within 5 s")
		return nil
	}
}

// call waits for the next call event.
func (c *calls) call(t *testing.T) CallEvent {
	t.Helper()
	for {
		if e, ok := c.next(t).(CallEvent); ok {
			return e
		}
	}
}
