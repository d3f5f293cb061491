package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/adapters/esl/esltest"
	"github.com/lamplighter/lamplighter/cluster/natstest"
)

// clusterNode starts one node of a cluster on the NATS servers urls in
// this process; it returns the SIP and HTTP addresses.
func clusterNode(t *testing.T, name string, urls []string) (sipAddr, httpAddr string) {
	t.Helper()
	out, httpAddr := runInProcess(t, clusterConfig(t, t.TempDir(), name, urls, "3s", ""))
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
	// The API (and so the switchboard) of node c shows it too.
	if code, body := apiDo(t, "GET", "http://"+httpC+"/api/v1/users/100", "s3cret", ""); code != 200 ||
		!strings.Contains(body, `"state": "dnd"`) || !strings.Contains(body, "Quarterly close") {
		t.Errorf("node c's API: %d %s", code, body)
	}
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
	// The outage's errors are gone from /readyz once the engine works.
	for _, addr := range []string{httpB, httpC} {
		waitUntil(t, 20*time.Second, addr+" without last_error", func() bool {
			return !strings.Contains(readyCluster(t, addr), `"last_error"`)
		})
	}
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

// clusterConfig writes a node's config in dir (kept across restarts):
// its own ports, a bucket replica per NATS server, two users; with
// eslAddr, a FreeSWITCH there (the node's own double of the same PBX)
// whose device 100@cluster.test is debbie's.
func clusterConfig(t *testing.T, dir, name string, urls []string, leaseTTL, eslAddr string) string {
	t.Helper()
	cfg := fmt.Sprintf(`sip:
  domain: cluster.test
  listen:
    - {transport: udp, address: "127.0.0.1:%d"}
  trusted_networks: [127.0.0.0/8]
http: {listen: "127.0.0.1:%d", token: s3cret}
state_dir: %s
cluster:
  node: %s
  urls: [%s]
  replicas: %d
  lease_ttl: %s
users:
  - {id: debbie, name: Debbie Harry, extensions: ["100"]}
  - {id: bob, name: Bob, extensions: ["101"]}
`, freePort(t), freePort(t), filepath.Join(dir, "state"), name, strings.Join(urls, ", "), len(urls), leaseTTL)
	if eslAddr != "" {
		cfg = strings.Replace(cfg, `  - {id: debbie, name: Debbie Harry, extensions: ["100"]}`,
			`  - {id: debbie, name: Debbie Harry, extensions: ["100"], devices: [{pbx: fs, device: "100@cluster.test"}]}`, 1)
		cfg += fmt.Sprintf("pbx:\n  - {name: fs, kind: esl, address: %q, password: ClueCon}\n", eslAddr)
	}
	path := filepath.Join(dir, "lamplighter.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// addrs reads a started node's SIP and HTTP addresses from its log.
func addrs(t *testing.T, p *process) (sipAddr, httpAddr string) {
	t.Helper()
	waitFor(t, p.out, "cluster reconciled", 20*time.Second)
	s := regexp.MustCompile(`"sip listening".* transport=udp address=(\S+)`).FindStringSubmatch(p.out.String())
	h := regexp.MustCompile(`"http listening" address=(\S+)`).FindStringSubmatch(p.out.String())
	if s == nil || h == nil {
		t.Fatalf("no addresses in the log:\n%s", p.out.String())
	}
	return s[1], h[1]
}

// nextNotify waits for the next NOTIFY of the watcher's dialog.
func (w *watcher) nextNotify(within time.Duration) *sip.Request {
	w.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case n := <-w.notifies:
			if n.CallID().Value() == w.callID {
				return n
			}
		case <-deadline:
			w.t.Fatalf("no NOTIFY within %v", within)
		}
	}
}

// sentBy reports whether a NOTIFY came from the node listening on sipAddr
// (its Contact, which a NOTIFY's sender sets to itself).
func sentBy(n *sip.Request, sipAddr string) bool {
	c := n.Contact()
	return c != nil && strings.HasSuffix(sipAddr, ":"+strconv.Itoa(c.Address.Port))
}

// TestClusterFailover: mid-call (both nodes follow the same PBX, here a
// double for each), the node holding a phone's subscription is killed
// (SIGKILL); the other node claims the dialog and NOTIFYs it in the same
// dialog within 2 s of the dead node's lease running out, showing the
// call, with CSeq and version going up and its own Contact, and the
// refresh sent there gets 200. The killed node, started again, forgets the dialog it lost
// without a word. Then the holder is stopped (SIGSTOP) past its lease: the
// other takes over, and once continued the stopped one sends nothing for
// the dialog it lost; a change then reaches the phone once, from the new
// owner.
func TestClusterFailover(t *testing.T) {
	nats := natstest.Start(t, 1)
	bin := buildBinary(t)
	const ttl = 2 * time.Second
	pbxB, pbxC := eslDouble(t), eslDouble(t)
	dirB, dirC := t.TempDir(), t.TempDir()
	cfgB := clusterConfig(t, dirB, "b", nats.URLs(), ttl.String(), pbxB.Addr())
	cfgC := clusterConfig(t, dirC, "c", nats.URLs(), ttl.String(), pbxC.Addr())
	b := start(t, bin, cfgB)
	sipB, httpB := addrs(t, b)
	c := start(t, bin, cfgC)
	sipC, httpC := addrs(t, c)
	for _, p := range []*esltest.Server{pbxB, pbxC} {
		if _, err := p.WaitLogin(10 * time.Second); err != nil {
			t.Fatal(err)
		}
	}

	w := newWatcher(t, "UDP")
	if res := w.subscribe(sipB, "100", "dialog", 600); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE on node b: %d", res.StatusCode)
	}
	w.nextNotify(5 * time.Second)
	// A call to debbie's phone, answered: the PBX tells both nodes.
	for _, p := range []*esltest.Server{pbxB, pbxC} {
		if err := p.Send(answeredCall("100@cluster.test")...); err != nil {
			t.Fatal(err)
		}
	}
	first := w.notifyWhere("confirmed", 5*time.Second)
	waitReady(t, httpB, `"dialogs_owned":1`)
	settled(t, httpC)

	killed := time.Now()
	b.kill()
	n := w.nextNotify(ttl + 5*time.Second)
	took := time.Since(killed)
	t.Logf("NOTIFY from the surviving node %v after the kill (lease TTL %v)", took.Round(time.Millisecond), ttl)
	if took > ttl+2*time.Second {
		t.Errorf("the takeover NOTIFY came %v after the kill: more than 2 s after the lease ran out", took)
	}
	if !strings.Contains(string(n.Body()), "<state>confirmed</state>") {
		t.Errorf("the takeover NOTIFY does not show the call:\n%s", n.Body())
	}
	if !sentBy(n, sipC) || n.CSeq().SeqNo <= first.CSeq().SeqNo {
		t.Errorf("takeover NOTIFY: Contact %v (node c is %s), CSeq %d after %d", n.Contact(), sipC, n.CSeq().SeqNo, first.CSeq().SeqNo)
	}
	if v1, err1 := dialogVersion(first); true {
		if v2, err2 := dialogVersion(n); err1 != nil || err2 != nil || v2 <= v1 {
			t.Errorf("dialog-info version %d then %d (%v %v)", v1, v2, err1, err2)
		}
	}
	w.server = sipC // the phone follows the Contact (target refresh)
	if res := w.subscribe("", "", "", 600); res.StatusCode != 200 {
		t.Fatalf("refresh at the new owner: %d, want 200", res.StatusCode)
	}
	w.nextNotify(5 * time.Second)
	waitReady(t, httpC, `"dialogs_owned":1`)
	if n := metric(t, httpC, "lamplighter_cluster_claims_total"); n != 1 {
		t.Errorf("node c counts %v claims, want 1", n)
	}

	// Node b comes back: it restores the dialog from its state file and
	// must forget it (c owns it) without a NOTIFY.
	b = start(t, bin, cfgB)
	sipB, httpB = addrs(t, b)
	waitFor(t, b.out, "dialogs taken over by another node: forgotten here", 5*time.Second)
	settled(t, httpB)

	// Node c stops (a long pause) past its lease; b takes over.
	if err := c.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	n = w.nextNotify(ttl + 5*time.Second)
	t.Logf("NOTIFY from node b %v after node c stopped", time.Since(stopped).Round(time.Millisecond))
	if !sentBy(n, sipB) {
		t.Fatalf("takeover NOTIFY not from node b (%s): Contact %v", sipB, n.Contact())
	}
	cseq := n.CSeq().SeqNo
	if err := c.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, c.out, "dropping its dialogs", 10*time.Second)
	// A change, set on node c: it reaches the phone once, from b.
	if code, body := apiDo(t, "PUT", "http://"+httpC+"/api/v1/users/100/presence", "s3cret", `{"activity":"dnd"}`); code != 200 {
		t.Fatalf("PUT presence on node c: %d %s", code, body)
	}
	n = w.nextNotify(10 * time.Second)
	if !sentBy(n, sipB) || n.CSeq().SeqNo <= cseq || !strings.Contains(string(n.Body()), "dnd") {
		t.Errorf("after the pause: Contact %v CSeq %d (after %d)\n%s", n.Contact(), n.CSeq().SeqNo, cseq, n.Body())
	}
	deadline := time.After(2 * time.Second)
	for {
		select {
		case extra := <-w.notifies:
			t.Errorf("a second NOTIFY (Contact %v, CSeq %d):\n%s", extra.Contact(), extra.CSeq().SeqNo, extra.Body())
		case <-deadline:
			return
		}
	}
}

// settled waits until a node has held its lease a whole TTL, as it must
// before it may declare another node dead: its lease renewals (every
// third of the TTL) say so.
func settled(t *testing.T, httpAddr string) {
	t.Helper()
	waitUntil(t, 20*time.Second, httpAddr+" holding its lease a whole TTL", func() bool {
		return metric(t, httpAddr, "lamplighter_cluster_lease_renewals_total") >= 5
	})
}

// eslDouble is a FreeSWITCH event socket double on loopback.
func eslDouble(t *testing.T) *esltest.Server {
	t.Helper()
	s, err := esltest.Listen("127.0.0.1:0", "ClueCon")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// answeredCall is FreeSWITCH's event for a call from 2000 to the phone
// whose presence id is device, answered.
func answeredCall(device string) []string {
	now := strconv.FormatInt(time.Now().UnixMicro(), 10)
	user, _, _ := strings.Cut(device, "@")
	return []string{
		"Event-Name", "CHANNEL_ANSWER",
		"Event-Date-Timestamp", now,
		"Channel-Call-State", "ACTIVE",
		"Channel-Name", "sofia/internal/" + user + "@127.0.0.1:5090",
		"Unique-ID", "6c1a0001-10ad-4000-8000-000000000001",
		"Call-Direction", "outbound",
		"Channel-Presence-ID", device,
		"Answer-State", "answered",
		"Caller-Caller-ID-Name", "Cluster Caller",
		"Caller-Caller-ID-Number", "2000",
		"Caller-Callee-ID-Number", user,
		"Caller-Channel-Created-Time", now,
		"Caller-Channel-Answered-Time", now,
		"variable_sip_call_id", "call-1@cluster.test",
		"variable_sip_to_tag", "phone-tag",
		"variable_sip_from_tag", "pbx-tag",
	}
}

// TestClusterRollingRestartKeepsRefreshes: three nodes restarted one
// after the other with SIGTERM, as `systemctl restart` does, each right
// after a phone refreshed its subscription there (the refresh made the
// dialog last an hour instead of two minutes). The node that takes the
// dialog over must know that refresh: its NOTIFY says the hour, the
// phone's next refresh at the new node gets 200, and no watcher of any
// node is terminated or has to subscribe again. A refresh answered less
// than a second before SIGTERM was lost: the lease went at once, the
// dialog records are written about once a second, and the next owner
// ended the dialog at its old expiry.
func TestClusterRollingRestartKeepsRefreshes(t *testing.T) {
	nats := natstest.Start(t, 1)
	bin := buildBinary(t)
	const ttl = 3 * time.Second
	names := []string{"a", "b", "c"}
	cfgs := map[string]string{}
	procs := map[string]*process{}
	sipOf := map[string]string{}
	for _, name := range names {
		cfgs[name] = clusterConfig(t, t.TempDir(), name, nats.URLs(), ttl.String(), "")
		procs[name] = start(t, bin, cfgs[name])
		sipOf[name], _ = addrs(t, procs[name])
	}
	nodeAt := func(n *sip.Request) string {
		for name, a := range sipOf {
			if sentBy(n, a) {
				return name
			}
		}
		return "?"
	}
	// One watcher held by each node, for two minutes.
	watchers := map[string]*watcher{}
	for _, name := range names {
		w := newWatcher(t, "UDP")
		if res := w.subscribe(sipOf[name], "100", "presence", 120); res.StatusCode != 200 {
			t.Fatalf("SUBSCRIBE on node %s: %d", name, res.StatusCode)
		}
		w.nextNotify(5 * time.Second)
		watchers[name] = w
	}
	for _, name := range names {
		_, httpAddr := addrs(t, procs[name])
		settled(t, httpAddr)
	}
	for round, name := range names {
		w := watchers[name]
		// The refresh, then at once the planned stop.
		if res := w.subscribe("", "", "", 3600); res.StatusCode != 200 {
			t.Fatalf("round %d: refresh at node %s: %d", round, name, res.StatusCode)
		}
		p := procs[name]
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-p.end:
		case <-time.After(10 * time.Second):
			t.Fatalf("node %s did not stop within 10 s of SIGTERM", name)
		}
		// (The refresh's own NOTIFY, from the node stopped, may come first.)
		n := w.nextNotify(ttl + 5*time.Second)
		if nodeAt(n) == name {
			n = w.nextNotify(ttl + 5*time.Second)
		}
		owner := nodeAt(n)
		state := header(n, "Subscription-State")
		expires := 0
		if _, v, ok := strings.Cut(state, "expires="); ok {
			expires, _ = strconv.Atoi(strings.TrimSpace(strings.Split(v, ";")[0]))
		}
		t.Logf("round %d: node %s stopped; node %s took the dialog over: %s", round, name, owner, state)
		if owner == name || owner == "?" || !strings.HasPrefix(state, "active") || expires < 3000 {
			t.Fatalf("round %d: the takeover NOTIFY came from node %s with %q: the refresh before the stop was lost", round, owner, state)
		}
		w.server = sipOf[owner] // the phone follows the Contact
		if res := w.subscribe("", "", "", 3600); res.StatusCode != 200 {
			t.Fatalf("round %d: refresh at the new owner %s: %d, want 200", round, owner, res.StatusCode)
		}
		// Said as what it was: a planned stop, not a crash.
		if out := p.out.String(); !strings.Contains(out, "cluster: left (planned stop)") {
			t.Errorf("round %d: node %s did not say it left:\n%s", round, name, out)
		}
		left := regexp.MustCompile(`"a node left \(planned stop\): taking its dialogs over".* node=` + name + `\b`)
		if out := procs[owner].out.String(); !left.MatchString(out) || strings.Contains(out, "lease lapsed") {
			t.Errorf("round %d: node %s's log of the handover:\n%s", round, owner, out)
		}
		// The node comes back, as systemctl restart brings it.
		procs[name] = start(t, bin, cfgs[name])
		sipOf[name], _ = addrs(t, procs[name])
		_, httpAddr := addrs(t, procs[name])
		settled(t, httpAddr)
	}
	// No watcher was ended on the way, and each still refreshes where it
	// was last sent.
	for name, w := range watchers {
		for {
			select {
			case n := <-w.notifies:
				if st := header(n, "Subscription-State"); !strings.HasPrefix(st, "active") {
					t.Errorf("watcher first held by %s got %q", name, st)
				}
				w.server = sipOf[nodeAt(n)]
				continue
			default:
			}
			break
		}
		if res := w.subscribe("", "", "", 600); res.StatusCode != 200 {
			t.Errorf("watcher first held by %s: refresh at %s: %d", name, w.server, res.StatusCode)
		}
	}
}

// header returns a request's header value, or "".
func header(r *sip.Request, name string) string {
	if h := r.GetHeader(name); h != nil {
		return h.Value()
	}
	return ""
}

// members reads the member list of a node's /readyz.
func members(t *testing.T, httpAddr string) string {
	t.Helper()
	m := regexp.MustCompile(`"members":\[([^\]]*)\]`).FindStringSubmatch(readyCluster(t, httpAddr))
	if m == nil {
		return "?"
	}
	return strings.ReplaceAll(m[1], `"`, "")
}

// TestClusterSignalsHoldStill: three nodes on three NATS servers, left
// alone for a minute. Every node lists the three as members at every
// look (they once dropped themselves for half a second every few
// seconds), /readyz shows no last_error, and the engine is not made to
// elect consumer leaders over and over (each node listed the lease keys
// twice a second, a new consumer each time: about 90 elections a minute
// in each server's log). Then a node stopped with SIGTERM leaves the
// others' lists at once, and one killed within a lease of its last
// renewal; neither comes back.
func TestClusterSignalsHoldStill(t *testing.T) {
	nats := natstest.Start(t, 3)
	bin := buildBinary(t)
	const ttl = 3 * time.Second
	names := []string{"a", "b", "c"}
	procs := map[string]*process{}
	httpOf := map[string]string{}
	for _, name := range names {
		procs[name] = start(t, bin, clusterConfig(t, t.TempDir(), name, nats.URLs(), ttl.String(), ""))
		_, httpOf[name] = addrs(t, procs[name])
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("NATS:\n%s", nats.Logs())
		}
	})
	for _, name := range names {
		settled(t, httpOf[name])
		waitUntil(t, 10*time.Second, name+" listing every node", func() bool { return members(t, httpOf[name]) == "a,b,c" })
	}
	elections := func() int { return strings.Count(nats.Logs(), "consumer leader") }
	before := elections()
	end := time.Now().Add(time.Minute)
	looks := 0
	for time.Now().Before(end) {
		for _, name := range names {
			if m := members(t, httpOf[name]); m != "a,b,c" {
				t.Fatalf("after %d looks, node %s lists %q", looks, name, m)
			}
		}
		looks++
		time.Sleep(200 * time.Millisecond)
	}
	during := elections() - before
	t.Logf("%d looks at three nodes, all listing a,b,c; %d consumer leader elections in the engine's logs in the minute", looks, during)
	if during > 2 {
		t.Errorf("%d consumer leader elections in a minute of nothing happening", during)
	}

	for _, name := range names {
		if body := readyCluster(t, httpOf[name]); strings.Contains(body, `"last_error"`) {
			t.Errorf("node %s, all well, shows an error: %s", name, body)
		}
	}
	// A planned stop: off the lists at once.
	if err := procs["c"].cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-procs["c"].end
	stopped := time.Now()
	for _, name := range []string{"a", "b"} {
		waitUntil(t, ttl/2, name+" dropping c, which left", func() bool { return members(t, httpOf[name]) == "a,b" })
	}
	t.Logf("c left the lists %v after its SIGTERM ended", time.Since(stopped).Round(time.Millisecond))
	if !strings.Contains(procs["c"].out.String(), "cluster: left (planned stop)") {
		t.Errorf("node c did not say it left:\n%s", procs["c"].out.String())
	}
	// A crash: off the list once its lease has run out.
	procs["b"].kill()
	killed := time.Now()
	waitUntil(t, ttl+2*time.Second, "a dropping b, killed", func() bool { return members(t, httpOf["a"]) == "a" })
	t.Logf("b left a's list %v after it was killed (lease TTL %v)", time.Since(killed).Round(time.Millisecond), ttl)
	for range 10 {
		if m := members(t, httpOf["a"]); m != "a" {
			t.Fatalf("a lists %q again", m)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
