// Package body renders presence documents from a user's bridge.State and
// parses the documents soft clients PUBLISH. Renderers are pure functions
// that append to a byte slice: PIDF (RFC 3863) with RPID (RFC 4480),
// Lamplighter's phonestate extension and notes, and dialog-info (RFC 4235).
package body

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/lamplighter/lamplighter/bridge"
)

// Media types of the documents.
const (
	TypePIDF       = "application/pidf+xml"
	TypeDialogInfo = "application/dialog-info+xml"
)

// XML namespaces used in the documents.
const (
	NSPIDF       = "urn:ietf:params:xml:ns:pidf"
	NSDataModel  = "urn:ietf:params:xml:ns:pidf:data-model"
	NSRPID       = "urn:ietf:params:xml:ns:pidf:rpid"
	NSDialogInfo = "urn:ietf:params:xml:ns:dialog-info"
	// NSPhoneState is Lamplighter's own namespace for the phonestate
	// element. There is no IETF standard for it; it is never
	// mustUnderstand and always mirrored into RPID activities and notes.
	NSPhoneState = "urn:x-lamplighter:params:xml:ns:phonestate"
)

const xmlDecl = `<?xml version="1.0" encoding="UTF-8"?>` + "\n"

// LineNote is the call-state note of a tuple: "Ringing: Bob (101)",
// "Ready".
func LineNote(st *bridge.State) string {
	var remote string
	if c, ok := st.Primary(); ok {
		remote = c.Remote.Label()
	}
	withRemote := func(s, sep string) string {
		if remote == "" {
			return s
		}
		return s + sep + remote
	}
	switch st.LinePhone() {
	case bridge.PhoneRinging:
		return withRemote("Ringing", ": ")
	case bridge.PhoneDialing:
		return withRemote("Calling", " ")
	case bridge.PhoneBusy:
		return withRemote("On the phone", ": ")
	case bridge.PhoneHeld:
		return withRemote("On hold", ": ")
	case bridge.PhoneOffline:
		if st.Person.DND() {
			return "Do not disturb"
		}
		return "Unavailable"
	}
	if st.Person.DND() {
		return "Do not disturb"
	}
	return "Ready"
}

// shortLabel is the person note when the person said nothing.
func shortLabel(p bridge.PhoneState) string {
	switch p {
	case bridge.PhoneRinging:
		return "Ringing"
	case bridge.PhoneDialing:
		return "Calling"
	case bridge.PhoneBusy:
		return "On the phone"
	case bridge.PhoneHeld:
		return "On hold"
	case bridge.PhoneOffline:
		return "Unavailable"
	}
	return "Ready"
}

// PersonNote is the note a person shows: dnd with the user's note, else the
// user's note or activity, else the short state ("On the phone").
func PersonNote(st *bridge.State) string {
	p := &st.Person
	switch {
	case p.DND() && p.Note != "":
		return "Do not disturb: " + p.Note
	case p.DND():
		return "Do not disturb"
	case p.Note != "":
		return p.Note
	case len(p.Activities) > 0:
		return p.Activities[0].Label()
	}
	return shortLabel(st.LinePhone())
}

// hostOf returns the host part of a SIP URI ("sip:100@pbx:5060;x" →
// "pbx:5060"), or "" when there is none.
func hostOf(uri string) string {
	if i := strings.IndexByte(uri, '@'); i >= 0 {
		uri = uri[i+1:]
	} else if i := strings.IndexByte(uri, ':'); i >= 0 {
		uri = uri[i+1:]
	}
	if i := strings.IndexAny(uri, ";?>"); i >= 0 {
		uri = uri[:i]
	}
	return uri
}

// userOf returns the user part of a SIP URI, or "" when there is none.
func userOf(uri string) string {
	if i := strings.IndexByte(uri, ':'); i >= 0 {
		uri = uri[i+1:]
	}
	if i := strings.IndexByte(uri, '@'); i >= 0 {
		return uri[:i]
	}
	return ""
}

// xmlID turns s into a valid XML ID (an NCName) with the given prefix, so
// that it never starts with a digit: "100" → "t-100".
func xmlID(prefix, s string) string {
	var b strings.Builder
	b.Grow(len(prefix) + len(s))
	b.WriteString(prefix)
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// esc appends s escaped for XML text and attribute values. Characters that
// XML 1.0 forbids are replaced with U+FFFD, so a hostile caller name can
// never break the document.
func esc(dst []byte, s string) []byte {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch c {
			case '&':
				dst = append(dst, "&amp;"...)
			case '<':
				dst = append(dst, "&lt;"...)
			case '>':
				dst = append(dst, "&gt;"...)
			case '"':
				dst = append(dst, "&quot;"...)
			case '\'':
				dst = append(dst, "&apos;"...)
			case '\t', '\n', '\r':
				dst = append(dst, "&#"...)
				dst = strconv.AppendInt(dst, int64(c), 10)
				dst = append(dst, ';')
			default:
				if c < 0x20 || c == 0x7f {
					dst = append(dst, "\uFFFD"...)
				} else {
					dst = append(dst, c)
				}
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 || r == 0xFFFE || r == 0xFFFF {
			dst = append(dst, "\uFFFD"...)
		} else {
			dst = append(dst, s[i:i+n]...)
		}
		i += n
	}
	return dst
}

// Options shape a rendered document for one watcher.
type Options struct {
	// Version is the dialog-info version: 0 for the first document of a
	// subscription, one more for each after it.
	Version uint32
	// SingleDialog renders at most one dialog (the most important call),
	// for phones that choke on several (Cisco SPA).
	SingleDialog bool
	// Plain leaves out Lamplighter's extension elements, for phones whose
	// parsers reject unknown elements.
	Plain bool
	// Compact leaves out the elements a soft client PUBLISHed beyond
	// activities and note, for a document that must be small.
	Compact bool
	// Now, when set, adds each call's duration.
	Now time.Time
	// DNDText writes do not disturb as <rpid:busy>Do not disturb</rpid:busy>,
	// which is how Linphone tells dnd from busy (RFC 4480's busy is
	// empty: only for the clients that need it).
	DNDText bool
}

// DNDText is the text inside <rpid:busy> that means do not disturb to
// Linphone, both ways.
const DNDText = "Do not disturb"

// WantsDNDText reports whether a watcher's User-Agent is a client that
// reads do not disturb from the text inside <rpid:busy> (Linphone).
func WantsDNDText(userAgent string) bool {
	return strings.Contains(strings.ToLower(userAgent), "linphone")
}
