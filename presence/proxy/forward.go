package proxy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"
)

// Forwarding follows RFC 3261 §16: validate (Max-Forwards, loops), pop
// the Routes that are ours, pick the next hop, add our Via (and
// Record-Route for a dialog, Path for a REGISTER), send it in a client
// transaction and relay every response but 100 back through the server
// transaction sipgo made for the request. Where the next hop is:
//   - a Route of ours carries a token (flow.go): the phone's flow and its
//     PBX. A request from that flow goes to the PBX, any other to the
//     flow;
//   - with no token, a request from a PBX goes to the phone whose contact
//     its Request-URI is (a binding), or to the Request-URI itself;
//   - anything else is a phone's, and goes to its PBX: the one its flow
//     registered with, else its user's (Options.TargetFor).
// Phones' requests go to a PBX and nowhere else, so the proxy is no open
// relay.

// hop is where a request goes next.
type hop struct {
	dedicated bool   // a key press from a busy-lamp line, vouched for by Lamplighter
	target    int    // the PBX's index, -1 when going to a phone
	flow      flow   // the phone's flow (toward a phone, or the source's)
	dest      string // host:port
	transport string // UDP, TCP or TLS
	host      string // dest's host, for our Via's address
}

// branchPrefix starts the branches of our Vias: RFC 3261's magic cookie
// and a mark of ours, for loop detection.
const branchPrefix = sip.RFC3261BranchMagicCookie + "-ll"

// noBuild is a client request option that leaves the request as made.
func noBuild(*sipgo.Client, *sip.Request) error { return nil }

// Serve forwards a request that sipgo read: every method the presence
// server does not answer itself, and those Forwards claimed. It returns
// when the transaction is over (sipgo then ends it).
func (p *Proxy) Serve(req *sip.Request, tx sip.ServerTransaction) {
	// A fault here must never take presence down with it: sipgo runs
	// this in a goroutine of its own, where a panic ends the process.
	defer func() {
		if r := recover(); r != nil {
			p.log.Error("forwarding failed unexpectedly", "method", req.Method, "source", req.Source(),
				"panic", r, "stack", string(debug.Stack()))
			if !req.IsAck() {
				p.refuse(req, tx, 500, "Server Internal Error")
			}
		}
	}()
	select {
	case <-p.started:
	default:
		p.refuse(req, tx, 503, "Service Unavailable")
		return
	}
	if !wellFormed(req) {
		// RFC 3261 §16.3: a request missing what forwarding needs.
		if !req.IsAck() {
			p.respond(req, tx, 400, "Bad Request")
		}
		return
	}
	if req.IsAck() {
		p.forwardAck(req)
		return
	}
	if req.IsCancel() {
		// Phones' CANCELs reach Cancel through the presence server; one
		// sipgo read itself (on a connection we opened to a PBX) and did
		// not match matches nothing.
		p.respond(req, tx, 481, "Call/Transaction Does Not Exist")
		return
	}
	// A forwarded request holds sipgo's server transaction until it ends,
	// which over UDP is up to 32 s after its answer (to absorb
	// retransmissions): MaxTransactions bounds them all.
	if n := p.inUse.Add(1); n > int64(p.opt.MaxTransactions) {
		p.inUse.Add(-1)
		p.refuse(req, tx, 503, "Service Unavailable")
		// Kept by no one, like the presence server's refusals: a flood
		// past the bound leaves nothing behind (a retransmission is
		// refused again).
		tx.Terminate()
		return
	}
	if !tx.OnTerminate(func(string, error) { p.inUse.Add(-1) }) {
		p.inUse.Add(-1) // already over
	}
	if req.IsInvite() {
		// The phone's CANCEL (Cancel, through the presence server, which
		// answers it) finds the INVITE from now on; then, at once, 100
		// Trying, so that the phone stops retransmitting (§16.2) and may
		// cancel.
		st := &inviteState{p: p}
		key := inviteKeyOf(req)
		p.invites.Store(key, st)
		defer p.invites.Delete(key)
		p.respond(req, tx, 100, "Trying")
	}
	if code, reason := p.validate(req); code != 0 {
		p.respond(req, tx, code, reason)
		return
	}
	if t, ok := p.dedicatedLineCall(req); ok {
		p.serveDedicated(req, tx, t)
		return
	}
	fwd, h, code, reason := p.prepare(req)
	if code == codeSilence {
		tx.Terminate()
		return
	}
	if code != 0 {
		p.refuse(req, tx, code, reason)
		return
	}
	p.relay(req, tx, fwd, h)
}

// wellFormed reports whether a request has what forwarding reads: From
// and To (sipgo has checked Via and CSeq), a Call-ID, a SIP or SIPS
// Request-URI with a host.
func wellFormed(req *sip.Request) bool {
	return req.From() != nil && req.To() != nil && req.CallID() != nil && req.CSeq() != nil && req.Via() != nil &&
		(req.Recipient.Scheme == "sip" || req.Recipient.Scheme == "sips") && req.Recipient.Host != ""
}

// validate checks Max-Forwards and loops (RFC 3261 §16.3): 483 when the
// request may go no further, 482 when it has been here before with the
// same Request-URI.
func (p *Proxy) validate(req *sip.Request) (int, string) {
	if mf := req.MaxForwards(); mf != nil && mf.Val() == 0 {
		return 483, "Too Many Hops"
	}
	vias := req.GetHeaders("Via")
	for i, h := range vias {
		v, ok := h.(*sip.ViaHeader)
		if !ok || i+1 >= len(vias) {
			continue
		}
		b, _ := v.Params.Get("branch")
		if !strings.HasPrefix(b, branchPrefix) {
			continue
		}
		below, _ := vias[i+1].(*sip.ViaHeader)
		if below != nil && b == p.branch(req, below) {
			return 482, "Loop Detected"
		}
	}
	return 0, ""
}

// branch is the branch of our Via for a request whose top Via (before
// ours) is top: the same for a retransmission (and for a CANCEL of it), a
// different one once the Request-URI or dialog changed (a spiral), as
// RFC 3261 §16.6 item 8 describes for loop detection. It is an HMAC
// under the tokens' key: nobody who saw the phone's request but not our
// Via can guess it, and so forge a response to our client transaction.
// An INVITE's, its CANCEL's and the ACK for its failure are the same
// (RFC 3261 §16.11): the To tag, which only the ACK carries, is left out
// for them, so that an ACK that outlived the transaction (a restart of
// Lamplighter) still reaches the callee as the ACK of its INVITE.
func (p *Proxy) branch(req *sip.Request, top *sip.ViaHeader) string {
	h := hmac.New(sha256.New, p.tokens.key()[:])
	tb, _ := top.Params.Get("branch")
	toTag := tagOfTo(req.To())
	switch req.Method {
	case sip.INVITE, sip.ACK, sip.CANCEL:
		toTag = ""
	}
	for _, s := range []string{tb, top.SentBy(), req.Recipient.String(), req.CallID().Value(),
		strconv.FormatUint(uint64(req.CSeq().SeqNo), 10), tagOf(req.From()), toTag} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return branchPrefix + hex.EncodeToString(h.Sum(nil)[:12])
}

func tagOf(f *sip.FromHeader) string {
	if f == nil {
		return ""
	}
	t, _ := f.Params.Get("tag")
	return t
}

func tagOfTo(t *sip.ToHeader) string {
	if t == nil {
		return ""
	}
	v, _ := t.Params.Get("tag")
	return v
}

// sourceFlow is the flow a request came on.
func sourceFlow(req *sip.Request) flow {
	ap, err := netip.ParseAddrPort(req.Source())
	if err != nil {
		return flow{}
	}
	return flow{transport: strings.ToUpper(req.Transport()), addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}
}

// prepare makes the request to send and finds its next hop; a code of 0
// means go, any other is the answer to give instead.
func (p *Proxy) prepare(req *sip.Request) (*sip.Request, hop, int, string) {
	fwd := req.Clone()
	h, code, reason := p.nextHop(req, fwd, sourceFlow(req))
	if code != 0 {
		return nil, h, code, reason
	}
	p.prepareTo(req, fwd, h)
	return fwd, h, 0, ""
}

// prepareTo makes fwd, a copy of req, ready to go to h: Max-Forwards,
// received/rport, Record-Route, Path, our Via, the destination.
func (p *Proxy) prepareTo(req, fwd *sip.Request, h hop) {
	src := sourceFlow(req)
	if mf := fwd.MaxForwards(); mf != nil {
		mf.Dec()
	} else {
		m := sip.MaxForwardsHeader(70)
		fwd.AppendHeader(&m)
	}
	p.markReceived(fwd, src)
	// Record-Route on requests that make a dialog, so that the dialog's
	// later requests come back through us (to reach a phone behind NAT,
	// and to reach the PBX from it).
	if dialogForming(fwd) {
		p.recordRoute(fwd, src, h)
	}
	if h.target >= 0 && tagOfTo(fwd.To()) == "" {
		p.orientReplaces(fwd)
	}
	if fwd.Method == sip.REGISTER && h.target >= 0 {
		local := p.server.Advertised(h.transport, hostIP(h.host))
		u := sip.Uri{
			Scheme: "sip", User: p.tokens.mint(src, h.target),
			Host: local.Addr().String(), Port: int(local.Port()),
			UriParams: uriParams(h.transport),
		}
		fwd.PrependHeader(sip.NewHeader("Path", "<"+u.String()+">"))
		// Asterisk's registrar (RFC 3327 §5.3) refuses a Path (420 Bad
		// Extension) unless the UA said it supports Path, and most desk
		// phones say nothing of it. The Path is Lamplighter's, not the
		// phone's (the phone never sees a request routed by it), so
		// Lamplighter speaks for it; the answer's Require: path is taken
		// off again on its way back (supportsPath).
		if !supportsPath(req) {
			addSupported(fwd, "path")
		}
	}
	p.addVia(req, fwd, h)
	fwd.SetDestination(h.dest)
	fwd.SetTransport(h.transport)
	p.setLocal(fwd, h.transport, h.host)
}

// nextHop pops the Routes that are ours from fwd and decides where it
// goes (see the top of this file).
func (p *Proxy) nextHop(req, fwd *sip.Request, src flow) (hop, int, string) {
	tok, tokTgt, hasToken := p.popOurRoutes(fwd)
	if hasToken && tokTgt >= len(p.opt.Targets) {
		return hop{}, 404, "Not Found"
	}
	switch {
	case hasToken && tok != src && !p.samePhone(tok, src):
		// A token of a phone's (its Path, a dialog's Record-Route) leads
		// to the phone only from the PBX it was minted for: anyone else
		// who saw it on the wire would reach the phone past the PBX.
		if !p.fromTarget(src, tokTgt) {
			p.forgedRoute(req, src, tokTgt)
			return hop{}, 403, "Forbidden"
		}
		return p.toPhone(tok, req.Method, p.targetOf(src))
	case hasToken:
		return p.toPBX(tokTgt)
	case p.fromPBX(src.addr):
		// A request for one of our phones with no Path of ours in its
		// Route, at our own address: the PBX put the phone's contact at
		// the address its REGISTER came from and forgot the Path
		// (FreeSWITCH's sip-force-contact NDLB-connectile-dysfunction).
		// The phone is the one whose contact has that user part.
		forgot := p.isUs(req.Recipient)
		if b, ok := p.binds.forContact(uriKey(req.Recipient)); ok {
			if forgot {
				p.pathForgotten(p.targetOf(src))
			}
			return p.toPhone(b.flow, req.Method, p.targetOf(src))
		}
		if forgot {
			if b, ok := p.binds.forContactUser(p.targetOf(src), req.Recipient.User); ok {
				p.pathForgotten(p.targetOf(src))
				return p.toPhone(b.flow, req.Method, p.targetOf(src))
			}
		}
		return p.toURI(fwd)
	}
	if b, ok := p.binds.onFlow(src); ok {
		return p.toPBX(b.target)
	}
	user, domain := req.From().Address.User, req.From().Address.Host
	if req.Method == sip.REGISTER {
		user, domain = req.To().Address.User, req.To().Address.Host
	}
	t := p.targetFor(user, domain)
	if t < 0 {
		if len(p.opt.Targets) != 1 {
			return hop{}, 403, "Forbidden"
		}
		t = 0
	}
	return p.toPBX(t)
}

// popOurRoutes takes the Routes that are ours off the top of a request
// (RFC 3261 §16.4): a token of ours, or our own address (a phone's
// preloaded outbound-proxy Route). It returns the first token's flow and
// target.
func (p *Proxy) popOurRoutes(fwd *sip.Request) (tok flow, target int, hasToken bool) {
	for {
		r := fwd.Route()
		if r == nil {
			return
		}
		f, t, ok := p.tokens.read(r.Address.User)
		if !ok && !p.isUs(r.Address) {
			return
		}
		if ok && !hasToken {
			tok, target, hasToken = f, t, true
		}
		fwd.RemoveHeader("Route")
	}
}

// pathForgotten logs, once a PBX, that it sends requests for phones to
// the contact it rewrote to Lamplighter's address instead of through
// their Path.
func (p *Proxy) pathForgotten(target int) {
	if p.forgot[target].Swap(true) {
		return
	}
	t := p.opt.Targets[target]
	p.log.Warn("the PBX sends requests for phones to their contact rewritten to Lamplighter's address, without the Path "+
		"(Asterisk: support_path off on the AOR; FreeSWITCH: sip-force-contact NDLB-connectile-dysfunction on the user "+
		"or domain): Lamplighter finds each phone by its contact's user part, which must then be unique among the PBX's phones",
		"pbx", t.Name)
}

// samePhone reports whether src is the phone of a token's flow on a new
// connection (a TCP phone reconnects from another port): a request from
// it goes to the PBX, not back to itself.
// fromTarget reports whether a request from src comes from PBX i: over
// UDP from its SIP address itself (IP and port: a forged source address
// alone does not pass), over TCP or TLS from its IP address (a
// connection cannot be forged; the PBX opens its own from any port).
func (p *Proxy) fromTarget(src flow, i int) bool {
	a := p.pbxAddrs.Load()
	if t, ok := a.sip[netip.AddrPortFrom(src.addr.Addr().Unmap(), src.addr.Port())]; ok && t == i {
		return true
	}
	if src.transport == "UDP" {
		return false
	}
	t, ok := a.ip[src.addr.Addr().Unmap()]
	return ok && t == i
}

// forgedRoute logs (at most once a minute) a request that carried a
// phone's token but did not come from its PBX.
func (p *Proxy) forgedRoute(req *sip.Request, src flow, target int) {
	now := time.Now().Unix()
	if last := p.forgedLog.Load(); now-last < 60 || !p.forgedLog.CompareAndSwap(last, now) {
		return
	}
	name := "?"
	if target >= 0 && target < len(p.opt.Targets) {
		name = p.opt.Targets[target].Name
	}
	p.log.Warn("refused a request for a phone that did not come from its PBX (a Route token seen on the wire?): 403",
		"method", req.Method, "source", src.transport+" "+src.addr.String(), "pbx", name, "from", req.From().Address.User)
}

func (p *Proxy) samePhone(tok, src flow) bool {
	return tok.transport != "UDP" && tok.addr.Addr() == src.addr.Addr() && !p.fromPBX(src.addr)
}

func (p *Proxy) toPBX(i int) (hop, int, string) {
	t := p.opt.Targets[i]
	if h := &p.health[i]; h.checked.Load() && !h.up.Load() {
		return hop{}, 503, "Service Unavailable"
	}
	return hop{target: i, dest: t.HostPort(), transport: t.Transport, host: t.Host}, 0, ""
}

// codeSilence is the "answer" to a request that must get none: the PBX's
// qualify OPTIONS for a phone whose connection is gone, which must time
// out so that the PBX takes the phone for unreachable.
const codeSilence = -1

func (p *Proxy) toPhone(f flow, method sip.RequestMethod, from int) (hop, int, string) {
	if !f.valid() {
		return hop{}, 404, "Not Found"
	}
	if f.transport != "UDP" {
		// A stream flow is the phone's own connection: with it gone the
		// phone cannot be reached until it connects again (RFC 5626).
		c, err := p.server.UserAgent().TransportLayer().GetConnection(strings.ToLower(f.transport), f.addr.String())
		if err != nil || c == nil {
			if method == sip.OPTIONS && p.opt.Targets[from].Kind != "esl" {
				// A PBX's qualify: Asterisk counts any answer, 430 too,
				// as reachable, and only silence (a timeout) as
				// unreachable. FreeSWITCH counts anything but 200 and
				// 486 as a failure, and a timeout takes it 32 s: it gets
				// its 430 at once.
				return hop{}, codeSilence, ""
			}
			return hop{}, 430, "Flow Failed"
		}
		c.TryClose() // GetConnection took a reference

	}
	return hop{target: -1, flow: f, dest: f.addr.String(), transport: f.transport, host: f.addr.Addr().String()}, 0, ""
}

// toURI is the next hop of a PBX's request that names no flow: its
// Request-URI (maddr and DNS SRV are not followed).
func (p *Proxy) toURI(req *sip.Request) (hop, int, string) {
	u := req.Recipient
	tr := "UDP"
	if v, ok := u.UriParams.Get("transport"); ok {
		tr = strings.ToUpper(v)
	}
	if u.IsEncrypted() {
		tr = "TLS"
	}
	port := u.Port
	if port == 0 {
		port = 5060
		if tr == "TLS" {
			port = 5061
		}
	}
	switch tr {
	case "UDP", "TCP", "TLS":
	default:
		return hop{}, 416, "Unsupported URI Scheme"
	}
	if u.Host == "" {
		return hop{}, 404, "Not Found"
	}
	return hop{target: -1, dest: net.JoinHostPort(u.Host, strconv.Itoa(port)), transport: tr, host: u.Host}, 0, ""
}

// markReceived adds received (and rport's value) to the request's top
// Via, RFC 3261 §18.2.1 and RFC 3581, so that responses find the sender
// through its NAT.
func (p *Proxy) markReceived(fwd *sip.Request, src flow) {
	v := fwd.Via()
	if v == nil || !src.valid() {
		return
	}
	ip := src.addr.Addr().String()
	if v.Host != ip {
		v.Params.Add("received", ip)
	}
	if v.Params.Has("rport") {
		v.Params.Add("rport", strconv.Itoa(int(src.addr.Port())))
		v.Params.Add("received", ip)
	}
}

// addVia puts our Via on top.
func (p *Proxy) addVia(req, fwd *sip.Request, h hop) {
	local := p.server.Advertised(h.transport, hostIP(h.host))
	v := &sip.ViaHeader{
		ProtocolName: "SIP", ProtocolVersion: "2.0", Transport: h.transport,
		Host: local.Addr().String(), Port: int(local.Port()),
	}
	top := req.Via()
	br := sip.GenerateBranchN(16)
	if top != nil && req.CallID() != nil && req.CSeq() != nil {
		br = p.branch(req, top)
	}
	v.Params.Add("branch", br)
	v.Params.Add("rport", "")
	fwd.PrependHeader(v)
}

// recordRoute adds our Record-Route: one URI, or two (RFC 5658) when the
// request leaves on another transport or address family than it came.
func (p *Proxy) recordRoute(fwd *sip.Request, src flow, h hop) {
	phone, target := src, h.target
	if h.target < 0 { // toward a phone: its flow; the PBX it came from
		phone, target = h.flow, p.targetOf(src)
	}
	tok := p.tokens.mint(phone, target)
	out := p.server.Advertised(h.transport, hostIP(h.host))
	in := p.server.Advertised(src.transport, src.addr.Addr())
	rr := func(ap netip.AddrPort, transport string) *sip.RecordRouteHeader {
		return &sip.RecordRouteHeader{Address: sip.Uri{
			Scheme: "sip", User: tok, Host: ap.Addr().String(), Port: int(ap.Port()),
			UriParams: uriParams(transport),
		}}
	}
	if in != out || src.transport != h.transport {
		fwd.PrependHeader(rr(in, src.transport))
	}
	fwd.PrependHeader(rr(out, h.transport))
}

func uriParams(transport string) sip.HeaderParams {
	ps := sip.NewParams()
	if transport != "UDP" {
		ps.Add("transport", strings.ToLower(transport))
	}
	ps.Add("lr", "")
	return ps
}

// dialogForming reports whether a request starts a dialog we should stay
// in: INVITE, SUBSCRIBE and REFER out of a dialog.
func dialogForming(req *sip.Request) bool {
	switch req.Method {
	case sip.INVITE, sip.SUBSCRIBE, sip.REFER:
		return tagOfTo(req.To()) == ""
	}
	return false
}

func hostIP(host string) netip.Addr {
	ip, err := netip.ParseAddr(strings.Trim(host, "[]"))
	if err != nil {
		return netip.Addr{}
	}
	return ip.Unmap()
}

// uriKey is how a contact URI is looked up: scheme, user, host and port.
func uriKey(u sip.Uri) string {
	port := u.Port
	if port == 0 {
		port = 5060
	}
	return strings.ToLower(u.User + "@" + u.Host + ":" + strconv.Itoa(port))
}

// relay sends fwd in a client transaction and passes its responses back
// through tx until it ends.
func (p *Proxy) relay(req *sip.Request, tx sip.ServerTransaction, fwd *sip.Request, h hop) {
	invite := req.IsInvite()
	var st *inviteState // nil unless an INVITE
	if invite {
		v, _ := p.invites.Load(inviteKeyOf(req))
		st, _ = v.(*inviteState)
	}
	if st.isCanceled() { // cancelled before it could go
		p.respond(req, tx, 487, "Request Terminated")
		return
	}
	// The context bounds only the connection set-up (a TCP or TLS dial
	// to the next hop); the transaction ends by its own timers. An
	// INVITE runs in a transaction of the proxy's own (invite.go).
	var ctxTx clientTx
	var err error
	if invite {
		ctxTx, err = p.sendInvite(p.ctx, fwd)
	} else {
		ctxTx, err = p.client.TransactionRequest(p.ctx, fwd, noBuild)
	}
	if err != nil {
		p.log.Debug("cannot forward", "method", req.Method, "to", h.dest, "err", err)
		p.refuse(req, tx, 503, "Service Unavailable")
		return
	}
	defer ctxTx.Terminate()
	p.opt.Metrics.Forwarded(string(req.Method))
	leg := p.newCallLeg(req, h)

	st.sending(fwd)
	var timerC <-chan time.Time
	var tc *time.Timer
	if invite {
		tc = time.NewTimer(p.opt.TimerC)
		defer tc.Stop()
		timerC = tc.C
	}
	answered := false // a final response was relayed
	// onResponse relays one response; done says the forwarding is over.
	onResponse := func(res *sip.Response) (done bool) {
		if h.target >= 0 {
			p.markUp(h.target) // it answers
		}
		if res.StatusCode == 100 {
			return false
		}
		if res.IsProvisional() {
			st.gotProvisional()
			if tc != nil {
				tc.Reset(p.opt.TimerC)
			}
		}
		if res.IsSuccess() && req.Method == sip.REGISTER {
			p.learnBinding(req, res, h)
		}
		if h.dedicated && (res.StatusCode == 401 || res.StatusCode == 407) {
			// A key press from a busy-lamp line is Lamplighter's to
			// vouch for (P-Asserted-Identity); the line has no PBX
			// password, so relaying the PBX's challenge would only
			// loop (the phone answers it with Lamplighter's realm).
			p.dedicatedRefused(req, h)
			leg.failed()
			p.respond(req, tx, 403, "Forbidden")
			return true
		}
		leg.response(res)
		p.relayResponse(req, tx, res)
		if res.StatusCode >= 200 {
			if !answered {
				p.observeInDialog(req, res)
			}
			answered = true
			if !invite || !res.IsSuccess() {
				return true
			}
			// An INVITE's 2xx may be sent again until the caller's
			// ACK reaches the callee: keep relaying it.
			timerC = nil
		}
		return false
	}
	for {
		select {
		case res, ok := <-ctxTx.Responses():
			if !ok {
				return
			}
			if onResponse(res) {
				return
			}
		case <-timerC:
			// Timer C (RFC 3261 §16.8): ringing too long.
			st.cancel()
			leg.failed()
			p.respond(req, tx, 408, "Request Timeout")
			return
		case <-ctxTx.Done():
			// A transaction ends right after handing up its last
			// response (an INVITE's 2xx): that response, still
			// buffered, is the answer, not the end.
			for drained := false; !drained; {
				select {
				case res, ok := <-ctxTx.Responses():
					if !ok {
						drained = true
					} else if onResponse(res) {
						return
					}
				default:
					drained = true
				}
			}
			if answered {
				return
			}
			leg.failed()
			if req.Method == sip.BYE { // unanswered, yet the caller has hung up
				p.observeInDialog(req, sip.NewResponseFromRequest(req, 408, "Request Timeout", nil))
			}
			err := ctxTx.Err()
			switch {
			case errors.Is(err, sip.ErrTransactionTimeout):
				if h.target >= 0 {
					p.markDown(h.target)
				}
				p.respond(req, tx, 408, "Request Timeout")
			default:
				p.log.Debug("forwarding failed", "method", req.Method, "to", h.dest, "err", err)
				p.refuse(req, tx, 503, "Service Unavailable")
			}
			return
		case <-p.ctx.Done():
			return
		}
	}
}

// clientTx is a forwarded request's client transaction: sipgo's, or an
// INVITE's of the proxy's own.
type clientTx interface {
	Responses() <-chan *sip.Response
	Done() <-chan struct{}
	Err() error
	Terminate()
}

// cancelDownstream cancels a forwarded INVITE (RFC 3261 §9.1, §16.10):
// the CANCEL has the INVITE's Request-URI, Call-ID, From, To, CSeq
// number, Route set and our Via with its branch.
func (p *Proxy) cancelDownstream(inv *sip.Request) {
	c := sameHop(inv, sip.CANCEL, inv.To())
	ctx, cancel := context.WithTimeout(p.ctx, 32*time.Second)
	defer cancel()
	if _, err := p.client.Do(ctx, c, noBuild); err != nil {
		p.log.Debug("CANCEL not answered", "call_id", inv.CallID().Value(), "err", err)
	}
}

// relayResponse passes a response back: our Via off, to where the
// request came from.
func (p *Proxy) relayResponse(req *sip.Request, tx sip.ServerTransaction, res *sip.Response) {
	up := res.Clone()
	up.RemoveHeader("Via")
	if req.Method == sip.REGISTER && !supportsPath(req) {
		dropRequire(up, "path") // Lamplighter said it for the phone
	}
	up.SetTransport(req.Transport())
	up.SetDestination(req.Source())
	if err := tx.Respond(up); err != nil {
		p.log.Debug("cannot relay a response", "method", req.Method, "status", res.StatusCode, "err", err)
		return
	}
	p.opt.Metrics.Answered(string(req.Method), res.StatusCode)
}

// supportsPath reports whether a request's Supported lists path.
func supportsPath(req *sip.Request) bool {
	for _, h := range req.GetHeaders("Supported") {
		for _, tag := range strings.Split(h.Value(), ",") {
			if strings.EqualFold(strings.TrimSpace(tag), "path") {
				return true
			}
		}
	}
	return false
}

// addSupported adds an option tag to a request's Supported.
func addSupported(req *sip.Request, tag string) {
	if h := req.GetHeader("Supported"); h != nil && strings.TrimSpace(h.Value()) != "" {
		v := h.Value() + ", " + tag
		req.RemoveHeader("Supported")
		req.AppendHeader(sip.NewHeader("Supported", v))
		return
	}
	req.RemoveHeader("Supported")
	req.AppendHeader(sip.NewHeader("Supported", tag))
}

// dropRequire takes an option tag off a response's Require (the header
// goes when nothing is left).
func dropRequire(res *sip.Response, tag string) {
	var keep []string
	found := false
	for _, h := range res.GetHeaders("Require") {
		for _, t := range strings.Split(h.Value(), ",") {
			if t = strings.TrimSpace(t); strings.EqualFold(t, tag) {
				found = true
			} else if t != "" {
				keep = append(keep, t)
			}
		}
	}
	if !found {
		return
	}
	for res.RemoveHeader("Require") {
	}
	if len(keep) > 0 {
		res.AppendHeader(sip.NewHeader("Require", strings.Join(keep, ", ")))
	}
}

// refuse answers a request itself with a failure; a 503 says when to
// try again.
func (p *Proxy) refuse(req *sip.Request, tx sip.ServerTransaction, code int, reason string) {
	if code == 503 {
		p.respond(req, tx, code, reason, sip.NewHeader("Retry-After", "5"))
		return
	}
	p.respond(req, tx, code, reason)
}

// respond answers a request itself.
func (p *Proxy) respond(req *sip.Request, tx sip.ServerTransaction, code int, reason string, hdrs ...sip.Header) {
	res := sip.NewResponseFromRequest(req, code, reason, nil)
	for _, h := range hdrs {
		res.AppendHeader(h)
	}
	if tx == nil {
		return
	}
	if err := tx.Respond(res); err != nil {
		p.log.Debug("cannot answer", "method", req.Method, "status", code, "err", err)
		return
	}
	p.opt.Metrics.Answered(string(req.Method), code)
}

// forwardAck sends an ACK on statelessly (an ACK for a 2xx is a
// transaction of its own; one for a failure never reaches here).
func (p *Proxy) forwardAck(req *sip.Request) {
	if code, _ := p.validate(req); code != 0 {
		return
	}
	fwd, _, code, _ := p.prepare(req)
	if code != 0 {
		return
	}
	if err := p.client.WriteRequest(fwd, noBuild); err != nil {
		p.log.Debug("cannot forward an ACK", "err", err)
		return
	}
	p.opt.Metrics.Forwarded("ACK")
}

// learnBinding records what a REGISTER's 2xx says of the flow it came
// on: the contacts the PBX holds for it and until when. A REGISTER that
// removed them (Expires 0, Contact *) leaves none.
func (p *Proxy) learnBinding(req *sip.Request, res *sip.Response, h hop) {
	src := sourceFlow(req)
	if !src.valid() {
		return
	}
	var mine []string
	for _, c := range req.GetHeaders("Contact") {
		if ch, ok := c.(*sip.ContactHeader); ok && ch.Address.Host != "" {
			mine = append(mine, uriKey(ch.Address))
		}
	}
	defaultExp := -1
	if e := res.GetHeader("Expires"); e != nil {
		if n, err := strconv.Atoi(strings.TrimSpace(e.Value())); err == nil {
			defaultExp = n
		}
	}
	longest := 0
	var kept []string
	for _, c := range res.GetHeaders("Contact") {
		ch, ok := c.(*sip.ContactHeader)
		if !ok {
			continue
		}
		key := uriKey(ch.Address)
		if !slices.Contains(mine, key) && !p.rewritten(req, ch.Address) {
			continue
		}
		exp := defaultExp
		if v, ok := ch.Params.Get("expires"); ok {
			if n, err := strconv.Atoi(v); err == nil {
				exp = n
			}
		}
		if exp > 0 {
			kept = append(kept, key)
			longest = max(longest, exp)
		}
	}
	b := binding{
		user: req.To().Address.User, domain: strings.ToLower(req.To().Address.Host), flow: src, target: h.target, contacts: kept,
		expires: time.Now().Add(time.Duration(longest) * time.Second),
	}
	if len(kept) == 0 {
		b.expires = time.Time{}
	}
	if !p.binds.put(b) {
		p.log.Warn("too many registrations through the proxy: this one is not remembered",
			"user", b.user, "flow", src.String(), "max", p.opt.MaxBindings)
	} else {
		p.shareBinding(b)
	}
	p.observeRegistrations(h.target, b.user)
}

// rewritten reports whether a contact in a REGISTER's 2xx is one of the
// request's own as a registrar that rewrites contacts to the source
// address saw it (Asterisk's rewrite_contact, on by default for NAT):
// the phone's contact user at Lamplighter's own address.
func (p *Proxy) rewritten(req *sip.Request, u sip.Uri) bool {
	if !p.isUs(u) {
		return false
	}
	for _, c := range req.GetHeaders("Contact") {
		if ch, ok := c.(*sip.ContactHeader); ok && strings.EqualFold(ch.Address.User, u.User) {
			return true
		}
	}
	return false
}

// observeRegistrations tells the observer how many registrations a user
// holds through the proxy now.
func (p *Proxy) observeRegistrations(target int, user string) {
	if p.opt.Calls != nil && target >= 0 {
		p.opt.Calls.ObserveRegistrations(p.opt.Targets[target].Name, user, p.binds.count(target, user))
	}
}

// inviteState is what the CANCEL of a forwarded INVITE needs (RFC 3261
// §9.1, §16.10): the CANCEL goes downstream once the INVITE has been sent
// and a provisional response has come back; the INVITE then ends with
// whatever the next hop answers (487, or a 200 that crossed the CANCEL).
type inviteState struct {
	p           *Proxy
	mu          sync.Mutex
	fwd         *sip.Request // the INVITE as sent; nil until then
	canceled    bool         // the phone cancelled (or Timer C fired)
	provisional bool         // a provisional response came
	cancelSent  bool
}

// inviteKeyOf is the key of a request's INVITE for CANCEL matching.
func inviteKeyOf(req *sip.Request) string {
	v := req.Via()
	if v == nil {
		return ""
	}
	return inviteKey(v.Params.GetOr("branch", ""), v.Host, v.Port)
}

// cancel notes a CANCEL; it goes downstream as soon as it may.
func (s *inviteState) cancel() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.canceled = true
	s.mu.Unlock()
	s.maybeSend()
}

// isCanceled reports whether the INVITE was cancelled before it went.
func (s *inviteState) isCanceled() bool {
	if s == nil {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.canceled
}

// sending records the INVITE as it is sent (a CANCEL that came
// meanwhile goes once a provisional response has).
func (s *inviteState) sending(fwd *sip.Request) {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.fwd = fwd
	s.mu.Unlock()
	s.maybeSend()
}

// gotProvisional notes a provisional response from the next hop.
func (s *inviteState) gotProvisional() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.provisional = true
	s.mu.Unlock()
	s.maybeSend()
}

func (s *inviteState) maybeSend() {
	s.mu.Lock()
	send := s.canceled && s.provisional && !s.cancelSent && s.fwd != nil
	if send {
		s.cancelSent = true
	}
	fwd := s.fwd
	s.mu.Unlock()
	if send {
		go s.p.cancelDownstream(fwd)
	}
}
