package body

import (
	"encoding/xml"
	"testing"
)

func TestAsFeatureDocuments(t *testing.T) {
	dnd := DoNotDisturbEvent(nil, "100", true)
	golden(t, "asfeature-dnd-on.xml", dnd)
	golden(t, "asfeature-dnd-off.xml", DoNotDisturbEvent(nil, "a&b", false))
	golden(t, "asfeature-forwarding-off.xml", ForwardingEvent(nil, "100", ForwardImmediate, false, ""))
	var doc struct {
		XMLName xml.Name `xml:"http://www.ecma-international.org/standards/ecma-323/csta/ed3 DoNotDisturbEvent"`
		Device  string   `xml:"device"`
		On      bool     `xml:"doNotDisturbOn"`
	}
	if err := xml.Unmarshal(dnd, &doc); err != nil || doc.Device != "100" || !doc.On {
		t.Fatalf("DoNotDisturbEvent reads back as %+v (%v)", doc, err)
	}
}

func TestParseFeatureRequests(t *testing.T) {
	// As Yealink and Polycom send them (ISO-8859-1 declared).
	set := `<?xml version="1.0" encoding="ISO-8859-1"?>
<SetDoNotDisturb xmlns="http://www.ecma-international.org/standards/ecma-323/csta/ed3">
<device>100</device>
<doNotDisturbOn>true</doNotDisturbOn>
</SetDoNotDisturb>`
	r, err := ParseFeatureRequest([]byte(set))
	if err != nil || !r.DND || !r.DNDOn {
		t.Fatalf("SetDoNotDisturb: %+v %v", r, err)
	}
	fwd := `<?xml version="1.0" encoding="ISO-8859-1"?>
<SetForwarding xmlns="http://www.ecma-international.org/standards/ecma-323/csta/ed3">
<device>100</device>
<forwardingType>forwardBusy</forwardingType>
<activateForward>true</activateForward>
<forwardDN>200</forwardDN>
<ringCount>3</ringCount>
</SetForwarding>`
	r, err = ParseFeatureRequest([]byte(fwd))
	if err != nil || !r.Forwarding || r.ForwardingType != ForwardBusy || !r.ForwardOn || r.ForwardTo != "200" {
		t.Fatalf("SetForwarding: %+v %v", r, err)
	}
	for _, bad := range []string{"", "<x/>", `<SetDoNotDisturb><doNotDisturbOn>maybe</doNotDisturbOn></SetDoNotDisturb>`,
		`<SetForwarding><activateForward>true</activateForward></SetForwarding>`, "<SetDoNotDisturb>"} {
		if _, err := ParseFeatureRequest([]byte(bad)); err == nil {
			t.Errorf("%q read as a request", bad)
		}
	}
}

func TestWatcherInfoDocument(t *testing.T) {
	doc := WatcherInfo(nil, 3, "sip:100@pbx.example.com", []WatcherList{
		{Package: "presence", Watchers: []Watcher{
			{ID: "a1", URI: "sip:101@pbx.example.com", Status: "active", Event: "subscribe"},
			{ID: "b2", URI: `sip:"odd"&<x>@pbx.example.com`, Status: "terminated", Event: "timeout"},
		}},
		{Package: "dialog"},
	})
	golden(t, "winfo-two-watchers.xml", doc)
}
