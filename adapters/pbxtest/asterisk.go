package pbxtest

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Asterisk is a running Asterisk 22 from ../shared/pbx: PJSIP endpoints
// 100-109 (user = password = extension, context phones), ARI users
// sidecar (read-write) and reader (read-only), ring group 600, pickup
// *8XXX, parking 700 (spaces 701-720), ConfBridge 800. Its run directory
// (Dir) holds the config in etc/asterisk and the logs in
// var/log/asterisk; Stop is `core stop now`.
type Asterisk struct {
	server
	// SIPPort (UDP and TCP), HTTPPort (ARI) and AMIPort, on 127.0.0.1.
	SIPPort, HTTPPort, AMIPort int
}

// AsteriskVersion is the version of the shared build.
const AsteriskVersion = "22.10.1"

// StartAsterisk runs Asterisk with the shared templates changed by c until
// the test ends. It fails (or skips, see Required) when Asterisk cannot
// start.
func StartAsterisk(t testing.TB, c Config) *Asterisk {
	t.Helper()
	a := &Asterisk{server: server{t: t, name: "Asterisk", Dir: runDir(t, "ast"), log: "var/log/asterisk/messages.log",
		pidFiles: []string{"var/run/asterisk/asterisk.pid", "var/run/asterisk/asterisk.ctl"}, stopWait: 15 * time.Second}}
	a.run = a.start
	a.launch(c, "asterisk-"+AsteriskVersion+"-bookworm-amd64", "asterisk", "etc/asterisk", func() error {
		ports, err := freePorts(3, 1)
		if err == nil {
			a.SIPPort, a.HTTPPort, a.AMIPort = ports[0], ports[1], ports[2]
		}
		return err
	})
	return a
}

func (a *Asterisk) start() error {
	out, err := script(90*time.Second, []string{"ASTERISK_HOME=" + a.home}, filepath.Join(a.kit, "start.sh"),
		a.Dir, strconv.Itoa(a.SIPPort), strconv.Itoa(a.HTTPPort), a.rtp, strconv.Itoa(a.AMIPort))
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(lastLine(out))
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

// lastLine is the last line of a script's output, trimmed.
func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

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

// ConfigFile is the path of one of Asterisk's config files as running.
func (a *Asterisk) ConfigFile(name string) string { return filepath.Join(a.Dir, "etc/asterisk", name) }
