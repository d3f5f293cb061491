package body

import (
	"strconv"
	"strings"

	"github.com/lamplighter/lamplighter/bridge"
)

// DialogInfo appends the dialog-info document (RFC 4235, state "full")
// that describes st to dst: one dialog per call with the SIP Call-ID and
// tags where the PBX exposes them (so phones can pick up with Replaces),
// direction, local and remote identity and target, and hold rendered as
// +sip.rendering=no on the local target. Idle and unavailable have no
// dialog; the phonestate extension element tells them apart unless
// opt.Plain is set.
func DialogInfo(dst []byte, entity string, st *bridge.State, opt Options) []byte {
	host := hostOf(entity)
	dst = append(dst, xmlDecl...)
	dst = append(dst, `<dialog-info xmlns="`+NSDialogInfo+`"`...)
	if !opt.Plain {
		dst = append(dst, ` xmlns:ps="`+NSPhoneState+`"`...)
	}
	dst = append(dst, ` version="`...)
	dst = strconv.AppendUint(dst, uint64(opt.Version), 10)
	dst = append(dst, `" state="full" entity="`...)
	dst = esc(dst, entity)
	dst = append(dst, "\">\n"...)
	calls := st.Calls
	if len(calls) == 0 {
		calls = lineDialog(st)
	}
	if opt.SingleDialog && len(calls) > 1 {
		calls = calls[:1]
	}
	for i := range calls {
		dst = appendDialog(dst, entity, host, st, &calls[i], opt)
	}
	if !opt.Plain {
		dst = append(dst, " <ps:phonestate>"...)
		dst = append(dst, st.Phone.String()...)
		dst = append(dst, "</ps:phonestate>\n"...)
	}
	dst = append(dst, "</dialog-info>\n"...)
	return dst
}

func appendDialog(dst []byte, entity, host string, st *bridge.State, c *bridge.Call, opt Options) []byte {
	dst = append(dst, ` <dialog id="`...)
	dst = esc(dst, dialogID(c))
	if c.CallID != "" {
		dst = append(dst, `" call-id="`...)
		dst = esc(dst, c.CallID)
		if c.LocalTag != "" {
			dst = append(dst, `" local-tag="`...)
			dst = esc(dst, c.LocalTag)
		}
		if c.RemoteTag != "" {
			dst = append(dst, `" remote-tag="`...)
			dst = esc(dst, c.RemoteTag)
		}
	}
	if c.Direction == bridge.Outgoing {
		dst = append(dst, `" direction="initiator">`...)
	} else {
		dst = append(dst, `" direction="recipient">`...)
	}
	// Phones understand early/confirmed/terminated; trying and proceeding
	// are early as far as a lamp is concerned.
	if c.State == bridge.CallConfirmed {
		dst = append(dst, "\n  <state>confirmed</state>"...)
	} else {
		dst = append(dst, "\n  <state>early</state>"...)
	}
	if !opt.Now.IsZero() && !c.Started.IsZero() && opt.Now.After(c.Started) {
		dst = append(dst, "\n  <duration>"...)
		dst = strconv.AppendInt(dst, int64(opt.Now.Sub(c.Started).Seconds()), 10)
		dst = append(dst, "</duration>"...)
	}
	dst = appendParticipant(dst, "local", st.User.Name, entity, c.Held)
	if remote := remoteURI(c.Remote, host); remote != "" {
		dst = appendParticipant(dst, "remote", c.Remote.Name, remote, false)
	}
	dst = append(dst, "\n </dialog>\n"...)
	return dst
}

// lineDialog stands in for the calls of a line that is in use while the
// PBX has told only its device state (a Custom: device, a chan_sip peer,
// or the moment between a RINGING device state and its channel): without
// a dialog a phone would show the lamp as idle.
func lineDialog(st *bridge.State) []bridge.Call {
	c := bridge.Call{ID: "line-" + st.User.ID, Direction: bridge.Incoming}
	switch st.Phone {
	case bridge.PhoneRinging:
		c.State = bridge.CallEarly
	case bridge.PhoneDialing:
		c.State, c.Direction = bridge.CallEarly, bridge.Outgoing
	case bridge.PhoneBusy:
		c.State = bridge.CallConfirmed
	case bridge.PhoneHeld:
		c.State, c.Held = bridge.CallConfirmed, true
	default:
		return nil
	}
	return []bridge.Call{c}
}

// appendParticipant writes a <local> or <remote> element: identity with
// its display name, and target, marked +sip.rendering=no when held.
func appendParticipant(dst []byte, elem, display, uri string, held bool) []byte {
	dst = append(dst, "\n  <"...)
	dst = append(dst, elem...)
	dst = append(dst, "><identity"...)
	if display != "" {
		dst = append(dst, ` display="`...)
		dst = esc(dst, display)
		dst = append(dst, '"')
	}
	dst = append(dst, '>')
	dst = esc(dst, uri)
	dst = append(dst, `</identity><target uri="`...)
	dst = esc(dst, uri)
	if held {
		dst = append(dst, `"><param pname="+sip.rendering" pvalue="no"/></target></`...)
	} else {
		dst = append(dst, `"/></`...)
	}
	dst = append(dst, elem...)
	return append(dst, '>')
}

// dialogID is the dialog's id attribute: stable for the life of the call
// leg and unique within the document.
func dialogID(c *bridge.Call) string {
	if c.ID != "" {
		return c.ID
	}
	return c.CallID
}

// remoteURI is the remote party as a SIP URI: the one the PBX gave, else
// its number at the presentity's host.
func remoteURI(p bridge.Party, host string) string {
	switch {
	case p.URI != "":
		return p.URI
	case p.Number != "" && host != "":
		return "sip:" + strings.ReplaceAll(p.Number, " ", "") + "@" + host
	case p.Number != "":
		return "sip:" + strings.ReplaceAll(p.Number, " ", "")
	}
	return ""
}
