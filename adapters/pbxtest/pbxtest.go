// Package pbxtest runs the real PBXs of ../shared/pbx in end-to-end tests:
// Asterisk 22.10.1 (PJSIP, ARI, AMI) and FreeSWITCH 1.10.12 (Sofia, the
// event socket), each on free loopback ports inside a folder of its own,
// with the shared config templates plus what a test adds or changes, and
// stopped when the test ends. A PBX can be stopped and started again on
// the same ports (a restart, an outage) or frozen (a PBX that stops
// answering).
//
// The builds need the Debian packages in ../shared/pbx/*/deps.txt, which
// .ci/deps installs. With LAMPLIGHTER_E2E=require (set by `make test`) a
// PBX that cannot start fails the test; otherwise the test is skipped.
package pbxtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Required reports whether a PBX that cannot run fails the test
// (LAMPLIGHTER_E2E=require) instead of skipping it.
func Required() bool { return os.Getenv("LAMPLIGHTER_E2E") == "require" }

func unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if Required() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

// SharedDir is ../shared/pbx beside the module's root (or
// $LAMPLIGHTER_PBX_DIR), where the PBX builds and templates are.
func SharedDir() (string, error) {
	if d := os.Getenv("LAMPLIGHTER_PBX_DIR"); d != "" {
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			pbx := filepath.Join(filepath.Dir(dir), "shared", "pbx")
			if _, err := os.Stat(filepath.Join(pbx, "README.md")); err != nil {
				return "", fmt.Errorf("no PBX builds at %s: %w", pbx, err)
			}
			return pbx, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Edit replaces Old with New in one of the PBX's config files; a test
// fails when Old is not there (the templates moved on).
type Edit struct {
	File, Old, New string
}

// Config changes a PBX's config templates: Append adds text to the end of
// a file (a new file when the template has none), Edits change text in
// place. Placeholders such as @SIP_PORT@ in either are filled in like the
// templates'.
type Config struct {
	Append map[string]string
	Edits  []Edit
	merges []merge           // README snippets for Asterisk (Apply)
	files  map[string]string // whole FreeSWITCH files from READMEs (Apply)
}

// kit copies a PBX's script folder (start.sh, stop.sh and the config
// templates) to dir, with the config changed as c says.
func kit(shared, name, confDir, dir string, c Config) error {
	src := filepath.Join(shared, name)
	if err := os.CopyFS(dir, os.DirFS(src)); err != nil {
		return err
	}
	// The copy keeps the shared folder's read-only modes.
	if err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if d.IsDir() || strings.HasSuffix(p, ".sh") {
			mode = 0o755
		}
		return os.Chmod(p, mode)
	}); err != nil {
		return err
	}
	for file, text := range c.files {
		p := filepath.Join(dir, confDir, file)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			return err
		}
	}
	for _, e := range c.Edits {
		p := filepath.Join(dir, confDir, e.File)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if !bytes.Contains(b, []byte(e.Old)) {
			return fmt.Errorf("%s has no %q to change", e.File, e.Old)
		}
		if err := os.WriteFile(p, bytes.Replace(b, []byte(e.Old), []byte(e.New), 1), 0o644); err != nil {
			return err
		}
	}
	for _, m := range c.merges {
		p := filepath.Join(dir, confDir, m.file)
		b, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		if err := os.WriteFile(p, []byte(mergeINI(string(b), m.text)), 0o644); err != nil {
			return err
		}
	}
	for file, text := range c.Append {
		p := filepath.Join(dir, confDir, file)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			return err
		}
		_, err = f.WriteString("\n" + text + "\n")
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// unpacked returns the folder a PBX tarball is unpacked into, unpacking it
// once for every test process of this machine (a lock file keeps two
// processes from unpacking at the same time).
func unpacked(shared, tarball, name string) (string, error) {
	base := filepath.Join(os.TempDir(), "lamplighter-pbx")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return "", err
	}
	home := filepath.Join(base, name)
	lock, err := os.OpenFile(filepath.Join(base, name+".lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(filepath.Join(home, ".complete")); err == nil {
		return home, nil
	}
	tmp, err := os.MkdirTemp(base, name+".unpack-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	if out, err := exec.Command("tar", "-xJf", filepath.Join(shared, tarball), "-C", tmp).CombinedOutput(); err != nil {
		return "", fmt.Errorf("unpacking %s: %v: %s", tarball, err, out)
	}
	os.RemoveAll(home)
	if err := os.Rename(filepath.Join(tmp, name), home); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(home, ".complete"), nil, 0o644); err != nil {
		return "", err
	}
	return home, nil
}

// runDir makes a short folder for a PBX's run directory: Asterisk's
// control socket path must fit in 107 bytes, so t.TempDir's long names
// will not do.
func runDir(t testing.TB, prefix string) string {
	dir, err := os.MkdirTemp("", prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() || os.Getenv("LAMPLIGHTER_KEEP_PBX") == "" {
			os.RemoveAll(dir)
		}
	})
	return dir
}

// portsMu keeps the goroutines of one test process from choosing the
// same ports; other processes are kept apart by binding each port first
// and by a retry when a PBX cannot bind.
var (
	portsMu sync.Mutex
	chosen  = map[int]bool{}
)

// freePorts returns n ports free on 127.0.0.1 for UDP and TCP, each with
// `span` free ports after it, from below Linux's ephemeral range (so no
// outgoing connection takes one meanwhile) and apart from the ports
// baresiptest uses (20000-32000).
func freePorts(n, span int) ([]int, error) {
	portsMu.Lock()
	defer portsMu.Unlock()
	var out []int
	for tries := 0; len(out) < n; tries++ {
		if tries > 2000 {
			return nil, errors.New("no free ports")
		}
		p := 12000 + rand.IntN(7800)
		ok := true
		for q := p; q < p+span && ok; q++ {
			ok = !chosen[q] && bindable(q)
		}
		if !ok {
			continue
		}
		for q := p; q < p+span; q++ {
			chosen[q] = true
		}
		out = append(out, p)
	}
	return out, nil
}

func bindable(port int) bool {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	u, err := net.ListenPacket("udp", addr)
	if err != nil {
		return false
	}
	u.Close()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return false
	}
	l.Close()
	return true
}

// rtpRange returns a range of 40 ports for a PBX's media, from
// 40000-60000 (the PBXs bind RTP ports only as calls need them).
func rtpRange() (int, int) {
	base := 40000 + 40*rand.IntN(500)
	return base, base + 39
}

// script runs one of a kit's scripts with env, within d.
func script(d time.Duration, env []string, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The PBX the script starts must not stay in the script's process
	// group (a test's context kill would take it along mid-test).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	err := cmd.Run()
	if err != nil {
		return stdout.String(), fmt.Errorf("%s: %v: %s", filepath.Base(name), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// process is a running PBX's process, by pid.
type process struct {
	mu  sync.Mutex
	pid int
}

func (p *process) set(pid int) {
	p.mu.Lock()
	p.pid = pid
	p.mu.Unlock()
}

func (p *process) get() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pid
}

// signal sends sig to the PBX when it runs.
func (p *process) signal(sig syscall.Signal) {
	if pid := p.get(); pid > 0 {
		syscall.Kill(pid, sig)
	}
}

// gone waits until the process has exited, or d passed.
func (p *process) gone(d time.Duration) bool {
	pid := p.get()
	if pid <= 0 {
		return true
	}
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return true
		}
		// A zombie of ours (it is not our child: the scripts daemonize)
		// cannot linger, but check /proc for one anyway.
		if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && strings.Contains(string(b), ") Z ") {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// tail is the last n bytes of a file, for a failing test's log.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Wait polls cond every 20 ms until it holds or d passes, and reports
// whether it held.
func Wait(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
