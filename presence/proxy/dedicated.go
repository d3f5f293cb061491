package proxy

import (
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"
)

// Dedicated busy-lamp lines: where a PBX's phones keep their own line to
// the PBX and a second line registered to Lamplighter for the BLF keys
// (Target.Dedicated), pressing a key sends the INVITE (a call to the
// colleague, or a pickup with Replaces or the PBX's pickup code) on the
// busy-lamp line, to Lamplighter. Lamplighter authenticates it as it
// does the line's SUBSCRIBEs (the user's Lamplighter password, 407 with
// Proxy-Authenticate), and then either sends it on to the PBX of the
// user the Request-URI names (else the caller's), with the caller's
// extension in P-Asserted-Identity (RFC 3325) for the PBX to trust from
// Lamplighter's address, or, with Target.Redirect, answers 302 with that
// PBX's address for the phone to call there itself.

// dedicatedLineCall reports whether req is a new call from a busy-lamp
// line, and the index of the caller's PBX.
func (p *Proxy) dedicatedLineCall(req *sip.Request) (int, bool) {
	if !req.IsInvite() || tagOfTo(req.To()) != "" {
		return 0, false
	}
	src := sourceFlow(req)
	if p.fromPBX(src.addr) {
		return 0, false
	}
	if _, ok := p.binds.onFlow(src); ok {
		return 0, false // a phone whose one line registered through us
	}
	if r := req.Route(); r != nil {
		if _, _, ours := p.tokens.read(r.Address.User); ours {
			return 0, false
		}
	}
	t := p.targetFor(req.From().Address.User, req.From().Address.Host)
	if t < 0 || !p.opt.Targets[t].Dedicated {
		return 0, false
	}
	return t, true
}

// serveDedicated authenticates a call from a busy-lamp line and sends it
// on (or redirects it) to the PBX.
func (p *Proxy) serveDedicated(req *sip.Request, tx sip.ServerTransaction, callerPBX int) {
	caller, challenges, err := p.server.AuthenticateCall(req)
	switch {
	case err != nil:
		p.respond(req, tx, 400, "Bad Request")
		return
	case caller == nil && len(challenges) > 0:
		hdrs := make([]sip.Header, 0, len(challenges))
		for _, c := range challenges {
			hdrs = append(hdrs, sip.NewHeader("Proxy-Authenticate", c))
		}
		p.respond(req, tx, 407, "Proxy Authentication Required", hdrs...)
		return
	case caller == nil:
		p.respond(req, tx, 403, "Forbidden")
		return
	}
	t := p.targetFor(req.Recipient.User, req.Recipient.Host) // the colleague's PBX
	if t < 0 {
		t = callerPBX // a pickup code, an outside number: the caller's
	}
	target := p.opt.Targets[t]
	if target.Redirect {
		to := sip.Uri{Scheme: "sip", User: req.Recipient.User, Host: target.Host, Port: target.Port}
		if target.Transport != "UDP" {
			to.UriParams = sip.NewParams()
			to.UriParams.Add("transport", strings.ToLower(target.Transport))
		}
		p.respond(req, tx, 302, "Moved Temporarily", sip.NewHeader("Contact", "<"+to.String()+">"))
		return
	}
	h, code, reason := p.toPBX(t)
	if code != 0 {
		p.refuse(req, tx, code, reason)
		return
	}
	h.dedicated = true
	fwd := req.Clone()
	// The phone's Route to us (its outbound proxy) is ours to take off.
	p.popOurRoutes(fwd)
	// Our credentials are ours (RFC 3261 §22.3), and only we assert who
	// called.
	for fwd.RemoveHeader("Proxy-Authorization") {
	}
	for fwd.RemoveHeader("P-Asserted-Identity") {
	}
	domain := req.From().Address.Host
	id := sip.Uri{Scheme: "sip", User: caller.Presentity(), Host: domain}
	fwd.AppendHeader(sip.NewHeader("P-Asserted-Identity", quoted(caller.Name)+" <"+id.String()+">"))
	p.prepareTo(req, fwd, h)
	p.relay(req, tx, fwd, h)
}

// dedicatedRefused logs, at most once a minute, that a PBX challenged a
// call Lamplighter vouched for: it does not trust Lamplighter's address.
func (p *Proxy) dedicatedRefused(req *sip.Request, h hop) {
	now := time.Now().Unix()
	if last := p.refusedLog.Load(); now-last < 60 || !p.refusedLog.CompareAndSwap(last, now) {
		return
	}
	t := p.opt.Targets[h.target]
	p.log.Warn("the PBX challenged a key press from a busy-lamp line: it must trust Lamplighter's address "+
		"(Asterisk: an identified endpoint; FreeSWITCH: the profile's inbound ACL, see presence/proxy/README.md); the phone got 403",
		"pbx", t.Name, "from", req.From().Address.User, "to", req.Recipient.User)
}

// quoted is a SIP quoted-string (RFC 3261 §25.1): UTF-8 as it is, with
// backslash and double quote escaped.
func quoted(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"`
}
