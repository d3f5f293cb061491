package pbxtest

import (
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// server is what Asterisk and FreeSWITCH share: a build from
// ../shared/pbx run by the start.sh of its kit (the scripts and config
// templates, as changed) in a run directory of its own, and ended by its
// stop.sh or a signal.
type server struct {
	t    testing.TB
	name string // Asterisk or FreeSWITCH, for messages
	kit  string
	home string // the unpacked build
	// Dir is the run directory.
	Dir string
	// log is the PBX's log file and pidFiles the files a killed PBX
	// leaves behind, relative to Dir; stopWait bounds stop.sh.
	log      string
	pidFiles []string
	stopWait time.Duration
	rtp      string // RTP port range, lo-hi
	proc     process
	// run starts the PBX on its chosen ports and waits until it listens.
	run func() error
}

// launch unpacks the build and writes the kit (the shared templates
// changed by c, from the shared folder's dir, with the config in
// confDir), then starts the PBX until the test ends, choosing its ports
// anew (choose) when another process took one first. It fails (or skips,
// see Required) when the PBX cannot start.
func (s *server) launch(c Config, build, dir, confDir string, choose func() error) {
	t := s.t
	t.Helper()
	shared, err := SharedDir()
	if err != nil {
		unavailable(t, "%s: %v", s.name, err)
	}
	s.home, err = unpacked(shared, build+".tar.xz", build)
	if err != nil {
		unavailable(t, "%s: %v", s.name, err)
	}
	s.kit = t.TempDir()
	if err := kit(shared, dir, confDir, s.kit, c); err != nil {
		t.Fatalf("%s config: %v", s.name, err)
	}
	t.Cleanup(func() {
		s.stop(true) // nothing to keep: at once
		if t.Failed() {
			t.Logf("%s's log (%s):\n%s", s.name, s.Dir, tail(filepath.Join(s.Dir, s.log), 12000))
		}
	})
	var last error
	for range 3 { // another process may take a port first
		if err := choose(); err != nil {
			t.Fatal(err)
		}
		lo, hi := rtpRange()
		s.rtp = strconv.Itoa(lo) + "-" + strconv.Itoa(hi)
		if last = s.run(); last == nil {
			return
		}
		s.stop(true)
	}
	unavailable(t, "%s did not start: %v\n%s", s.name, last, tail(filepath.Join(s.Dir, s.log), 4000))
}

// stop ends the PBX: at once (SIGKILL) or cleanly (stop.sh first).
func (s *server) stop(kill bool) {
	if s.proc.get() <= 0 {
		return
	}
	if !kill {
		script(s.stopWait, nil, filepath.Join(s.kit, "stop.sh"), s.Dir)
	}
	s.proc.signal(syscall.SIGCONT)
	s.proc.signal(syscall.SIGKILL)
	s.proc.gone(5 * time.Second)
	for _, f := range s.pidFiles {
		os.Remove(filepath.Join(s.Dir, f))
	}
	s.proc.set(0)
}

// Stop stops the PBX cleanly: its calls hang up and its listeners close.
func (s *server) Stop() {
	s.t.Helper()
	s.stop(false)
}

// Kill ends the PBX at once (SIGKILL): nothing is hung up or said.
func (s *server) Kill() {
	s.t.Helper()
	s.stop(true)
}

// Restart starts a stopped PBX again on the same ports and config.
func (s *server) Restart() {
	s.t.Helper()
	s.stop(false)
	if err := s.run(); err != nil {
		s.t.Fatalf("%s did not start again: %v", s.name, err)
	}
}

// Freeze stops the process (SIGSTOP) without closing anything: a PBX that
// stops answering. Thaw lets it go on.
func (s *server) Freeze() { s.proc.signal(syscall.SIGSTOP) }

// Thaw undoes Freeze.
func (s *server) Thaw() { s.proc.signal(syscall.SIGCONT) }

// Log is the PBX's log so far.
func (s *server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, s.log))
	return string(b)
}
