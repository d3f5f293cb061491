package presence

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// These tests drive a real softphone from Debian, baresip (package
// baresip-core), as the watcher: its presence module SUBSCRIBEs with
// Event: presence and reports what it understood on its UDP console.
// `make test` installs baresip and sets LAMPLIGHTER_E2E=require, so that
// a missing binary fails instead of skipping.

func needBaresip(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("baresip")
	if err != nil {
		if os.Getenv("LAMPLIGHTER_E2E") == "require" {
			t.Fatal("baresip is required (apt-get install baresip-core)")
		}
		t.Skip("baresip not installed")
	}
	return path
}

// freePorts returns n ports for baresip to listen on. baresip binds UDP
// and TCP on its SIP port and TLS (TCP) on the port after it, and its
// console UDP and TCP: a port is taken only when all of that binds. Ports
// come from below Linux's ephemeral range (32768-60999), so that no
// connection another test opens meanwhile can take one before baresip
// does (a port the kernel had picked for this test's own probe could be).
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	taken := map[int]bool{}
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000 {
			t.Fatal("no free ports for baresip")
		}
		p := 20000 + rand.IntN(12000)
		if taken[p] || taken[p+1] || !bindable(p) {
			continue
		}
		taken[p], taken[p+1] = true, true
		out = append(out, p)
	}
	return out
}

// bindable reports whether UDP and TCP port p and TCP port p+1 are free
// on loopback.
func bindable(p int) bool {
	addr := func(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }
	u, err := net.ListenPacket("udp", addr(p))
	if err != nil {
		return false
	}
	defer u.Close()
	for _, port := range []int{p, p + 1} {
		l, err := net.Listen("tcp", addr(port))
		if err != nil {
			return false
		}
		defer l.Close()
	}
	return true
}

// softphone is a running baresip.
type softphone struct {
	t      *testing.T
	cons   *net.UDPAddr
	cmd    *exec.Cmd
	out    *lockedBuffer
	exited chan struct{}
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startBaresip runs baresip with account and a contact watching uri.
func startBaresip(t *testing.T, account, uri string) *softphone {
	t.Helper()
	bin := needBaresip(t)
	dir := t.TempDir()
	ports := freePorts(t, 2)
	sipPort, consPort := ports[0], ports[1]
	config := fmt.Sprintf(`sip_listen 127.0.0.1:%d
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module account.so
module contact.so
module presence.so
module menu.so
module cons.so
cons_listen 127.0.0.1:%d
audio_player aufile,/dev/null
audio_source aufile,/dev/null
`, sipPort, consPort)
	files := map[string]string{
		"config":   config,
		"accounts": account + "\n",
		"contacts": `"Debbie" <` + uri + `>;presence=p2p` + "\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-f", dir, "-s", "-t", "120")
	sp := &softphone{t: t, out: &lockedBuffer{}, exited: make(chan struct{}),
		cons: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: consPort}}
	cmd.Stdout, cmd.Stderr = sp.out, sp.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sp.cmd = cmd
	go func() { cmd.Wait(); close(sp.exited) }()
	t.Cleanup(func() {
		cancel()
		<-sp.exited
		if t.Failed() {
			t.Logf("baresip output:\n%s", sp.out.String())
		}
	})
	return sp
}

// command sends a console command and returns the reply.
func (sp *softphone) command(cmd string) string {
	c, err := net.DialUDP("udp", nil, sp.cons)
	if err != nil {
		sp.t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(cmd + "\n"))
	c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	var out strings.Builder
	buf := make([]byte, 8192)
	for {
		n, err := c.Read(buf)
		if err != nil {
			break
		}
		out.Write(buf[:n])
		c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	}
	return out.String()
}

// presenceOf returns the word baresip shows for the contact: Online,
// Busy, Away, Offline or Unknown.
func (sp *softphone) presenceOf() string {
	for _, line := range strings.Split(sp.command("/contacts"), "\n") {
		if strings.Contains(line, "Debbie") {
			for _, w := range []string{"Online", "Busy", "Away", "Offline", "Unknown"} {
				if strings.Contains(line, w) {
					return w
				}
			}
		}
	}
	return ""
}

// waitPresence waits until baresip shows want.
func (sp *softphone) waitPresence(want string, within time.Duration) {
	sp.t.Helper()
	deadline := time.Now().Add(within)
	last := ""
	for time.Now().Before(deadline) {
		if last = sp.presenceOf(); last == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	sp.t.Fatalf("baresip shows %q, want %q within %v", last, want, within)
}

func TestBaresipWatchesEveryCallStep(t *testing.T) {
	needBaresip(t)
	// Loopback is not trusted: baresip must authenticate, with the default
	// challenge (MD5: baresip 1.0 aborts on a SHA-256 challenge).
	env := newEnv(t, func(o *Options) { o.DigestAlgorithms = nil })
	sp := startBaresip(t, "<sip:bob@127.0.0.1>;auth_user=bob;auth_pass=b-secret;regint=0", "sip:100@"+env.udp)

	sp.waitPresence("Online", 10*time.Second)
	waitUntil(t, 5*time.Second, "baresip's subscription", func() bool { return env.srv.Watchers("debbie") == 1 })

	env.bridge.Apply(ringing("101"))
	sp.waitPresence("Busy", 5*time.Second)
	env.bridge.Apply(answered("101"))
	held := answered("101").(bridge.CallUpdated)
	held.Call.Held = true
	env.bridge.Apply(held)
	sp.waitPresence("Busy", 5*time.Second)
	env.bridge.Apply(bridge.CallEnded{Source: "pbx", CallID: "c1"})
	sp.waitPresence("Online", 5*time.Second)

	// Person state: dnd is rendered as rpid:busy, which baresip shows as
	// Busy; baresip 1.0 maps rpid:away to its closed status, "Offline".
	env.bridge.SetPerson("debbie", "api", bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityDND}})
	sp.waitPresence("Busy", 5*time.Second)
	env.bridge.ClearPerson("debbie", "api")
	sp.waitPresence("Online", 5*time.Second)
	env.bridge.SetPerson("debbie", "api", bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityAway}, Note: "Lunch"})
	sp.waitPresence("Offline", 5*time.Second)
	env.bridge.ClearPerson("debbie", "api")
	sp.waitPresence("Online", 5*time.Second)

	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/100", State: bridge.DeviceUnavailable})
	sp.waitPresence("Offline", 5*time.Second)
	env.bridge.Apply(bridge.DeviceStateChanged{Source: "pbx", Device: "PJSIP/100", State: bridge.DeviceIdle})
	sp.waitPresence("Online", 5*time.Second)

	// Quitting unsubscribes (Expires: 0): the server lets go.
	sp.command("/quit")
	select {
	case <-sp.exited:
	case <-time.After(10 * time.Second):
		t.Fatal("baresip did not quit")
	}
	waitUntil(t, 5*time.Second, "unsubscribe", func() bool { return env.srv.Watchers("debbie") == 0 })
}

func TestBaresipWithWrongPasswordLearnsNothing(t *testing.T) {
	needBaresip(t)
	m := newTestMetrics()
	env := newEnv(t, func(o *Options) { o.Metrics = m; o.DigestAlgorithms = nil })
	sp := startBaresip(t, "<sip:bob@127.0.0.1>;auth_user=bob;auth_pass=wrong;regint=0", "sip:100@"+env.udp)
	env.bridge.Apply(ringing("101"))
	// baresip tries, is refused, and never sees a state.
	waitUntil(t, 10*time.Second, "a refused SUBSCRIBE", func() bool {
		return strings.Contains(sp.out.String(), "401 Unauthorized")
	})
	for range 5 {
		if p := sp.presenceOf(); p == "Busy" || p == "Online" {
			t.Fatalf("baresip learned %q with a wrong password", p)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if env.srv.Watchers("debbie") != 0 || m.sent.Load() != 0 {
		t.Errorf("a subscription or NOTIFY for a wrong password")
	}
}
