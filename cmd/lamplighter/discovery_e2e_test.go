package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters/pbxtest"
	"github.com/lamplighter/lamplighter/presence/baresiptest"
)

// apiUsers is GET /api/v1/users as a test reads it.
type apiUsers struct {
	Users []struct {
		ID         string   `json:"id"`
		Name       string   `json:"name"`
		Extensions []string `json:"extensions"`
		Groups     []string `json:"groups"`
		Domain     string   `json:"domain"`
		Configured bool     `json:"configured"`
		Discovered []string `json:"discovered"`
		Devices    []struct {
			PBX, Device string
		} `json:"devices"`
	} `json:"users"`
}

func (r *rig) users() apiUsers {
	r.t.Helper()
	var out apiUsers
	if err := json.Unmarshal([]byte(r.get("/api/v1/users")), &out); err != nil {
		r.t.Fatal(err)
	}
	return out
}

// userIDs lists the users' ids, sorted.
func (u apiUsers) ids() []string {
	var out []string
	for _, x := range u.Users {
		out = append(out, x.ID)
	}
	slices.Sort(out)
	return out
}

// TestDiscoveryOnTheRealAsterisk: with `discover` on, Lamplighter reads
// the real Asterisk's PJSIP endpoints as its read-only ARI user (the one
// the adapter README sets up): every endpoint is a user named by its
// caller id, a YAML entry for one of them only adds to it, and its lamp
// shows calls. An endpoint added to pjsip.conf while both run is a user
// after a reload; removed, its watcher's subscription ends (noresource)
// at the next periodic read. A restart starts from the directory last
// read: the subscriptions to discovered users come back.
func TestDiscoveryOnTheRealAsterisk(t *testing.T) {
	r := newAsteriskRig(t, rigOptions{exts: []string{"100", "101"}, noPhones: true,
		pbx: "    discover: {interval: 10s}\n",
		user: func(ext string) string {
			if ext == "100" {
				return `  - {id: reception, extensions: ["100"], aliases: [desk], groups: [front]}`
			}
			return ""
		}})
	waitFor(t, r.out, "directory changed by the PBX", 20*time.Second)
	users := r.users()
	want := []string{"101", "102", "103", "104", "105", "106", "107", "108", "109", "reception"}
	if got := users.ids(); !slices.Equal(got, want) {
		t.Fatalf("users %v, want %v", got, want)
	}
	for _, u := range users.Users {
		switch u.ID {
		case "reception":
			if u.Name != "Phone 100" || !u.Configured || !slices.Equal(u.Discovered, []string{"ast"}) ||
				!slices.Equal(u.Groups, []string{"front"}) || len(u.Devices) != 1 || u.Devices[0].Device != "PJSIP/100" {
				t.Errorf("the YAML's user is not merged with the PBX's endpoint 100: %+v", u)
			}
		case "105":
			if u.Name != "Phone 105" || u.Configured || !slices.Equal(u.Discovered, []string{"ast"}) {
				t.Errorf("endpoint 105: %+v", u)
			}
		}
	}

	r.addPhones("100", "101")
	r.plainCall(t, "100", "101", "Phone 100")

	// An endpoint added while both run: a user after a reload.
	conf := r.ast.ConfigFile("pjsip.conf")
	before, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	added := string(before) + "\n[110](phone-endpoint)\ncallerid = \"Front Desk\" <110>\nauth = 110\naors = 110\n" +
		"[110](phone-auth)\nusername = 110\npassword = 110\n[110](phone-aor)\n"
	if err := os.WriteFile(conf, []byte(added), 0o644); err != nil {
		t.Fatal(err)
	}
	r.ast.CLI("module reload res_pjsip.so")
	r.api("POST", "/api/v1/reload", "")
	if !pbxtest.Wait(10*time.Second, func() bool { return slices.Contains(r.users().ids(), "110") }) {
		t.Fatalf("endpoint 110 is no user after a reload: %v", r.users().ids())
	}
	// Its lamp follows its phone: the device's state is read alone, on
	// the connection Lamplighter has (no resynchronisation).
	lamp110 := watchLamp(t, r.ll, "110")
	r.phones["110"] = r.phone("110")
	lamp110.wait("110 registered", 20*time.Second, func(d lamp) bool { return d.Phone == "idle" })
	if strings.Contains(r.out.String(), "reconnecting to read the PBX's state again") {
		t.Errorf("an endpoint added made Lamplighter read all of Asterisk again")
	}
	w := newWatcher(t, "UDP") // to see its subscription end
	if res := w.subscribe(r.ll, "110", "dialog", 600); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE to the endpoint added: %d", res.StatusCode)
	}
	w.notifyWhere("active", 5*time.Second)

	// Removed again: at the next periodic read (every 10 s) its watcher's
	// subscription ends.
	if err := os.WriteFile(conf, before, 0o644); err != nil {
		t.Fatal(err)
	}
	r.ast.CLI("module reload res_pjsip.so")
	w.notifyWhere("terminated;reason=noresource", 30*time.Second)
	if ids := r.users().ids(); slices.Contains(ids, "110") {
		t.Errorf("110 is still a user: %v", ids)
	}
	var disc struct {
		PBXs []struct {
			PBX   string `json:"pbx"`
			Users int    `json:"users"`
			Error string `json:"error"`
		} `json:"pbxs"`
	}
	if err := json.Unmarshal([]byte(r.get("/api/v1/discovery")), &disc); err != nil || len(disc.PBXs) != 1 ||
		disc.PBXs[0].PBX != "ast" || disc.PBXs[0].Users != 10 || disc.PBXs[0].Error != "" {
		t.Errorf("GET /api/v1/discovery: %+v %v", disc, err)
	}

	// A restart: the lamps' subscriptions, one to a user only the PBX
	// names, come back at once (the directory read last is kept).
	r.restartLamplighter()
	m := regexp.MustCompile(`"restored saved state".* subscriptions=(\d+) skipped=(\d+)`).FindStringSubmatch(r.out.String())
	if m == nil || m[1] != "2" || m[2] != "0" {
		t.Errorf("after a restart: %v\n%s", m, r.out.String())
	}
	// ... and their lamps show calls, ringing with what a pickup needs
	// from the first NOTIFY (the one that follows a restart waits for
	// the ids too).
	r.markAll()
	r.dial("101", "100")
	if in := r.lamps["100"].waitCall("early", "recipient", "101", 10*time.Second); in.RemoteName != "Phone 101" ||
		in.CallID == "" || in.LocalTag == "" || in.RemoteTag == "" {
		t.Errorf("after the restart the ringing lamp: %+v", in)
	}
	r.cmd("101", "/hangup")
	r.lamps["100"].waitIdle(10 * time.Second)
}

// TestCheckConfigDiscovers: `lamplighter -check-config FILE -discover`
// reads the real Asterisk's directory and prints the users it and the
// YAML make, and from where.
func TestCheckConfigDiscovers(t *testing.T) {
	r := newAsteriskRig(t, rigOptions{exts: []string{"100"}, noPhones: true, pbx: "    discover: true\n",
		user: func(string) string { return `  - {id: reception, extensions: ["100"], aliases: [desk]}` }})
	check := func() (int, string) {
		var out syncBuffer
		code := run(context.Background(), []string{"-check-config", r.config, "-discover"}, &out, &out)
		return code, out.String()
	}
	code, out := check()
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
	for _, want := range []string{"ok\n", "pbx ast: 10 users in its directory", "directory: 10 users",
		"reception  Phone 100", "ast:PJSIP/100", "yaml + ast", "109        Phone 109"} {
		if !strings.Contains(out, want) {
			t.Errorf("no %q in:\n%s", want, out)
		}
	}
	r.ast.Stop()
	if code, out = check(); code != 1 || !strings.Contains(out, "pbx ast: cannot read its directory") {
		t.Errorf("with Asterisk stopped: exit %d\n%s", code, out)
	}
}

// TestDiscoveryOnTheRealFreeSWITCH: with `discover` on, Lamplighter reads
// the real FreeSWITCH's directory over the event socket (list_users):
// every user of its domain is a user of Lamplighter with its caller id
// name and device user@domain, and the lamps show calls between them.
func TestDiscoveryOnTheRealFreeSWITCH(t *testing.T) {
	r := newFreeSWITCHRig(t, rigOptions{exts: []string{"1000", "1001"}, noPhones: true,
		pbx:  "    discover: true\n",
		user: func(string) string { return "" }})
	waitFor(t, r.out, "directory changed by the PBX", 20*time.Second)
	users := r.users()
	if len(users.Users) != 20 {
		t.Fatalf("%d users, want 1000-1019: %v", len(users.Users), users.ids())
	}
	for _, u := range users.Users {
		if u.ID == "1005" && (u.Name != "Extension 1005" || u.Domain != pbxtest.Domain || len(u.Devices) != 1 ||
			u.Devices[0].Device != "1005@"+pbxtest.Domain || u.Configured || !slices.Equal(u.Discovered, []string{"fs"})) {
			t.Errorf("1005: %+v", u)
		}
	}
	r.addPhones("1000", "1001")
	r.plainCall(t, "1000", "1001", "Extension 1000")

	// A user added to the switch's directory while both run, whose phone
	// registers before Lamplighter reads the directory again: its lamp
	// shows the registration at once, read on the connection Lamplighter
	// has (no resynchronisation).
	user := strings.ReplaceAll(mustRead(t, filepath.Join(r.fs.Dir, "conf/directory/default/1000.xml")), "1000", "1020")
	if err := os.WriteFile(filepath.Join(r.fs.Dir, "conf/directory/default/1020.xml"), []byte(user), 0o644); err != nil {
		t.Fatal(err)
	}
	r.fs.API("reloadxml")
	r.phones["1020"] = r.phone("1020")
	if !pbxtest.Wait(10*time.Second, func() bool { return strings.Contains(r.fs.API("show registrations"), "1020") }) {
		t.Fatal("1020 did not register")
	}
	r.api("POST", "/api/v1/reload", "")
	if !pbxtest.Wait(10*time.Second, func() bool { return slices.Contains(r.users().ids(), "1020") }) {
		t.Fatalf("1020 is no user after a reload: %v", r.users().ids())
	}
	watchLamp(t, r.ll, "1020").wait("1020 registered", 10*time.Second, func(d lamp) bool { return d.Phone == "idle" })
	if strings.Contains(r.out.String(), "reconnecting to read the PBX's state again") {
		t.Errorf("a user added made Lamplighter read all of FreeSWITCH again")
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// tenantDomain is the second domain the FreeSWITCH tenant test gives the
// switch, with users 1000-1002 of its own.
const tenantDomain = "b.example"

// tenantDialplan is the tenant's own dialplan context, as FusionPBX
// gives each domain: its users call each other in their domain.
const tenantDialplan = `<include>
<context name="` + tenantDomain + `">
<extension name="local"><condition field="destination_number" expression="^(100[0-2])$">
<action application="set" data="domain_name=` + tenantDomain + `"/>
<action application="bridge" data="user/$1@` + tenantDomain + `"/>
</condition></extension>
</context>
</include>
`

// tenantDirectory is FreeSWITCH's directory file for tenantDomain.
func tenantDirectory() string {
	var users strings.Builder
	for _, ext := range []string{"1000", "1001", "1002"} {
		fmt.Fprintf(&users, `<user id="%s"><params><param name="password" value="1234"/></params>
<variables><variable name="user_context" value="`+tenantDomain+`"/><variable name="effective_caller_id_name" value="Bee %s"/>
<variable name="effective_caller_id_number" value="%s"/></variables></user>
`, ext, ext, ext)
	}
	// FreeSWITCH's preprocessor takes <include> only on a line of its own.
	return `<include>
<domain name="` + tenantDomain + `">
<params><param name="dial-string" value="{^^:sip_invite_domain=${dialed_domain}:presence_id=${dialed_user}@${dialed_domain}}${sofia_contact(*/${dialed_user}@${dialed_domain})}"/></params>
<groups><group name="default"><users>
` + users.String() + `</users></group></groups></domain>
</include>
`
}

// tenantSwitch is the FreeSWITCH of the tenant tests: its own domain and
// tenantDomain, each with users 1000-1002 and a dialplan context.
func tenantSwitch() pbxtest.Config {
	return pbxtest.Config{Append: map[string]string{"directory/" + tenantDomain + ".xml": tenantDirectory(),
		"dialplan/" + tenantDomain + ".xml": tenantDialplan},
		// A switch of several domains (FusionPBX) looks users up in the
		// domain they name, not in the one the vanilla profile forces...
		Edits: []pbxtest.Edit{
			{File: "sip_profiles/internal.xml", Old: `<param name="force-register-domain" value="$${domain}"/>`},
			{File: "sip_profiles/internal.xml", Old: `<param name="force-subscription-domain" value="$${domain}"/>`},
			{File: "sip_profiles/internal.xml", Old: `<param name="force-register-db-domain" value="$${domain}"/>`},
			// ... and finds a domain's registrations only in it.
			{File: "sip_profiles/internal.xml", Old: `<param name="presence-hosts" value="$${domain},$${local_ip_v4}"/>`},
		}}
}

// TestTenantsOnTheRealFreeSWITCH: a FreeSWITCH with two domains that both
// have 1000-1002 is two tenants once its directory is discovered: phones
// of each register to the switch and watch their colleagues' lamps at
// Lamplighter in their own domain; a call in one tenant shows on its
// lamps and on none of the other's; a watcher of one tenant cannot reach
// the other's by Request-URI or From.
func TestTenantsOnTheRealFreeSWITCH(t *testing.T) {
	r := newFreeSWITCHRig(t, rigOptions{exts: []string{"1000", "1001"}, noPhones: true, pbx: "    discover: true\n",
		user: func(string) string { return "" }, fs: tenantSwitch()})
	waitFor(t, r.out, "directory changed by the PBX", 20*time.Second)
	users := r.users()
	if len(users.Users) != 23 {
		t.Fatalf("%d users, want 1000-1019 and three of %s: %v", len(users.Users), tenantDomain, users.ids())
	}
	for _, u := range users.Users {
		if u.ID == "1001@"+tenantDomain && (u.Name != "Bee 1001" || len(u.Devices) != 1 || u.Devices[0].Device != "1001@"+tenantDomain) {
			t.Errorf("%s: %+v", u.ID, u)
		}
	}
	// The default domain's phones and lamps (the rig's), and the tenant's.
	r.addPhones("1000", "1001")
	bPhones, bLamps := map[string]*baresiptest.Phone{}, map[string]*lampWatch{}
	for _, ext := range []string{"1000", "1001"} {
		bPhones[ext] = baresiptest.Start(t, baresiptest.Options{
			Account: fmt.Sprintf(`<sip:%s@%s>;auth_pass=1234;outbound="sip:%s";regint=300;answermode=manual`, ext, tenantDomain, r.sip)})
		bLamps[ext] = watchLampIn(t, r.ll, ext, tenantDomain, "", "")
		bLamps[ext].wait(ext+"@"+tenantDomain+" registered", 20*time.Second, func(d lamp) bool { return d.Phone == "idle" })
	}
	// A call in the tenant: its lamps show it, the default domain's none.
	before := lampCounts(r.lamps)
	bPhones["1000"].Command("/dial sip:1001@" + tenantDomain)
	in := bLamps["1001"].waitCall("early", "recipient", "1000", 15*time.Second)
	if in.RemoteName != "Bee 1000" {
		t.Errorf("the tenant's ringing lamp names %q", in.RemoteName)
	}
	bLamps["1000"].waitCall("early", "initiator", "1001", 10*time.Second)
	bPhones["1001"].Command("/accept")
	bLamps["1001"].waitCall("confirmed", "recipient", "1000", 10*time.Second)
	bPhones["1000"].Command("/hangup")
	bLamps["1000"].waitIdle(10 * time.Second)
	bLamps["1001"].waitIdle(10 * time.Second)
	quietSince(t, "a call in "+tenantDomain, r.lamps, before)

	// A call in the default domain: the tenant's lamps show nothing.
	before = lampCounts(bLamps)
	r.plainCall(t, "1000", "1001", "Extension 1000")
	quietSince(t, "a call in the default domain", bLamps, before)

	// Across tenants: the tenant's From at the default domain's 1001, the
	// default's From at the tenant's, and a domain that is no one's.
	for _, c := range []struct {
		domain, from string
		want         int
	}{{"", tenantDomain, 403}, {tenantDomain, pbxtest.Domain, 403}, {"c.example", "c.example", 404}} {
		w := newWatcher(t, "UDP")
		w.domain, w.fromDomain = c.domain, c.from
		if res := w.subscribe(r.ll, "1001", "dialog", 600); res.StatusCode != c.want {
			t.Errorf("Request-URI domain %q, From %s: %d, want %d", c.domain, c.from, res.StatusCode, c.want)
		}
	}
}

// lampCounts is how many documents each lamp has shown so far.
func lampCounts(lamps map[string]*lampWatch) map[string]int {
	n := map[string]int{}
	for ext, l := range lamps {
		n[ext] = len(l.documents())
	}
	return n
}

// quietSince checks that lamps showed no call after the documents
// counted in from.
func quietSince(t *testing.T, what string, lamps map[string]*lampWatch, from map[string]int) {
	t.Helper()
	for ext, l := range lamps {
		for _, d := range l.documents()[from[ext]:] {
			if !d.idle() {
				t.Errorf("%s: lamp %s showed another tenant's call: %s", what, ext, d)
			}
		}
	}
}

// TestProxyModeTenantsOnTheRealFreeSWITCH: the two-domain FreeSWITCH with
// every phone's line through Lamplighter as its outbound proxy and no
// network trusted: a tenant's phones register through Lamplighter in
// their domain (FreeSWITCH authenticates them there), their calls light
// their own tenant's lamps only, and a key's SUBSCRIBE on a registered
// flow is let in at its own tenant and refused at the other, whichever
// domain it names.
func TestProxyModeTenantsOnTheRealFreeSWITCH(t *testing.T) {
	r := newFreeSWITCHRig(t, rigOptions{exts: []string{"1000", "1001"}, noPhones: true, proxy: "{}", untrusted: true,
		pbx: "    discover: true\n", user: func(string) string { return "" }, fs: tenantSwitch()})
	waitFor(t, r.out, "directory changed by the PBX", 20*time.Second)
	r.addPhones("1000", "1001") // the default domain's, through Lamplighter
	bPhones := map[string]*baresiptest.Phone{}
	for _, ext := range []string{"1000", "1001"} {
		bPhones[ext] = baresiptest.Start(t, baresiptest.Options{
			Account: fmt.Sprintf(`<sip:%s@%s>;auth_pass=1234;outbound="sip:%s";regint=300;answermode=manual`, ext, tenantDomain, r.ll)})
	}
	// The tenant's 1002: its line registers through Lamplighter, its key
	// watches 1001 on that flow with no password of Lamplighter's.
	key := newSIPPhone(t, "1002", "1234", tenantDomain, r.ll)
	if res := key.register(tenantDomain, 300); res.StatusCode != 200 {
		t.Fatalf("1002@%s REGISTER through Lamplighter: %d %s", tenantDomain, res.StatusCode, res.Reason)
	}
	key.pass = ""
	n := key.count()
	if res := key.subscribe(r.ll, "1001"); res.StatusCode != 200 {
		t.Fatalf("1002@%s's key on 1001 on its flow: %d %s", tenantDomain, res.StatusCode, res.Reason)
	}
	key.waitNotify(t, n, "dialog", 10*time.Second)
	for _, p := range bPhones {
		p.WaitOutput("200 OK", 20*time.Second) // registered with FreeSWITCH through Lamplighter
	}

	// A call in the tenant, through Lamplighter: 1002's key rings with
	// it, the default domain's lamps show nothing.
	before := lampCounts(r.lamps)
	n = key.count()
	bPhones["1000"].Command("/dial sip:1001@" + tenantDomain)
	if d := key.ringing(n, 15*time.Second); !strings.Contains(d.Remote, "1000") {
		t.Errorf("1002@%s's key rang for 1001 without its caller: %+v", tenantDomain, d)
	}
	bPhones["1001"].WaitOutput("Incoming call", 10*time.Second)
	bPhones["1000"].Command("/hangup")
	bPhones["1001"].WaitOutput("terminated", 10*time.Second)
	quietSince(t, "a call in "+tenantDomain, r.lamps, before)
	// A call in the default domain shows on its own lamps.
	r.plainCall(t, "1000", "1001", "Extension 1000")

	// Across tenants on a registered flow: the tenant's 1002 at the
	// default domain's 1001, and the default domain's 1002 at the
	// tenant's.
	key.domain, key.subCallID = pbxtest.Domain, "cross-"+key.subCallID
	if res := key.subscribe(r.ll, "1001"); res.StatusCode != 403 {
		t.Errorf("1002@%s's flow at the default domain's 1001: %d, want 403", tenantDomain, res.StatusCode)
	}
	home := newSIPPhone(t, "1002", "1234", pbxtest.Domain, r.ll)
	if res := home.register(pbxtest.Domain, 300); res.StatusCode != 200 {
		t.Fatalf("1002 REGISTER through Lamplighter: %d %s", res.StatusCode, res.Reason)
	}
	home.pass, home.domain = "", tenantDomain
	if res := home.subscribe(r.ll, "1001"); res.StatusCode != 403 {
		t.Errorf("the default domain's 1002 on its flow at 1001@%s: %d, want 403", tenantDomain, res.StatusCode)
	}
	// The API shows the tenant's registration as its user's.
	if u := r.get("/api/v1/users/1002@" + tenantDomain); !strings.Contains(u, `"aor": "1002"`) {
		t.Errorf("the API does not show 1002@%s's registration through Lamplighter:\n%s", tenantDomain, u)
	}
}

// TestFeatureKeysOnTheRealAsterisk: with the ARI README's AMI user, the
// real Asterisk's hints are discovered: a feature code's hint on a
// Custom: device (FreePBX's *76100 do-not-disturb) is a lamp of its own
// that lights and goes out with the device state, as Asterisk's own lamp
// for the same key does, and a hint that gives an endpoint another number
// (2100) is that user's too.
func TestFeatureKeysOnTheRealAsterisk(t *testing.T) {
	hints := "\n[phones]\nexten => *76100,hint,Custom:DND100\nexten => 2100,hint,PJSIP/100\n"
	r := newAsteriskRig(t, rigOptions{exts: []string{"100", "101"}, noPhones: true, readme: []string{"ami"},
		ast: pbxtest.Config{Append: map[string]string{"extensions.conf": hints},
			// The lot's spaces get hints of their own (park:701@parkedcalls).
			Edits: []pbxtest.Edit{{File: "res_parking.conf", Old: "parkpos => 701-720", New: "parkpos => 701-720\nparkinghints = yes"}}},
		pbx:  "    discover: true\n    ari: {ami: {address: \"@AMI_ADDRESS@\", username: lamplighter, password: " + readmeARIPassword + "}}\n",
		user: func(string) string { return "" }})
	waitFor(t, r.out, "directory changed by the PBX", 20*time.Second)
	var dnd, hundred, space bool
	for _, u := range r.users().Users {
		switch u.ID {
		case "*76100":
			dnd = len(u.Devices) == 1 && u.Devices[0].Device == "Custom:DND100" && u.Name == "DND100"
		case "100":
			hundred = slices.Equal(u.Extensions, []string{"100", "2100"})
		case "705":
			space = len(u.Devices) == 1 && u.Devices[0].Device == "park:705@parkedcalls"
		}
	}
	if !dnd || !hundred || !space {
		t.Fatalf("hints not discovered (*76100 as DND100 on Custom:DND100: %v; 100 also 2100: %v; parking space 705: %v):\n%s",
			dnd, hundred, space, r.get("/api/v1/users"))
	}
	if !strings.Contains(r.get("/api/v1/users/*76100"), `"resource": true`) {
		t.Errorf("*76100 is not shown as a resource")
	}

	ours := watchLamp(t, r.ll, "*76100")
	native := watchLampAs(t, r.sip, "*76100", "100", "100")
	lit := func(d lamp) bool { c, ok := d.only(); return ok && c.State == "confirmed" }
	for _, state := range []string{"BUSY", "NOT_INUSE", "INUSE", "NOT_INUSE"} {
		r.ast.CLI("devstate change Custom:DND100 " + state)
		want := func(d lamp) bool { return d.idle() }
		if state != "NOT_INUSE" {
			want = lit
		}
		ours.wait("*76100 at "+state, 10*time.Second, want)
		native.wait("Asterisk's own *76100 at "+state, 10*time.Second, want)
	}

	// 2100 is 100's lamp.
	// Both phones registered (the caller's too) before the call.
	r.addPhones("100", "101")
	other := watchLamp(t, r.ll, "2100")
	other.wait("100 registered", 20*time.Second, func(d lamp) bool { return d.Phone == "idle" })
	r.dial("101", "100")
	other.waitCall("early", "recipient", "101", 10*time.Second)
	r.cmd("101", "/hangup")
	other.waitIdle(10 * time.Second)
}

// TestFeatureKeysOnTheRealFreeSWITCH: with discover's features, each user
// of the real FreeSWITCH has FusionPBX's do-not-disturb key, dnd+1000: a
// PRESENCE_IN such as FusionPBX's script fires lights it and puts it out
// at Lamplighter as at FreeSWITCH's own lamp for the same key; after a
// reconnect Lamplighter asks for its state with a PRESENCE_PROBE, as
// FreeSWITCH does for a subscribing phone, and the answer lights it again.
func TestFeatureKeysOnTheRealFreeSWITCH(t *testing.T) {
	r := newFreeSWITCHRig(t, rigOptions{noPhones: true, pbx: "    discover: {features: [dnd]}\n",
		user: func(string) string { return "" }})
	waitFor(t, r.out, "directory changed by the PBX", 20*time.Second)
	if got := r.get("/api/v1/users/dnd+1000"); !strings.Contains(got, `"resource": true`) || !strings.Contains(got, `"device": "dnd+1000@`+pbxtest.Domain+`"`) {
		t.Fatalf("dnd+1000: %s", got)
	}
	esl, err := r.fs.Dial()
	if err != nil {
		t.Fatal(err)
	}
	defer esl.Close()
	if err := esl.Subscribe("PRESENCE_PROBE"); err != nil {
		t.Fatal(err)
	}
	// As FusionPBX's do_not_disturb.lua announces it (its lamp helper,
	// resources/functions/blf.lua: the key's protocol apart from its id).
	announce := func(state string) {
		t.Helper()
		if err := esl.SendEvent("PRESENCE_IN", map[string]string{
			"proto": "dnd", "event_type": "presence", "alt_event_type": "dialog", "Presence-Call-Direction": "outbound",
			"from": "1000@" + pbxtest.Domain, "login": "1000@" + pbxtest.Domain, "unique-id": "dnd-1000",
			"status": "Active (1 waiting)", "answer-state": state,
		}); err != nil {
			t.Fatal(err)
		}
	}
	ours := watchLamp(t, r.ll, "dnd+1000")
	ours.wait("idle", 5*time.Second, func(d lamp) bool { return d.idle() })
	native := subscribeLamp(t, r.sip, "dnd+1000", "", "1001", "1234")
	lit := func(d lamp) bool { c, ok := d.only(); return ok && c.State == "confirmed" }
	off := func(d lamp) bool { return d.idle() }
	announce("confirmed")
	ours.wait("dnd on", 10*time.Second, lit)
	native.wait("FreeSWITCH's own lamp: dnd on", 10*time.Second, lit)
	announce("terminated")
	ours.wait("dnd off", 10*time.Second, off)
	native.wait("FreeSWITCH's own lamp: dnd off", 10*time.Second, off)

	// A reconnect (Lamplighter restarts): the state is asked for.
	for len(esl.Events()) > 0 {
		<-esl.Events()
	}
	r.restartLamplighter()
	deadline := time.After(10 * time.Second)
	for probed := false; !probed; {
		select {
		case ev := <-esl.Events():
			probed = ev["to"] == "dnd+1000@"+pbxtest.Domain && ev["proto"] == "dnd"
		case <-deadline:
			t.Fatal("no PRESENCE_PROBE for dnd+1000 after the reconnect")
		}
	}
	announce("confirmed")
	ours.wait("dnd on after the restart", 10*time.Second, lit)
}

// TestDiscoveredLoginsOnTheRealAsterisk: with discover's passwords, a
// phone logs in to Lamplighter with the login it has at the real
// Asterisk (read by the read-only ARI user, kept in memory only); a wrong
// password does not; and a restart while Asterisk does not answer keeps
// the subscriptions those logins made, which hold once Asterisk answers.
func TestDiscoveredLoginsOnTheRealAsterisk(t *testing.T) {
	r := newAsteriskRig(t, rigOptions{noPhones: true, untrusted: true, pbx: "    discover: {passwords: true}\n",
		user: func(string) string { return "" }})
	waitFor(t, r.out, "directory changed by the PBX", 20*time.Second)
	lamp := watchLampAs(t, r.ll, "100", "101", "101") // endpoint 101's auth: 101/101
	bad := newWatcher(t, "UDP")
	bad.username, bad.password, bad.fromUser = "101", "not-101", "101"
	if res := bad.subscribe(r.ll, "100", "dialog", 600); res.IsSuccess() {
		t.Errorf("a wrong password: %d", res.StatusCode)
	}
	state, err := os.ReadFile(filepath.Join(filepath.Dir(r.config), "state", "discovered.json"))
	if err != nil || strings.Contains(string(state), `"101"}`) && strings.Contains(string(state), "password") {
		t.Errorf("the state file holds a password, or cannot be read (%v):\n%s", err, state)
	}

	r.ast.Freeze()
	r.stop()
	r.out, r.stop = startDaemon(t, r.config)
	waitFor(t, r.out, "restored saved state", 10*time.Second)
	if m := regexp.MustCompile(`"restored saved state".* subscriptions=(\d+) skipped=(\d+) revoked=(\d+)`).FindStringSubmatch(r.out.String()); m == nil || m[1] != "1" || m[3] != "0" {
		t.Errorf("restored with Asterisk away: %v", m)
	}
	r.ast.Thaw()
	waitFor(t, r.out, "synchronised with ", 30*time.Second)
	if !pbxtest.Wait(20*time.Second, func() bool { return strings.Contains(r.get("/api/v1/discovery"), `"users": 10`) }) {
		t.Fatalf("the directory is not read again: %s", r.get("/api/v1/discovery"))
	}
	if strings.Contains(r.out.String(), "subscriptions ended") {
		t.Errorf("subscriptions ended once the logins were read:\n%s", r.out.String())
	}
	if res := lamp.w.subscribe("", "", "", 600); res.StatusCode != 200 {
		t.Errorf("a refresh with the PBX's login after the restart: %d", res.StatusCode)
	}
}

// TestTenantsOnTheRealAsterisk: on the real Asterisk a tenant is declared
// in the YAML by its endpoints' context: endpoints acme100 and acme101 in
// context acme-phones, whose caller ids say 100 and 101 as the default
// domain's endpoints 100 and 101 do, are Acme's 100 and 101
// (sip:100@acme.example); a call between them lights Acme's lamps and
// none of the default domain's.
func TestTenantsOnTheRealAsterisk(t *testing.T) {
	endpoints := ""
	for _, ext := range []string{"100", "101"} {
		endpoints += fmt.Sprintf("\n[acme%[1]s](phone-endpoint)\ncontext = acme-phones\ncallerid = \"Acme %[1]s\" <%[1]s>\nauth = acme%[1]s\naors = acme%[1]s\n"+
			"[acme%[1]s](phone-auth)\nusername = acme%[1]s\npassword = acme%[1]s\n[acme%[1]s](phone-aor)\n", ext)
	}
	r := newAsteriskRig(t, rigOptions{exts: []string{"100", "101"}, noPhones: true, pbx: "    discover: true\n",
		user: func(string) string { return "" },
		yaml: "tenants:\n  - {domain: acme.example, contexts: [acme-phones]}\n",
		ast: pbxtest.Config{Append: map[string]string{"pjsip.conf": endpoints,
			"extensions.conf": "\n[acme-phones]\nexten => _10X,1,Dial(PJSIP/acme${EXTEN},30)\n"}}})
	waitFor(t, r.out, "directory changed by the PBX", 20*time.Second)
	users := r.users()
	for _, want := range []string{"100", "101", "100@acme.example", "101@acme.example"} {
		if !slices.Contains(users.ids(), want) {
			t.Fatalf("no user %s: %v", want, users.ids())
		}
	}
	r.addPhones("100", "101")
	acme := map[string]*lampWatch{}
	phones := map[string]*baresiptest.Phone{}
	for _, ext := range []string{"100", "101"} {
		phones[ext] = r.phone("acme" + ext)
		acme[ext] = watchLampIn(t, r.ll, ext, "acme.example", "", "")
		acme[ext].wait("acme's "+ext+" registered", 20*time.Second, func(d lamp) bool { return d.Phone == "idle" })
	}
	before := map[string]int{}
	for ext, l := range r.lamps {
		before[ext] = len(l.documents())
	}
	phones["100"].Command("/dial sip:101@" + r.domain)
	if in := acme["101"].waitCall("early", "recipient", "", 15*time.Second); in.RemoteName != "Acme 100" {
		t.Errorf("Acme's ringing lamp names %q", in.RemoteName)
	}
	phones["100"].Command("/hangup")
	acme["101"].waitIdle(10 * time.Second)
	acme["100"].waitIdle(10 * time.Second)
	for ext, l := range r.lamps {
		for _, d := range l.documents()[before[ext]:] {
			if !d.idle() {
				t.Errorf("the default domain's %s showed Acme's call: %s", ext, d)
			}
		}
	}
}
