package body

import (
	"bytes"
	"encoding/xml"
	"errors"
	"strings"
)

// Device feature key synchronisation (Event: as-feature-event), as
// BroadSoft defined it and Yealink, Polycom, Grandstream, Cisco and
// Gigaset phones speak it: ECMA-323 (CSTA) documents. A phone asks with a
// SUBSCRIBE body (SetDoNotDisturb, SetForwarding); the server tells with a
// NOTIFY body (DoNotDisturbEvent, ForwardingEvent). The namespace is
// required: Polycom phones reboot on a document without it.

// TypeAsFeature is the media type of these documents.
const TypeAsFeature = "application/x-as-feature-event+xml"

// csta is the ECMA-323 namespace the documents are in.
const csta = "http://www.ecma-international.org/standards/ecma-323/csta/ed3"

// The forwarding types of ECMA-323 that phones send.
const (
	ForwardImmediate = "forwardImmediate"
	ForwardBusy      = "forwardBusy"
	ForwardNoAnswer  = "forwardNoAns"
)

// DoNotDisturbEvent appends the document that sets a phone's DND key.
func DoNotDisturbEvent(dst []byte, device string, on bool) []byte {
	dst = append(dst, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<DoNotDisturbEvent xmlns="`+csta+`">`+"\n<device>"...)
	dst = esc(dst, device)
	dst = append(dst, "</device>\n<doNotDisturbOn>"...)
	dst = appendBool(dst, on)
	return append(dst, "</doNotDisturbOn>\n</DoNotDisturbEvent>\n"...)
}

// ForwardingEvent appends the document that tells a phone a forwarding
// type's state (Lamplighter forwards nothing: it says off).
func ForwardingEvent(dst []byte, device, forwardingType string, on bool, to string) []byte {
	dst = append(dst, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<ForwardingEvent xmlns="`+csta+`">`+"\n<device>"...)
	dst = esc(dst, device)
	dst = append(dst, "</device>\n<forwardingType>"...)
	dst = esc(dst, forwardingType)
	dst = append(dst, "</forwardingType>\n<forwardStatus>"...)
	dst = appendBool(dst, on)
	dst = append(dst, "</forwardStatus>\n<forwardTo>"...)
	dst = esc(dst, to)
	return append(dst, "</forwardTo>\n</ForwardingEvent>\n"...)
}

func appendBool(dst []byte, b bool) []byte {
	if b {
		return append(dst, "true"...)
	}
	return append(dst, "false"...)
}

// FeatureRequest is what a phone asked for in a SUBSCRIBE body.
type FeatureRequest struct {
	// DND is set for SetDoNotDisturb, with DNDOn what it asks.
	DND   bool
	DNDOn bool
	// Forwarding is set for SetForwarding: its type, whether to turn it
	// on, and where to.
	Forwarding     bool
	ForwardingType string
	ForwardOn      bool
	ForwardTo      string
}

// ParseFeatureRequest reads a SetDoNotDisturb or SetForwarding document.
func ParseFeatureRequest(b []byte) (FeatureRequest, error) {
	var doc struct {
		XMLName         xml.Name
		DoNotDisturbOn  string `xml:"doNotDisturbOn"`
		ForwardingType  string `xml:"forwardingType"`
		ActivateForward string `xml:"activateForward"`
		ForwardDN       string `xml:"forwardDN"`
	}
	d := xml.NewDecoder(bytes.NewReader(b))
	d.CharsetReader = charsetReader // phones declare ISO-8859-1
	if err := d.Decode(&doc); err != nil {
		return FeatureRequest{}, err
	}
	var r FeatureRequest
	switch doc.XMLName.Local {
	case "SetDoNotDisturb":
		on, ok := parseBool(doc.DoNotDisturbOn)
		if !ok {
			return r, errors.New("SetDoNotDisturb without doNotDisturbOn true or false")
		}
		r.DND, r.DNDOn = true, on
	case "SetForwarding":
		on, ok := parseBool(doc.ActivateForward)
		t := strings.TrimSpace(doc.ForwardingType)
		if !ok || t == "" {
			return r, errors.New("SetForwarding without forwardingType and activateForward")
		}
		r.Forwarding, r.ForwardingType, r.ForwardOn, r.ForwardTo = true, t, on, strings.TrimSpace(doc.ForwardDN)
	default:
		return r, errors.New("not SetDoNotDisturb or SetForwarding: " + doc.XMLName.Local)
	}
	return r, nil
}

func parseBool(s string) (bool, bool) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "true", "1":
		return true, true
	case "false", "0":
		return false, true
	}
	return false, false
}
