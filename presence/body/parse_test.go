package body

import (
	"encoding/xml"
	"strings"
	"testing"

	"github.com/lamplighter/lamplighter/bridge"
)

// A Linphone-style publication: activities and note in the person, a
// mood and a timestamp that must survive.
const linphoneBody = `<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model"
  xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid" entity="sip:debbie@example.com">
 <tuple id="qmo7r5">
  <status><basic>open</basic></status>
  <contact>sip:debbie@192.0.2.10</contact>
  <timestamp>2026-11-21T09:00:00Z</timestamp>
 </tuple>
 <dm:person id="p1">
  <rpid:activities><rpid:meeting/></rpid:activities>
  <rpid:mood><rpid:happy/></rpid:mood>
  <dm:note>Board meeting &amp; lunch</dm:note>
 </dm:person>
</presence>`

func TestParsePIDFLinphone(t *testing.T) {
	ps, err := ParsePIDF([]byte(linphoneBody))
	if err != nil {
		t.Fatal(err)
	}
	if len(ps.Activities) != 1 || ps.Activities[0] != bridge.ActivityMeeting {
		t.Errorf("activities %v", ps.Activities)
	}
	if ps.Note != "Board meeting & lunch" || ps.Closed {
		t.Errorf("note %q closed %v", ps.Note, ps.Closed)
	}
	if len(ps.Extra) != 1 || !strings.Contains(string(ps.Extra[0]), `<mood xmlns="urn:ietf:params:xml:ns:pidf:rpid">`) {
		t.Fatalf("foreign elements: %q", ps.Extra)
	}
	// The kept element renders into our own document and the result is
	// still well-formed PIDF with the mood in the person.
	dir, _ := bridge.NewDirectory([]bridge.User{{ID: "debbie", Extensions: []string{"100"}}})
	b := bridge.New(dir)
	b.SetPerson("debbie", "publish:x", ps)
	st, _ := b.State("debbie")
	out := PIDF(nil, "sip:100@example.com", st, Options{})
	var doc struct {
		Person struct {
			Mood struct {
				Happy *struct{} `xml:"urn:ietf:params:xml:ns:pidf:rpid happy"`
			} `xml:"urn:ietf:params:xml:ns:pidf:rpid mood"`
		} `xml:"urn:ietf:params:xml:ns:pidf:data-model person"`
	}
	if err := xml.Unmarshal(out, &doc); err != nil || doc.Person.Mood.Happy == nil {
		t.Errorf("mood lost in the merge (%v):\n%s", err, out)
	}
}

func TestParsePIDFVariants(t *testing.T) {
	cases := []struct {
		name   string
		body   string
		acts   []bridge.Activity
		note   string
		closed bool
	}{
		{"tuple note, closed", `<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"><tuple id="t"><status><basic>closed</basic></status><note>Gone home</note></tuple></presence>`,
			nil, "Gone home", true},
		{"prefixed pidf, dnd as busy", `<p:presence xmlns:p="urn:ietf:params:xml:ns:pidf" xmlns:r="urn:ietf:params:xml:ns:pidf:rpid" xmlns:d="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:a@b"><p:tuple id="t"><p:status><p:basic>open</p:basic></p:status></p:tuple><d:person id="x"><r:activities><r:busy/><r:on-the-phone/><r:not-a-token/></r:activities></d:person></p:presence>`,
			[]bridge.Activity{bridge.ActivityBusy, bridge.ActivityOnThePhone}, "", false},
		{"document note", `<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"><tuple id="t"><status><basic>open</basic></status></tuple><note>Hi</note></presence>`,
			nil, "Hi", false},
		{"latin-1 declared", `<?xml version="1.0" encoding="ISO-8859-1"?><presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"/>`,
			nil, "", false},
	}
	for _, c := range cases {
		ps, err := ParsePIDF([]byte(c.body))
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if len(ps.Activities) != len(c.acts) || ps.Note != c.note || ps.Closed != c.closed {
			t.Errorf("%s: got %+v", c.name, ps)
			continue
		}
		for i := range c.acts {
			if ps.Activities[i] != c.acts[i] {
				t.Errorf("%s: activities %v", c.name, ps.Activities)
			}
		}
	}
}

func TestParsePIDFRejects(t *testing.T) {
	laughs := `<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>` +
		`<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b"><note>&lol2;</note></presence>`
	deep := `<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:a@b">` + strings.Repeat("<x>", 100) + strings.Repeat("</x>", 100) + `</presence>`
	for name, body := range map[string]string{
		"entity expansion":  laughs,
		"not pidf":          `<dialog-info xmlns="urn:ietf:params:xml:ns:dialog-info"/>`,
		"not xml":           `hello`,
		"empty":             ``,
		"truncated":         `<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple>`,
		"too deep":          deep,
		"undeclared entity": `<presence xmlns="urn:ietf:params:xml:ns:pidf"><note>&xxe;</note></presence>`,
	} {
		if _, err := ParsePIDF([]byte(body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func FuzzParsePIDF(f *testing.F) {
	f.Add([]byte(linphoneBody))
	f.Add([]byte(`<presence xmlns="urn:ietf:params:xml:ns:pidf"><tuple id="a"><status><basic>closed</basic></status></tuple></presence>`))
	f.Add([]byte(`<?xml version="1.0"?><!DOCTYPE a [<!ENTITY b "c">]><presence/>`))
	dir, _ := bridge.NewDirectory([]bridge.User{{ID: "u", Extensions: []string{"1"}}})
	f.Fuzz(func(t *testing.T, data []byte) {
		ps, err := ParsePIDF(data)
		if err != nil {
			return
		}
		// Whatever was accepted must render into a well-formed document.
		b := bridge.New(dir)
		b.SetPerson("u", "p", ps)
		st, _ := b.State("u")
		out := PIDF(nil, "sip:1@x", st, Options{})
		d := xml.NewDecoder(strings.NewReader(string(out)))
		for {
			_, err := d.Token()
			if err != nil {
				if err.Error() != "EOF" {
					t.Fatalf("accepted body renders badly: %v\n%s\n%s", err, data, out)
				}
				break
			}
		}
	})
}
