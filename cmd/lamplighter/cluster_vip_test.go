//go:build linux

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
	"golang.org/x/sys/unix"

	"github.com/lamplighter/lamplighter/adapters/pbxtest"
)

// TestClusterVirtualIPMoves runs cluster/README.md's virtual IP set-up
// (its keepalived.conf, read from the README, and its listener and
// sysctl advice) in network namespaces the test makes: a LAN bridge with
// nats-server on it, two Lamplighter machines each with keepalived, and
// a phone. No address exists outside the namespaces. The phone knows one
// address, the VIP. Node b holds it; b's Lamplighter is killed; the VIP
// moves to c, c takes b's dialog over and NOTIFYs the phone in it, the
// phone's refresh and a new SUBSCRIBE reach c, a change made on c shows
// in both dialogs, and every datagram the phone received came from the
// VIP.
func TestClusterVirtualIPMoves(t *testing.T) {
	lab := newVIPLab(t)
	bin := buildBinary(t)
	lab.startIn(t, lab.ns("lan"), "nats", "nats-server", "-js", "-a", "10.99.0.1", "-p", "4222",
		"-sd", filepath.Join(t.TempDir(), "js"))

	conf := readmeBlock(t, "../../cluster/README.md", "keepalived")
	type machine struct {
		name, ip string
		priority string
		ll       *process
	}
	machines := []*machine{{name: "b", ip: "10.99.0.11", priority: "110"}, {name: "c", ip: "10.99.0.12", priority: "100"}}
	for _, m := range machines {
		ns := lab.ns(m.name)
		lab.run(t, "ip", "netns", "exec", ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_nonlocal_bind")
		dir := t.TempDir()
		cfg := fmt.Sprintf(`sip:
  domain: vip.test
  listen: [{transport: udp, address: "10.99.0.100:5060"}]
  trusted_networks: [10.99.0.0/24]
http: {listen: "%s:8080", token: s3cret}
state_dir: %s
cluster: {node: %s, urls: ["nats://10.99.0.1:4222"], lease_ttl: 3s, address: 10.99.0.100}
users:
  - {id: debbie, name: Debbie Harry, extensions: ["100"]}
`, m.ip, filepath.Join(dir, "state"), m.name)
		path := filepath.Join(dir, "lamplighter.yaml")
		if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
			t.Fatal(err)
		}
		m.ll = lab.startIn(t, ns, "lamplighter "+m.name, bin, "-config", path)
		waitFor(t, m.ll.out, "cluster reconciled", 20*time.Second)

		ka := replaceAll(t, conf, map[string]string{
			"router_id lamplighter-a": "router_id lamplighter-" + m.name,
			"http://10.0.0.11:8080":   "http://" + m.ip + ":8080",
			"10.0.0.100/24":           "10.99.0.100/24",
			"priority 110":            "priority " + m.priority,
		})
		kaPath := filepath.Join(dir, "keepalived.conf")
		if err := os.WriteFile(kaPath, []byte(ka), 0o644); err != nil {
			t.Fatal(err)
		}
		lab.startIn(t, ns, "keepalived "+m.name, "keepalived", "-n", "-l", "-D", "-f", kaPath,
			"-p", filepath.Join(dir, "keepalived.pid"), "-r", filepath.Join(dir, "vrrp.pid"),
			"-c", filepath.Join(dir, "checkers.pid"))
	}
	b, c := machines[0], machines[1]
	holds := func(m *machine) bool {
		out, _ := exec.Command("ip", "-n", lab.ns(m.name), "-4", "addr", "show", "dev", "eth0").Output()
		return strings.Contains(string(out), "10.99.0.100/")
	}
	waitUntil(t, 15*time.Second, "b holds the VIP", func() bool { return holds(b) && !holds(c) })
	api := lab.client()
	for _, m := range machines {
		waitUntil(t, 20*time.Second, m.name+" holding its lease", func() bool {
			return strings.Contains(lab.get(t, api, "http://"+m.ip+":8080/metrics"), "lamplighter_cluster_lease_renewals_total")
		})
	}
	set := func(m *machine, note string) {
		t.Helper()
		req, _ := http.NewRequest("PUT", "http://"+m.ip+":8080/api/v1/users/100/presence", strings.NewReader(`{"note":"`+note+`"}`))
		req.Header.Set("Authorization", "Bearer s3cret")
		req.Header.Set("Content-Type", "application/json")
		res, err := api.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("PUT presence on %s: %d %s", m.name, res.StatusCode, body)
		}
	}

	phone := newVIPPhone(t, lab)
	d1 := phone.subscribe(t)
	phone.notify(t, d1, "active", 5*time.Second)
	set(b, "NoteBeforeMove")
	phone.notify(t, d1, "NoteBeforeMove", 5*time.Second)
	waitUntil(t, 10*time.Second, "node b owning the phone's dialog in the engine", func() bool {
		return strings.Contains(lab.get(t, api, "http://10.99.0.11:8080/readyz"), `"dialogs_owned":1`)
	})

	killed := time.Now()
	b.ll.kill()
	waitUntil(t, 15*time.Second, "the VIP on c", func() bool { return holds(c) && !holds(b) })
	moved := time.Since(killed)
	taken := phone.notify(t, d1, "NoteBeforeMove", 15*time.Second)
	t.Logf("b killed: the VIP on c after %v, c's NOTIFY in the dialog after %v (lease TTL 3 s)",
		moved.Round(10*time.Millisecond), time.Since(killed).Round(10*time.Millisecond))
	if ss := taken.GetHeader("Subscription-State"); ss == nil || !strings.HasPrefix(ss.Value(), "active") {
		t.Errorf("the takeover NOTIFY: Subscription-State %v", ss)
	}

	if code := phone.refresh(t, d1); code != 200 {
		t.Fatalf("the phone's refresh at the VIP after the move: %d, want 200", code)
	}
	d2 := phone.subscribe(t)
	phone.notify(t, d2, "NoteBeforeMove", 5*time.Second)
	set(c, "NoteAfterMove")
	phone.notify(t, d1, "NoteAfterMove", 5*time.Second)
	phone.notify(t, d2, "NoteAfterMove", 5*time.Second)
	if bad := phone.strangers(); len(bad) > 0 {
		t.Errorf("the phone received datagrams from addresses other than the VIP: %v", bad)
	}
	if n := phone.terminated(); n > 0 {
		t.Errorf("%d NOTIFYs ended a subscription", n)
	}
}

// vipLab is a set of network namespaces for one test: "lan" holds a
// bridge (10.99.0.1/24, where nats-server listens), "b" and "c" the two
// Lamplighter machines (10.99.0.11 and .12) and "p" the phone
// (10.99.0.13), each on a veth pair to the bridge.
type vipLab struct {
	suffix string
}

// newVIPLab makes the namespaces, removed when the test ends. It needs
// root (or CAP_NET_ADMIN and CAP_SYS_ADMIN), ip, keepalived, curl and
// nats-server: without them the test is skipped, or fails with
// LAMPLIGHTER_E2E=require.
func newVIPLab(t *testing.T) *vipLab {
	t.Helper()
	skip := func(format string, args ...any) {
		t.Helper()
		if pbxtest.Required() {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	if os.Geteuid() != 0 {
		skip("network namespaces need root")
	}
	for _, cmd := range []string{"ip", "keepalived", "curl", "nats-server"} {
		if _, err := exec.LookPath(cmd); err != nil {
			skip("%s not installed (.ci/deps installs it)", cmd)
		}
	}
	b := make([]byte, 3)
	rand.Read(b)
	lab := &vipLab{suffix: hex.EncodeToString(b)}
	t.Cleanup(func() {
		for _, n := range []string{"p", "c", "b", "lan"} {
			exec.Command("ip", "netns", "del", lab.ns(n)).Run()
		}
	})
	lab.run(t, "ip", "netns", "add", lab.ns("lan"))
	lan := lab.ns("lan")
	lab.run(t, "ip", "-n", lan, "link", "set", "lo", "up")
	lab.run(t, "ip", "-n", lan, "link", "add", "br0", "type", "bridge")
	lab.run(t, "ip", "-n", lan, "addr", "add", "10.99.0.1/24", "dev", "br0")
	lab.run(t, "ip", "-n", lan, "link", "set", "br0", "up")
	for i, n := range []string{"b", "c", "p"} {
		ns := lab.ns(n)
		lab.run(t, "ip", "netns", "add", ns)
		lab.run(t, "ip", "-n", lan, "link", "add", "v"+n, "type", "veth", "peer", "name", "eth0", "netns", ns)
		lab.run(t, "ip", "-n", lan, "link", "set", "v"+n, "master", "br0", "up")
		lab.run(t, "ip", "-n", ns, "link", "set", "lo", "up")
		lab.run(t, "ip", "-n", ns, "addr", "add", fmt.Sprintf("10.99.0.%d/24", 11+i), "dev", "eth0")
		lab.run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
	}
	return lab
}

// ns is the name of one of the lab's namespaces.
func (l *vipLab) ns(name string) string { return "ll" + l.suffix + "-" + name }

// run runs a command and fails the test if it fails.
func (l *vipLab) run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// startIn starts a program in namespace ns, stopped (with what it
// started) when the test ends.
func (l *vipLab) startIn(t *testing.T, ns, what, name string, args ...string) *process {
	t.Helper()
	return launch(t, what, exec.Command("ip", append([]string{"netns", "exec", ns, name}, args...)...))
}

// inNetns runs f on a thread in namespace ns: sockets f makes stay in ns.
// The thread is not given back to the runtime (it dies with the
// goroutine), so no other goroutine ever runs in ns.
func inNetns(ns string, f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		fd, err := unix.Open("/run/netns/"+ns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// client is an HTTP client whose connections start in the phone's
// namespace (the only way to the nodes' HTTP listeners).
func (l *vipLab) client() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := inNetns(l.ns("p"), func() (err error) {
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
}

// get fetches url and returns its body ("" on any failure).
func (l *vipLab) get(t *testing.T, c *http.Client, url string) string {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer s3cret")
	res, err := c.Do(req)
	if err != nil {
		return ""
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return string(b)
}

// readmeBlock returns the first fenced block of lang in a README.
func readmeBlock(t *testing.T, path, lang string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile("(?s)```" + lang + "\n(.*?)```").FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s has no %s block", path, lang)
	}
	return string(m[1])
}

// replaceAll makes each replacement, failing the test if one finds
// nothing to replace (the README changed under the test).
func replaceAll(t *testing.T, s string, repl map[string]string) string {
	t.Helper()
	for from, to := range repl {
		if !strings.Contains(s, from) {
			t.Fatalf("the README's block no longer has %q", from)
		}
		s = strings.ReplaceAll(s, from, to)
	}
	return s
}

// vipPhone is a phone in the lab's phone namespace that knows one
// address for Lamplighter, the VIP, and subscribes to presence there.
type vipPhone struct {
	conn *net.UDPConn
	vip  *net.UDPAddr

	mu       sync.Mutex
	cseq     uint32
	answers  map[string]chan *sip.Response // by Call-ID and CSeq
	notifies []*sip.Request
	news     chan struct{}
	others   []string // sources other than the VIP
}

// vipDialog is one of the phone's subscriptions.
type vipDialog struct {
	callID, fromTag, toTag string
	target                 string // the remote target (Contact)
	seen                   int    // NOTIFYs of the dialog looked at so far
}

func newVIPPhone(t *testing.T, lab *vipLab) *vipPhone {
	t.Helper()
	p := &vipPhone{vip: &net.UDPAddr{IP: net.IPv4(10, 99, 0, 100), Port: 5060},
		answers: map[string]chan *sip.Response{}, news: make(chan struct{}, 1)}
	err := inNetns(lab.ns("p"), func() (err error) {
		p.conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 99, 0, 13), Port: 5060})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.conn.Close() })
	go p.read()
	return p
}

// read takes every datagram: answers go to their waiters, NOTIFYs are
// kept and answered 200.
func (p *vipPhone) read() {
	parser := sip.NewParser()
	buf := make([]byte, 65535)
	for {
		n, from, err := p.conn.ReadFromUDP(buf)
		if err != nil {
			return
		}
		p.mu.Lock()
		if from.String() != p.vip.String() {
			p.others = append(p.others, from.String())
		}
		p.mu.Unlock()
		msg, err := parser.ParseSIP(append([]byte(nil), buf[:n]...))
		if err != nil {
			continue
		}
		switch m := msg.(type) {
		case *sip.Response:
			p.mu.Lock()
			ch := p.answers[m.CallID().Value()+fmt.Sprint(m.CSeq().SeqNo)]
			p.mu.Unlock()
			if ch != nil && m.StatusCode >= 200 {
				select {
				case ch <- m:
				default:
				}
			}
		case *sip.Request:
			if m.Method != sip.NOTIFY {
				continue
			}
			p.conn.WriteToUDP([]byte(sip.NewResponseFromRequest(m, 200, "OK", nil).String()), from)
			p.mu.Lock()
			p.notifies = append(p.notifies, m)
			p.mu.Unlock()
			select {
			case p.news <- struct{}{}:
			default:
			}
		}
	}
}

// subscribe opens a presence subscription to 100 at the VIP and returns
// its dialog.
func (p *vipPhone) subscribe(t *testing.T) *vipDialog {
	t.Helper()
	d := &vipDialog{callID: randHex() + "@phone", fromTag: randHex(), target: "sip:100@10.99.0.100"}
	res := p.request(t, d)
	if res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE at the VIP: %d %s", res.StatusCode, res.Reason)
	}
	d.toTag, _ = res.To().Params.Get("tag")
	if c := res.Contact(); c != nil {
		d.target = c.Address.String()
		if c.Address.Host != "10.99.0.100" {
			t.Errorf("the 200's Contact names %s, not the VIP", c.Address.Host)
		}
	}
	return d
}

// refresh refreshes d in its dialog and returns the answer's code.
func (p *vipPhone) refresh(t *testing.T, d *vipDialog) int {
	t.Helper()
	return p.request(t, d).StatusCode
}

// request sends a SUBSCRIBE for d (in its dialog once it has a To tag),
// retransmitting over UDP, and waits for its final answer.
func (p *vipPhone) request(t *testing.T, d *vipDialog) *sip.Response {
	t.Helper()
	p.mu.Lock()
	p.cseq++
	cseq := p.cseq
	ch := make(chan *sip.Response, 1)
	p.answers[d.callID+fmt.Sprint(cseq)] = ch
	p.mu.Unlock()
	to := "<sip:100@vip.test>"
	if d.toTag != "" {
		to += ";tag=" + d.toTag
	}
	msg := fmt.Sprintf("SUBSCRIBE %s SIP/2.0\r\nVia: SIP/2.0/UDP 10.99.0.13:5060;branch=z9hG4bK%s;rport\r\n"+
		"Max-Forwards: 70\r\nFrom: <sip:phone@vip.test>;tag=%s\r\nTo: %s\r\nCall-ID: %s\r\nCSeq: %d SUBSCRIBE\r\n"+
		"Contact: <sip:phone@10.99.0.13:5060>\r\nEvent: presence\r\nAccept: application/pidf+xml\r\nExpires: 600\r\n"+
		"Content-Length: 0\r\n\r\n", d.target, randHex(), d.fromTag, to, d.callID, cseq)
	// Timer A: 0.5 s, doubling, for as long as a moving VIP may take.
	wait := 500 * time.Millisecond
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := p.conn.WriteToUDP([]byte(msg), p.vip); err != nil {
			t.Fatal(err)
		}
		select {
		case res := <-ch:
			return res
		case <-time.After(wait):
			wait = min(2*wait, 4*time.Second)
		}
	}
	t.Fatalf("no answer to the SUBSCRIBE (%s) within 20s", d.callID)
	return nil
}

// notify waits for a NOTIFY of d, after those already looked at, whose
// body or Subscription-State holds want, and returns it.
func (p *vipPhone) notify(t *testing.T, d *vipDialog, want string, within time.Duration) *sip.Request {
	t.Helper()
	deadline := time.After(within)
	for {
		p.mu.Lock()
		var ours []*sip.Request
		for _, n := range p.notifies {
			if n.CallID().Value() == d.callID {
				ours = append(ours, n)
			}
		}
		p.mu.Unlock()
		for ; d.seen < len(ours); d.seen++ {
			n := ours[d.seen]
			ss := ""
			if h := n.GetHeader("Subscription-State"); h != nil {
				ss = h.Value()
			}
			if strings.Contains(string(n.Body()), want) || strings.HasPrefix(ss, want) {
				d.seen++
				return n
			}
		}
		select {
		case <-p.news:
		case <-deadline:
			t.Fatalf("no NOTIFY with %q in dialog %s within %v (%d NOTIFYs in it)", want, d.callID, within, len(ours))
		}
	}
}

// strangers returns the sources, other than the VIP, of what came.
func (p *vipPhone) strangers() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.others...)
}

// terminated counts the NOTIFYs that ended a subscription.
func (p *vipPhone) terminated() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, r := range p.notifies {
		if h := r.GetHeader("Subscription-State"); h != nil && strings.HasPrefix(h.Value(), "terminated") {
			n++
		}
	}
	return n
}

func randHex() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}
