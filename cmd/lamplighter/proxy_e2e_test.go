package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/lamplighter/lamplighter/presence/baresiptest"
)

// Proxy mode with real parts from Debian: Kamailio as a plain registrar
// standing in for the PBX (a PBX of kind sip: Lamplighter learns its
// lamps from the calls it carries), two baresip phones whose one line
// has Lamplighter as outbound proxy, and a raw-socket phone that picks a
// ringing call up with Replaces.

// needKamailio returns kamailio's path and its module folder, or skips
// (fails under LAMPLIGHTER_E2E=require, as `make test` sets).
func needKamailio(t *testing.T) (string, string) {
	t.Helper()
	bin, err := exec.LookPath("kamailio")
	if err != nil {
		for _, p := range []string{"/usr/sbin/kamailio", "/usr/local/sbin/kamailio"} {
			if _, e := os.Stat(p); e == nil {
				bin, err = p, nil
			}
		}
	}
	var mods string
	for _, pattern := range []string{"/usr/lib/*/kamailio/modules", "/usr/lib/kamailio/modules", "/usr/local/lib64/kamailio/modules"} {
		if found, _ := filepath.Glob(filepath.Join(pattern, "registrar.so")); len(found) > 0 {
			mods = filepath.Dir(found[0]) + "/"
		}
	}
	if err != nil || mods == "" {
		if os.Getenv("LAMPLIGHTER_E2E") == "require" {
			t.Fatal("kamailio is required (apt-get install kamailio)")
		}
		t.Skip("kamailio not installed")
	}
	return bin, mods
}

// startRegistrar runs Kamailio from testdata/kamailio-registrar.cfg on a
// free UDP port of 127.0.0.2 until the test ends, and returns its
// address and log file.
func startRegistrar(t *testing.T) (string, string) {
	t.Helper()
	bin, mods := needKamailio(t)
	dir := t.TempDir()
	port := 0
	for _, p := range baresiptest.FreePorts(t, 8) {
		if baresiptest.Bindable("127.0.0.2", p) {
			port = p
			break
		}
	}
	if port == 0 {
		t.Fatal("no free port on 127.0.0.2")
	}
	addr := "127.0.0.2:" + strconv.Itoa(port)
	src, err := os.ReadFile("testdata/kamailio-registrar.cfg")
	if err != nil {
		t.Fatal(err)
	}
	var cfg bytes.Buffer
	if err := template.Must(template.New("cfg").Parse(string(src))).Execute(&cfg,
		map[string]string{"Address": addr, "ModulePath": mods}); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "kamailio.cfg")
	logPath := filepath.Join(dir, "kamailio.log")
	if err := os.WriteFile(cfgPath, cfg.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-DD", "-E", "-f", cfgPath, "-P", filepath.Join(dir, "kamailio.pid"), "-m", "64", "-M", "8")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("kamailio log:\n%s", b)
		}
	})
	return addr, logPath
}

// waitFile waits until a file contains what re matches, and returns the
// match.
func waitFile(t *testing.T, path string, re *regexp.Regexp, within time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, _ := os.ReadFile(path)
		if m := re.FindStringSubmatch(string(b)); m != nil {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s has no %s within %v", filepath.Base(path), re, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestProxyModeWithRealPhonesAndARegistrar(t *testing.T) {
	baresiptest.Need(t)
	pbx, pbxLog := startRegistrar(t)
	dir := t.TempDir()
	ll := "127.0.0.1:" + strconv.Itoa(baresiptest.FreePorts(t, 1)[0]) // the phones' outbound proxy: kept over a restart
	config := fmt.Sprintf(`sip:
  domain: pbx.test
  listen: [{transport: udp, address: "%s"}]
http: {listen: "127.0.0.1:0"}
state_dir: %s
log: {level: debug}
pbx:
  - name: kam
    kind: sip
    proxy: {address: "%s"}
users:
  - {id: alice, name: Alice, extensions: ["100"], devices: [{pbx: kam, device: "100"}]}
  - {id: bob, name: Bob, extensions: ["101"], devices: [{pbx: kam, device: "101"}]}
  - {id: carol, name: Carol, extensions: ["102"], devices: [{pbx: kam, device: "102"}]}
`, ll, filepath.Join(dir, "state"), pbx)
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	out, stop := startDaemon(t, path)
	waitFor(t, out, "PBX answers SIP", 15*time.Second)

	// One line each, Lamplighter as outbound proxy, no password anywhere:
	// the registrar takes anyone, and the registered flow lets the
	// phones watch each other.
	account := func(ext string) string {
		return fmt.Sprintf(`<sip:%s@pbx.test>;outbound="sip:%s";regint=120;answermode=manual`, ext, ll)
	}
	alice := baresiptest.Start(t, baresiptest.Options{Account: account("100"),
		Contacts: []baresiptest.Contact{{Name: "Bob", URI: "sip:101@pbx.test"}}})
	bob := baresiptest.Start(t, baresiptest.Options{Account: account("101"),
		Contacts: []baresiptest.Contact{{Name: "Alice", URI: "sip:100@pbx.test"}}})
	waitFile(t, pbxLog, regexp.MustCompile(`PBX got REGISTER .* from 127\.0\.0\.1`), 15*time.Second)
	waitFor(t, out, "msg=lamp user=alice state=idle", 15*time.Second)
	waitFor(t, out, "msg=lamp user=bob state=idle", 15*time.Second)
	alice.WaitPresence("Bob", "Online", 15*time.Second)
	bob.WaitPresence("Alice", "Online", 15*time.Second)

	// Alice calls Bob through Lamplighter, the registrar, Lamplighter.
	mark := len(out.String())
	alice.Command("/dial sip:101@pbx.test")
	waitLog(t, out, mark, "msg=lamp user=bob state=ringing", 15*time.Second)
	alice.WaitPresence("Bob", "Busy", 10*time.Second)
	bob.WaitPresence("Alice", "Busy", 10*time.Second)

	// Bob answers; then Alice hangs up.
	mark = len(out.String())
	bob.Command("/accept")
	waitLog(t, out, mark, "msg=lamp user=bob state=busy", 15*time.Second)
	mark = len(out.String())
	alice.Command("/hangup")
	waitLog(t, out, mark, "msg=lamp user=bob state=idle", 15*time.Second)
	waitLog(t, out, mark, "msg=lamp user=alice state=idle", 15*time.Second)
	alice.WaitPresence("Bob", "Online", 10*time.Second)
	bob.WaitPresence("Alice", "Online", 10*time.Second)

	// Lamplighter restarts. The registrar still holds the phones' Paths
	// (signed before the restart), and the lamps' subscriptions come back
	// from the state file: nothing waits for the phones to register again.
	stop()
	out, _ = startDaemon(t, path)
	waitFor(t, out, "PBX answers SIP", 15*time.Second)

	// Alice calls again; a third phone (raw socket), registered through
	// Lamplighter too, watches Bob's lamp and picks the ringing call up
	// with Replaces, from the dialog identifiers the lamp carries.
	rings := strings.Count(bob.Output(), "Incoming call from")
	mark = len(out.String())
	alice.Command("/dial sip:101@pbx.test")
	waitLog(t, out, mark, "msg=lamp user=bob state=ringing", 15*time.Second)
	alice.WaitPresence("Bob", "Busy", 10*time.Second)
	if n := strings.Count(bob.Output(), "Incoming call from"); n != rings+1 {
		t.Fatalf("Bob's phone rang %d times after the restart, want once", n-rings)
	}
	// No Route of ours reaches the phone: neither Alice's preloaded
	// outbound-proxy Route nor Bob's Path from before the restart.
	trace := bob.Output()
	last := trace[strings.LastIndex(trace, "INVITE sip:101-"):]
	if inv, _, _ := strings.Cut(last, "\r\n\r\n"); strings.Contains(inv, "\nRoute:") {
		t.Fatalf("the INVITE after the restart reached Bob with a Route:\n%s", inv)
	}
	carol := newRawPhone(t, ll, "102")
	carol.register(t)
	dialog := carol.ringingDialogOf(t, "101")
	replaces := fmt.Sprintf("%s;to-tag=%s;from-tag=%s", dialog.callID, dialog.localTag, dialog.remoteTag)
	carol.invite(t, "101", replaces)
	got := waitFile(t, pbxLog, regexp.MustCompile(`PBX got INVITE \S+ from \S+ replaces=\[([^]<][^]]*)\]`), 10*time.Second)
	if got[1] != replaces {
		t.Fatalf("the registrar got Replaces %q, want %q unchanged", got[1], replaces)
	}
	bob.WaitOutput("Replaces: "+replaces, 10*time.Second)
}

// startDaemon runs lamplighter with a config file until stop or the end
// of the test, and returns its log.
func startDaemon(t *testing.T, config string) (*syncBuffer, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"-config", config}, out, out) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	waitFor(t, out, "lamplighter running", 10*time.Second)
	return out, stop
}

// waitLog waits until the log, from byte from on, contains want.
func waitLog(t *testing.T, out *syncBuffer, from int, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(out.String()[from:], want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %v in:\n%s", want, d, out.String()[from:])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// rawPhone is a phone of raw UDP messages behind Lamplighter.
type rawPhone struct {
	conn  *net.UDPConn
	proxy *net.UDPAddr
	ext   string
	cseq  int
}

func newRawPhone(t *testing.T, proxy, ext string) *rawPhone {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	pa, err := net.ResolveUDPAddr("udp", proxy)
	if err != nil {
		t.Fatal(err)
	}
	return &rawPhone{conn: c, proxy: pa, ext: ext}
}

func (p *rawPhone) addr() string { return p.conn.LocalAddr().String() }

// send writes a request out of dialog through Lamplighter.
func (p *rawPhone) send(t *testing.T, method, uri, toUser, callID string, extra ...string) {
	t.Helper()
	p.cseq++
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s SIP/2.0\r\n", method, uri)
	fmt.Fprintf(&b, "Via: SIP/2.0/UDP %s;branch=z9hG4bK%s%d;rport\r\n", p.addr(), callID, p.cseq)
	fmt.Fprintf(&b, "Max-Forwards: 70\r\nFrom: <sip:%s@pbx.test>;tag=t%s\r\nTo: <sip:%s@pbx.test>\r\n", p.ext, callID, toUser)
	fmt.Fprintf(&b, "Call-ID: %s\r\nCSeq: %d %s\r\nContact: <sip:%s@%s>\r\n", callID, p.cseq, method, p.ext, p.addr())
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	if _, err := p.conn.WriteToUDP([]byte(b.String()), p.proxy); err != nil {
		t.Fatal(err)
	}
}

// read returns the next message whose first line matches re, answering
// NOTIFYs with 200 on the way; it gives up after 10 s.
func (p *rawPhone) read(t *testing.T, re *regexp.Regexp) string {
	t.Helper()
	buf := make([]byte, 65536)
	deadline := time.Now().Add(10 * time.Second)
	for {
		p.conn.SetReadDeadline(deadline)
		n, from, err := p.conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("phone %s: nothing matching %s: %v", p.ext, re, err)
		}
		msg := string(buf[:n])
		first, _, _ := strings.Cut(msg, "\r\n")
		if strings.HasPrefix(first, "NOTIFY ") {
			p.conn.WriteToUDP([]byte(okFor(msg)), from)
		}
		if re.MatchString(first) {
			return msg
		}
	}
}

// okFor is a 200 to a request, echoing what a response must.
func okFor(req string) string {
	var b strings.Builder
	b.WriteString("SIP/2.0 200 OK\r\n")
	for _, line := range strings.Split(req, "\r\n") {
		name, _, _ := strings.Cut(line, ":")
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "via", "v", "from", "f", "to", "t", "call-id", "i", "cseq":
			b.WriteString(line + "\r\n")
		}
	}
	b.WriteString("Content-Length: 0\r\n\r\n")
	return b.String()
}

func (p *rawPhone) register(t *testing.T) {
	t.Helper()
	p.send(t, "REGISTER", "sip:pbx.test", p.ext, "reg-"+p.ext, "Expires: 120")
	if res := p.read(t, regexp.MustCompile(`^SIP/2.0 [2-6]`)); !strings.HasPrefix(res, "SIP/2.0 200") {
		t.Fatalf("REGISTER through Lamplighter: %.200s", res)
	}
}

type earlyDialog struct{ callID, localTag, remoteTag string }

// ringingDialogOf subscribes to a lamp (no password: the flow is
// registered) and returns the identifiers of the call ringing there.
func (p *rawPhone) ringingDialogOf(t *testing.T, ext string) earlyDialog {
	t.Helper()
	p.send(t, "SUBSCRIBE", "sip:"+ext+"@pbx.test", ext, "blf-"+p.ext, "Event: dialog",
		"Accept: application/dialog-info+xml", "Expires: 120")
	if res := p.read(t, regexp.MustCompile(`^SIP/2.0 [2-6]`)); !strings.HasPrefix(res, "SIP/2.0 200") {
		t.Fatalf("SUBSCRIBE on the registered flow: %.200s", res)
	}
	re := regexp.MustCompile(`call-id="([^"]+)"[^>]*local-tag="([^"]+)"[^>]*remote-tag="([^"]+)"`)
	for {
		n := p.read(t, regexp.MustCompile(`^NOTIFY `))
		if !strings.Contains(n, "<state>early</state>") {
			continue
		}
		if m := re.FindStringSubmatch(n); m != nil {
			return earlyDialog{m[1], m[2], m[3]}
		}
		t.Fatalf("an early dialog without its identifiers:\n%s", n)
	}
}

// invite places a call with Replaces (a pickup), through Lamplighter.
func (p *rawPhone) invite(t *testing.T, ext, replaces string) {
	t.Helper()
	p.send(t, "INVITE", "sip:"+ext+"@pbx.test", ext, "pickup-"+p.ext, "Replaces: "+replaces)
}
