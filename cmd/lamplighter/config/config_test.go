package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeEnv is an environment with a credentials directory of real files.
func fakeEnv(t *testing.T) Env {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"ari-password", "api-token", "sip-debbie"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("s3cret\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	vars := map[string]string{
		"CREDENTIALS_DIRECTORY":    dir,
		"LAMPLIGHTER_ESL_PASSWORD": "ClueCon",
		"LAMPLIGHTER_SIP_BOB":      "b", "LAMPLIGHTER_SIP_CAROL": "c", "LAMPLIGHTER_SIP_DAN": "d",
	}
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

func TestExampleConfigIsValid(t *testing.T) {
	data, err := os.ReadFile("../../../config.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	env := fakeEnv(t)
	cfg, err := Parse("config.example.yaml", data, env)
	if err != nil {
		t.Fatalf("the example config has errors:\n%v", err)
	}
	if len(cfg.PBX) != 2 || cfg.PBX[0].Kind != KindARI || cfg.PBX[1].Kind != KindESL {
		t.Errorf("pbx: %+v", cfg.PBX)
	}
	dir, _, err := cfg.Directory(nil)
	if err != nil {
		t.Fatal(err)
	}
	u, ok := dir.Lookup("debbie")
	if !ok || len(u.Devices) != 2 || u.Name != "Debbie Harry" {
		t.Errorf("debbie: %+v", u)
	}
	if pw, err := cfg.PBXPassword(&cfg.PBX[0], env); err != nil || pw != "s3cret" {
		t.Errorf("ari password from file = %q, %v", pw, err)
	}
	if pw, err := cfg.PBXPassword(&cfg.PBX[1], env); err != nil || pw != "ClueCon" {
		t.Errorf("esl password from env = %q, %v", pw, err)
	}
	if pw, err := cfg.UserPassword(&cfg.Users[1], env); err != nil || pw != "b" {
		t.Errorf("bob's sip password = %q, %v", pw, err)
	}
	if cfg.Policy.Coalesce != 20*time.Millisecond || cfg.Policy.MaxExpires != 3600 {
		t.Errorf("policy: %+v", cfg.Policy)
	}
	if cfg.Users[0].SIP.Username != "debbie" {
		t.Errorf("sip username does not default to the id: %q", cfg.Users[0].SIP.Username)
	}
}

// base is a small valid config; each case below breaks one line of it.
const base = `sip:
  domain: example.com
pbx:
  - name: ast
    kind: ari
    address: http://127.0.0.1:8088
    username: u
    password: p
  - name: demo
    kind: sim
users:
  - id: a
    extensions: ["100"]
    devices:
      - {pbx: ast, device: PJSIP/100}
  - id: b
    extensions: ["101"]
    aliases: [bee]
    devices:
      - {pbx: demo, device: SIM/101}
`

func TestBaseIsValid(t *testing.T) {
	if _, err := Parse("c.yaml", []byte(base), fakeEnv(t)); err != nil {
		t.Fatal(err)
	}
}

func TestSIPKindWithProxyIsValid(t *testing.T) {
	src := strings.Replace(base, "kind: sim", "kind: sip\n    proxy: {address: \"127.0.0.1:5070\", transport: udp}", 1)
	cfg, err := Parse("c.yaml", []byte(src), fakeEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	host, port, err := cfg.PBX[1].Proxy.HostPort()
	if err != nil || host != "127.0.0.1" || port != 5070 {
		t.Fatalf("proxy address %s %d %v", host, port, err)
	}
}

func TestCheckConfigErrors(t *testing.T) {
	cases := []struct {
		name    string
		replace [2]string // old, new within base
		line    int
		want    string
	}{
		{"unknown key", [2]string{"  domain: example.com", "  domain: example.com\n  domian: x"}, 3, `unknown key "domian"`},
		{"unknown key in user", [2]string{"  - id: b\n", "  - id: b\n    nmae: Bee\n"}, 17, `unknown key "nmae" in a user`},
		{"duplicate extension", [2]string{`extensions: ["101"]`, `extensions: ["100"]`}, 17, `"100" is already used by user "a"`},
		{"alias clashes with extension", [2]string{`aliases: [bee]`, `aliases: ["100"]`}, 18, `"100" is already used by user "a"`},
		{"device claimed twice", [2]string{"{pbx: demo, device: SIM/101}", "{pbx: ast, device: PJSIP/100}"}, 20, `already claimed by user "a"`},
		{"unknown pbx", [2]string{"{pbx: demo, device: SIM/101}", "{pbx: nope, device: SIM/101}"}, 20, `unknown pbx "nope"`},
		{"missing secret file", [2]string{"    password: p", "    password_file: /nonexistent/ari.secret"}, 8, "cannot read password file: /nonexistent/ari.secret"},
		{"unset secret env", [2]string{"    password: p", "    password_env: NOT_SET_ANYWHERE"}, 8, "environment variable NOT_SET_ANYWHERE is not set"},
		{"bad pbx address", [2]string{"http://127.0.0.1:8088", "127.0.0.1:8088"}, 6, "bad address"},
		{"bad pbx port", [2]string{"http://127.0.0.1:8088", "http://127.0.0.1:99999"}, 6, `port "99999"`},
		{"bad listen address", [2]string{"  domain: example.com", "  domain: example.com\n  listen:\n    - {transport: udp, address: \"0.0.0.0\"}"}, 4, "bad address"},
		{"bad transport", [2]string{"  domain: example.com", "  domain: example.com\n  listen:\n    - {transport: sctp, address: \":5060\"}"}, 4, `transport "sctp"`},
		{"tls without cert", [2]string{"  domain: example.com", "  domain: example.com\n  listen:\n    - {transport: tls, address: \":5061\"}"}, 4, "needs cert_file and key_file"},
		{"bad kind", [2]string{"kind: sim", "kind: asterisk"}, 10, `kind "asterisk"`},
		{"duplicate pbx", [2]string{"name: demo", "name: ast"}, 9, `pbx name "ast" is used twice`},
		{"duplicate user id", [2]string{"  - id: b", "  - id: a"}, 16, `user id "a" is already used at line 12`},
		{"missing ari password", [2]string{"    password: p\n", ""}, 4, "has no password"},
		{"bad cidr", [2]string{"  domain: example.com", "  domain: example.com\n  trusted_networks: [10.0.0.0/33]"}, 3, "bad network"},
		{"expires order", [2]string{"sip:", "policy:\n  min_expires: 600\n  max_expires: 60\nsip:"}, 3, "max_expires (60) is below min_expires (600)"},
		{"type error", [2]string{"sip:", "policy:\n  min_expires: soon\nsip:"}, 2, "cannot unmarshal"},
		{"udp notify size", [2]string{"sip:", "policy:\n  max_udp_notify: 70000\nsip:"}, 2, "must be between 1300 and 65000 bytes"},
		{"sim section checked", [2]string{"kind: sim", "kind: sim\n    sim: {answer_rate: 3}"}, 11, "answer_rate: must be between 0 and 1"},
		{"bad digest algorithm", [2]string{"  domain: example.com", "  domain: example.com\n  digest_algorithms: [MD5, SHA-1]"}, 3, `digest algorithm "SHA-1"`},
		{"ari section checked", [2]string{"    password: p\n", "    password: p\n    ari: {app: \"bad app\"}\n"}, 9, "app: use letters"},
		{"ari section on a sim", [2]string{"kind: sim", "kind: sim\n    ari: {app: x}"}, 11, "an ari section on a pbx of kind"},
		{"esl address", [2]string{"kind: sim", "kind: esl\n    address: fs.example.com\n    password: p"}, 11, "an esl pbx needs host:port"},
		{"esl section checked", [2]string{"kind: sim", "kind: esl\n    address: fs:8021\n    password: p\n    esl: {reconnect_min: 1m, reconnect_max: 1s}"}, 13, "reconnect_min: is above reconnect_max"},
		{"esl section on a sim", [2]string{"kind: sim", "kind: sim\n    esl: {ping_interval: 1s}"}, 11, "an esl section on a pbx of kind"},
		{"extension not a URI user", [2]string{`extensions: ["101"]`, `extensions: ["10 1"]`}, 17, "cannot be the user part"},
		{"proxy without address", [2]string{"    password: p\n", "    password: p\n    proxy: {transport: udp}\n"}, 9, "needs the PBX's SIP address"},
		{"proxy bad transport", [2]string{"    password: p\n", "    password: p\n    proxy: {address: \"10.0.0.5:5060\", transport: sctp}\n"}, 9, `transport "sctp" is not udp`},
		{"proxy bad port", [2]string{"    password: p\n", "    password: p\n    proxy: {address: \"10.0.0.5:70000\"}\n"}, 9, `bad port "70000"`},
		{"proxy unknown key", [2]string{"    password: p\n", "    password: p\n    proxy: {adress: x}\n"}, 9, `unknown key "adress"`},
		{"sip kind without proxy", [2]string{"kind: sim", "kind: sip"}, 9, `of kind sip needs a proxy section`},
		{"sip kind with an event address", [2]string{"kind: sim", "kind: sip\n    address: 10.0.0.5:8088\n    proxy: {address: \"10.0.0.5\"}"}, 11, "has no event address"},
		{"proxy phones", [2]string{"    password: p\n", "    password: p\n    proxy: {address: \"10.0.0.5\", phones: two}\n"}, 9, `phones "two" is not outbound or dedicated`},
		{"dedicated_calls without dedicated", [2]string{"    password: p\n", "    password: p\n    proxy: {address: \"10.0.0.5\", dedicated_calls: redirect}\n"}, 9, "dedicated_calls is for phones: dedicated"},
		{"dedicated_calls value", [2]string{"    password: p\n", "    password: p\n    proxy: {address: \"10.0.0.5\", phones: dedicated, dedicated_calls: drop}\n"}, 9, `dedicated_calls "drop" is not forward or redirect`},
		{"sip kind with dedicated phones", [2]string{"kind: sim", "kind: sip\n    proxy: {address: \"10.0.0.5\", phones: dedicated}"}, 11, "phones: outbound"},
		{"ca_file without tls", [2]string{"    password: p\n", "    password: p\n    proxy: {address: \"10.0.0.5\", ca_file: /etc/hosts}\n"}, 9, "ca_file is for transport: tls"},
		{"ca_file not PEM", [2]string{"    password: p\n", "    password: p\n    proxy: {address: \"10.0.0.5\", transport: tls, ca_file: /etc/hosts}\n"}, 9, "holds no PEM certificate"},
		{"ca_file missing", [2]string{"    password: p\n", "    password: p\n    proxy: {address: \"10.0.0.5\", transport: tls, ca_file: /nonexistent/ca.pem}\n"}, 9, "cannot read ca_file"},
		{"max_forwarding", [2]string{"sip:", "policy:\n  max_forwarding: -1\nsip:"}, 2, "must be at least 1"},
		{"list member unknown", [2]string{"{pbx: demo, device: SIM/101}\n", "{pbx: demo, device: SIM/101}\nlists:\n  - name: desk\n    members: [a, \"102\"]\n"}, 23, `no user has id, extension or alias "102"`},
		{"list member twice", [2]string{"{pbx: demo, device: SIM/101}\n", "{pbx: demo, device: SIM/101}\nlists:\n  - name: desk\n    members:\n      - a\n      - \"100\"\n"}, 25, `"100" is user "a", already a member at line 24`},
		{"list name is an extension", [2]string{"{pbx: demo, device: SIM/101}\n", "{pbx: demo, device: SIM/101}\nlists:\n  - name: BEE\n    members: [a]\n"}, 22, `already an extension or alias of user "b"`},
		{"list defined twice", [2]string{"{pbx: demo, device: SIM/101}\n", "{pbx: demo, device: SIM/101}\nlists:\n  - {name: desk, members: [a]}\n  - {name: Desk, members: [b]}\n"}, 23, `list "Desk" is already defined at line 22`},
		{"list without members", [2]string{"{pbx: demo, device: SIM/101}\n", "{pbx: demo, device: SIM/101}\nlists:\n  - {name: desk}\n"}, 22, `needs members or a group`},
		{"list of an empty group", [2]string{"{pbx: demo, device: SIM/101}\n", "{pbx: demo, device: SIM/101}\nlists:\n  - {name: desk, group: nobody}\n"}, 22, `no user is in group "nobody"`},
		{"list name not a URI user", [2]string{"{pbx: demo, device: SIM/101}\n", "{pbx: demo, device: SIM/101}\nlists:\n  - {name: \"front desk\", members: [a]}\n"}, 22, `cannot be the user part`},
		{"list unknown key", [2]string{"{pbx: demo, device: SIM/101}\n", "{pbx: demo, device: SIM/101}\nlists:\n  - {name: desk, memebrs: [a]}\n"}, 22, `unknown key "memebrs" in a list`},
		{"cluster url", [2]string{"sip:", "cluster:\n  node: a\n  urls: [http://nats:4222]\nsip:"}, 3, `urls: "http://nats:4222" is not nats://host:port`},
		{"cluster node name", [2]string{"sip:", "cluster:\n  node: a.b\n  urls: [nats://127.0.0.1:4222]\nsip:"}, 2, `node: node name "a.b"`},
		{"cluster replicas", [2]string{"sip:", "cluster:\n  urls: [nats://127.0.0.1:4222]\n  replicas: 7\nsip:"}, 3, `replicas must be between 1 and 5`},
		{"cluster no urls", [2]string{"sip:", "cluster:\n  node: a\nsip:"}, 1, `urls: name at least one NATS server`},
		{"cluster unknown key", [2]string{"sip:", "cluster:\n  nodes: a\nsip:"}, 2, `unknown key "nodes" in cluster section`},
		{"cluster address", [2]string{"sip:", "cluster:\n  urls: [nats://127.0.0.1:4222]\n  address: \"10.0.0.9:5060\"\nsip:"}, 3, `must be a host name or an IP address (no port)`},
		{"cluster creds file", [2]string{"sip:", "cluster:\n  urls: [nats://127.0.0.1:4222]\n  creds_file: /nonexistent/x.creds\nsip:"}, 3, `cannot read /nonexistent/x.creds`},
		{"user in no tenant", [2]string{"  - id: b\n", "  - id: b\n    tenant: acme.example\n"}, 17, `user "b" is in "acme.example", which is not under tenants`},
		{"tenant is the sip domain", [2]string{"sip:", "tenants:\n  - {domain: Example.com}\nsip:"}, 2, `"Example.com" is the sip domain`},
		{"tenant twice", [2]string{"sip:", "tenants:\n  - {domain: a.example}\n  - {domain: A.example}\nsip:"}, 3, `tenant "A.example" is already defined at line 2`},
		{"tenant without domain", [2]string{"sip:", "tenants:\n  - {realm: x}\nsip:"}, 2, `a tenant needs a domain`},
		{"tenant token file", [2]string{"sip:", "tenants:\n  - {domain: a.example, token_file: /nonexistent/t}\nsip:"}, 2, `cannot read token file`},
		{"ami without secret", [2]string{"    password: p\n", "    password: p\n    ari: {ami: {address: \"10.0.0.5:5038\", username: ll}}\n"}, 9, "ami: give one of password"},
		{"ami address", [2]string{"    password: p\n", "    password: p\n    ari: {ami: {address: \"10.0.0.5\", username: ll, password: x}}\n"}, 9, `ami: address "10.0.0.5": want host:port`},
		{"ami secret file", [2]string{"    password: p\n", "    password: p\n    ari:\n      ami: {address: \"10.0.0.5:5038\", username: ll, password_file: /nonexistent/ami}\n"}, 10, "cannot read password file"},
		{"tenant sees an unknown domain", [2]string{"sip:", "tenants:\n  - {domain: a.example, sees: [b.example]}\nsip:"}, 2, `"b.example" is neither a tenant, the sip domain nor *`},
		{"syntax error", [2]string{"  - id: b", "  - id: b\n\tx: 1"}, 16, "tab character"}, // yaml.v3 names the enclosing entry's line
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !strings.Contains(base, c.replace[0]) {
				t.Fatalf("base lacks %q", c.replace[0])
			}
			wantConfigError(t, strings.Replace(base, c.replace[0], c.replace[1], 1), c.line, c.want)
		})
	}
}

// wantConfigError checks that src (as c.yaml) is refused with an error
// at line whose message holds want.
func wantConfigError(t *testing.T, src string, line int, want string) {
	t.Helper()
	_, err := Parse("c.yaml", []byte(src), fakeEnv(t))
	var errs Errors
	if !errors.As(err, &errs) {
		t.Fatalf("no config errors for:\n%s\n(err = %v)", src, err)
	}
	for _, e := range errs {
		if e.Line == line && strings.Contains(e.Msg, want) && strings.HasPrefix(e.Error(), "c.yaml:") {
			return
		}
	}
	t.Errorf("want c.yaml:%d: …%s…, got:\n%v", line, want, err)
}

// TestTenantsShareExtensions: two tenants (and the sip domain) may each
// have an extension 100 and a SIP username 100.
func TestTenantsShareExtensions(t *testing.T) {
	src := base + `  - {id: c, tenant: a.example, extensions: ["100"], sip: {username: "100", password: x}}
  - {id: d, tenant: b.example, extensions: ["100"], sip: {username: "100", password: y}}
  - {id: e, extensions: ["102"], sip: {username: "100", password: z}}
tenants:
  - {domain: a.example}
  - {domain: b.example}
lists:
  - {name: desk, tenant: a.example, members: ["100"]}
`
	cfg, err := Parse("c.yaml", []byte(src), fakeEnv(t))
	if err != nil {
		t.Fatal(err)
	}
	dir, _, err := cfg.Directory(nil)
	if err != nil {
		t.Fatal(err)
	}
	if l, ok := dir.ResolveList("a.example", "desk"); !ok || len(l.Users) != 1 || l.Users[0].ID != "c" {
		t.Errorf("list desk in a.example: %+v", l)
	}
	if _, ok := dir.ResolveList("b.example", "desk"); ok {
		t.Error("a.example's list is found in b.example")
	}
	src = strings.Replace(src, `{id: d, tenant: b.example`, `{id: d, tenant: a.example`, 1)
	if _, err := Parse("c.yaml", []byte(src), fakeEnv(t)); err == nil || !strings.Contains(err.Error(), `"100" is already used by user "c"`) ||
		!strings.Contains(err.Error(), `sip username "100" is already used by user "c"`) {
		t.Errorf("two users of one tenant with one extension: %v", err)
	}
}

func TestEveryProblemIsListed(t *testing.T) {
	src := strings.NewReplacer(
		"  domain: example.com", "  domain: example.com\n  bogus: 1",
		`extensions: ["101"]`, `extensions: ["100"]`,
		"{pbx: demo, device: SIM/101}", "{pbx: gone, device: SIM/101}",
	).Replace(base)
	_, err := Parse("c.yaml", []byte(src), fakeEnv(t))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 3 {
		t.Fatalf("want 3 problems, got %v", err)
	}
	for i := 1; i < len(errs); i++ {
		if errs[i].Line < errs[i-1].Line {
			t.Errorf("problems not in line order: %v", errs)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("/nonexistent/lamplighter.yaml")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/lamplighter.yaml") {
		t.Errorf("Load of a missing file: %v", err)
	}
}

// TestTrustedNetworksIPv4Mapped: an IPv4-mapped network is the IPv4
// network it maps (requests are matched by their IPv4 address, so the
// mapped form would never match); one wider than the mapped range is
// refused.
func TestTrustedNetworksIPv4Mapped(t *testing.T) {
	for in, want := range map[string]string{
		"::ffff:10.0.0.0/104": "10.0.0.0/8",
		"::ffff:192.0.2.7":    "192.0.2.7/32",
		"10.1.2.3/8":          "10.0.0.0/8",
		"2001:db8::/32":       "2001:db8::/32",
		"::ffff:10.1.2.3/128": "10.1.2.3/32",
	} {
		got, err := ParseNetwork(in)
		if err != nil || got.String() != want {
			t.Errorf("%s: %v %v, want %s", in, got, err, want)
		}
		if got.Addr().Is4() && !got.Contains(netip.MustParseAddr(strings.Split(want, "/")[0])) {
			t.Errorf("%s does not contain its own address", in)
		}
	}
	for _, bad := range []string{"::ffff:0:0/80", "10.0.0.0/33", "fe80::1%eth0", "nonsense"} {
		if _, err := ParseNetwork(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// TestUnreadableFileNamedOnce: a config that cannot be read names the
// file once, with the reason ("open X: open X: ..." before).
func TestUnreadableFileNamedOnce(t *testing.T) {
	for _, path := range []string{t.TempDir(), filepath.Join(t.TempDir(), "missing.yaml")} {
		_, err := Load(path)
		if err == nil {
			t.Fatalf("%s loaded", path)
		}
		if msg := err.Error(); strings.Count(msg, path) != 1 || !strings.HasPrefix(msg, path+": cannot ") {
			t.Errorf("error %q: want the file named once, then why", msg)
		}
	}
}
