package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters/pbxtest"
)

// The optional PBX settings the READMEs give, each loaded into the real
// PBX and shown to do what the README says. (The base settings of each
// adapter's README are in every rig; proxy mode's in the proxy tests.)

// phonesDialLine is the shared Asterisk dialplan's Dial line for the
// phones, which the README's dialplans replace.
var phonesDialLine = pbxtest.Edit{File: "extensions.conf", Old: "exten => _1XX,1,Dial(PJSIP/${EXTEN},30)\n same => n,Hangup()\n", New: ""}

func TestAsteriskWithTheREADMEsOptionalSettings(t *testing.T) {
	const d = 10 * time.Second
	t.Run("pre-dial handler", func(t *testing.T) {
		t.Parallel()
		o := rigOptions{exts: []string{"100", "101"}, readme: []string{"predial"}}
		o.ast.Edits = append(o.ast.Edits, phonesDialLine)
		r := newAsteriskRig(t, o)
		r.dial("100", "101")
		in := r.lamps["101"].waitCall("early", "recipient", "100", d)
		// The handler set Asterisk's tag of the leg (it runs before the
		// phone's tag exists): it is the lamp's local-tag.
		ch := ariChannelOf(t, r.ast, "PJSIP/101-")
		v := ariGet(t, r.ast, "/ari/channels/"+ch+"/variable?variable=LL_REMOTE_TAG")
		var got struct{ Value string }
		json.Unmarshal([]byte(v), &got)
		if got.Value == "" || got.Value != in.LocalTag || in.RemoteTag == "" || in.CallID == "" {
			t.Errorf("the pre-dial handler set LL_REMOTE_TAG=%q; the ringing lamp: %+v", got.Value, in)
		}
		r.cmd("101", "/accept")
		r.lamps["101"].waitCall("confirmed", "recipient", "100", d)
		r.hangupAll()
	})
	t.Run("dnd mirror", func(t *testing.T) {
		t.Parallel()
		o := rigOptions{exts: []string{"100", "101"}, readme: []string{"dnd"},
			pbx: "    ari: {dnd_device: \"Stasis:DND_{extension}\"}\n"}
		o.ast.Edits = append(o.ast.Edits, phonesDialLine, pbxtest.Edit{File: "extensions.conf", Old: "exten => 100,hint,PJSIP/100\n", New: ""})
		r := newAsteriskRig(t, o)
		devState := func() string {
			var s struct{ State string }
			json.Unmarshal([]byte(ariGet(t, r.ast, "/ari/deviceStates/Stasis:DND_100")), &s)
			return s.State
		}
		r.put("/api/v1/users/u100/presence", `{"activity": "dnd"}`)
		if !pbxtest.Wait(d, func() bool { return devState() == "BUSY" }) {
			t.Fatalf("Stasis:DND_100 is %q with dnd set", devState())
		}
		if hint := r.ast.CLI("core show hint 100"); !strings.Contains(hint, "Busy") {
			t.Errorf("the hint with dnd: %s", hint)
		}
		// A call for 100 goes to voicemail and 100 never rings (the
		// shared Asterisk has no voicemail prompts: the call ends there).
		l100 := r.lamps["100"]
		from := l100.count()
		r.dial("101", "100")
		if !pbxtest.Wait(d, func() bool { return strings.Contains(r.ast.Log(), `VoiceMail("PJSIP/101-`) }) {
			t.Fatalf("the call did not reach voicemail:\n%s", r.ast.Log())
		}
		r.lamps["101"].waitIdle(d)
		for _, doc := range l100.documents()[from:] {
			if !doc.idle() {
				t.Fatalf("100 rang with dnd on:\n%s", l100.history())
			}
		}
		// dnd off: the call rings 100 again.
		r.del("/api/v1/users/u100/presence")
		if !pbxtest.Wait(d, func() bool { return devState() == "NOT_INUSE" }) {
			t.Fatalf("Stasis:DND_100 is %q with dnd cleared", devState())
		}
		r.dial("101", "100")
		r.lamps["100"].waitCall("early", "recipient", "101", d)
		r.hangupAll()
	})
	t.Run("own busy lamps off", func(t *testing.T) {
		t.Parallel()
		o := rigOptions{exts: []string{"100", "101"}}
		o.ast.Apply(mainREADMESnippets(t, "asterisk", "own-lamps-off"))
		r := newAsteriskRig(t, o)
		ownLampsOff(t, r, newSIPPhone(t, "102", "102", r.domain, ""), "100", "101")
	})
}

func TestFreeSWITCHWithTheREADMEsOptionalSettings(t *testing.T) {
	const d = 10 * time.Second
	t.Run("verbose channel events", func(t *testing.T) {
		t.Parallel()
		r := newFreeSWITCHRig(t, rigOptions{exts: []string{"1000", "1001"}, readme: []string{"verbose"}})
		if v := r.fs.API("fsctl verbose_events"); !strings.Contains(v, "on") {
			t.Fatalf("verbose events: %s", v)
		}
		from := r.lamps["1001"].count()
		r.dial("1000", "1001")
		in := r.lamps["1001"].waitCall("early", "recipient", "1000", d)
		if in.CallID == "" || in.LocalTag == "" || in.RemoteTag == "" {
			t.Errorf("the ringing lamp lacks the ids to pick up: %+v", in)
		}
		r.cmd("1001", "/accept")
		r.lamps["1000"].waitCall("confirmed", "initiator", "1001", d)
		r.hangupAll()
		r.lamps["1001"].checkHonest(t, from)
	})
	t.Run("own busy lamps off", func(t *testing.T) {
		t.Parallel()
		o := rigOptions{exts: []string{"1000", "1001"}}
		o.fs.Apply(mainREADMESnippets(t, "freeswitch", "own-lamps-off"))
		r := newFreeSWITCHRig(t, o)
		p := newSIPPhone(t, "1002", "1234", r.domain, "")
		ownLampsOff(t, r, p, "1000", "1001")
		// Voicemail lamps still reach a registered phone, unasked.
		n := p.count()
		eslSend(t, r.fs, "sendevent MESSAGE_WAITING\nMWI-Messages-Waiting: yes\nMWI-Message-Account: sip:1002@"+
			pbxtest.Domain+"\nMWI-Voice-Message: 1/0 (0/0)\n")
		p.waitNotify(t, n, "message-summary", d)
	})
}

// ownLampsOff checks a PBX whose own busy lamps the main README switched
// off: a key left pointing at it (phone p, registered to it here) fails
// loudly, while Lamplighter's lamps stay right on a call from caller to
// callee.
func ownLampsOff(t *testing.T, r *rig, p *sipPhone, caller, callee string) {
	t.Helper()
	const d = 10 * time.Second
	if res := p.register(r.sip, 300); res.StatusCode != 200 {
		t.Fatalf("REGISTER %s: %d", p.user, res.StatusCode)
	}
	if res := p.subscribe(r.sip, caller); res.StatusCode < 400 {
		t.Errorf("the PBX answered a BLF SUBSCRIBE %d with its own lamps switched off", res.StatusCode)
	} else {
		t.Logf("the PBX: %d %s", res.StatusCode, res.Reason)
	}
	r.dial(caller, callee)
	r.lamps[callee].waitCall("early", "recipient", caller, d)
	r.cmd(callee, "/accept")
	r.lamps[caller].waitCall("confirmed", "initiator", callee, d)
	r.hangupAll()
}

// mainREADMESnippets are the PBX settings of the main README in one mode.
func mainREADMESnippets(t *testing.T, pbx, mode string) []pbxtest.Snippet {
	t.Helper()
	s, err := pbxtest.ReadSnippets("../../README.md", pbx)
	if err != nil {
		t.Fatal(err)
	}
	s = pbxtest.Only(s, mode)
	if len(s) == 0 {
		t.Fatalf("the README gives no %s settings of mode %s", pbx, mode)
	}
	return s
}

// ariGet is a GET of Asterisk's REST interface as the shared config's
// read-write user (not Lamplighter's).
func ariGet(t *testing.T, a *pbxtest.Asterisk, path string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", a.ARI()+path, nil)
	req.SetBasicAuth("sidecar", "sidecar")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// ariChannelOf is the id of the channel whose name starts with prefix.
func ariChannelOf(t *testing.T, a *pbxtest.Asterisk, prefix string) string {
	t.Helper()
	var chans []struct{ ID, Name string }
	if err := json.Unmarshal([]byte(ariGet(t, a, "/ari/channels")), &chans); err != nil {
		t.Fatal(err)
	}
	for _, c := range chans {
		if strings.HasPrefix(c.Name, prefix) {
			return c.ID
		}
	}
	t.Fatalf("no channel %s* in %+v", prefix, chans)
	return ""
}
