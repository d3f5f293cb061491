package body

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// xpidfDoc is what a phone reads of an XPIDF document.
type xpidfDoc struct {
	XMLName    xml.Name `xml:"presence"`
	Presentity struct {
		URI string `xml:"uri,attr"`
	} `xml:"presentity"`
	Atoms []struct {
		ID      string `xml:"id,attr"`
		Address struct {
			URI    string `xml:"uri,attr"`
			Status struct {
				Status string `xml:"status,attr"`
			} `xml:"status"`
			Sub struct {
				Substatus string `xml:"substatus,attr"`
			} `xml:"msnsubstatus"`
		} `xml:"address"`
	} `xml:"atom"`
}

func parseXPIDF(t *testing.T, b []byte) xpidfDoc {
	t.Helper()
	var doc xpidfDoc
	if err := xml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("does not parse: %v\n%s", err, b)
	}
	if len(doc.Atoms) != 1 {
		t.Fatalf("%d atoms\n%s", len(doc.Atoms), b)
	}
	return doc
}

// TestXPIDFGolden: every state gets the status and substatus an old
// phone shows, the address is the presentity, and the document is as
// recorded.
func TestXPIDFGolden(t *testing.T) {
	want := map[string][2]string{
		"idle": {"open", "online"}, "ringing-in": {"inuse", "onthephone"}, "ringing-out": {"inuse", "onthephone"},
		"in-call": {"inuse", "onthephone"}, "on-hold": {"inuse", "onthephone"}, "ringing-in-use": {"inuse", "onthephone"},
		"unavailable": {"closed", "offline"}, "dnd": {"inuse", "busy"}, "dnd-in-call": {"inuse", "onthephone"},
		"meeting-in-call": {"inuse", "onthephone"}, "escaping": {"inuse", "onthephone"},
	}
	for _, s := range scenarios() {
		t.Run(s.name, func(t *testing.T) {
			out := XPIDF(nil, entity, s.state(t))
			golden(t, "xpidf-"+s.name+".xml", out)
			doc := parseXPIDF(t, out)
			a := doc.Atoms[0]
			if a.Address.URI != entity || doc.Presentity.URI != entity+";method=SUBSCRIBE" {
				t.Errorf("address %q, presentity %q: both must name %s", a.Address.URI, doc.Presentity.URI, entity)
			}
			w, ok := want[s.name]
			if !ok {
				t.Fatalf("no expectation for %s", s.name)
			}
			if got := [2]string{a.Address.Status.Status, a.Address.Sub.Substatus}; got != w {
				t.Errorf("status %v, want %v", got, w)
			}
		})
	}
}

// TestXPIDFMatchesAsterisk: for the states Asterisk's own busy lamps
// sent (fixtures), the status and substatus are Asterisk's, in the same
// elements, so a phone that worked with Asterisk's XPIDF reads ours.
func TestXPIDFMatchesAsterisk(t *testing.T) {
	const dir = "../../../shared/fixtures/asterisk-native-blf"
	ours := map[string]string{"idle": "idle", "incall": "in-call", "ringing": "ringing-in", "unavailable": "unavailable"}
	byName := map[string]scenario{}
	for _, s := range scenarios() {
		byName[s.name] = s
	}
	for fixture, scen := range ours {
		t.Run(fixture, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(dir, "native-notify-xpidf-"+fixture+".txt"))
			if err != nil {
				t.Skipf("fixture: %v", err)
			}
			_, body, ok := strings.Cut(string(raw), "\n\n")
			if !ok {
				t.Fatal("fixture has no body")
			}
			theirs := parseXPIDF(t, []byte(body)).Atoms[0].Address
			mine := parseXPIDF(t, XPIDF(nil, entity, byName[scen].state(t))).Atoms[0].Address
			if mine.Status != theirs.Status || mine.Sub != theirs.Sub {
				t.Errorf("ours %+v, Asterisk's %+v", mine, theirs)
			}
		})
	}
}
