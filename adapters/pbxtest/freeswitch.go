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

// FreeSWITCH is a running FreeSWITCH 1.10 from ../shared/pbx: the
// internal profile (users 1000-1019, password 1234, domain 127.0.0.1),
// the vanilla dialplan (local extensions 1000-1019, ring groups 2000-2002,
// intercept **<ext>), the event socket with password ClueCon.
type FreeSWITCH struct {
	t    testing.TB
	kit  string
	home string
	// Dir is the run directory (config in Dir/conf, log in
	// Dir/log/freeswitch.log).
	Dir string
	// SIPPort (UDP and TCP; TLS would be the next) and ESLPort, on
	// 127.0.0.1.
	SIPPort, ESLPort int
	rtp              string
	proc             process
}

// FreeSWITCHVersion is the version of the shared build.
const FreeSWITCHVersion = "1.10.12"

// ESLPassword is the event socket's password in the shared config.
const ESLPassword = "ClueCon"

// Domain is the FreeSWITCH users' domain in the shared config.
const Domain = "127.0.0.1"

// StartFreeSWITCH runs FreeSWITCH with the shared templates changed by c
// until the test ends.
func StartFreeSWITCH(t testing.TB, c Config) *FreeSWITCH {
	t.Helper()
	shared, err := SharedDir()
	if err != nil {
		unavailable(t, "FreeSWITCH: %v", err)
	}
	name := "freeswitch-" + FreeSWITCHVersion + "-bookworm-amd64"
	home, err := unpacked(shared, name+".tar.xz", name)
	if err != nil {
		unavailable(t, "FreeSWITCH: %v", err)
	}
	f := &FreeSWITCH{t: t, home: home, kit: t.TempDir(), Dir: runDir(t, "fs")}
	if err := kit(shared, "freeswitch", "conf", f.kit, c); err != nil {
		t.Fatalf("FreeSWITCH config: %v", err)
	}
	t.Cleanup(func() {
		f.stop(true) // nothing to keep: at once
		if t.Failed() {
			t.Logf("FreeSWITCH's log (%s):\n%s", f.Dir, tail(filepath.Join(f.Dir, "log/freeswitch.log"), 12000))
		}
	})
	var last error
	for range 3 {
		ports, err := freePorts(2, 2) // SIP and the TLS port after it; ESL
		if err != nil {
			t.Fatal(err)
		}
		f.SIPPort, f.ESLPort = ports[0], ports[1]
		lo, hi := rtpRange()
		f.rtp = fmt.Sprintf("%d-%d", lo, hi)
		if last = f.start(); last == nil {
			return f
		}
		f.stop(true)
	}
	unavailable(t, "FreeSWITCH did not start: %v\n%s", last, tail(filepath.Join(f.Dir, "log/freeswitch.log"), 4000))
	return nil
}

func (f *FreeSWITCH) start() error {
	out, err := script(90*time.Second, []string{"FREESWITCH_HOME=" + f.home}, filepath.Join(f.kit, "start.sh"),
		f.Dir, strconv.Itoa(f.SIPPort), strconv.Itoa(f.ESLPort), f.rtp)
	if err != nil {
		return err
	}
	pid, err := strconv.Atoi(lastLine(out))
	if err != nil {
		return fmt.Errorf("start.sh printed no pid: %q", out)
	}
	f.proc.set(pid)
	if !Wait(15*time.Second, func() bool {
		st := f.API("sofia status")
		return strings.Contains(st, "internal") && strings.Contains(st, "RUNNING") && !bindable(f.SIPPort)
	}) {
		return fmt.Errorf("FreeSWITCH runs but its SIP profile does not listen on %d", f.SIPPort)
	}
	return nil
}

func (f *FreeSWITCH) stop(kill bool) {
	if f.proc.get() <= 0 {
		return
	}
	if !kill {
		script(20*time.Second, nil, filepath.Join(f.kit, "stop.sh"), f.Dir)
	}
	f.proc.signal(syscall.SIGCONT)
	f.proc.signal(syscall.SIGKILL)
	f.proc.gone(5 * time.Second)
	os.Remove(filepath.Join(f.Dir, "run/freeswitch.pid"))
	f.proc.set(0)
}

// Stop stops FreeSWITCH cleanly (fsctl shutdown).
func (f *FreeSWITCH) Stop() {
	f.t.Helper()
	f.stop(false)
}

// Kill ends FreeSWITCH at once (SIGKILL).
func (f *FreeSWITCH) Kill() {
	f.t.Helper()
	f.stop(true)
}

// Restart starts a stopped FreeSWITCH again on the same ports and config.
func (f *FreeSWITCH) Restart() {
	f.t.Helper()
	f.stop(false)
	if err := f.start(); err != nil {
		f.t.Fatalf("FreeSWITCH did not start again: %v", err)
	}
}

// Freeze stops the process (SIGSTOP): a PBX that stops answering.
func (f *FreeSWITCH) Freeze() { f.proc.signal(syscall.SIGSTOP) }

// Thaw undoes Freeze.
func (f *FreeSWITCH) Thaw() { f.proc.signal(syscall.SIGCONT) }

// API runs an API command over the event socket (fs_cli -x) and returns
// its output ("" when FreeSWITCH does not answer within 10 s).
func (f *FreeSWITCH) API(cmd string) string {
	out, _ := script(10*time.Second, nil, filepath.Join(f.Dir, "fs_cli.sh"), "-t", "5000", "-x", cmd)
	return out
}

// SIP is FreeSWITCH's SIP address, 127.0.0.1:port.
func (f *FreeSWITCH) SIP() string { return "127.0.0.1:" + strconv.Itoa(f.SIPPort) }

// ESL is the event socket's address.
func (f *FreeSWITCH) ESL() string { return "127.0.0.1:" + strconv.Itoa(f.ESLPort) }

// Log is freeswitch.log so far.
func (f *FreeSWITCH) Log() string {
	b, _ := os.ReadFile(filepath.Join(f.Dir, "log/freeswitch.log"))
	return string(b)
}
