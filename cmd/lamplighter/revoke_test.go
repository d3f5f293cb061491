package main

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestReloadRevokesWatchers runs the real binary with digest-authenticated
// watchers (no trusted network): a reload that removes a watcher's SIP
// login ends that watcher's subscriptions with reason=rejected and refuses
// their refresh; a changed password ends them with reason=deactivated, and
// a new SUBSCRIBE with the new password is accepted; an unchanged watcher
// keeps its subscription. After a restart on a config that removed
// another watcher, that watcher's restored dialog ends the same way.
func TestReloadRevokesWatchers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	sipPort := freePort(t)
	config := filepath.Join(dir, "lamplighter.yaml")
	write := func(users string) {
		t.Helper()
		if err := os.WriteFile(config, []byte(fmt.Sprintf(`
sip:
  domain: revoke.test
  listen: [{transport: udp, address: "127.0.0.1:%d"}]
http: {listen: "127.0.0.1:%d"}
state_dir: %s
users:
  - {id: debbie, name: Debbie, extensions: ["100"]}
%s`, sipPort, freePort(t), filepath.Join(dir, "state"), users)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`  - {id: bob, name: Bob, extensions: ["101"], sip: {password: bob-1}}
  - {id: carol, name: Carol, extensions: ["102"], sip: {password: carol-1}}
  - {id: dan, name: Dan, extensions: ["103"], sip: {password: dan-1}}
  - {id: erin, name: Erin, extensions: ["104"], sip: {password: erin-1}}
`)
	server := fmt.Sprintf("127.0.0.1:%d", sipPort)
	p := start(t, bin, config)
	watch := func(user, password string) *watcher {
		w := newWatcher(t, "UDP")
		w.username, w.password = user, password
		if res := w.subscribe(server, "100", "dialog", 600); res.StatusCode != 200 {
			t.Fatalf("%s SUBSCRIBE: %d", user, res.StatusCode)
		}
		w.notifyWhere("active", 5*time.Second)
		return w
	}
	bob, carol, dan, erin := watch("bob", "bob-1"), watch("carol", "carol-1"), watch("dan", "dan-1"), watch("erin", "erin-1")
	// No credentials at all: challenged, never let in.
	stranger := newWatcher(t, "UDP")
	if res := stranger.subscribe(server, "100", "dialog", 600); res.StatusCode != 401 {
		t.Fatalf("SUBSCRIBE without credentials: %d, want 401", res.StatusCode)
	}

	// Bob's login is removed, Carol's password changes, Dan and Erin stay.
	write(`  - {id: bob, name: Bob, extensions: ["101"]}
  - {id: carol, name: Carol, extensions: ["102"], sip: {password: carol-2}}
  - {id: dan, name: Dan, extensions: ["103"], sip: {password: dan-1}}
  - {id: erin, name: Erin, extensions: ["104"], sip: {password: erin-1}}
`)
	p.cmd.Process.Signal(syscall.SIGHUP)
	bob.notifyWhere("terminated;reason=rejected", 5*time.Second)
	carol.notifyWhere("terminated;reason=deactivated", 5*time.Second)
	if res := bob.subscribe("", "", "", 600); res.StatusCode != 481 && res.StatusCode != 403 {
		t.Errorf("removed watcher's refresh: %d, want 481 or 403", res.StatusCode)
	}
	if res := dan.subscribe("", "", "", 600); res.StatusCode != 200 {
		t.Errorf("unchanged watcher's refresh: %d, want 200", res.StatusCode)
	}
	// Carol with her old password is refused; with the new one, welcome.
	old := newWatcher(t, "UDP")
	old.username, old.password = "carol", "carol-1"
	if res := old.subscribe(server, "100", "dialog", 600); res.StatusCode != 401 {
		t.Errorf("old password: %d, want 401", res.StatusCode)
	}
	watch("carol", "carol-2")

	// Wait until the store has it all, stop, remove Erin, start again.
	p.cmd.Process.Signal(syscall.SIGTERM)
	<-p.end
	write(`  - {id: carol, name: Carol, extensions: ["102"], sip: {password: carol-2}}
  - {id: dan, name: Dan, extensions: ["103"], sip: {password: dan-1}}
`)
	start(t, bin, config)
	erin.notifyWhere("terminated;reason=rejected", 5*time.Second)
	if res := erin.subscribe("", "", "", 600); res.StatusCode != 481 && res.StatusCode != 403 {
		t.Errorf("removed watcher's refresh after a restart: %d, want 481 or 403", res.StatusCode)
	}
	dan.notifyWhere("active", 5*time.Second)
	if res := dan.subscribe("", "", "", 600); res.StatusCode != 200 {
		t.Errorf("unchanged watcher's refresh after a restart: %d, want 200", res.StatusCode)
	}
}
