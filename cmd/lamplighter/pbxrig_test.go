package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters/pbxtest"
	"github.com/lamplighter/lamplighter/presence/baresiptest"
)

// A rig is a real PBX from ../shared/pbx with real baresip phones
// registered to it, Lamplighter following the PBX through its adapter,
// and a BLF key watching each phone's lamp.
type rig struct {
	t      *testing.T
	kind   string // ari or esl
	ast    *pbxtest.Asterisk
	fs     *pbxtest.FreeSWITCH
	sip    string // the PBX's SIP address
	domain string // the phones' domain
	ll     string // Lamplighter's SIP address
	out    *syncBuffer
	stop   func()
	config string
	phones map[string]*baresiptest.Phone
	lamps  map[string]*lampWatch
	// proxied: the phones' outbound proxy is Lamplighter.
	proxied bool
	// board: lamps are watched as user board (no trusted network).
	board bool
}

// rigOptions shape a rig.
type rigOptions struct {
	exts []string            // the phones, registered directly to the PBX
	ast  pbxtest.Config      // Asterisk's config changes
	fs   pbxtest.Config      // FreeSWITCH's
	yaml string              // more YAML for Lamplighter's config (users for extra devices)
	user func(string) string // a user's line in the YAML for an extension (default: one device)
	// proxy puts the PBX in proxy mode (its YAML under proxy:, e.g.
	// "{}" or "{phones: dedicated}"): the phones register through
	// Lamplighter, as their outbound proxy.
	proxy string
	// listen is Lamplighter's SIP address (default 127.0.0.1 and a free
	// port); 127.0.0.2 sets it apart from the phones for a PBX that
	// trusts Lamplighter's address.
	listen string
	// noPhones: the test makes its own phones.
	noPhones bool
	// pbx is more YAML for the PBX's entry (e.g. "    ari: {...}\n");
	// on Asterisk @AMI_ADDRESS@ in it is its AMI's host:port.
	pbx string
	// untrusted: no network is trusted, so that a phone's SUBSCRIBE
	// stands on its registered flow (proxy mode) or its password; the
	// lamps are watched by a user "board" (password "board").
	untrusted bool
	// readme names the optional sets (modes) of the adapter README's PBX
	// settings to load besides its base ones, which every rig loads.
	readme []string
}

// adapterSnippets are the PBX settings the adapter's README gives for
// pbx: the base ones and those of the modes named.
func adapterSnippets(t *testing.T, pbx string, modes []string) []pbxtest.Snippet {
	t.Helper()
	path := map[string]string{"asterisk": "../../adapters/ari/README.md", "freeswitch": "../../adapters/esl/README.md"}[pbx]
	all, err := pbxtest.ReadSnippets(path, pbx)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) == 0 {
		t.Fatalf("%s gives no PBX settings", path)
	}
	out := pbxtest.Only(all, "")
	for _, m := range modes {
		var some bool
		for _, s := range all {
			if s.Mode == m {
				out, some = append(out, s), true
			}
		}
		if !some {
			t.Fatalf("%s has no settings of mode %s", path, m)
		}
	}
	return out
}

// The adapters' README examples, as the rigs load them.
const (
	readmeARIPassword = "a-long-random-secret"
	readmeESLPassword = "a-long-random-secret"
)

// newAsteriskRig starts Asterisk, phones for exts and Lamplighter with an
// ARI PBX (the read-only user, as the adapter's README advises).
func newAsteriskRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	baresiptest.Need(t)
	r := &rig{t: t, kind: "ari", phones: map[string]*baresiptest.Phone{}, lamps: map[string]*lampWatch{}}
	// Asterisk as its adapter's README sets it up: the ARI listener and
	// the read-only user Lamplighter signs in as.
	o.ast.Apply(adapterSnippets(t, "asterisk", o.readme), "10.0.0.5", "127.0.0.1", "10.0.0.9", "127.0.0.1",
		"8088", "@HTTP_PORT@", "5038", "@AMI_PORT@")
	r.ast = pbxtest.StartAsterisk(t, o.ast)
	r.sip, r.domain = r.ast.SIP(), "127.0.0.1"
	pbx := fmt.Sprintf(`  - name: ast
    kind: ari
    address: %s
    username: lamplighter
    password: %s
`, r.ast.ARI(), readmeARIPassword)
	if o.proxy != "" {
		pbx += fmt.Sprintf("    proxy: %s\n", strings.Replace(o.proxy, "{", fmt.Sprintf("{address: %q, ", r.sip), 1))
	}
	pbx += strings.ReplaceAll(o.pbx, "@AMI_ADDRESS@", fmt.Sprintf("127.0.0.1:%d", r.ast.AMIPort))
	r.start(o, pbx, func(ext string) string {
		return fmt.Sprintf(`  - {id: u%s, name: "User %s", extensions: ["%s"], devices: [{pbx: ast, device: PJSIP/%s}], sip: {username: "%s", password: pw%s}}`,
			ext, ext, ext, ext, ext, ext)
	})
	return r
}

// newFreeSWITCHRig is newAsteriskRig for FreeSWITCH over the event socket.
func newFreeSWITCHRig(t *testing.T, o rigOptions) *rig {
	t.Helper()
	baresiptest.Need(t)
	r := &rig{t: t, kind: "esl", phones: map[string]*baresiptest.Phone{}, lamps: map[string]*lampWatch{}}
	// FreeSWITCH as its adapter's README sets it up: the event socket
	// and the ACL that admits Lamplighter's host (this one), with the
	// password the shared config's fs_cli uses.
	o.fs.Apply(adapterSnippets(t, "freeswitch", o.readme), "10.0.0.6", "127.0.0.1", "10.0.0.9/32", "127.0.0.1/32",
		`"8021"`, `"@ESL_PORT@"`, readmeESLPassword, pbxtest.ESLPassword)
	r.fs = pbxtest.StartFreeSWITCH(t, o.fs)
	r.sip, r.domain = r.fs.SIP(), pbxtest.Domain
	pbx := fmt.Sprintf(`  - name: fs
    kind: esl
    address: %s
    password: %s
`, r.fs.ESL(), pbxtest.ESLPassword)
	if o.proxy != "" {
		pbx += fmt.Sprintf("    proxy: %s\n", strings.Replace(o.proxy, "{", fmt.Sprintf("{address: %q, ", r.sip), 1))
	}
	pbx += o.pbx
	r.start(o, pbx, func(ext string) string {
		return fmt.Sprintf(`  - {id: u%s, name: "User %s", extensions: ["%s"], devices: [{pbx: fs, device: "%s@%s"}], sip: {username: "%s", password: pw%s}}`,
			ext, ext, ext, ext, pbxtest.Domain, ext, ext)
	})
	return r
}

func (r *rig) start(o rigOptions, pbx string, user func(string) string) {
	t := r.t
	if o.user != nil {
		user = o.user
	}
	dir := t.TempDir()
	r.ll = o.listen
	if r.ll == "" {
		r.ll = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	}
	r.proxied = o.proxy != "" && !strings.Contains(o.proxy, "dedicated")
	var users strings.Builder
	for _, ext := range o.exts {
		users.WriteString(user(ext) + "\n")
	}
	trusted := "[127.0.0.0/8]"
	if o.untrusted {
		trusted = "[]"
		users.WriteString(`  - {id: board, name: Board, extensions: ["999"], sip: {password: board}}` + "\n")
		r.board = true
	}
	config := fmt.Sprintf(`sip:
  domain: %s
  listen: [{transport: udp, address: "%s"}, {transport: tcp, address: "%s"}]
  trusted_networks: %s
http: {listen: "127.0.0.1:0", token: rigtoken}
state_dir: %s
log: {level: debug}
pbx:
%s
users:
%s%s
`, r.domain, r.ll, r.ll, trusted, filepath.Join(dir, "state"), pbx, users.String(), o.yaml)
	r.config = filepath.Join(dir, "lamplighter.yaml")
	if err := os.WriteFile(r.config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	r.out, r.stop = startDaemon(t, r.config)
	if p := os.Getenv("LAMPLIGHTER_RIG_LOG"); p != "" { // for a failing test's reader
		t.Cleanup(func() {
			os.WriteFile(p+"-"+strings.ReplaceAll(t.Name(), "/", "_")+".log", []byte(r.out.String()), 0o644)
		})
	}
	waitFor(t, r.out, "synchronised with ", 20*time.Second)
	if o.noPhones {
		return
	}
	r.addPhones(o.exts...)
}

// addPhones registers a phone for each extension and watches its lamp
// until it shows the phone registered.
func (r *rig) addPhones(exts ...string) {
	for _, ext := range exts {
		r.phones[ext] = r.phone(ext)
	}
	for _, ext := range exts {
		r.lamps[ext] = r.watch(ext)
		r.lamps[ext].wait(ext+" registered", 20*time.Second, func(d lamp) bool { return d.Phone == "idle" })
	}
}

// get fetches a path of Lamplighter's HTTP listener with the API token.
func (r *rig) get(path string) string {
	r.t.Helper()
	return r.api("GET", path, "")
}

// put and del change what a path of the API holds.
func (r *rig) put(path, body string) { r.t.Helper(); r.api("PUT", path, body) }
func (r *rig) del(path string)       { r.t.Helper(); r.api("DELETE", path, "") }

// api makes one request of Lamplighter's HTTP listener with the API
// token and returns the answer's body; anything but 2xx fails the test.
func (r *rig) api(method, path, body string) string {
	r.t.Helper()
	m := regexp.MustCompile(`"http listening" address=(\S+)`).FindAllStringSubmatch(r.out.String(), -1)
	if m == nil {
		r.t.Fatal("no http address in the log")
	}
	req, _ := http.NewRequest(method, "http://"+m[len(m)-1][1]+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer rigtoken")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		r.t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	if res.StatusCode/100 != 2 {
		r.t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, b)
	}
	return string(b)
}

// watch subscribes a BLF key to ext's lamp (as user board when no
// network is trusted).
func (r *rig) watch(ext string) *lampWatch {
	if r.board {
		return watchLampAs(r.t, r.ll, ext, "board", "board")
	}
	return watchLamp(r.t, r.ll, ext)
}

// restartLamplighter stops Lamplighter and starts it again on the same
// config (its state file keeps the lamps' subscriptions).
func (r *rig) restartLamplighter() {
	r.stop()
	r.out, r.stop = startDaemon(r.t, r.config)
	waitFor(r.t, r.out, "synchronised with ", 20*time.Second)
}

// phone starts a baresip registered to the PBX as ext.
func (r *rig) phone(ext string) *baresiptest.Phone {
	pass := ext // Asterisk: user = password = extension
	if r.kind == "esl" {
		pass = "1234"
	}
	via := r.sip
	if r.proxied {
		via = r.ll
	}
	return baresiptest.Start(r.t, baresiptest.Options{
		Account: fmt.Sprintf(`<sip:%s@%s>;auth_pass=%s;outbound="sip:%s";regint=300;answermode=manual`, ext, r.domain, pass, via)})
}

// uri is what a phone dials for a number.
func (r *rig) uri(number string) string { return "sip:" + number + "@" + r.domain }

// dial makes ext's phone call number.
func (r *rig) dial(ext, number string) { r.phones[ext].Command("/dial " + r.uri(number)) }

// cmd sends a console command to ext's phone.
func (r *rig) cmd(ext, command string) { r.phones[ext].Command(command) }

// markAll moves every lamp's next wait past what it has shown so far.
func (r *rig) markAll() {
	for _, l := range r.lamps {
		l.mark()
	}
}

// allIdle waits until every lamp is idle again.
func (r *rig) allIdle() {
	for ext, l := range r.lamps {
		r.t.Helper()
		if !pbxtest.Wait(15*time.Second, func() bool { d := l.last(); return d.idle() && d.Phone == "idle" }) {
			r.t.Fatalf("lamp %s did not come back to idle:\n%s", ext, l.history())
		}
	}
}

// hangupAll hangs every phone up and waits for idle lamps.
func (r *rig) hangupAll() {
	for _, p := range r.phones {
		p.Command("/hangup")
		p.Command("/hangup")
	}
	r.allIdle()
	r.markAll()
}

// scenarios runs the calls of a lamp test, each a subtest: every phone
// of phones hung up after it, every lamp's documents of it checked for
// honesty, and, when native watches the PBX's own lamps, both logged side
// by side.
func (r *rig) scenarios(t *testing.T, phones []string, native nativeLamps) func(name string, f func(t *testing.T)) {
	return func(name string, f func(t *testing.T)) {
		t.Run(name, func(t *testing.T) {
			r.t = t
			from := map[string]int{}
			for ext, l := range r.lamps {
				l.setT(t)
				from[ext] = l.count()
			}
			nativeFrom := native.counts()
			defer func() {
				r.hangupAll()
				native.report(t, r, nativeFrom, from)
				for _, ext := range phones {
					r.lamps[ext].checkHonest(t, from[ext])
				}
			}()
			f(t)
		})
	}
}

// ringCall has caller's phone call callee and waits until both lamps
// show it ringing; it returns the callee's ringing dialog. A PBX under
// load once refused the call itself while the callee rang (FreeSWITCH:
// 488, INCOMPATIBLE_DESTINATION); the lamps showed that truly (ringing,
// then idle). Such a call is placed once more; any other failure is the
// test's.
func (r *rig) ringCall(t *testing.T, caller, callee string) lampDialog {
	t.Helper()
	const d = 10 * time.Second
	lc, le := r.lamps[caller], r.lamps[callee]
	for attempt := 1; ; attempt++ {
		mark := len(r.phones[caller].Output())
		r.dial(caller, callee)
		in := le.waitCall("early", "recipient", caller, d)
		lc.waitCall("early", "initiator", callee, d)
		refused := func() bool { return strings.Contains(r.phones[caller].Output()[mark:], "session closed: 488") }
		if attempt == 1 && pbxtest.Wait(300*time.Millisecond, refused) {
			t.Logf("the PBX refused the call itself (the caller's phone: 488): placing it once more")
			lc.waitIdle(d)
			le.waitIdle(d)
			continue
		}
		return in
	}
}

// plainCall is a call from caller to callee, answered, held and resumed
// by the caller, and hung up: the callee's lamp rings with the caller
// (named callerName, when given) and the ids to pick up; both are
// confirmed with each other; the caller's shows hold; both go idle.
func (r *rig) plainCall(t *testing.T, caller, callee, callerName string) {
	const d = 10 * time.Second
	lc, le := r.lamps[caller], r.lamps[callee]
	in := r.ringCall(t, caller, callee)
	if callerName != "" && in.RemoteName != callerName || in.CallID == "" || in.LocalTag == "" || in.RemoteTag == "" {
		t.Errorf("ringing lamp lacks who calls or the ids to pick up: %+v", in)
	}
	r.cmd(callee, "/accept")
	le.waitCall("confirmed", "recipient", caller, d)
	lc.waitCall("confirmed", "initiator", callee, d)
	r.cmd(caller, "/hold")
	lc.wait("held", d, func(doc lamp) bool { c, ok := doc.only(); return ok && c.Held && doc.Phone == "held" })
	r.cmd(caller, "/resume")
	lc.wait("resumed", d, func(doc lamp) bool { c, ok := doc.only(); return ok && !c.Held && doc.Phone == "busy" })
	r.cmd(caller, "/hangup")
	lc.waitIdle(d)
	le.waitIdle(d)
}
