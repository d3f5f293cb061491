package pbxtest

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FreeSWITCH is a running FreeSWITCH 1.10 from ../shared/pbx: the
// internal profile (users 1000-1019, password 1234, domain 127.0.0.1),
// the vanilla dialplan (local extensions 1000-1019, ring groups 2000-2002,
// intercept **<ext>), the event socket with password ClueCon. Its run
// directory (Dir) holds the config in conf and the log in
// log/freeswitch.log; Stop is `fsctl shutdown`.
type FreeSWITCH struct {
	server
	// SIPPort (UDP and TCP; TLS would be the next) and ESLPort, on
	// 127.0.0.1.
	SIPPort, ESLPort int
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
	f := &FreeSWITCH{server: server{t: t, name: "FreeSWITCH", Dir: runDir(t, "fs"), log: "log/freeswitch.log",
		pidFiles: []string{"run/freeswitch.pid"}, stopWait: 20 * time.Second}}
	f.run = f.start
	f.launch(c, "freeswitch-"+FreeSWITCHVersion+"-bookworm-amd64", "freeswitch", "conf", func() error {
		ports, err := freePorts(2, 2) // SIP and the TLS port after it; ESL
		if err == nil {
			f.SIPPort, f.ESLPort = ports[0], ports[1]
		}
		return err
	})
	return f
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
