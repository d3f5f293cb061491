package presence

import (
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// rawPeer is a SIP peer on a bare UDP socket: it writes requests as text
// and reads whatever comes back, so tests can send what no SIP stack
// would (forged responses, odd headers) and see exactly what the server
// answers. NOTIFYs are answered 200 unless answerNotify is set to 0.
type rawPeer struct {
	t            testing.TB
	conn         *net.UDPConn
	server       *net.UDPAddr
	answerNotify atomic.Int32
	notifies     chan *sip.Request
	responses    chan *sip.Response
	seq          atomic.Uint64
	mu           sync.Mutex
	notifyCount  map[string]int        // by Call-ID
	last         map[string]lastNotify // by Call-ID: the highest CSeq's
	answered     map[string]bool       // Call-IDs whose final response came
	early        map[string]bool       // Call-IDs with a NOTIFY before it
}

// lastNotify is the newest NOTIFY of one dialog.
type lastNotify struct {
	cseq uint32
	body string
	req  *sip.Request
}

func newRawPeer(t testing.TB, server string) *rawPeer { return newRawPeerOn(t, server, "127.0.0.1") }

// newRawPeerOn makes a raw peer whose socket is on the loopback address ip.
func newRawPeerOn(t testing.TB, server, ip string) *rawPeer {
	t.Helper()
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.ParseIP(ip)})
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadBuffer(4 << 20)
	sa, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		t.Fatal(err)
	}
	p := &rawPeer{t: t, conn: conn, server: sa, notifies: make(chan *sip.Request, 20000),
		responses: make(chan *sip.Response, 20000), notifyCount: map[string]int{}, last: map[string]lastNotify{},
		answered: map[string]bool{}, early: map[string]bool{}}
	p.answerNotify.Store(200)
	go p.read()
	t.Cleanup(func() { conn.Close() })
	return p
}

// port is the peer's own UDP port.
func (p *rawPeer) port() int { return p.conn.LocalAddr().(*net.UDPAddr).Port }

func (p *rawPeer) read() {
	buf := make([]byte, 65536)
	for {
		n, from, err := p.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		msg, err := sip.ParseMessage(append([]byte(nil), buf[:n]...))
		if err != nil {
			continue
		}
		switch m := msg.(type) {
		case *sip.Request:
			if m.Method != sip.NOTIFY {
				continue
			}
			p.mu.Lock()
			cid := m.CallID().Value()
			p.notifyCount[cid]++
			if !p.answered[cid] {
				p.early[cid] = true
			}
			if l, ok := p.last[cid]; !ok || m.CSeq().SeqNo > l.cseq {
				p.last[cid] = lastNotify{cseq: m.CSeq().SeqNo, body: string(m.Body()), req: m}
			}
			p.mu.Unlock()
			if code := int(p.answerNotify.Load()); code != 0 {
				p.conn.WriteToUDP([]byte(responseTo(m, code)), from)
			}
			select {
			case p.notifies <- m:
			default:
			}
		case *sip.Response:
			if m.StatusCode >= 200 && m.CallID() != nil {
				p.mu.Lock()
				p.answered[m.CallID().Value()] = true
				p.mu.Unlock()
			}
			select {
			case p.responses <- m:
			default:
			}
		}
	}
}

// responseTo renders a response to req with its Via, From, To, Call-ID
// and CSeq, as a phone would.
func responseTo(req *sip.Request, code int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "SIP/2.0 %d Answer\r\n", code)
	for _, h := range req.GetHeaders("Via") {
		b.WriteString("Via: " + h.Value() + "\r\n")
	}
	b.WriteString("From: " + req.From().Value() + "\r\n")
	b.WriteString("To: " + req.To().Value() + ";tag=rawpeer\r\n")
	b.WriteString("Call-ID: " + req.CallID().Value() + "\r\n")
	b.WriteString("CSeq: " + req.CSeq().Value() + "\r\nContent-Length: 0\r\n\r\n")
	return b.String()
}

// lastBody is the body of the newest NOTIFY of a dialog.
func (p *rawPeer) lastBody(callID string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.last[callID].body
}

// notifiedBeforeAnswer counts the dialogs whose first NOTIFY came before
// the SUBSCRIBE's final response.
func (p *rawPeer) notifiedBeforeAnswer() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.early)
}

// send writes a datagram to the server.
func (p *rawPeer) send(msg string) {
	p.t.Helper()
	if _, err := p.conn.WriteToUDP([]byte(msg), p.server); err != nil {
		p.t.Fatal(err)
	}
}

// rawSub is one subscription made by a rawPeer.
type rawSub struct {
	callID, fromTag, toTag, user, event string
	cseq                                int
}

// subscribeMsg renders a SUBSCRIBE for d: new while d.toTag is "".
func (p *rawPeer) subscribeMsg(d *rawSub, expires int, extra ...string) string {
	d.cseq++
	to := "<sip:" + d.user + "@127.0.0.1>"
	if d.toTag != "" {
		to += ";tag=" + d.toTag
	}
	var b strings.Builder
	fmt.Fprintf(&b, "SUBSCRIBE sip:%s@%s SIP/2.0\r\n", d.user, p.server)
	fmt.Fprintf(&b, "Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKraw%d;rport\r\n", p.port(), p.seq.Add(1))
	b.WriteString("Max-Forwards: 70\r\n")
	fmt.Fprintf(&b, "From: <sip:watcher@127.0.0.1>;tag=%s\r\nTo: %s\r\n", d.fromTag, to)
	fmt.Fprintf(&b, "Call-ID: %s\r\nCSeq: %d SUBSCRIBE\r\n", d.callID, d.cseq)
	fmt.Fprintf(&b, "Contact: <sip:watcher@127.0.0.1:%d>\r\nEvent: %s\r\nExpires: %d\r\n", p.port(), d.event, expires)
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	return b.String()
}

// response waits for the response to a request with that Call-ID.
func (p *rawPeer) response(callID string, within time.Duration) *sip.Response {
	p.t.Helper()
	r := p.awaitResponse(callID, within)
	if r == nil {
		p.t.Fatalf("no final response for %s within %v", callID, within)
	}
	return r
}

// awaitResponse is response, nil when none came in time (for goroutines
// other than the test's, which may not fail it).
func (p *rawPeer) awaitResponse(callID string, within time.Duration) *sip.Response {
	deadline := time.After(within)
	for {
		select {
		case r := <-p.responses:
			if r.CallID() != nil && r.CallID().Value() == callID && r.StatusCode >= 200 {
				return r
			}
		case <-deadline:
			return nil
		}
	}
}

// subscribeMany makes n subscriptions to user, sending them all before
// reading the answers, and returns them once each has its 200.
func (p *rawPeer) subscribeMany(user, event string, n int) []*rawSub {
	p.t.Helper()
	subs := make([]*rawSub, n)
	byCallID := map[string]*rawSub{}
	for i := range subs {
		d := &rawSub{callID: "raw-" + strconv.Itoa(i) + "-" + sip.GenerateTagN(8), fromTag: sip.GenerateTagN(8), user: user, event: event}
		subs[i], byCallID[d.callID] = d, d
		p.send(p.subscribeMsg(d, 600))
		if i%100 == 99 {
			time.Sleep(time.Millisecond) // keep within the socket buffers
		}
	}
	deadline := time.After(20 * time.Second)
	for left := n; left > 0; {
		select {
		case r := <-p.responses:
			d := byCallID[r.CallID().Value()]
			if d == nil || d.toTag != "" || r.StatusCode < 200 {
				continue
			}
			if r.StatusCode != 200 {
				p.t.Fatalf("SUBSCRIBE answered %d %s", r.StatusCode, r.Reason)
			}
			d.toTag, _ = r.To().Params.Get("tag")
			left--
		case <-deadline:
			p.t.Fatalf("subscriptions not all answered within 20s")
		}
	}
	return subs
}

// request renders a request out of any dialog from this peer, with a
// fresh Call-ID (returned), the headers given and a body whose
// Content-Length is right unless a Content-Length is among the headers.
func (p *rawPeer) request(method, user string, headers []string, body string) (msg, callID string) {
	callID = "raw-" + sip.GenerateTagN(12)
	var b strings.Builder
	fmt.Fprintf(&b, "%s sip:%s@%s SIP/2.0\r\n", method, user, p.server)
	fmt.Fprintf(&b, "Via: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bKraw%d;rport\r\n", p.port(), p.seq.Add(1))
	b.WriteString("Max-Forwards: 70\r\n")
	fmt.Fprintf(&b, "From: <sip:watcher@127.0.0.1>;tag=%s\r\nTo: <sip:%s@127.0.0.1>\r\n", sip.GenerateTagN(6), user)
	fmt.Fprintf(&b, "Call-ID: %s\r\n", callID)
	hasCSeq, hasCL, hasContact := false, false, false
	for _, h := range headers {
		lower := strings.ToLower(h)
		hasCSeq = hasCSeq || strings.HasPrefix(lower, "cseq:")
		hasCL = hasCL || strings.HasPrefix(lower, "content-length:")
		hasContact = hasContact || strings.HasPrefix(lower, "contact:")
	}
	if !hasCSeq {
		fmt.Fprintf(&b, "CSeq: 1 %s\r\n", method)
	}
	if !hasContact {
		fmt.Fprintf(&b, "Contact: <sip:watcher@127.0.0.1:%d>\r\n", p.port())
	}
	for _, h := range headers {
		b.WriteString(h + "\r\n")
	}
	if !hasCL {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", len(body))
	}
	b.WriteString("\r\n" + body)
	return b.String(), callID
}
