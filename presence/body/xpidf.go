package body

import (
	"github.com/lamplighter/lamplighter/bridge"
)

// TypeXPIDF is the pre-standard presence document older Polycom and Cisco
// phones ask for in Accept (draft-rosenberg-impp-pidf, as Asterisk and
// FreeSWITCH serve it).
const TypeXPIDF = "application/xpidf+xml"

// XPIDF appends the XPIDF document that describes st to dst: one atom
// whose address is the presentity (Asterisk puts the watcher's own address
// there), with a status (open, inuse, closed) and an MSN substatus that
// carries more than Asterisk's three: online, onthephone, busy for do not
// disturb, away for a person away, offline. entity is the presentity URI
// as subscribed.
func XPIDF(dst []byte, entity string, st *bridge.State) []byte {
	user := userOf(entity)
	if user == "" {
		user = st.User.ID
	}
	status, sub := xpidfStatus(st)
	dst = append(dst, xmlDecl...)
	dst = append(dst, "<presence>\n <presentity uri=\""...)
	dst = esc(dst, entity)
	dst = append(dst, ";method=SUBSCRIBE\" />\n <atom atomid=\""...)
	dst = esc(dst, xmlID("a-", user))
	dst = append(dst, "\" id=\""...)
	dst = esc(dst, user)
	dst = append(dst, "\">\n  <address uri=\""...)
	dst = esc(dst, entity)
	dst = append(dst, "\" priority=\"0.80000\">\n   <status status=\""...)
	dst = append(dst, status...)
	dst = append(dst, "\" />\n   <msnsubstatus substatus=\""...)
	dst = append(dst, sub...)
	dst = append(dst, "\" />\n  </address>\n </atom>\n</presence>\n"...)
	return dst
}

// xpidfStatus maps a state onto XPIDF's status and MSN substatus. A line
// in use wins over the person's state, as on the busy lamp; XPIDF has no
// ringing, so a ringing or held line is in use, as Asterisk sends it.
func xpidfStatus(st *bridge.State) (status, substatus string) {
	switch st.Phone {
	case bridge.PhoneOffline:
		return "closed", "offline"
	case bridge.PhoneDND:
		if st.LinePhone() != bridge.PhoneIdle && st.LinePhone() != bridge.PhoneOffline {
			return "inuse", "onthephone"
		}
		return "inuse", "busy"
	case bridge.PhoneRinging, bridge.PhoneBusy, bridge.PhoneHeld, bridge.PhoneDialing:
		return "inuse", "onthephone"
	}
	if !st.Open() {
		return "closed", "offline"
	}
	if st.Person.Has(bridge.ActivityAway) || st.Person.Has(bridge.ActivityVacation) {
		return "open", "away"
	}
	return "open", "online"
}
