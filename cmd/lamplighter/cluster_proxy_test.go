package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/adapters/pbxtest"
	"github.com/lamplighter/lamplighter/cluster/natstest"
)

// TestClusterProxyFlowSurvivesFailover: in proxy mode a phone registers
// with the real Asterisk through node b, and its keys' SUBSCRIBEs stand
// on that registered flow (no network is trusted). Node b is killed and
// the phone's address for Lamplighter now reaches node c (as a virtual
// IP that moved would have it): c knows the flow and answers the key's
// SUBSCRIBE without a challenge; a phone that never registered is still
// challenged; and once the phone unregisters through c, c challenges it
// too.
func TestClusterProxyFlowSurvivesFailover(t *testing.T) {
	nats := natstest.Start(t, 1)
	bin := buildBinary(t)
	var ac pbxtest.Config
	ac.Apply(adapterSnippets(t, "asterisk", nil), "10.0.0.5", "127.0.0.1", "8088", "@HTTP_PORT@")
	ast := pbxtest.StartAsterisk(t, ac)

	node := func(name string) (*process, string, string) {
		dir := t.TempDir()
		cfg := fmt.Sprintf(`sip:
  domain: 127.0.0.1
  listen: [{transport: udp, address: "127.0.0.1:%d"}]
  trusted_networks: []
http: {listen: "127.0.0.1:%d", token: s3cret}
state_dir: %s
cluster: {node: %s, urls: [%s], lease_ttl: 2s}
pbx:
  - name: ast
    kind: ari
    address: %s
    username: lamplighter
    password: %s
    proxy: {address: %q}
users:
  - {id: u100, name: "User 100", extensions: ["100"], devices: [{pbx: ast, device: PJSIP/100}], sip: {username: "100", password: pw100}}
  - {id: u101, name: "User 101", extensions: ["101"], devices: [{pbx: ast, device: PJSIP/101}], sip: {username: "101", password: pw101}}
`, freePort(t), freePort(t), filepath.Join(dir, "state"), name, strings.Join(nats.URLs(), ", "),
			ast.ARI(), readmeARIPassword, ast.SIP())
		path := filepath.Join(dir, "lamplighter.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		p := start(t, bin, path)
		sipAddr, httpAddr := addrs(t, p)
		return p, sipAddr, httpAddr
	}
	b, sipB, httpB := node("b")
	_, sipC, httpC := node("c")
	settled(t, httpB)
	settled(t, httpC)

	// Asterisk's phones: user = password = extension.
	phone := newSIPPhone(t, "100", "100", "127.0.0.1", sipB)
	if res := phone.register("127.0.0.1", 300); res.StatusCode != 200 {
		t.Fatalf("REGISTER through node b: %d %s", res.StatusCode, res.Reason)
	}
	phone.pass = "" // from now on the registered flow stands for it
	key := func(at string) int {
		phone.outbound = at
		phone.subCallID, phone.subFrom, phone.subCSeq = sip.GenerateTagN(16)+"@phone", sip.GenerateTagN(10), 0
		return phone.subscribe(at, "101").StatusCode
	}
	if code := key(sipB); code != 200 {
		t.Fatalf("a key's SUBSCRIBE on the flow registered through b, at b: %d", code)
	}

	b.kill()
	// c has the flow from the engine; what b wrote reached c at once,
	// but give a loaded machine its time.
	var code int
	waitUntil(t, 10*time.Second, "c knows the flow", func() bool { code = key(sipC); return code == 200 })

	stranger := newSIPPhone(t, "101", "", "127.0.0.1", sipC)
	stranger.outbound = sipC
	if res := stranger.subscribe(sipC, "100"); res.StatusCode != 401 && res.StatusCode != 407 {
		t.Errorf("a phone that never registered, at c: %d, want a challenge", res.StatusCode)
	}

	phone.outbound, phone.pass = sipC, "100"
	if res := phone.register("127.0.0.1", 0); res.StatusCode != 200 {
		t.Fatalf("unREGISTER through node c: %d %s", res.StatusCode, res.Reason)
	}
	phone.pass = ""
	if code := key(sipC); code != 401 && code != 407 {
		t.Errorf("a key's SUBSCRIBE after the phone unregistered, at c: %d, want a challenge", code)
	}
}
