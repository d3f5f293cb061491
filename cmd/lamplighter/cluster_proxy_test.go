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
// with the real Asterisk, and with the real FreeSWITCH, through node b, and its keys' SUBSCRIBEs stand
// on that registered flow (no network is trusted). Node b is killed and
// the phone's address for Lamplighter now reaches node c (as a virtual
// IP that moved would have it): c knows the flow and answers the key's
// SUBSCRIBE without a challenge; a phone that never registered is still
// challenged; and once the phone unregisters through c, c challenges it
// too.
func TestClusterProxyFlowSurvivesFailover(t *testing.T) {
	nats := natstest.Start(t, 1)
	bin := buildBinary(t)
	for _, kind := range []string{"ari", "esl"} {
		t.Run(kind, func(t *testing.T) {
			// pbx is the PBX's entry in the YAML; ext and other are two
			// of its extensions, pass the phones' password there.
			var pbx, ext, other, pass, device string
			if kind == "ari" {
				var ac pbxtest.Config
				ac.Apply(adapterSnippets(t, "asterisk", nil), "10.0.0.5", "127.0.0.1", "8088", "@HTTP_PORT@")
				ast := pbxtest.StartAsterisk(t, ac)
				pbx = fmt.Sprintf("{name: pbx, kind: ari, address: %q, username: lamplighter, password: %q, proxy: {address: %q}}",
					ast.ARI(), readmeARIPassword, ast.SIP())
				ext, other, pass, device = "100", "101", "100", "PJSIP/%s" // user = password = extension
			} else {
				var fc pbxtest.Config
				fc.Apply(adapterSnippets(t, "freeswitch", nil), "10.0.0.6", "127.0.0.1", "10.0.0.9/32", "127.0.0.1/32",
					`"8021"`, `"@ESL_PORT@"`, readmeESLPassword, pbxtest.ESLPassword)
				fs := pbxtest.StartFreeSWITCH(t, fc)
				pbx = fmt.Sprintf("{name: pbx, kind: esl, address: %q, password: %q, proxy: {address: %q}}",
					fs.ESL(), pbxtest.ESLPassword, fs.SIP())
				ext, other, pass, device = "1000", "1001", "1234", "%s@"+pbxtest.Domain
			}
			user := func(e string) string {
				return fmt.Sprintf(`  - {id: u%s, name: "User %s", extensions: ["%s"], devices: [{pbx: pbx, device: %q}], sip: {username: "%s", password: pw%s}}`,
					e, e, e, fmt.Sprintf(device, e), e, e)
			}
			node := func(name string) (*process, string, string) {
				dir := t.TempDir()
				cfg := fmt.Sprintf(`sip:
  domain: 127.0.0.1
  listen: [{transport: udp, address: "127.0.0.1:%d"}]
  trusted_networks: []
http: {listen: "127.0.0.1:%d", token: s3cret}
state_dir: %s
cluster: {node: %s-%s, urls: [%s], lease_ttl: 2s, bucket_prefix: %s}
pbx:
  - %s
users:
%s
%s
`, freePort(t), freePort(t), filepath.Join(dir, "state"), kind, name, strings.Join(nats.URLs(), ", "), "lamplighter_"+kind,
					pbx, user(ext), user(other))
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

			phone := newSIPPhone(t, ext, pass, "127.0.0.1", sipB)
			if res := phone.register("127.0.0.1", 300); res.StatusCode != 200 {
				t.Fatalf("REGISTER through node b: %d %s", res.StatusCode, res.Reason)
			}
			phone.pass = "" // from now on the registered flow stands for it
			key := func(at string) int {
				phone.outbound = at
				phone.subCallID, phone.subFrom, phone.subCSeq = sip.GenerateTagN(16)+"@phone", sip.GenerateTagN(10), 0
				return phone.subscribe(at, other).StatusCode
			}
			if code := key(sipB); code != 200 {
				t.Fatalf("a key's SUBSCRIBE on the flow registered through b, at b: %d", code)
			}

			b.kill()
			// c has the flow from the engine; what b wrote reached c at
			// once, but give a loaded machine its time.
			waitUntil(t, 10*time.Second, "c knows the flow", func() bool { return key(sipC) == 200 })

			stranger := newSIPPhone(t, other, "", "127.0.0.1", sipC)
			stranger.outbound = sipC
			if res := stranger.subscribe(sipC, ext); res.StatusCode != 401 && res.StatusCode != 407 {
				t.Errorf("a phone that never registered, at c: %d, want a challenge", res.StatusCode)
			}

			phone.outbound, phone.pass = sipC, pass
			if res := phone.register("127.0.0.1", 0); res.StatusCode != 200 {
				t.Fatalf("unREGISTER through node c: %d %s", res.StatusCode, res.Reason)
			}
			phone.pass = ""
			if code := key(sipC); code != 401 && code != 407 {
				t.Errorf("a key's SUBSCRIBE after the phone unregistered, at c: %d, want a challenge", code)
			}
		})
	}
}
