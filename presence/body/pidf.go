package body

import (
	"slices"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// PIDF appends the PIDF document (RFC 3863, with RPID and phonestate) that
// describes st to dst. entity is exactly the presentity URI the watcher
// subscribed to; it is also the tuple's contact (the presentity's address,
// not the watcher's).
func PIDF(dst []byte, entity string, st *bridge.State, opt Options) []byte {
	user := userOf(entity)
	if user == "" {
		user = st.User.ID
	}
	dst = append(dst, xmlDecl...)
	dst = append(dst, `<presence xmlns="`+NSPIDF+`" xmlns:dm="`+NSDataModel+`" xmlns:rpid="`+NSRPID+`"`...)
	if !opt.Plain {
		dst = append(dst, ` xmlns:ps="`+NSPhoneState+`"`...)
	}
	dst = append(dst, ` entity="`...)
	dst = esc(dst, entity)
	dst = append(dst, "\">\n <tuple id=\""...)
	dst = esc(dst, xmlID("t-", user))
	dst = append(dst, "\">\n  <status><basic>"...)
	if st.Open() {
		dst = append(dst, "open"...)
	} else {
		dst = append(dst, "closed"...)
	}
	dst = append(dst, "</basic>"...)
	if !opt.Plain {
		dst = append(dst, "<ps:phonestate>"...)
		dst = append(dst, st.Phone.String()...)
		dst = append(dst, "</ps:phonestate>"...)
	}
	dst = append(dst, "</status>\n  <contact priority=\"1\">"...)
	dst = esc(dst, entity)
	dst = append(dst, "</contact>\n  <note>"...)
	dst = esc(dst, LineNote(st))
	dst = append(dst, "</note>\n </tuple>\n <dm:person id=\""...)
	dst = esc(dst, xmlID("p-", user))
	dst = append(dst, "\">\n"...)
	if acts := activities(st); len(acts) > 0 {
		dst = append(dst, "  <rpid:activities"...)
		if u := st.Person.Until; !u.IsZero() && !slices.Contains(acts, string(bridge.ActivityOnThePhone)) {
			// When the person's own activities end (a calendar's
			// meeting); not said while a call adds on-the-phone.
			dst = append(dst, ` until="`...)
			dst = u.UTC().AppendFormat(dst, time.RFC3339)
			dst = append(dst, '"')
		}
		dst = append(dst, ">"...)
		for _, a := range acts {
			if a == "busy" && opt.DNDText && st.Person.DND() {
				dst = append(dst, "<rpid:busy>"+DNDText+"</rpid:busy>"...)
				continue
			}
			dst = append(dst, "<rpid:"...)
			dst = append(dst, a...)
			dst = append(dst, "/>"...)
		}
		dst = append(dst, "</rpid:activities>\n"...)
	}
	for _, x := range st.Person.Extra {
		if opt.Compact {
			break
		}
		dst = append(dst, "  "...)
		dst = append(dst, x...)
		dst = append(dst, '\n')
	}
	dst = append(dst, "  <dm:note>"...)
	dst = esc(dst, PersonNote(st))
	dst = append(dst, "</dm:note>\n </dm:person>\n</presence>\n"...)
	return dst
}

// activities lists the RPID activity elements for st: the person's own
// (dnd as "busy"), then "on-the-phone" while a line is in use. Only RFC
// 4480 tokens are emitted, each once.
func activities(st *bridge.State) []string {
	var out []string
	add := func(s string) {
		for _, x := range out {
			if x == s {
				return
			}
		}
		out = append(out, s)
	}
	for _, a := range st.Person.Activities {
		if a.Valid() {
			add(a.RPID())
		}
	}
	switch st.LinePhone() {
	case bridge.PhoneRinging, bridge.PhoneDialing, bridge.PhoneBusy, bridge.PhoneHeld:
		add(string(bridge.ActivityOnThePhone))
	}
	return out
}
