package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters/pbxtest"
	"github.com/lamplighter/lamplighter/presence/baresiptest"
)

// Proxy mode with the real PBXs: every phone's one line has Lamplighter
// as its outbound proxy; the PBX stays the registrar and authenticates
// everything it serves, Lamplighter the busy lamps. No network is
// trusted: a key's SUBSCRIBE stands on the flow its line registered on.
func TestProxyModeOnTheRealPBXs(t *testing.T) {
	for _, kind := range []string{"ari", "esl"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			o := rigOptions{proxy: "{}", untrusted: true}
			// The PBX as the proxy README sets it up: Asterisk's template
			// without its own support_path, then the README's settings.
			// With rewrite_contact off, Asterisk reaches a phone through
			// Lamplighter only by the Path (with it on, by the contact it
			// rewrote to Lamplighter's address).
			o.ast.Edits = []pbxtest.Edit{{File: "pjsip.conf", Old: "support_path = yes", New: ""},
				{File: "pjsip.conf", Old: "rewrite_contact = yes", New: "rewrite_contact = no"}}
			o.ast.Apply(readmeSnippets(t, "asterisk", "outbound"), "10.0.0.9", "127.0.0.1")
			o.fs.Apply(readmeSnippets(t, "freeswitch", "outbound"), "10.0.0.9", "127.0.0.1")
			var r *pickupRig
			if kind == "ari" {
				o.exts = []string{"100", "101"}
				o.yaml = `  - {id: u102, name: "User 102", extensions: ["102"], devices: [{pbx: ast, device: PJSIP/102}]}` + "\n"
				rr := newAsteriskRig(t, o)
				r = &pickupRig{rig: rr, caller: "100", callee: "101", picker: "102", pickerLamp: rr.watch("102")}
			} else {
				o.exts = []string{"1000", "1010"}
				o.yaml = `  - {id: u1011, name: "User 1011", extensions: ["1011"], devices: [{pbx: fs, device: "1011@127.0.0.1"}]}` + "\n"
				rr := newFreeSWITCHRig(t, o)
				r = &pickupRig{rig: rr, caller: "1000", callee: "1010", picker: "1011", pickerLamp: rr.watch("1011")}
			}
			const d = 10 * time.Second

			t.Run("calls both ways", func(t *testing.T) {
				for _, c := range [][2]string{{r.caller, r.callee}, {r.callee, r.caller}} {
					from, to := c[0], c[1]
					mark := len(r.phones[to].Output())
					r.ringCall(t, from, to)
					r.phones[to].WaitOutput("Incoming call", d)
					// The PBX's INVITE reached the phone through Lamplighter.
					if got := inviteSource(r.phones[to].Output()[mark:]); got != r.ll {
						t.Errorf("the INVITE for %s came from %q, not through Lamplighter (%s)", to, got, r.ll)
					}
					r.cmd(to, "/accept")
					r.lamps[to].waitCall("confirmed", "recipient", from, d)
					r.lamps[from].waitCall("confirmed", "initiator", to, d)
					r.cmd(from, "/hangup")
					r.lamps[from].waitIdle(d)
					r.lamps[to].waitIdle(d)
				}
			})

			// The picker's one line: registered through Lamplighter (the
			// PBX's password), its key subscribed on that flow (no
			// password at all), its key press sent the same way.
			phone := newSIPPhone(t, r.picker, r.password(r.picker), r.domain, r.ll)
			if res := phone.register(r.domain, 300); res.StatusCode != 200 {
				t.Fatalf("REGISTER through Lamplighter: %d %s", res.StatusCode, res.Reason)
			}
			pass := phone.pass
			phone.pass = "" // no password for Lamplighter: the flow stands for the user
			if res := phone.subscribe(r.ll, r.callee); res.StatusCode != 200 {
				t.Fatalf("the key's SUBSCRIBE on the registered flow: %d %s", res.StatusCode, res.Reason)
			}
			phone.pass = pass
			for name, key := range r.keyPresses() {
				t.Run(name, func(t *testing.T) {
					r.pickUp(t, phone, key.target, key.build)
				})
			}

			t.Run("registrations visible", func(t *testing.T) {
				var u struct {
					Registrations []struct {
						PBX, AOR, Transport, Flow string
						Contacts                  []string
						Expires                   time.Time
					}
				}
				if err := json.Unmarshal([]byte(r.get("/api/v1/users/u"+r.picker)), &u); err != nil {
					t.Fatal(err)
				}
				if len(u.Registrations) != 1 {
					t.Fatalf("the API shows %d registrations through Lamplighter for %s, want 1", len(u.Registrations), r.picker)
				}
				g := u.Registrations[0]
				if g.AOR != r.picker || g.Transport != "UDP" || g.Flow != "127.0.0.1:"+strconv.Itoa(phone.port) ||
					len(g.Contacts) == 0 || time.Until(g.Expires) < time.Minute {
					t.Errorf("the registration as the API shows it: %+v", g)
				}
				pbx := "ast"
				if kind == "esl" {
					pbx = "fs"
				}
				if m := r.get("/metrics"); !strings.Contains(m, `lamplighter_proxy_registrations{pbx="`+pbx+`"} 3`) {
					t.Errorf("the metrics do not count the three phones registered through Lamplighter:\n%s", grepLines(m, "proxy_registrations"))
				}
			})

			t.Run("voicemail lamp", func(t *testing.T) {
				n := phone.count()
				if kind == "ari" {
					out := r.ast.CLI("pjsip send notify clear-mwi endpoint " + r.picker)
					if !strings.Contains(out, "Sending NOTIFY") {
						t.Fatalf("Asterisk: %s", out)
					}
				} else {
					eslSend(t, r.fs, "sendevent MESSAGE_WAITING\nMWI-Messages-Waiting: yes\nMWI-Message-Account: sip:"+
						r.picker+"@"+pbxtest.Domain+"\nMWI-Voice-Message: 1/0 (0/0)\n")
				}
				phone.waitNotify(t, n, "message-summary", d)
			})
		})
	}
}

// grepLines is the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// inviteSource is where the first INVITE in a baresip SIP trace came
// from (its trace heads each message with "UDP FROM -> TO").
func inviteSource(trace string) string {
	lines := strings.Split(trace, "\n")
	for i := 1; i < len(lines); i++ {
		if strings.HasPrefix(lines[i], "INVITE sip:") {
			f := strings.Fields(lines[i-1])
			if len(f) == 4 && f[2] == "->" {
				return f[1]
			}
		}
	}
	return ""
}

// readmeSnippets are the PBX settings of the proxy README for one mode.
func readmeSnippets(t *testing.T, pbx, mode string) []pbxtest.Snippet {
	t.Helper()
	s, err := pbxtest.ReadSnippets("../../presence/proxy/README.md", pbx)
	if err != nil {
		t.Fatal(err)
	}
	return pbxtest.Only(s, mode)
}

// eslSend sends one command to FreeSWITCH's event socket and reads its
// reply.
func eslSend(t *testing.T, fs *pbxtest.FreeSWITCH, cmd string) {
	t.Helper()
	c, err := net.Dial("tcp", fs.ESL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	readReply := func() string {
		var b strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("event socket: %v", err)
			}
			if line == "\n" {
				return b.String()
			}
			b.WriteString(line)
		}
	}
	readReply() // auth/request
	fmt.Fprintf(c, "auth %s\n\n", pbxtest.ESLPassword)
	if r := readReply(); !strings.Contains(r, "+OK") {
		t.Fatalf("event socket auth: %s", r)
	}
	fmt.Fprintf(c, "%s\n", cmd)
	if r := readReply(); !strings.Contains(r, "+OK") {
		t.Fatalf("event socket %q: %s", cmd, r)
	}
}

// Lamplighter restarts while a call it carries rings, with the real
// PBXs: the callee's answer or the caller's CANCEL match no transaction
// of the new process and go on statelessly, so the call is answered, or
// ends for both sides at once, instead of ringing on to the PBX's
// timeout; and a phone still registered through Lamplighter keeps the
// trust of its flow.
func TestProxyModeRestartWhileRinging(t *testing.T) {
	for _, kind := range []string{"ari", "esl"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			o := rigOptions{proxy: "{}", untrusted: true}
			var r *rig
			var caller, callee, keys string
			if kind == "ari" {
				o.exts, caller, callee, keys = []string{"100", "101"}, "100", "101", "102"
				o.yaml = `  - {id: u102, name: "User 102", extensions: ["102"], devices: [{pbx: ast, device: PJSIP/102}]}` + "\n"
				r = newAsteriskRig(t, o)
			} else {
				o.exts, caller, callee, keys = []string{"1000", "1010"}, "1000", "1010", "1011"
				o.yaml = `  - {id: u1011, name: "User 1011", extensions: ["1011"], devices: [{pbx: fs, device: "1011@127.0.0.1"}]}` + "\n"
				r = newFreeSWITCHRig(t, o)
			}
			const d = 10 * time.Second
			pass := keys
			if kind == "esl" {
				pass = "1234"
			}
			// A phone whose keys stand on its registered flow.
			phone := newSIPPhone(t, keys, pass, r.domain, r.ll)
			if res := phone.register(r.domain, 300); res.StatusCode != 200 {
				t.Fatalf("REGISTER through Lamplighter: %d %s", res.StatusCode, res.Reason)
			}

			// Across the restart every lamp stays honest: the call found
			// at the new process's resync keeps its party and ids.
			honest := func(t *testing.T) {
				from := map[string]int{caller: r.lamps[caller].count(), callee: r.lamps[callee].count()}
				t.Cleanup(func() {
					for ext, n := range from {
						r.lamps[ext].checkHonest(t, n)
					}
				})
			}
			ring := func() {
				r.dial(caller, callee)
				r.lamps[callee].waitCall("early", "recipient", caller, d)
				r.phones[callee].WaitOutput("Incoming call", d)
				r.restartLamplighter()
			}
			t.Run("the caller gives up", func(t *testing.T) {
				honest(t)
				mark := len(r.phones[callee].Output())
				ring()
				start := time.Now()
				r.cmd(caller, "/hangup")
				// The callee's phone stops ringing at once: the PBX got the
				// CANCEL and cancelled its own INVITE through Lamplighter.
				r.phones[callee].WaitOutput("CANCEL sip:", 5*time.Second)
				if !strings.Contains(r.phones[callee].Output()[mark:], "CANCEL sip:") {
					t.Fatal("the callee never heard the CANCEL")
				}
				r.lamps[callee].waitIdle(d)
				r.lamps[caller].waitIdle(d)
				if took := time.Since(start); took > 5*time.Second {
					t.Errorf("the call took %v to end", took)
				}
			})
			t.Run("the callee answers", func(t *testing.T) {
				honest(t)
				ring()
				r.cmd(callee, "/accept")
				r.lamps[callee].waitCall("confirmed", "recipient", caller, d)
				r.lamps[caller].waitCall("confirmed", "initiator", callee, d)
				r.phones[caller].WaitOutput("Call established", d)
				r.cmd(caller, "/hangup")
				r.lamps[caller].waitIdle(d)
				r.lamps[callee].waitIdle(d)
			})
			t.Run("the flow keeps its trust", func(t *testing.T) {
				phone.pass = "" // none for Lamplighter: the registered flow stands for it
				if res := phone.subscribe(r.ll, callee); res.StatusCode != 200 {
					t.Fatalf("a key's SUBSCRIBE on the flow registered before the restart: %d %s", res.StatusCode, res.Reason)
				}
			})
		})
	}
}

// A PBX that stops answering (frozen, not gone: nothing closes) is
// noticed within seconds; while it is down its phones' REGISTERs get 503
// with Retry-After at once instead of waiting out a timeout, and the
// 503s end within about a second of its first answer.
func TestProxyModePBXOutage(t *testing.T) {
	for _, kind := range []string{"ari", "esl"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			o := rigOptions{proxy: "{}", untrusted: true}
			var r *rig
			var ext, pass string
			var freeze, thaw func()
			if kind == "ari" {
				o.exts, ext, pass = []string{"100"}, "101", "101"
				r = newAsteriskRig(t, o)
				freeze, thaw = r.ast.Freeze, r.ast.Thaw
			} else {
				o.exts, ext, pass = []string{"1000"}, "1010", "1234"
				r = newFreeSWITCHRig(t, o)
				freeze, thaw = r.fs.Freeze, r.fs.Thaw
			}
			phone := newSIPPhone(t, ext, pass, r.domain, r.ll)
			if res := phone.register(r.domain, 300); res.StatusCode != 200 {
				t.Fatalf("REGISTER through Lamplighter: %d %s", res.StatusCode, res.Reason)
			}
			mark := len(r.out.String())
			freeze()
			defer thaw()
			stopped := time.Now()
			waitLog(t, r.out, mark, "PBX does not answer", 15*time.Second)
			t.Logf("a PBX that stopped answering was noticed after %v", time.Since(stopped).Round(time.Millisecond))
			start := time.Now()
			res := phone.register(r.domain, 300)
			if res.StatusCode != 503 || res.GetHeader("Retry-After") == nil || time.Since(start) > time.Second {
				t.Fatalf("REGISTER while the PBX is down: %d %s after %v, want 503 with Retry-After at once",
					res.StatusCode, res.Reason, time.Since(start))
			}
			thaw()
			back := time.Now()
			for {
				res := phone.register(r.domain, 300)
				if res.StatusCode == 200 {
					break
				}
				if res.StatusCode != 503 || time.Since(back) > 5*time.Second {
					t.Fatalf("REGISTER %v after the PBX answers again: %d %s", time.Since(back), res.StatusCode, res.Reason)
				}
				time.Sleep(100 * time.Millisecond)
			}
			if took := time.Since(back); took > 2500*time.Millisecond {
				t.Errorf("REGISTERs got 503 for %v after the PBX came back, want about a second at most", took)
			}
		})
	}
}

// A phone that reached Lamplighter over TCP and is gone (its connection
// closed) must not look reachable to the PBX: Lamplighter leaves
// Asterisk's qualify OPTIONS for it unanswered (Asterisk takes any
// answer as reachable, only silence as not), so that Asterisk marks it
// unreachable and its lamp goes out; FreeSWITCH (which does not ping by
// default) gets 430 for a call to it, which then fails at once instead
// of ringing into nothing.
func TestProxyModeDeadTCPFlow(t *testing.T) {
	for _, kind := range []string{"ari", "esl"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			o := rigOptions{proxy: "{}"}
			// Asterisk qualifies every 5 s, for a short test.
			o.ast.Edits = []pbxtest.Edit{{File: "pjsip.conf", Old: "qualify_frequency = 15", New: "qualify_frequency = 5"}}
			var r *rig
			var ext, pass, caller string
			if kind == "ari" {
				o.exts, ext, pass, caller = []string{"101"}, "100", "100", "101"
				o.yaml = `  - {id: u100, name: "User 100", extensions: ["100"], devices: [{pbx: ast, device: PJSIP/100}]}` + "\n"
				r = newAsteriskRig(t, o)
			} else {
				o.exts, ext, pass, caller = []string{"1010"}, "1000", "1234", "1010"
				o.yaml = `  - {id: u1000, name: "User 1000", extensions: ["1000"], devices: [{pbx: fs, device: "1000@127.0.0.1"}]}` + "\n"
				r = newFreeSWITCHRig(t, o)
			}
			phone := baresiptest.Start(t, baresiptest.Options{Account: fmt.Sprintf(
				`<sip:%s@%s;transport=tcp>;auth_pass=%s;outbound="sip:%s;transport=tcp";regint=300;answermode=manual`,
				ext, r.domain, pass, r.ll)})
			r.lamps[ext] = r.watch(ext)
			r.lamps[ext].wait("registered over TCP through Lamplighter", 20*time.Second, func(d lamp) bool { return d.Phone == "idle" })
			// Gone without a word (no un-REGISTER): its connection closes.
			phone.Kill()
			if kind == "ari" {
				r.lamps[ext].wait("unreachable", 20*time.Second, func(d lamp) bool { return d.Phone == "offline" })
			}
			// A call for it ends at once.
			r.lamps[caller].mark()
			r.dial(caller, ext)
			r.lamps[caller].wait("dialing", 10*time.Second, func(d lamp) bool { return d.Phone != "idle" })
			start := time.Now()
			r.lamps[caller].wait("the call over or answered by voicemail", 10*time.Second, func(d lamp) bool {
				c, ok := d.only()
				return d.Phone == "idle" || ok && c.State == "confirmed"
			})
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("a call for a phone that is gone rang for %v", took)
			}
			r.cmd(caller, "/hangup")
		})
	}
}

// FreeSWITCH's sip-force-contact NDLB-connectile-dysfunction (a common
// NAT setting, on users or a domain) stores the phone's contact at the
// address the REGISTER came from (Lamplighter's) and forgets its Path:
// FreeSWITCH then calls the phone at Lamplighter's own address, which
// once looped (482). Lamplighter finds the phone by its contact's user
// part, and says in its log what the PBX does.
func TestProxyModeFreeSWITCHForgetsThePath(t *testing.T) {
	o := rigOptions{proxy: "{}", exts: []string{"1000", "1010"}}
	for _, u := range o.exts {
		o.fs.Edits = append(o.fs.Edits, pbxtest.Edit{File: "directory/default/" + u + ".xml", Old: "<variables>",
			New: `<variables><variable name="sip-force-contact" value="NDLB-connectile-dysfunction"/>`})
	}
	r := newFreeSWITCHRig(t, o)
	const d = 10 * time.Second
	for _, c := range [][2]string{{"1010", "1000"}, {"1000", "1010"}} {
		from, to := c[0], c[1]
		r.ringCall(t, from, to)
		r.phones[to].WaitOutput("Incoming call", d)
		r.cmd(to, "/accept")
		r.lamps[from].waitCall("confirmed", "initiator", to, d)
		r.cmd(from, "/hangup")
		r.lamps[from].waitIdle(d)
		r.lamps[to].waitIdle(d)
	}
	waitFor(t, r.out, "without the Path", d)
}
