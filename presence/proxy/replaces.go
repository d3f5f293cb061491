package proxy

import (
	"strings"

	"github.com/emiago/sipgo/sip"
)

// A BLF key picks up a ringing colleague with an INVITE that carries
// Replaces (RFC 3891), built from the dialog-info NOTIFY Lamplighter sent
// it: the call-id, local-tag and remote-tag of the ringing leg. The UA
// that answers that INVITE matches the to-tag against its own tag of the
// dialog and the from-tag against the other side's. Lamplighter's
// dialog-info gives the answering UA's tag as local-tag (bridge.Call:
// the PBX's tag behind a back-to-back PBX), so a phone that builds
// `to-tag=<local-tag>;from-tag=<remote-tag>` (RFC 3891 read from the
// watched side, as Yealink documents it) reaches the call directly. Not
// every phone reads it that way: Polycom's worked with chan_sip, which
// matched the two the other way round, and Snom sends the Call-ID alone.
// Where the INVITE passes through Lamplighter (proxy mode, a dedicated
// line) the tags are put the way the answering UA needs them, whichever
// way the phone built them, when the Call-ID is a leg Lamplighter shows.

// DialogFinder returns the dialog identifiers of a call leg Lamplighter
// shows, by SIP Call-ID, oriented as dialog-info gives them (localTag is
// the tag of the UA a pickup INVITE reaches).
type DialogFinder func(callID string) (localTag, remoteTag string, ok bool)

// replaces is a parsed Replaces header value.
type replaces struct {
	callID, toTag, fromTag string
	rest                   []string // other parameters (early-only), as they came
}

func parseReplaces(v string) (replaces, bool) {
	parts := strings.Split(v, ";")
	r := replaces{callID: strings.TrimSpace(parts[0])}
	if r.callID == "" {
		return r, false
	}
	for _, p := range parts[1:] {
		name, val, _ := strings.Cut(strings.TrimSpace(p), "=")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "to-tag":
			r.toTag = strings.TrimSpace(val)
		case "from-tag":
			r.fromTag = strings.TrimSpace(val)
		default:
			r.rest = append(r.rest, strings.TrimSpace(p))
		}
	}
	return r, true
}

func (r replaces) String() string {
	var b strings.Builder
	b.WriteString(r.callID)
	b.WriteString(";to-tag=" + r.toTag + ";from-tag=" + r.fromTag)
	for _, p := range r.rest {
		b.WriteString(";" + p)
	}
	return b.String()
}

// orientReplaces puts a forwarded INVITE's Replaces tags the way the UA
// it reaches matches them, when its Call-ID is a leg Lamplighter shows:
// swapped tags are swapped back, missing ones (a Call-ID alone) filled
// in. Tags that are neither (another dialog's) are left alone, and so
// is the header when the finder knows no such leg. It reports whether it
// changed the header.
func (p *Proxy) orientReplaces(fwd *sip.Request) bool {
	if p.opt.Dialogs == nil || !fwd.IsInvite() {
		return false
	}
	h := fwd.GetHeader("Replaces")
	if h == nil {
		return false
	}
	r, ok := parseReplaces(h.Value())
	if !ok {
		return false
	}
	local, remote, ok := p.opt.Dialogs(r.callID)
	if !ok || local == "" || remote == "" {
		return false
	}
	switch {
	case r.toTag == local && r.fromTag == remote:
		return false
	case r.toTag == remote && r.fromTag == local, r.toTag == "" && r.fromTag == "":
		r.toTag, r.fromTag = local, remote
	default:
		return false
	}
	fwd.RemoveHeader("Replaces")
	fwd.AppendHeader(sip.NewHeader("Replaces", r.String()))
	p.log.Debug("pickup: Replaces tags put as the PBX matches them", "call_id", r.callID)
	return true
}
