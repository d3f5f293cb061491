package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/cluster/natstest"
)

// clusterNode writes the config of one Lamplighter node of a cluster on
// the NATS servers urls and starts it in this process; it returns the
// SIP and HTTP addresses.
func clusterNode(t *testing.T, name string, urls []string) (sipAddr, httpAddr string) {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`sip:
  domain: cluster.test
  listen:
    - {transport: udp, address: "127.0.0.1:0"}
  trusted_networks: [127.0.0.0/8]
http: {listen: "127.0.0.1:0", token: s3cret}
state_dir: %s
cluster:
  node: %s
  urls: [%s]
  replicas: %d
  lease_ttl: 3s
users:
  - {id: debbie, name: Debbie Harry, extensions: ["100"]}
  - {id: bob, name: Bob, extensions: ["101"]}
`, filepath.Join(dir, "state"), name, strings.Join(urls, ", "), len(urls))
	path := filepath.Join(dir, "lamplighter.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out, httpAddr := runInProcess(t, path)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("node %s:\n%s", name, out.String())
		}
	})
	waitFor(t, out, "cluster person states read", 20*time.Second)
	m := regexp.MustCompile(`"sip listening".* transport=udp address=(\S+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no SIP address in the log:\n%s", out.String())
	}
	return m[1], httpAddr
}

// readyCluster returns the cluster part of a node's /readyz.
func readyCluster(t *testing.T, httpAddr string) string {
	t.Helper()
	_, body := apiDo(t, "GET", "http://"+httpAddr+"/readyz", "", "")
	return body
}

// TestClusterSharesPersonState: two nodes on a three-server NATS cluster.
// A person state set through node B's API reaches a watcher held by node
// C; with one NATS server down nothing shows; with all of them down both
// nodes keep serving, /readyz says degraded, and what B takes meanwhile
// reaches C's watcher once NATS is back.
func TestClusterSharesPersonState(t *testing.T) {
	nats := natstest.Start(t, 3)
	t.Cleanup(func() {
		if t.Failed() {
			t.Log(nats.Logs())
		}
	})
	_, httpB := clusterNode(t, "b", nats.URLs())
	sipC, httpC := clusterNode(t, "c", nats.URLs())
	apiB := "http://" + httpB + "/api/v1/users/100/presence"

	w := newWatcher(t, "UDP")
	if res := w.subscribe(sipC, "100", "presence", 600); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE on node c: %d", res.StatusCode)
	}
	w.notifyWhere("active", 5*time.Second)

	set := func(note string) {
		t.Helper()
		if code, body := apiDo(t, "PUT", apiB, "s3cret", `{"activity":"dnd","note":"`+note+`"}`); code != 200 {
			t.Fatalf("PUT presence on node b: %d %s", code, body)
		}
	}
	set("Quarterly close")
	w.notifyWhere("Quarterly close", 5*time.Second)
	for _, addr := range []string{httpB, httpC} {
		waitReady(t, addr, `"degraded":false`, `"members":["b","c"]`)
	}

	// A NATS server down: JetStream elects new leaders for what it led
	// (nats-server 2.9 takes up to about 15 s), and the write waits in
	// node b's queue meanwhile.
	nats.Stop(0)
	set("One server down")
	w.notifyWhere("One server down", 40*time.Second)

	nats.StopAll()
	waitReady(t, httpB, `"degraded":true`)
	set("Engine away")
	if code, body := apiDo(t, "GET", "http://"+httpB+"/api/v1/users/100", "s3cret", ""); code != 200 || !strings.Contains(body, "Engine away") {
		t.Errorf("node b with NATS down: %d %s", code, body)
	}
	nats.StartAll()
	w.notifyWhere("Engine away", 40*time.Second)
	waitReady(t, httpC, `"degraded":false`)
}

// waitReady waits until a node's /readyz holds every one of want.
func waitReady(t *testing.T, httpAddr string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		body := readyCluster(t, httpAddr)
		ok := true
		for _, w := range want {
			ok = ok && strings.Contains(body, w)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz of %s lacks %q: %s", httpAddr, want, body)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
