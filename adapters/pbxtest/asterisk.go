package pbxtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Asterisk is a running Asterisk 22 from ../shared/pbx: PJSIP endpoints
// 100-109 (user = password = extension, context phones), ARI users
// sidecar (read-write) and reader (read-only), ring group 600, pickup
// *8XXX, parking 700 (spaces 701-720), ConfBridge 800.
type Asterisk struct {
	t    testing.TB
	kit  string // the scripts and the config templates, as changed
	home string // the unpacked build
	// Dir is the run directory (config in Dir/etc/asterisk, logs in
	// Dir/var/log/asterisk).
	Dir string
	// SIPPort (UDP and TCP), HTTPPort (ARI) and AMIPort, on 127.0.0.1.
	SIPPort, HTTPPort, AMIPort int
	rtp                        string
	proc                       process
}

// AsteriskVersion is the version of the shared build.
const AsteriskVersion = "22.10.1"

// StartAsterisk runs Asterisk with the shared templates changed by c until
// the test ends. It fails (or skips, see Required) when Asterisk cannot
// start.
func StartAsterisk(t testing.TB, c Config) *Asterisk {
	t.Helper()
	shared, err := SharedDir()
	if err != nil {
		unavailable(t, "Asterisk: %v", err)
	}
	name := "asterisk-" + AsteriskVersion + "-bookworm-amd64"
	home, err := unpacked(shared, name+".tar.xz", name)
	if err != nil {
		unavailable(t, "Asterisk: %v", err)
	}
	a := &Asterisk{t: t, home: home, kit: t.TempDir(), Dir: runDir(t, "ast")}
	if err := kit(shared, "asterisk", "etc/asterisk", a.kit, c); err != nil {
		t.Fatalf("Asterisk config: %v", err)
	}
	t.Cleanup(func() {
		a.stop(true) // nothing to keep: at once
		if t.Failed() {
			t.Logf("Asterisk's log (%s):\n%s", a.Dir, tail(filepath.Join(a.Dir, "var/log/asterisk/messages.log"), 12000))
		}
	})
	var last error
	for range 3 { // another process may take a port first
		ports, err := freePorts(3, 1)
		if err != nil {
			t.Fatal(err)
		}
		a.SIPPort, a.HTTPPort, a.AMIPort = ports[0], ports[1], ports[2]
		lo, hi := rtpRange()
		a.rtp = fmt.Sprintf("%d-%d", lo, hi)
		if last = a.start(); last == nil {
			return a
		}
		a.stop(true)
	}
	unavailable(t, "Asterisk did not start: %v\n%s", last, tail(filepath.Join(a.Dir, "var/log/asterisk/messages.log"), 4000))
	return nil
}

func (a *Asterisk) start() error {
	out, err := script(90*time.Second, []string{"ASTERISK_HOME=" + a.home}, filepath.Join(a.kit, "start.sh"),
		a.Dir, strconv.Itoa(a.SIPPort), strconv.Itoa(a.HTTPPort), a.rtp, strconv.Itoa(a.AMIPort))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(lastLine(out)))
	if err != nil {
		return fmt.Errorf("start.sh printed no pid: %q", out)
	}
	a.proc.set(pid)
	// Every listener must be Asterisk's own: a port another process took
	// between our check and Asterisk's bind leaves it without one.
	if !Wait(10*time.Second, func() bool {
		s := a.CLI("pjsip show transports")
		return strings.Contains(s, "transport-udp") && strings.Contains(s, "transport-tcp") && !bindable(a.SIPPort) && !bindable(a.HTTPPort)
	}) {
		return fmt.Errorf("Asterisk runs but does not listen on %d and %d", a.SIPPort, a.HTTPPort)
	}
	return nil
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// stop ends Asterisk: at once (SIGKILL) or cleanly.
func (a *Asterisk) stop(kill bool) {
	if a.proc.get() <= 0 {
		return
	}
	if !kill {
		script(15*time.Second, nil, filepath.Join(a.kit, "stop.sh"), a.Dir)
	}
	a.proc.signal(syscall.SIGCONT)
	a.proc.signal(syscall.SIGKILL)
	a.proc.gone(5 * time.Second)
	os.Remove(filepath.Join(a.Dir, "var/run/asterisk/asterisk.pid"))
	os.Remove(filepath.Join(a.Dir, "var/run/asterisk/asterisk.ctl"))
	a.proc.set(0)
}

// Stop stops Asterisk cleanly (core stop now): its channels hang up and
// its listeners close.
func (a *Asterisk) Stop() {
	a.t.Helper()
	a.stop(false)
}

// Kill ends Asterisk at once (SIGKILL): nothing is hung up or said.
func (a *Asterisk) Kill() {
	a.t.Helper()
	a.stop(true)
}

// Restart starts a stopped Asterisk again on the same ports and config.
func (a *Asterisk) Restart() {
	a.t.Helper()
	a.stop(false)
	if err := a.start(); err != nil {
		a.t.Fatalf("Asterisk did not start again: %v", err)
	}
}

// Freeze stops the process (SIGSTOP) without closing anything: a PBX that
// stops answering. Thaw lets it go on.
func (a *Asterisk) Freeze() { a.proc.signal(syscall.SIGSTOP) }

// Thaw undoes Freeze.
func (a *Asterisk) Thaw() { a.proc.signal(syscall.SIGCONT) }

// CLI runs an Asterisk CLI command and returns what it printed ("" when
// Asterisk does not answer within 10 s).
func (a *Asterisk) CLI(cmd string) string {
	out, _ := script(10*time.Second, nil, filepath.Join(a.Dir, "asterisk.sh"), "-rx", cmd)
	return out
}

// SIP is Asterisk's SIP address, 127.0.0.1:port.
func (a *Asterisk) SIP() string { return "127.0.0.1:" + strconv.Itoa(a.SIPPort) }

// ARI is the base URL of Asterisk's HTTP server (ARI under /ari).
func (a *Asterisk) ARI() string { return "http://127.0.0.1:" + strconv.Itoa(a.HTTPPort) }

// Log is Asterisk's messages.log so far.
func (a *Asterisk) Log() string {
	b, _ := os.ReadFile(filepath.Join(a.Dir, "var/log/asterisk/messages.log"))
	return string(b)
}

// ConfigFile is the path of one of Asterisk's config files as running.
func (a *Asterisk) ConfigFile(name string) string { return filepath.Join(a.Dir, "etc/asterisk", name) }
