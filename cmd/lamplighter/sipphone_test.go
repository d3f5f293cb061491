package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// A sipPhone is a desk phone's SIP stack for tests that need what
// baresip cannot do: build an INVITE with Replaces from a BLF key's
// dialog-info, as desk phones do when the key of a ringing colleague is
// pressed. It registers, subscribes and calls from one UDP socket (its
// flow), through an outbound proxy when given one, and answers digest
// challenges with its password.
type sipPhone struct {
	t                   *testing.T
	user, pass, domain  string
	outbound            string // host:port of the outbound proxy ("" for none)
	port                int
	ua                  *sipgo.UserAgent
	client              *sipgo.Client
	dialogs             *sipgo.DialogClientCache
	mu                  sync.Mutex
	notifies            []*sip.Request
	news                chan struct{}
	byes                chan *sip.Request
	subCallID, subFrom  string
	subCSeq             uint32
	regCallID, regFrom  string
	regCSeq             uint32
	subToTag, subTarget string
	subRoute            []string
	answered            chan *sip.Request // INVITEs it was sent (it answers 200)
	answerSDP, offerSDP []byte
}

func newSIPPhone(t *testing.T, user, pass, domain, outbound string) *sipPhone {
	t.Helper()
	ua, srv := newTestUA(t, "DeskPhoneTest/1.0")
	p := &sipPhone{t: t, user: user, pass: pass, domain: domain, outbound: outbound, ua: ua,
		news: make(chan struct{}, 1), byes: make(chan *sip.Request, 10), answered: make(chan *sip.Request, 10),
		subCallID: sip.GenerateTagN(16) + "@phone", subFrom: sip.GenerateTagN(10),
		regCallID: sip.GenerateTagN(16) + "@phone", regFrom: sip.GenerateTagN(10)}
	srv.OnNotify(func(req *sip.Request, tx sip.ServerTransaction) {
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
		p.mu.Lock()
		p.notifies = append(p.notifies, req)
		p.mu.Unlock()
		select {
		case p.news <- struct{}{}:
		default:
		}
	})
	srv.OnBye(func(req *sip.Request, tx sip.ServerTransaction) {
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
		p.byes <- req
	})
	srv.OnOptions(func(req *sip.Request, tx sip.ServerTransaction) {
		tx.Respond(sip.NewResponseFromRequest(req, 200, "OK", nil))
	})
	srv.OnAck(func(req *sip.Request, tx sip.ServerTransaction) {})
	srv.OnInvite(func(req *sip.Request, tx sip.ServerTransaction) {
		res := sip.NewResponseFromRequest(req, 200, "OK", p.sdp())
		res.AppendHeader(&sip.ContactHeader{Address: p.contact()})
		res.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
		tx.Respond(res)
		select {
		case p.answered <- req:
		default:
		}
	})
	p.port = serveBoth(t, ua, srv)
	p.client, _ = sipgo.NewClient(ua, sipgo.WithClientLogger(slog.New(slog.DiscardHandler)), sipgo.WithClientAddr("127.0.0.1:"+strconv.Itoa(p.port)))
	p.dialogs = sipgo.NewDialogClientCache(p.client, sip.ContactHeader{Address: p.contact()})
	return p
}

func (p *sipPhone) contact() sip.Uri {
	return sip.Uri{Scheme: "sip", User: p.user, Host: "127.0.0.1", Port: p.port}
}

func (p *sipPhone) aor() sip.Uri { return sip.Uri{Scheme: "sip", User: p.user, Host: p.domain} }

// sdp is an audio offer (G.711) on a port nobody listens on: the PBX
// needs one, the test needs no sound.
func (p *sipPhone) sdp() []byte {
	return []byte(fmt.Sprintf("v=0\r\no=- %d 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"+
		"m=audio %d RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=sendrecv\r\n", p.port, p.port+2))
}

// route sends req through the outbound proxy, as a phone's outbound
// proxy setting does (a preloaded loose Route), and from the phone's
// socket.
func (p *sipPhone) route(req *sip.Request) {
	if p.outbound != "" {
		host, port, _ := net.SplitHostPort(p.outbound)
		n, _ := strconv.Atoi(port)
		r := sip.Uri{Scheme: "sip", Host: host, Port: n, UriParams: sip.NewParams()}
		r.UriParams.Add("lr", "")
		req.PrependHeader(&sip.RouteHeader{Address: r})
	}
	req.Laddr = sip.Addr{IP: net.IPv4(127, 0, 0, 1), Port: p.port}
}

// do sends a request out of dialog and answers a digest challenge once.
func (p *sipPhone) do(req *sip.Request) (*sip.Response, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := p.client.Do(ctx, req)
	if err == nil && (res.StatusCode == 401 || res.StatusCode == 407) && p.pass != "" {
		res, err = p.client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: p.user, Password: p.pass})
	}
	return res, err
}

// register registers the phone's contact with its domain (through the
// outbound proxy, when there is one) for expires seconds.
func (p *sipPhone) register(registrar string, expires int) *sip.Response {
	p.t.Helper()
	host, port, err := net.SplitHostPort(registrar)
	if err != nil {
		host, port = registrar, "0" // a domain
	}
	n, _ := strconv.Atoi(port)
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: host, Port: n})
	from := &sip.FromHeader{Address: p.aor(), Params: sip.NewParams()}
	from.Params.Add("tag", p.regFrom)
	req.AppendHeader(from)
	req.AppendHeader(&sip.ToHeader{Address: p.aor(), Params: sip.NewParams()})
	cid := sip.CallIDHeader(p.regCallID)
	req.AppendHeader(&cid)
	p.regCSeq++
	req.AppendHeader(&sip.CSeqHeader{SeqNo: p.regCSeq, MethodName: sip.REGISTER})
	req.AppendHeader(&sip.ContactHeader{Address: p.contact()})
	req.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(expires)))
	p.route(req)
	res, err := p.do(req)
	if err != nil {
		p.t.Fatalf("phone %s: REGISTER: %v", p.user, err)
	}
	if res.CSeq() != nil {
		p.regCSeq = res.CSeq().SeqNo
	}
	return res
}

// subscribe subscribes to ext's dialog state at server (host:port;
// through the outbound proxy when the phone has one, which serves it).
func (p *sipPhone) subscribe(server, ext string) *sip.Response {
	p.t.Helper()
	host, port, _ := net.SplitHostPort(server)
	n, _ := strconv.Atoi(port)
	target := sip.Uri{Scheme: "sip", User: ext, Host: host, Port: n}
	if p.outbound != "" {
		target = sip.Uri{Scheme: "sip", User: ext, Host: p.domain}
	}
	req := sip.NewRequest(sip.SUBSCRIBE, target)
	from := &sip.FromHeader{Address: p.aor(), Params: sip.NewParams()}
	from.Params.Add("tag", p.subFrom)
	req.AppendHeader(from)
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: ext, Host: p.domain}, Params: sip.NewParams()})
	cid := sip.CallIDHeader(p.subCallID)
	req.AppendHeader(&cid)
	p.subCSeq++
	req.AppendHeader(&sip.CSeqHeader{SeqNo: p.subCSeq, MethodName: sip.SUBSCRIBE})
	req.AppendHeader(&sip.ContactHeader{Address: p.contact()})
	req.AppendHeader(sip.NewHeader("Event", "dialog"))
	req.AppendHeader(sip.NewHeader("Accept", "application/dialog-info+xml"))
	req.AppendHeader(sip.NewHeader("Expires", "600"))
	p.route(req)
	res, err := p.do(req)
	if err != nil {
		p.t.Fatalf("phone %s: SUBSCRIBE %s: %v", p.user, ext, err)
	}
	return res
}

// ringing waits for a dialog-info NOTIFY after the from'th with an early
// dialog and returns it.
func (p *sipPhone) ringing(from int, within time.Duration) lampDialog {
	p.t.Helper()
	deadline := time.After(within)
	seen := from
	for {
		p.mu.Lock()
		ns := p.notifies[seen:]
		seen = len(p.notifies)
		p.mu.Unlock()
		for _, n := range ns {
			doc, err := parseLamp(n.Body())
			if err != nil {
				continue
			}
			for _, d := range doc.Dialogs {
				if d.State == "early" && d.Direction == "recipient" && d.CallID != "" {
					return d
				}
			}
		}
		select {
		case <-p.news:
		case <-deadline:
			p.t.Fatalf("phone %s: no ringing dialog with a Call-ID within %v", p.user, within)
		}
	}
}

// call sends an INVITE to target (a URI) with extra headers, through the
// outbound proxy when it has one, answers the challenge and ACKs a 2xx.
// It returns the final response and the dialog.
func (p *sipPhone) call(target sip.Uri, headers ...sip.Header) (*sip.Response, *sipgo.DialogClientSession) {
	p.t.Helper()
	req := sip.NewRequest(sip.INVITE, target)
	from := &sip.FromHeader{Address: p.aor(), Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(10))
	req.AppendHeader(from)
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: target.User, Host: p.domain}, Params: sip.NewParams()})
	req.AppendHeader(&sip.ContactHeader{Address: p.contact()})
	req.AppendHeader(sip.NewHeader("Content-Type", "application/sdp"))
	for _, h := range headers {
		req.AppendHeader(h)
	}
	req.SetBody(p.sdp())
	p.route(req)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := p.dialogs.WriteInvite(ctx, req)
	if err != nil {
		p.t.Fatalf("phone %s: INVITE %s: %v", p.user, target.String(), err)
	}
	var last *sip.Response
	err = s.WaitAnswer(ctx, sipgo.AnswerOptions{Username: p.user, Password: p.pass,
		OnResponse: func(res *sip.Response) error { last = res; return nil }})
	if err != nil {
		if last != nil && last.StatusCode >= 300 {
			return last, s
		}
		p.t.Fatalf("phone %s: INVITE %s: %v", p.user, target.String(), err)
	}
	if err := s.Ack(ctx); err != nil {
		p.t.Fatalf("phone %s: ACK: %v", p.user, err)
	}
	return s.InviteResponse, s
}

// hangup ends a call the phone placed.
func (p *sipPhone) hangup(s *sipgo.DialogClientSession) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Bye(ctx)
}

// count is how many NOTIFYs the phone has been sent.
func (p *sipPhone) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.notifies)
}

// waitNotify waits for a NOTIFY after the from'th of an event package.
func (p *sipPhone) waitNotify(t *testing.T, from int, event string, within time.Duration) *sip.Request {
	t.Helper()
	deadline := time.After(within)
	for {
		p.mu.Lock()
		ns := p.notifies[from:]
		from = len(p.notifies)
		p.mu.Unlock()
		for _, n := range ns {
			if h := n.GetHeader("Event"); h != nil && strings.HasPrefix(strings.TrimSpace(h.Value()), event) {
				return n
			}
		}
		select {
		case <-p.news:
		case <-deadline:
			t.Fatalf("phone %s: no %s NOTIFY within %v", p.user, event, within)
		}
	}
}

// replacesFrom builds the Replaces value a desk phone builds from a
// ringing dialog: RFC 3891 read from the watched side, to-tag the
// dialog-info's local-tag (Yealink's "dialog-info call pickup").
func replacesFrom(d lampDialog) string {
	return d.CallID + ";to-tag=" + d.LocalTag + ";from-tag=" + d.RemoteTag
}

// replacesSwapped is the other reading (the tags the other way round).
func replacesSwapped(d lampDialog) string {
	return d.CallID + ";to-tag=" + d.RemoteTag + ";from-tag=" + d.LocalTag
}

var _ = strings.Cut
