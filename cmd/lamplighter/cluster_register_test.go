package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/cluster/natstest"
)

// send sends one out-of-dialog request of method to user@server from the
// watcher's socket (a fresh Call-ID unless callID is given) and returns
// the final response.
func (w *watcher) send(method sip.RequestMethod, server, user, callID string, cseq uint32, headers []sip.Header, body string) *sip.Response {
	w.t.Helper()
	host, port, _ := net.SplitHostPort(server)
	n, _ := strconv.Atoi(port)
	req := sip.NewRequest(method, sip.Uri{Scheme: "sip", User: user, Host: host, Port: n})
	from := &sip.FromHeader{Address: sip.Uri{Scheme: "sip", User: user, Host: host}, Params: sip.NewParams()}
	from.Params.Add("tag", sip.GenerateTagN(10))
	req.AppendHeader(from)
	req.AppendHeader(&sip.ToHeader{Address: sip.Uri{Scheme: "sip", User: user, Host: host}, Params: sip.NewParams()})
	if callID == "" {
		callID = sip.GenerateTagN(16) + "@watcher"
	}
	cid := sip.CallIDHeader(callID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: cseq, MethodName: method})
	for _, h := range headers {
		req.AppendHeader(h)
	}
	if body != "" {
		req.SetBody([]byte(body))
	}
	req.Laddr = sip.Addr{IP: net.IPv4(127, 0, 0, 1), Port: w.port}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := w.client.Do(ctx, req)
	if err != nil {
		w.t.Fatalf("%s to %s: %v", method, server, err)
	}
	return res
}

// contacts lists the Contact values of a response.
func contacts(res *sip.Response) string {
	var out []string
	for _, h := range res.GetHeaders("Contact") {
		out = append(out, h.Value())
	}
	return strings.Join(out, ", ")
}

// TestClusterSharesRegistrationsAndPublications: what a phone or a soft
// client registered or published through node B holds on node C, as a
// failover or a moved virtual IP would have it: C's 200 to a REGISTER
// lists B's binding and C takes the refresh of B's publication (a new
// entity tag; the watcher's state unchanged), after which B refuses the
// old tag (412); a Contact: * on C removes the binding on B too.
func TestClusterSharesRegistrationsAndPublications(t *testing.T) {
	nats := natstest.Start(t, 1)
	sipB, httpB := clusterNode(t, "b", nats.URLs())
	sipC, _ := clusterNode(t, "c", nats.URLs())

	phone := newWatcher(t, "UDP")
	line := "<sip:line@127.0.0.1:" + strconv.Itoa(phone.port) + ">"
	reg := func(server string, cseq uint32, contact, expires string) *sip.Response {
		t.Helper()
		hs := []sip.Header{sip.NewHeader("Expires", expires)}
		if contact != "" {
			hs = append(hs, sip.NewHeader("Contact", contact))
		}
		res := phone.send(sip.REGISTER, server, "100", "reg-"+strconv.Itoa(phone.port)+"@watcher", cseq, hs, "")
		if res.StatusCode != 200 {
			t.Fatalf("REGISTER to %s: %d %s", server, res.StatusCode, res.Reason)
		}
		return res
	}
	if res := reg(sipB, 1, line, "600"); !strings.Contains(contacts(res), "sip:line@") {
		t.Fatalf("B's 200 lists %q", contacts(res))
	}
	// A query (no Contact) to C lists the binding once C has it.
	waitUntil(t, 10*time.Second, "C lists B's binding", func() bool {
		return strings.Contains(contacts(reg(sipC, 2, "", "600")), "sip:line@")
	})

	w := newWatcher(t, "UDP")
	if res := w.subscribe(sipC, "100", "presence", 600); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE on C: %d", res.StatusCode)
	}
	w.notifyWhere("active", 5*time.Second)

	pidf := func(note string) string {
		return `<?xml version="1.0" encoding="UTF-8"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:100@cluster.test">
<tuple id="t1"><status><basic>open</basic></status></tuple>
<note>` + note + `</note></presence>`
	}
	publish := func(server string, cseq uint32, match, expires, body string) *sip.Response {
		t.Helper()
		hs := []sip.Header{sip.NewHeader("Event", "presence"), sip.NewHeader("Expires", expires)}
		if match != "" {
			hs = append(hs, sip.NewHeader("SIP-If-Match", match))
		}
		if body != "" {
			hs = append(hs, sip.NewHeader("Content-Type", "application/pidf+xml"))
		}
		return phone.send(sip.PUBLISH, server, "100", "", cseq, hs, body)
	}
	res := publish(sipB, 1, "", "600", pidf("Board meeting"))
	if res.StatusCode != 200 {
		t.Fatalf("PUBLISH to B: %d", res.StatusCode)
	}
	tagB := res.GetHeader("SIP-ETag").Value()
	w.notifyWhere("Board meeting", 5*time.Second) // C has the state now

	appliedOnB := metric(t, httpB, "lamplighter_cluster_applied_total")
	res = publish(sipC, 2, tagB, "600", "")
	if res.StatusCode != 200 {
		t.Fatalf("refresh of B's publication on C: %d %s", res.StatusCode, res.Reason)
	}
	tagC := res.GetHeader("SIP-ETag").Value()
	if tagC == "" || tagC == tagB {
		t.Fatalf("C's refresh gave entity tag %q (B's %q)", tagC, tagB)
	}
	// Once B has applied C's two changes (the new tag's state set, the
	// old one's cleared), B refuses the replaced tag.
	waitUntil(t, 10*time.Second, "B applies C's refresh", func() bool { return metric(t, httpB, "lamplighter_cluster_applied_total") >= appliedOnB+2 })
	if res := publish(sipB, 3, tagB, "600", ""); res.StatusCode != 412 {
		t.Fatalf("refresh on B of the tag C replaced: %d, want 412", res.StatusCode)
	}
	// The state never went away meanwhile, and the tag C gave works on B.
	if res := publish(sipB, 4, tagC, "0", ""); res.StatusCode != 200 {
		t.Fatalf("removal on B of C's publication: %d", res.StatusCode)
	}
	for {
		n := w.nextNotify(5 * time.Second)
		if !strings.Contains(string(n.Body()), "Board meeting") {
			break
		}
	}

	// A Contact: * through C removes the binding on B.
	if res := reg(sipC, 3, "*", "0"); contacts(res) != "" {
		t.Fatalf("C's 200 to Contact: * lists %q", contacts(res))
	}
	waitUntil(t, 10*time.Second, "B has no binding left", func() bool {
		return contacts(reg(sipB, 4, "", "600")) == ""
	})
}

// waitUntil polls cond until it holds, failing the test after within.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestClusterSharesTheProxyKey: in proxy mode every node signs Paths and
// Record-Routes with one key: the first node's own becomes the cluster's,
// the next node takes it in place of its own (and keeps it in its state
// directory, for a start while NATS is away).
func TestClusterSharesTheProxyKey(t *testing.T) {
	nats := natstest.Start(t, 1)
	var dirs []string
	for _, name := range []string{"b", "c"} {
		dir := t.TempDir()
		cfg := clusterConfig(t, dir, name, nats.URLs(), "3s", "")
		src, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		// Every node proxies the phones to the same PBX.
		withProxy := string(src) + "pbx:\n  - {name: pbx, kind: sip, proxy: {address: \"127.0.0.1:5060\"}}\n"
		if err := os.WriteFile(cfg, []byte(withProxy), 0o644); err != nil {
			t.Fatal(err)
		}
		out, _ := runInProcess(t, cfg)
		want := "this node's key is the cluster's"
		if name == "c" {
			want = "taking the cluster's key in place of this node's"
		}
		waitFor(t, out, want, 10*time.Second)
		dirs = append(dirs, filepath.Join(dir, "state"))
	}
	key := func(dir string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, "proxy-token.key"))
		if err != nil || len(b) != 32 {
			t.Fatalf("%s: %d bytes, %v", dir, len(b), err)
		}
		return b
	}
	if !bytes.Equal(key(dirs[0]), key(dirs[1])) {
		t.Error("the nodes keep different token keys")
	}
}

// TestClusterNodesRegisterTheirOwnARIApp: Asterisk gives an ARI
// application's events to its last websocket only, so nodes sharing one
// YAML (app: lamplighter) would take them from each other: each node
// registers the application under its own name. Both nodes are stopped
// at the end: a node of a cluster with an ARI PBX (whose dnd mirror it
// runs) once overflowed its stack stopping.
func TestClusterNodesRegisterTheirOwnARIApp(t *testing.T) {
	nats := natstest.Start(t, 1)
	apps := make(chan string, 16)
	asterisk := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ari/events" {
			select {
			case apps <- r.URL.Query().Get("app"):
			default:
			}
		}
		http.Error(w, "not here", http.StatusServiceUnavailable)
	}))
	t.Cleanup(asterisk.Close)
	for _, name := range []string{"b", "c"} {
		cfg := clusterConfig(t, t.TempDir(), name, nats.URLs(), "3s", "")
		src, err := os.ReadFile(cfg)
		if err != nil {
			t.Fatal(err)
		}
		withARI := string(src) + "pbx:\n  - {name: ast, kind: ari, address: \"" + asterisk.URL +
			"\", username: u, password: p, ari: {app: lamplighter}}\n"
		if err := os.WriteFile(cfg, []byte(withARI), 0o644); err != nil {
			t.Fatal(err)
		}
		runInProcess(t, cfg)
	}
	seen := map[string]bool{}
	deadline := time.After(10 * time.Second)
	for !seen["lamplighter-b"] || !seen["lamplighter-c"] {
		select {
		case app := <-apps:
			if app != "lamplighter-b" && app != "lamplighter-c" {
				t.Fatalf("a node registered ARI application %q", app)
			}
			seen[app] = true
		case <-deadline:
			t.Fatalf("ARI applications registered: %v, want lamplighter-b and lamplighter-c", seen)
		}
	}
}
