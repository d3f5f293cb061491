package ari

import (
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
)

// The recordings in asterisk-native-blf are what Asterisk's own busy lamps
// sent for the same session as pjsip/pjsip-session.jsonl. These tests render
// what Lamplighter sends for the same moments and check that it carries at
// least the same information, and the things Asterisk leaves out.

const nativeBLF = "../../../shared/fixtures/asterisk-native-blf"

// dialogDoc is the part of a dialog-info document the comparison reads.
type dialogDoc struct {
	Entity  string `xml:"entity,attr"`
	Dialogs []struct {
		ID        string `xml:"id,attr"`
		CallID    string `xml:"call-id,attr"`
		Direction string `xml:"direction,attr"`
		State     string `xml:"state"`
		Remote    struct {
			Identity struct {
				Display string `xml:"display,attr"`
				URI     string `xml:",chardata"`
			} `xml:"identity"`
		} `xml:"remote"`
	} `xml:"dialog"`
	PhoneState string `xml:"phonestate"`
}

// pidfDoc is the part of a PIDF document the comparison reads.
type pidfDoc struct {
	Entity string `xml:"entity,attr"`
	Tuples []struct {
		Basic   string `xml:"status>basic"`
		Contact string `xml:"contact"`
	} `xml:"tuple"`
	Activities []struct {
		Any []struct{ XMLName xml.Name } `xml:",any"`
	} `xml:"person>activities"`
}

// nativeNotify reads one recorded NOTIFY: the watched extension, the
// state it was captured in and the XML body.
func nativeNotify(t *testing.T, name string) (ext, state string, xmlBody []byte) {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(nativeBLF, name))
	if err != nil {
		t.Fatalf("recording missing: %v", err)
	}
	text := string(raw)
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(line, "# state: "); ok {
			state, _, _ = strings.Cut(strings.TrimSpace(v), " ")
		}
		if _, v, ok := strings.Cut(line, "resource: "); ok && strings.HasPrefix(line, "#") {
			ext, _, _ = strings.Cut(v, "@")
		}
	}
	i := strings.Index(text, "<?xml")
	if ext == "" || state == "" || i < 0 {
		t.Fatalf("%s: not a recorded NOTIFY", name)
	}
	return ext, state, []byte(text[i:])
}

// settled returns, from the first run of user in phone state p, the
// state that knew most about the calls: the step once its events arrived.
func (tl *timeline) settled(user string, p bridge.PhoneState) *bridge.State {
	var best *bridge.State
	for _, s := range tl.states[user] {
		if s.Phone == p {
			if best == nil || len(s.Calls) >= len(best.Calls) {
				best = s
			}
		} else if best != nil {
			break
		}
	}
	return best
}

// sessionStates replays the session and returns, per extension, the
// state Lamplighter had in each of the native recordings' states.
func sessionStates(t *testing.T) map[string]map[string]*bridge.State {
	tl, b, _ := replay(t, map[string][]string{"100": {"PJSIP/100"}, "101": {"PJSIP/101"}, "102": {"PJSIP/102"}},
		"pjsip/pjsip-session.jsonl")
	out := map[string]map[string]*bridge.State{}
	for _, ext := range []string{"100", "101"} {
		final, _ := b.State(ext)
		out[ext] = map[string]*bridge.State{
			"ringing":     tl.settled(ext, bridge.PhoneRinging),
			"incall":      tl.settled(ext, bridge.PhoneBusy),
			"unavailable": tl.settled(ext, bridge.PhoneOffline),
			"idle":        final,
		}
	}
	return out
}

func TestCarriesAtLeastWhatAsteriskBLFSends(t *testing.T) {
	ours := sessionStates(t)
	for _, state := range []string{"idle", "ringing", "incall", "unavailable"} {
		t.Run("dialog-"+state, func(t *testing.T) {
			ext, got, raw := nativeNotify(t, "native-notify-dialog-"+state+".txt")
			if got != state {
				t.Fatalf("recording says state %q", got)
			}
			var native dialogDoc
			if err := xml.Unmarshal(raw, &native); err != nil {
				t.Fatal(err)
			}
			st := ours[ext][state]
			if st == nil {
				t.Fatalf("Lamplighter never had %s in state %s", ext, state)
			}
			entity := "sip:" + ext + "@127.0.0.1:5060"
			var doc dialogDoc
			if err := xml.Unmarshal(body.DialogInfo(nil, entity, st, body.Options{}), &doc); err != nil {
				t.Fatal(err)
			}
			if len(native.Dialogs) == 1 && native.Dialogs[0].State == "terminated" {
				// Asterisk marks idle (and unavailable) with a terminated
				// dialog; RFC 4235 says the same with no dialog at all.
				for _, d := range doc.Dialogs {
					if d.State != "terminated" {
						t.Errorf("a %s dialog where Asterisk says idle", d.State)
					}
				}
				native.Dialogs = nil
				doc.Dialogs = nil
			}
			if len(doc.Dialogs) != len(native.Dialogs) {
				t.Fatalf("%d dialogs, Asterisk sent %d", len(doc.Dialogs), len(native.Dialogs))
			}
			for i, nd := range native.Dialogs {
				d := doc.Dialogs[i]
				if d.State != nd.State {
					t.Errorf("dialog state %q, Asterisk sent %q", d.State, nd.State)
				}
				if nd.Direction != "" && d.Direction != nd.Direction {
					t.Errorf("direction %q, Asterisk sent %q", d.Direction, nd.Direction)
				}
				if nd.Remote.Identity.URI != "" && userPart(d.Remote.Identity.URI) != userPart(nd.Remote.Identity.URI) {
					t.Errorf("remote %q, Asterisk sent %q", d.Remote.Identity.URI, nd.Remote.Identity.URI)
				}
				if nd.Remote.Identity.Display != "" && d.Remote.Identity.Display != nd.Remote.Identity.Display {
					t.Errorf("remote name %q, Asterisk sent %q", d.Remote.Identity.Display, nd.Remote.Identity.Display)
				}
				// More than Asterisk: the Call-ID for pickup, the remote
				// party once confirmed.
				if d.CallID == "" {
					t.Errorf("no call-id on the dialog (pickup by Replaces needs it)")
				}
				if d.Remote.Identity.URI == "" {
					t.Errorf("no remote party in state %s", state)
				}
			}
			// More than Asterisk: idle and unavailable are told apart.
			if want := map[string]string{"idle": "idle", "unavailable": "offline"}[state]; want != "" && doc.PhoneState != want {
				t.Errorf("phonestate %q, want %q", doc.PhoneState, want)
			}
		})
		t.Run("pidf-"+state, func(t *testing.T) {
			ext, _, raw := nativeNotify(t, "native-notify-pidf-"+state+".txt")
			var native pidfDoc
			if err := xml.Unmarshal(raw, &native); err != nil {
				t.Fatal(err)
			}
			entity := "sip:" + ext + "@127.0.0.1:5060"
			var doc pidfDoc
			if err := xml.Unmarshal(body.PIDF(nil, entity, ours[ext][state], body.Options{}), &doc); err != nil {
				t.Fatal(err)
			}
			if len(doc.Tuples) != 1 || len(native.Tuples) != 1 {
				t.Fatalf("tuples: ours %d, Asterisk %d", len(doc.Tuples), len(native.Tuples))
			}
			if doc.Tuples[0].Basic != native.Tuples[0].Basic {
				t.Errorf("basic %q, Asterisk sent %q", doc.Tuples[0].Basic, native.Tuples[0].Basic)
			}
			// Asterisk puts the watcher's address in <contact>; the
			// presentity's is right.
			if doc.Tuples[0].Contact != entity {
				t.Errorf("contact %q, want the presentity %q", doc.Tuples[0].Contact, entity)
			}
			if got, want := activityNames(doc), activityNames(native); !containsAll(got, want) {
				t.Errorf("activities %v, Asterisk sent %v", got, want)
			}
		})
	}
}

func TestCallerShownWhileCalleeRings(t *testing.T) {
	// Asterisk's lamps show only the called phone ringing; the caller is
	// "in use" from the first moment. Lamplighter shows the caller's
	// outgoing dialog as early, with whom it is calling.
	tl, _, _ := replay(t, map[string][]string{"100": {"PJSIP/100"}, "101": {"PJSIP/101"}}, "pjsip/pjsip-session.jsonl")
	st := tl.first("100", bridge.PhoneDialing)
	if st == nil {
		t.Fatal("caller 100 never shown dialing")
	}
	var doc dialogDoc
	if err := xml.Unmarshal(body.DialogInfo(nil, "sip:100@127.0.0.1", st, body.Options{}), &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Dialogs) != 1 || doc.Dialogs[0].State != "early" || doc.Dialogs[0].Direction != "initiator" ||
		userPart(doc.Dialogs[0].Remote.Identity.URI) != "101" {
		t.Errorf("caller while ringing: %+v", doc.Dialogs)
	}
}

func userPart(uri string) string {
	uri = strings.TrimPrefix(strings.TrimPrefix(uri, "sips:"), "sip:")
	u, _, _ := strings.Cut(uri, "@")
	return u
}

func activityNames(d pidfDoc) []string {
	var out []string
	for _, a := range d.Activities {
		for _, x := range a.Any {
			out = append(out, x.XMLName.Local)
		}
	}
	return out
}

func containsAll(have, want []string) bool {
	for _, w := range want {
		found := false
		for _, h := range have {
			found = found || h == w
		}
		if !found {
			return false
		}
	}
	return true
}
