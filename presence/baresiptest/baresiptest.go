// Package baresiptest runs a real softphone from Debian, baresip (package
// baresip-core), for end-to-end tests: it registers (or not), watches
// contacts with its presence module (SUBSCRIBE, Event: presence), places
// and answers calls, and is driven and read through its UDP console.
// With LAMPLIGHTER_E2E=require (set by `make test`) a missing baresip
// fails the test instead of skipping it.
package baresiptest

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
)

// Need returns baresip's path, or skips (fails under LAMPLIGHTER_E2E=require).
func Need(t testing.TB) string {
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

// Contact is someone the phone watches.
type Contact struct {
	Name string // as the console shows it
	URI  string
}

// Options of a phone.
type Options struct {
	// Account is the accounts line: `<sip:user@domain>;regint=0`,
	// `;outbound="sip:host:port"`, `;answermode=auto` and so on.
	Account  string
	Contacts []Contact
}

// Phone is a running baresip.
type Phone struct {
	t       testing.TB
	cons    *net.UDPAddr
	cmd     *exec.Cmd
	SIPPort int // where it listens for SIP (UDP and TCP, TLS on the next port)
	out     *lockedBuffer
	// Exited is closed when baresip has exited.
	Exited chan struct{}
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

// Start runs baresip on free loopback ports until the test ends; its
// output is logged when the test fails.
func Start(t testing.TB, o Options) *Phone {
	t.Helper()
	bin := Need(t)
	dir := t.TempDir()
	ports := FreePorts(t, 2)
	sipPort, consPort := ports[0], ports[1]
	// Calls need a sound source: a sine (ausine makes only 48 kHz, which
	// baresip resamples for G.711) played into /dev/null.
	config := fmt.Sprintf(`sip_listen 127.0.0.1:%d
module_path /usr/lib/baresip/modules
module g711.so
module aufile.so
module ausine.so
module account.so
module contact.so
module presence.so
module menu.so
module cons.so
cons_listen 127.0.0.1:%d
audio_player aufile,/dev/null
audio_source ausine,440
ausrc_srate 48000
ausrc_channels 2
`, sipPort, consPort)
	var contacts strings.Builder
	for _, c := range o.Contacts {
		fmt.Fprintf(&contacts, "\"%s\" <%s>;presence=p2p\n", c.Name, c.URI)
	}
	files := map[string]string{"config": config, "accounts": o.Account + "\n", "contacts": contacts.String()}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-f", dir, "-s", "-t", "300")
	p := &Phone{t: t, out: &lockedBuffer{}, Exited: make(chan struct{}), SIPPort: sipPort,
		cons: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: consPort}}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.cmd = cmd
	go func() { cmd.Wait(); close(p.Exited) }()
	t.Cleanup(func() {
		cancel()
		<-p.Exited
		if t.Failed() {
			t.Logf("baresip (SIP port %d) output:\n%s", sipPort, p.out.String())
		}
	})
	return p
}

// Kill ends baresip at once (SIGKILL): it says nothing to anyone, and
// the kernel closes its connections. It waits until baresip is gone.
func (p *Phone) Kill() {
	p.cmd.Process.Kill()
	select {
	case <-p.Exited:
	case <-time.After(10 * time.Second):
		p.t.Fatal("baresip did not end")
	}
}

// Output is what baresip has printed so far (with -s, its SIP trace).
func (p *Phone) Output() string { return p.out.String() }

// Command sends a console command and returns the reply.
func (p *Phone) Command(cmd string) string {
	c, err := net.DialUDP("udp", nil, p.cons)
	if err != nil {
		p.t.Fatal(err)
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

// PresenceOf returns the word baresip shows for a contact: Online, Busy,
// Away, Offline or Unknown ("" when it does not list the contact).
func (p *Phone) PresenceOf(name string) string {
	for _, line := range strings.Split(p.Command("/contacts"), "\n") {
		if strings.Contains(line, name) {
			for _, w := range []string{"Online", "Busy", "Away", "Offline", "Unknown"} {
				if strings.Contains(line, w) {
					return w
				}
			}
		}
	}
	return ""
}

// WaitPresence waits until baresip shows want for a contact.
func (p *Phone) WaitPresence(name, want string, within time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(within)
	last := ""
	for time.Now().Before(deadline) {
		if last = p.PresenceOf(name); last == want {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.t.Fatalf("baresip shows %s as %q, want %q within %v", name, last, want, within)
}

// WaitOutput waits until baresip's output contains want.
func (p *Phone) WaitOutput(want string, within time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(within)
	for !strings.Contains(p.out.String(), want) {
		if time.Now().After(deadline) {
			p.t.Fatalf("baresip printed no %q within %v", want, within)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// FreePorts returns n ports for baresip to listen on. baresip binds UDP
// and TCP on its SIP port and TLS (TCP) on the port after it, and its
// console UDP and TCP: a port is taken only when all of that binds. Ports
// come from below Linux's ephemeral range (32768-60999), so that no
// connection another test opens meanwhile can take one before baresip
// does.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	var out []int
	taken := map[int]bool{}
	for tries := 0; len(out) < n; tries++ {
		if tries > 1000 {
			t.Fatal("no free ports for baresip")
		}
		p := 20000 + rand.IntN(12000)
		if taken[p] || taken[p+1] || !Bindable("127.0.0.1", p) {
			continue
		}
		taken[p], taken[p+1] = true, true
		out = append(out, p)
	}
	return out
}

// Bindable reports whether UDP and TCP port p and TCP port p+1 are free
// on host.
func Bindable(host string, p int) bool {
	addr := func(port int) string { return net.JoinHostPort(host, fmt.Sprint(port)) }
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
