package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// tenantConfig has the default domain and two tenants, each with an
// extension 100 and 101 and a SIP username 100 of its own.
const tenantConfig = `sip:
  domain: example.com
  listen:
    - {transport: udp, address: "127.0.0.1:0"}
  trusted_networks: %s
http: {listen: "127.0.0.1:0", token: admin}
state_dir: %s
tenants:
  - {domain: a.example, token: token-a}
  - {domain: b.example, realm: "B Corp", token: token-b}
users:
  - {id: root100, name: Root, extensions: ["100"], sip: {username: "100", password: p0}}
  - {id: a100, name: Anna, tenant: a.example, extensions: ["100"], sip: {username: "100", password: pa}}
  - {id: a101, name: Abe, tenant: a.example, extensions: ["101"]}
  - {id: b100, name: Bea, tenant: b.example, extensions: ["100"], sip: {username: "100", password: pb}}
  - {id: b101, name: Bob, tenant: b.example, extensions: ["101"]}
lists:
  - {name: team, tenant: a.example, members: ["100", "101"]}
`

func startTenants(t *testing.T, trusted string, edits ...string) (sipAddr, api string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "lamplighter.yaml")
	cfg := strings.NewReplacer(edits...).Replace(fmt.Sprintf(tenantConfig, trusted, filepath.Join(dir, "state")))
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out, httpAddr := runInProcess(t, path)
	sipAddr = regexp.MustCompile(`"sip listening".* transport=udp address=(\S+)`).FindStringSubmatch(out.String())[1]
	return sipAddr, "http://" + httpAddr + "/api/v1"
}

// TestTenantsAreKeptApart: with tenants, a presentity is ext@domain: each
// tenant's 100 is its own person, found only at its domain; an unknown
// domain is no one's (404); a watcher authenticates in the realm of the
// domain it subscribes in, with that tenant's credentials, and cannot
// reach another tenant by the Request-URI, the To or another realm.
func TestTenantsAreKeptApart(t *testing.T) {
	sipAddr, _ := startTenants(t, "[]")
	sub := func(user, pass, domain, target string) (int, *watcher) {
		t.Helper()
		w := newWatcher(t, "UDP")
		w.username, w.password, w.fromUser, w.domain = user, pass, user, domain
		w.fromDomain = domain
		res := w.subscribe(sipAddr, target, "presence", 600)
		return res.StatusCode, w
	}
	// Each tenant's 100 watches its own 101, in its own realm.
	for _, c := range []struct{ pass, domain, name string }{{"pa", "a.example", "Abe"}, {"pb", "b.example", "Bob"}} {
		code, w := sub("100", c.pass, c.domain, "101")
		if code != 200 {
			t.Fatalf("100@%s watching 101: %d", c.domain, code)
		}
		w.notifyWhere("sip:101@"+c.domain, 5*time.Second)
	}
	// The default domain, by name or by address, is the default's.
	if code, _ := sub("100", "p0", "example.com", "100"); code != 200 {
		t.Errorf("100 of the default domain: %d", code)
	}
	if code, _ := sub("100", "p0", "", "100"); code != 200 {
		t.Errorf("100 of the default domain at the server's address: %d", code)
	}
	// Crossing: a's password at b's domain (b's realm, b's 100) fails, a
	// domain that is no tenant's is not found.
	if code, _ := sub("100", "pa", "b.example", "101"); code == 200 {
		t.Error("a.example's credentials let a watcher into b.example")
	}
	if code, _ := sub("100", "pa", "c.example", "101"); code != 404 && code != 401 {
		t.Errorf("an unknown domain: %d, want 404 (or 401 for a.example's password in the default realm)", code)
	}
	if code, _ := sub("100", "p0", "c.example", "101"); code != 404 {
		t.Errorf("an unknown domain: %d, want 404", code)
	}
	// The To names another tenant than the Request-URI.
	w := newWatcher(t, "UDP")
	w.username, w.password, w.fromUser, w.domain, w.fromDomain, w.toDomain = "100", "pa", "100", "a.example", "a.example", "b.example"
	if res := w.subscribe(sipAddr, "101", "presence", 600); res.StatusCode != 403 {
		t.Errorf("To in b.example, Request-URI in a.example: %d, want 403", res.StatusCode)
	}
	// The challenge names the tenant's realm.
	w = newWatcher(t, "UDP")
	w.domain, w.fromDomain = "b.example", "b.example"
	res := w.subscribe(sipAddr, "101", "presence", 600)
	if h := res.GetHeader("WWW-Authenticate"); res.StatusCode != 401 || h == nil || !strings.Contains(h.Value(), `realm="B Corp"`) {
		t.Errorf("challenge at b.example: %d %v", res.StatusCode, h)
	}
}

// TestTenantsFromTrustedNetworks: from a trusted network no password is
// asked, but the From still belongs to a tenant: a request whose From is
// in one tenant and Request-URI in another is refused.
func TestTenantsFromTrustedNetworks(t *testing.T) {
	sipAddr, _ := startTenants(t, "[127.0.0.0/8]")
	for _, c := range []struct {
		from, to string
		want     int
	}{
		{"a.example", "a.example", 200},
		{"b.example", "a.example", 403},
		{"a.example", "b.example", 403},
		{"example.com", "a.example", 403}, // the default domain's is no tenant's either
		{"phone.lan", "a.example", 200},   // a From that is no one's domain says nothing
	} {
		w := newWatcher(t, "UDP")
		w.domain, w.fromDomain = c.to, c.from
		if res := w.subscribe(sipAddr, "101", "dialog", 600); res.StatusCode != c.want {
			t.Errorf("From %s, Request-URI %s: %d, want %d", c.from, c.to, res.StatusCode, c.want)
		}
	}
	// A tenant's list holds its own people.
	w := newWatcher(t, "UDP")
	w.domain, w.fromDomain = "a.example", "a.example"
	w.extra = []sip.Header{sip.NewHeader("Supported", "eventlist")}
	if res := w.subscribe(sipAddr, "team", "dialog", 600); res.StatusCode != 200 {
		t.Fatalf("a.example's list: %d", res.StatusCode)
	}
	n := w.notifyWhere("sip:101@a.example", 5*time.Second)
	if b := string(n.Body()); !strings.Contains(b, "sip:100@a.example") {
		t.Errorf("a.example's list:\n%s", b)
	}
	w = newWatcher(t, "UDP")
	w.domain, w.fromDomain = "b.example", "b.example"
	w.extra = []sip.Header{sip.NewHeader("Supported", "eventlist")}
	if res := w.subscribe(sipAddr, "team", "dialog", 600); res.StatusCode != 404 {
		t.Errorf("a.example's list at b.example: %d, want 404", res.StatusCode)
	}
}

// TestTenantTokens: a tenant's API token reads and sets only its own
// people; the switchboard, open to anyone, shows no tenant's people.
func TestTenantTokens(t *testing.T) {
	_, api := startTenants(t, "[]")
	ids := func(token string) []string {
		t.Helper()
		code, body := apiDo(t, "GET", api+"/users", token, "")
		if code != 200 {
			t.Fatalf("GET users: %d %s", code, body)
		}
		var out apiUsers
		if err := json.Unmarshal([]byte(body), &out); err != nil {
			t.Fatal(err)
		}
		return out.ids()
	}
	if got := ids("token-a"); !slices.Equal(got, []string{"a100", "a101"}) {
		t.Errorf("a.example's token sees %v", got)
	}
	if got := ids("admin"); len(got) != 5 {
		t.Errorf("the token sees %v", got)
	}
	for _, c := range []struct {
		method, path, token string
		want                int
	}{
		{"GET", "/users/100", "token-a", 200}, // its own 100
		{"GET", "/users/b100", "token-a", 404},
		{"PUT", "/users/a101/presence", "token-a", 200},
		{"PUT", "/users/b101/presence", "token-a", 404},
		{"PUT", "/users/root100/presence", "token-a", 404},
		{"POST", "/reload", "token-a", 403},
		{"GET", "/discovery", "token-b", 403},
	} {
		body := ""
		if c.method == "PUT" {
			body = `{"activity":"meeting"}`
		}
		if code, got := apiDo(t, c.method, api+c.path, c.token, body); code != c.want {
			t.Errorf("%s %s with %s: %d, want %d (%s)", c.method, c.path, c.token, code, c.want, got)
		}
	}
	if code, body := apiDo(t, "GET", api+"/users/100", "token-a", ""); code != 200 || !strings.Contains(body, `"id": "a100"`) {
		t.Errorf("100 for a.example's token: %s", body)
	}
	// The metrics name no one, of any tenant.
	code, metrics := apiDo(t, "GET", strings.TrimSuffix(api, "/api/v1")+"/metrics", "", "")
	for _, name := range []string{"a100", "b101", "Anna", "Bea", "a.example", "b.example"} {
		if code != 200 || strings.Contains(metrics, name) {
			t.Errorf("/metrics (%d) names %q", code, name)
		}
	}
}

// TestTenantThatSeesAnother: a tenant the YAML lets see another's people
// (a head office and its branch) watches them, logging in as
// username@its-domain (or, from a trusted network, by its From); the
// other way round stays refused.
func TestTenantThatSeesAnother(t *testing.T) {
	see := []string{`{domain: b.example, realm: "B Corp", token: token-b}`, `{domain: b.example, realm: "B Corp", token: token-b, sees: [a.example]}`}
	sipAddr, _ := startTenants(t, "[]", see...)
	sub := func(user, pass, from, domain string) int {
		t.Helper()
		w := newWatcher(t, "UDP")
		w.username, w.password, w.fromUser, w.domain, w.fromDomain = user, pass, "100", domain, from
		return w.subscribe(sipAddr, "101", "presence", 600).StatusCode
	}
	if code := sub("100@b.example", "pb", "b.example", "a.example"); code != 200 {
		t.Errorf("b's 100 at a's 101 (b sees a): %d", code)
	}
	if code := sub("100@a.example", "pa", "a.example", "b.example"); code == 200 {
		t.Error("a's 100 at b's 101: a does not see b")
	}
	if code := sub("100", "pb", "b.example", "a.example"); code == 200 {
		t.Error("b's password as a's 100 at a's domain")
	}

	trustedAddr, _ := startTenants(t, "[127.0.0.0/8]", see...)
	for _, c := range []struct {
		from, to string
		want     int
	}{{"b.example", "a.example", 200}, {"a.example", "b.example", 403}} {
		w := newWatcher(t, "UDP")
		w.domain, w.fromDomain = c.to, c.from
		if res := w.subscribe(trustedAddr, "101", "dialog", 600); res.StatusCode != c.want {
			t.Errorf("trusted, From %s, Request-URI %s: %d, want %d", c.from, c.to, res.StatusCode, c.want)
		}
	}
}

// readSnapshot opens the switchboard's event stream at url and returns
// the ids of the users its first snapshot shows (or the status code).
func readSnapshot(t *testing.T, url string) ([]string, int) {
	t.Helper()
	data, code := firstData(t, url)
	if code != 200 {
		return nil, code
	}
	var m struct {
		Users []struct {
			ID string `json:"id"`
		} `json:"users"`
	}
	if err := json.Unmarshal([]byte(data), &m); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, u := range m.Users {
		ids = append(ids, u.ID)
	}
	slices.Sort(ids)
	return ids, 200
}

// firstEvent is the data of the first event on a switchboard stream.
func firstEvent(t *testing.T, url string) string {
	t.Helper()
	data, code := firstData(t, url)
	if code != 200 {
		t.Fatalf("%s: %d", url, code)
	}
	return data
}

// firstData reads an event stream's first event's data, or its status.
func firstData(t *testing.T, url string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return "", res.StatusCode
	}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			return data, 200
		}
	}
	t.Fatal("no snapshot on the stream")
	return "", 0
}

// TestTenantSwitchboards: the open switchboard shows the default domain's
// people only; signed in with a tenant's token (a stream ticket, since a
// browser's stream sends no Authorization) it shows that tenant's, and
// with the API token everyone; a forged ticket is refused.
func TestTenantSwitchboards(t *testing.T) {
	_, api := startTenants(t, "[]")
	events := strings.TrimSuffix(api, "/api/v1") + "/events"
	ticket := func(token string) string {
		t.Helper()
		code, body := apiDo(t, "POST", api+"/stream-ticket", token, "")
		var out struct{ Ticket string }
		if err := json.Unmarshal([]byte(body), &out); code != 200 || err != nil {
			t.Fatalf("stream ticket: %d %s", code, body)
		}
		return out.Ticket
	}
	for _, c := range []struct {
		name, url string
		want      []string
	}{
		{"open", events, []string{"root100"}},
		{"a.example's token", events + "?ticket=" + ticket("token-a"), []string{"a100", "a101"}},
		{"b.example's token", events + "?ticket=" + ticket("token-b"), []string{"b100", "b101"}},
		{"the API token", events + "?ticket=" + ticket("admin"), []string{"a100", "a101", "b100", "b101", "root100"}},
	} {
		if got, code := readSnapshot(t, c.url); code != 200 || !slices.Equal(got, c.want) {
			t.Errorf("%s: %d %v, want %v", c.name, code, got, c.want)
		}
	}
	forged := ticket("token-a")
	forged = strings.Replace(forged, forged[:4], "AAAA", 1)
	if _, code := readSnapshot(t, events+"?ticket="+forged); code != 401 {
		t.Errorf("a forged ticket: %d, want 401", code)
	}
}
