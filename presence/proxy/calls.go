package proxy

import (
	"bytes"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/callobs"
)

// The proxy carries its phones' calls, so it can tell what each phone is
// doing, as Kamailio's pua_dialoginfo does: an INVITE from a phone is an
// outgoing call of the user its flow registered as, an INVITE toward a
// phone an incoming one; their responses say trying, ringing, answered or
// failed; a re-INVITE whose offer is sendonly or inactive puts the call on
// hold; a BYE ends it. A PBX with no event interface of its own (kind sip,
// adapters/sipcalls) gets its lamps from this alone.

// The observation types live in callobs, which adapters/sipcalls
// imports too; these names are theirs.
type (
	// CallStep is how far a call leg has come.
	CallStep = callobs.Step
	// CallEvent is one thing the proxy saw of a phone's call.
	CallEvent = callobs.Event
	// CallObserver learns what the proxy sees of its phones.
	CallObserver = callobs.Observer
)

// The steps of a call leg.
const (
	CallTrying    = callobs.Trying
	CallEarly     = callobs.Early
	CallConfirmed = callobs.Confirmed
	CallHeld      = callobs.Held
	CallResumed   = callobs.Resumed
	CallEnded     = callobs.Ended
)

// callLeg follows one forwarded INVITE for the observer; nil when there
// is no observer or the INVITE is not a phone's new call.
type callLeg struct {
	p  *Proxy
	ev CallEvent
}

// newCallLeg starts following a forwarded INVITE that makes a dialog; it
// reports CallTrying.
func (p *Proxy) newCallLeg(req *sip.Request, h hop) *callLeg {
	if p.opt.Calls == nil || !req.IsInvite() || tagOfTo(req.To()) != "" {
		return nil
	}
	src := sourceFlow(req)
	ev := CallEvent{CallID: req.CallID().Value(), Step: CallTrying}
	if h.target >= 0 { // from a phone: its outgoing call
		ev.Target = p.opt.Targets[h.target].Name
		ev.Outgoing = true
		ev.User = req.From().Address.User
		if b, ok := p.binds.onFlow(src); ok {
			ev.User = b.user
		}
		ev.LocalTag = tagOf(req.From())
		ev.RemoteUser, ev.RemoteName = req.To().Address.User, req.To().DisplayName
	} else { // toward a phone: its incoming call
		ev.Target = p.opt.Targets[p.targetOf(src)].Name
		// The user its flow registered as; before it registers again
		// after a restart of ours, the user the call is for.
		ev.User = req.To().Address.User
		if b, ok := p.binds.onFlow(h.flow); ok {
			ev.User = b.user
		}
		ev.RemoteTag = tagOf(req.From())
		ev.RemoteUser, ev.RemoteName = req.From().Address.User, req.From().DisplayName
	}
	l := &callLeg{p: p, ev: ev}
	p.opt.Calls.ObserveCall(ev)
	return l
}

// response reports what a response to the INVITE says of the leg.
func (l *callLeg) response(res *sip.Response) {
	if l == nil {
		return
	}
	tag := tagOfTo(res.To())
	switch {
	case res.StatusCode == 180 || res.StatusCode == 183:
		l.ev.Step = CallEarly
	case res.IsSuccess():
		l.ev.Step = CallConfirmed
	case res.StatusCode >= 300:
		l.ev.Step = CallEnded
	default:
		return
	}
	if tag != "" {
		if l.ev.Outgoing {
			l.ev.RemoteTag = tag
		} else {
			l.ev.LocalTag = tag
		}
	}
	l.p.opt.Calls.ObserveCall(l.ev)
}

// failed reports a leg that ended with no final response relayed
// (timeout, transport error, Timer C).
func (l *callLeg) failed() {
	if l == nil || l.ev.Step == CallEnded {
		return
	}
	l.ev.Step = CallEnded
	l.p.opt.Calls.ObserveCall(l.ev)
}

// observeInDialog reports what an answered request within a dialog says:
// a BYE ends every leg of its Call-ID, a re-INVITE holds or resumes it.
func (p *Proxy) observeInDialog(req *sip.Request, res *sip.Response) {
	if p.opt.Calls == nil || tagOfTo(req.To()) == "" {
		return
	}
	ev := CallEvent{CallID: req.CallID().Value()}
	switch {
	case req.Method == sip.BYE && res.StatusCode >= 200:
		ev.Step = CallEnded // whatever the answer, the caller has hung up
	case req.IsInvite() && res.IsSuccess():
		ev.Step = CallResumed
		if holds(req.Body()) {
			ev.Step = CallHeld
		}
	default:
		return
	}
	p.opt.Calls.ObserveCall(ev)
}

// holds reports whether an SDP offer puts the call on hold: its media are
// sendonly or inactive (RFC 3264 §8.4), or its connection address is
// 0.0.0.0 (RFC 2543 style).
func holds(sdp []byte) bool {
	return bytes.Contains(sdp, []byte("a=sendonly")) || bytes.Contains(sdp, []byte("a=inactive")) ||
		bytes.Contains(sdp, []byte("c=IN IP4 0.0.0.0"))
}
