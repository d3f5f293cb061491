package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

const reloadBase = `sip:
  domain: reload.test
  listen:
    - {transport: udp, address: "127.0.0.1:0"}
  trusted_networks: [127.0.0.0/8]
http: {listen: "127.0.0.1:0", token: s3cret}
state_dir: %s
users:
`

// TestReloadWhileSubscribed: a reload that adds, changes and removes
// users ends only the removed user's subscriptions (noresource), keeps
// the others, and makes the added user reachable; a BLF list's
// subscriber gets the list's new members in full; a broken file, by the
// API or by SIGHUP, changes nothing and names file and line.
func TestReloadWhileSubscribed(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "lamplighter.yaml")
	write := func(users string) {
		t.Helper()
		if err := os.WriteFile(path, []byte(fmt.Sprintf(reloadBase, filepath.Join(dir, "state"))+users), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`  - {id: debbie, name: Debbie, extensions: ["100"]}
  - {id: bob, name: Bob, extensions: ["101"]}
lists:
  - {name: team, members: [debbie, bob]}
`)
	out, httpAddr := runInProcess(t, path)
	sipAddr := regexp.MustCompile(`"sip listening".* transport=udp address=(\S+)`).FindStringSubmatch(out.String())[1]
	api := "http://" + httpAddr + "/api/v1"

	debbie, bob := newWatcher(t, "UDP"), newWatcher(t, "UDP")
	for _, w := range []struct {
		w    *watcher
		user string
	}{{debbie, "100"}, {bob, "101"}} {
		if res := w.w.subscribe(sipAddr, w.user, "presence", 600); res.StatusCode != 200 {
			t.Fatalf("subscribe to %s: %d", w.user, res.StatusCode)
		}
		w.w.notifyWhere("active", 5*time.Second)
	}
	team := newWatcher(t, "UDP")
	team.extra = []sip.Header{sip.NewHeader("Supported", "eventlist")}
	if res := team.subscribe(sipAddr, "team", "dialog", 600); res.StatusCode != 200 {
		t.Fatalf("subscribe to the list: %d", res.StatusCode)
	}
	team.notifyWhere(`<name>Bob</name>`, 5*time.Second)

	if code, _ := apiDo(t, "POST", api+"/reload", "wrong", ""); code != 401 {
		t.Errorf("reload with a wrong token: %d, want 401", code)
	}
	// Bob leaves, Carol joins, Debbie gets a new name.
	write(`  - {id: debbie, name: Debbie Harry, extensions: ["100"]}
  - {id: carol, name: Carol King, extensions: ["102"]}
lists:
  - {name: team, members: [debbie, carol]}
`)
	code, body := apiDo(t, "POST", api+"/reload", "s3cret", "")
	if code != 200 || !strings.Contains(body, `"added": [
    "carol"`) || !strings.Contains(body, `"removed": [
    "bob"`) || !strings.Contains(body, `"changed": [
    "debbie"`) {
		t.Fatalf("reload: %d %s", code, body)
	}
	bob.notifyWhere("terminated;reason=noresource", 5*time.Second)
	n := team.notifyWhere(`<name>Carol King</name>`, 5*time.Second)
	if b := string(n.Body()); !strings.Contains(b, `fullState="true"`) || strings.Contains(b, "sip:101@") ||
		!strings.Contains(b, `<name>Debbie Harry</name>`) {
		t.Errorf("the list after the reload:\n%s", b)
	}
	if res := debbie.subscribe("", "", "", 600); res.StatusCode != 200 {
		t.Errorf("debbie's subscription after the reload: refresh got %d", res.StatusCode)
	}
	debbie.notifyWhere("active", 5*time.Second)
	carol := newWatcher(t, "UDP")
	if res := carol.subscribe(sipAddr, "102", "presence", 600); res.StatusCode != 200 {
		t.Errorf("subscribe to the added user: %d", res.StatusCode)
	}

	// A broken file: two users on one extension (line 10), and an
	// unknown key (line 11).
	write(`  - {id: debbie, name: Debbie Harry, extensions: ["100"]}
  - {id: carol, name: Carol King, extensions: ["100"]}
  - {id: dan, name: Dan, extensions: ["103"], colour: blue}
`)
	code, body = apiDo(t, "POST", api+"/reload", "s3cret", "")
	for _, want := range []string{path + `:10: \"100\" is already used by user \"debbie\"`, path + `:11: unknown key \"colour\"`} {
		if code != 400 || !strings.Contains(body, want) {
			t.Errorf("broken reload: %d, want %s in %s", code, want, body)
		}
	}
	syscall.Kill(os.Getpid(), syscall.SIGHUP)
	waitFor(t, out, "reload rejected", 5*time.Second)
	// Nothing changed: Carol is still on 102, Dan does not exist.
	if res := carol.subscribe("", "", "", 600); res.StatusCode != 200 {
		t.Errorf("carol's subscription after a broken reload: %d", res.StatusCode)
	}
	if code, _ := apiDo(t, "GET", api+"/users/dan", "s3cret", ""); code != 404 {
		t.Errorf("dan after a broken reload: %d, want 404", code)
	}
	if code, body := apiDo(t, "GET", api+"/users/102", "s3cret", ""); code != 200 || !strings.Contains(body, `"id": "carol"`) {
		t.Errorf("extension 102 after a broken reload: %d %s", code, body)
	}
}
