package config

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/discovery"
)

func TestDiscoverSection(t *testing.T) {
	for _, c := range []struct {
		name, section string
		on            bool
		interval      time.Duration
	}{
		{"true", "discover: true", true, 0},
		{"false", "discover: false", false, 0},
		{"left out", "", false, 0},
		{"section", "discover: {interval: 30s, contexts: [from-internal], exclude: [\"9*\"]}", true, 30 * time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			src := strings.Replace(base, "    password: p\n", "    password: p\n    "+c.section+"\n", 1)
			cfg, err := Parse("c.yaml", []byte(src), fakeEnv(t))
			if err != nil {
				t.Fatal(err)
			}
			d := cfg.PBX[0].Discovering()
			if (d != nil) != c.on {
				t.Fatalf("discovering = %+v, want on=%v", d, c.on)
			}
			if d != nil && d.Interval != c.interval {
				t.Errorf("interval %s, want %s", d.Interval, c.interval)
			}
		})
	}
}

func TestDiscoverSectionErrors(t *testing.T) {
	for _, c := range []struct {
		name, section string
		line          int
		want          string
	}{
		{"unknown key", "discover: {intervall: 1m}", 9, `unknown key "intervall" in the discover section`},
		{"not a section", "discover: yes please", 9, "discover is true, false or a section"},
		{"short interval", "discover: {interval: 1s}", 9, "interval 1s is shorter than 10s"},
		{"bad pattern", "discover: {exclude: [\"[9\"]}", 9, `bad extension pattern "[9"`},
		{"bad type", "discover: {contexts: 7}", 9, "cannot unmarshal"},
	} {
		t.Run(c.name, func(t *testing.T) {
			wantConfigError(t, strings.Replace(base, "    password: p\n", "    password: p\n    "+c.section+"\n", 1), c.line, c.want)
		})
	}
	src := strings.Replace(base, "kind: sim", "kind: sip\n    proxy: {address: \"127.0.0.1:5070\"}\n    discover: true", 1)
	if _, err := Parse("c.yaml", []byte(src), fakeEnv(t)); err == nil || !strings.Contains(err.Error(), `kind "sip" has no directory`) {
		t.Errorf("discover on a sip pbx: %v", err)
	}
}

// discovering is base with both PBXs reading their directories, a second
// ARI PBX, and a list naming a user only a PBX knows.
const discovering = `sip:
  domain: example.com
pbx:
  - name: ast
    kind: ari
    address: http://127.0.0.1:8088
    username: u
    password: p
    discover: {exclude: ["9*"], contexts: [phones]}
  - name: ast2
    kind: ari
    address: http://127.0.0.1:8089
    username: u
    password: p
    discover: true
  - name: demo
    kind: sim
users:
  - id: a
    extensions: ["100"]
    devices:
      - {pbx: ast, device: PJSIP/100}
  - id: b
    name: Bee
    extensions: ["101"]
    aliases: [bee]
    groups: [desk]
    devices:
      - {pbx: demo, device: SIM/101}
  - id: "104"
    aliases: [boss]
  - id: twice
    extensions: ["107"]
    devices:
      - {pbx: ast, device: PJSIP/107}
      - {pbx: ast2, device: PJSIP/107}
lists:
  - {name: desk, members: [a, "103", "108"], group: desk}
`

func found(pbx string, users ...adapters.DiscoveredUser) []adapters.DiscoveredUser {
	for i := range users {
		users[i].PBX = pbx
		if users[i].Context == "" {
			users[i].Context = "phones"
		}
	}
	return users
}

func TestDirectoryMergesDiscovered(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(discovering), fakeEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	dir, left, err := cfg.Directory(discovery.Found{
		"ast": found("ast",
			adapters.DiscoveredUser{Extension: "100", Name: "Alice", Device: "PJSIP/100"},                           // a's device: a
			adapters.DiscoveredUser{Extension: "101", Name: "Bob", Device: "PJSIP/101"},                             // b's extension: b's second device
			adapters.DiscoveredUser{Extension: "102", Name: "Carol", Device: "PJSIP/102", Groups: []string{"desk"}}, // a user of its own
			adapters.DiscoveredUser{Extension: "102", Name: "Carol", Device: "PJSIP/102-mobile"},                    // same PBX, same number: Carol's
			adapters.DiscoveredUser{Extension: "103", Name: "Dan", Device: "PJSIP/103"},
			adapters.DiscoveredUser{Extension: "104", Name: "Eve", Device: "PJSIP/104"}, // the id 104 is the YAML's
			adapters.DiscoveredUser{Extension: "900", Name: "Fax", Device: "PJSIP/900"}, // excluded
			adapters.DiscoveredUser{Extension: "trunk", Device: "PJSIP/trunk", Context: "from-pstn"},
			adapters.DiscoveredUser{Extension: "107", Name: "Twice", Device: "PJSIP/107"},
		),
		"ast2": found("ast2",
			adapters.DiscoveredUser{Extension: "103", Name: "Other Dan", Device: "PJSIP/103"}, // another PBX's 103: left out
			adapters.DiscoveredUser{Extension: "107", Name: "Twice", Device: "PJSIP/107"},     // one person: the YAML says so
			adapters.DiscoveredUser{Extension: "105", Device: "PJSIP/105"},
		),
		"demo": found("demo", adapters.DiscoveredUser{Extension: "106", Device: "SIM/106"}), // demo does not discover
	})
	if err != nil {
		t.Fatal(err)
	}
	type want struct {
		id, name   string
		ext        []string
		devices    []string
		configured bool
		from       []string
	}
	for _, w := range []want{
		{"a", "Alice", []string{"100"}, []string{"ast:PJSIP/100"}, true, []string{"ast"}},
		{"b", "Bee", []string{"101"}, []string{"demo:SIM/101", "ast:PJSIP/101"}, true, []string{"ast"}},
		{"102", "Carol", []string{"102"}, []string{"ast:PJSIP/102", "ast:PJSIP/102-mobile"}, false, []string{"ast"}},
		{"103", "Dan", []string{"103"}, []string{"ast:PJSIP/103"}, false, []string{"ast"}},
		{"ast-104", "Eve", []string{"104"}, []string{"ast:PJSIP/104"}, false, []string{"ast"}},
		{"twice", "Twice", []string{"107"}, []string{"ast:PJSIP/107", "ast2:PJSIP/107"}, true, []string{"ast", "ast2"}},
		{"105", "105", []string{"105"}, []string{"ast2:PJSIP/105"}, false, []string{"ast2"}},
	} {
		u, ok := dir.User(w.id)
		if !ok {
			t.Errorf("no user %q", w.id)
			continue
		}
		var devs []string
		for _, r := range u.Devices {
			devs = append(devs, r.String())
		}
		if u.Name != w.name || !slices.Equal(u.Extensions, w.ext) || !slices.Equal(devs, w.devices) ||
			u.Configured != w.configured || !slices.Equal(u.Discovered, w.from) {
			t.Errorf("user %s = %+v, want %+v", w.id, u, w)
		}
	}
	if u, ok := dir.Lookup("104"); !ok || u.ID != "ast-104" {
		t.Errorf("104 is %+v", u)
	}
	for _, gone := range []string{"900", "trunk", "106"} {
		if u, ok := dir.Lookup(gone); ok {
			t.Errorf("%s is a user: %+v", gone, u)
		}
	}
	if dir.Len() != 8 { // a, b, 104, twice, 102, 103, ast-104, 105
		t.Errorf("%d users", dir.Len())
	}
	l, ok := dir.List("desk")
	var members []string
	for _, u := range l.Users {
		members = append(members, u.ID)
	}
	if !ok || !slices.Equal(members, []string{"a", "103", "b", "102"}) {
		t.Errorf("list desk: %v", members)
	}
	var reasons []string
	for _, l := range left {
		reasons = append(reasons, l.PBX+" "+l.Extension+": "+l.Reason)
	}
	if len(left) != 2 || left[0].PBX != "ast2" || left[0].Extension != "103" || !strings.Contains(left[0].Reason, "two people with one number") ||
		!strings.Contains(left[1].Reason, `list "desk": no user has id, extension or alias "108"`) {
		t.Errorf("left out:\n%s", strings.Join(reasons, "\n"))
	}
}

func TestDirectoryMakesEachDomainATenant(t *testing.T) {
	src := strings.Replace(discovering, "    discover: {exclude: [\"9*\"], contexts: [phones]}\n", "    discover: true\n", 1)
	cfg, err := Parse("c.yaml", []byte(src), fakeEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := cfg.Directory(discovery.Found{"ast": found("ast",
		adapters.DiscoveredUser{Extension: "1000", Name: "A", Domain: "a.example", Device: "1000@a.example"},
		adapters.DiscoveredUser{Extension: "1000", Name: "B", Domain: "B.example", Device: "1000@b.example"},
	)})
	if err != nil {
		t.Fatal(err)
	}
	if got := dir.Tenants(); !slices.Equal(got, []string{"a.example", "b.example"}) {
		t.Errorf("tenants %v", got)
	}
	for host, want := range map[string]string{"a.example": "A", "B.EXAMPLE": "B", "example.com": "", "127.0.0.1": "", "c.example": ""} {
		u, ok := dir.Resolve(host, "1000")
		if want == "" && ok || want != "" && (!ok || u.Name != want) {
			t.Errorf("1000 at %s: %+v %v, want %q", host, u, ok, want)
		}
	}
	if u, ok := dir.User("1000@b.example"); !ok || u.Tenant != "b.example" || u.Domain != "B.example" {
		t.Errorf("1000@b.example: %+v", u)
	}
	// The default domain's users are found at its domain and addresses.
	if u, ok := dir.Resolve("example.com", "100"); !ok || u.ID != "a" {
		t.Errorf("100 at the default domain: %+v", u)
	}
	if _, ok := dir.Resolve("a.example", "100"); ok {
		t.Error("the default domain's 100 is found in a tenant")
	}
}

func TestDirectoryOfYAMLTenants(t *testing.T) {
	src := discovering + `tenants:
  - {domain: acme.example, contexts: [acme-phones], token: acme}
  - {domain: globex.example, endpoint_prefix: "globex-", realm: Globex}
`
	src = strings.Replace(src, "    discover: {exclude: [\"9*\"], contexts: [phones]}\n", "    discover: true\n", 1)
	src = strings.Replace(src, "  - id: \"104\"\n", "  - id: \"104\"\n    tenant: acme.example\n", 1)
	cfg, err := Parse("c.yaml", []byte(src), fakeEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	dir, left, err := cfg.Directory(discovery.Found{"ast": found("ast",
		adapters.DiscoveredUser{Extension: "100", Name: "Acme 100", Device: "PJSIP/acme100", Context: "acme-phones"},
		adapters.DiscoveredUser{Extension: "globex-100", Name: "Globex 100", Device: "PJSIP/globex-100", Context: "globex"},
		adapters.DiscoveredUser{Extension: "100", Name: "Alice", Device: "PJSIP/100"},
	)})
	if err != nil {
		t.Fatal(err, left)
	}
	for _, c := range []struct{ host, name, id string }{
		{"acme.example", "100", "100@acme.example"},
		{"acme.example", "boss", "104"},
		{"globex.example", "100", "100@globex.example"},
		{"example.com", "100", "a"},
	} {
		if u, ok := dir.Resolve(c.host, c.name); !ok || u.ID != c.id {
			t.Errorf("%s at %s: %+v, want %s", c.name, c.host, u, c.id)
		}
	}
}

func TestDirectoryWithoutDiscoveryIsTheYAMLs(t *testing.T) {
	cfg, err := Parse("c.yaml", []byte(base), fakeEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	// A PBX without discover on: what was found there is not used.
	dir, left, err := cfg.Directory(discovery.Found{"ast": {{PBX: "ast", Extension: "200", Device: "PJSIP/200"}}})
	if err != nil || len(left) != 0 {
		t.Fatal(err, left)
	}
	want := []bridge.User{
		{ID: "a", Name: "a", Extensions: []string{"100"}, Devices: []bridge.DeviceRef{{Source: "ast", Device: "PJSIP/100"}}, Configured: true},
		{ID: "b", Name: "b", Extensions: []string{"101"}, Aliases: []string{"bee"}, Devices: []bridge.DeviceRef{{Source: "demo", Device: "SIM/101"}}, Configured: true},
	}
	if dir.Len() != len(want) {
		t.Fatalf("%d users", dir.Len())
	}
	for i, u := range dir.Users() {
		if !u.Equal(&want[i]) {
			t.Errorf("user %d = %+v, want %+v", i, u, want[i])
		}
	}
}
