package presence

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/baresiptest"
)

// A real Linphone (Debian's linphone-cli, liblinphone 5.1) as a watcher:
// linphonec subscribes to a friend with Event: presence and prints
// `Friend "…" <…> is STATUS` on every NOTIFY, as Linphone's apps would
// show it. `make test` installs it (LAMPLIGHTER_E2E=require).

// linphone is a running linphonec fed commands on its stdin.
type linphone struct {
	t     *testing.T
	in    io.WriteCloser
	mu    sync.Mutex
	lines []string
	seen  chan struct{}
}

func startLinphone(t *testing.T) *linphone {
	t.Helper()
	bin, err := exec.LookPath("linphonec")
	if err != nil {
		if os.Getenv("LAMPLIGHTER_E2E") == "require" {
			t.Fatal("linphonec is required (apt-get install linphone-cli)")
		}
		t.Skip("linphonec not installed")
	}
	home := t.TempDir() // its friends database lives under HOME
	if err := os.MkdirAll(filepath.Join(home, ".local", "share", "linphone"), 0o755); err != nil {
		t.Fatal(err)
	}
	rc := filepath.Join(home, "linphonerc")
	port := baresiptest.FreePorts(t, 1)[0]
	if err := os.WriteFile(rc, []byte(fmt.Sprintf("[sip]\nsip_port=%d\nsip_tcp_port=-1\n", port)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "-c", rc, "-d", "0")
	cmd.Env = append(os.Environ(), "HOME="+home)
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	l := &linphone{t: t, in: in, seen: make(chan struct{}, 1)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			l.mu.Lock()
			l.lines = append(l.lines, sc.Text())
			l.mu.Unlock()
			select {
			case l.seen <- struct{}{}:
			default:
			}
		}
	}()
	t.Cleanup(func() {
		io.WriteString(in, "quit\n")
		select {
		case <-done:
		case <-time.After(5 * time.Second):
		}
		cancel()
		cmd.Wait()
		if t.Failed() {
			l.mu.Lock()
			t.Logf("linphonec said:\n%s", strings.Join(l.lines, "\n"))
			l.mu.Unlock()
		}
	})
	return l
}

func (l *linphone) command(c string) { io.WriteString(l.in, c+"\n") }

// waitStatus waits for `Friend "name" … is status` printed after line from.
func (l *linphone) waitStatus(from int, name, status string) int {
	l.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		l.mu.Lock()
		for i := from; i < len(l.lines); i++ {
			line := l.lines[i]
			if strings.Contains(line, `Friend "`+name+`"`) && strings.HasSuffix(line, " is "+status) {
				l.mu.Unlock()
				return i + 1
			}
		}
		l.mu.Unlock()
		select {
		case <-l.seen:
		case <-deadline:
			l.t.Fatalf("linphonec never showed %s as %q", name, status)
		}
	}
}

func TestLinphoneWatchesAPerson(t *testing.T) {
	env := newEnv(t, trusted)
	l := startLinphone(t)
	l.command(`friend add "Debbie" sip:100@` + env.udp)
	at := l.waitStatus(0, "Debbie", "Online")
	env.bridge.Apply(ringing("101"))
	env.bridge.Apply(answered("101"))
	at = l.waitStatus(at, "Debbie", "On the phone")
	env.bridge.Apply(bridge.CallEnded{Source: "pbx", CallID: "c1"})
	at = l.waitStatus(at, "Debbie", "Online")
	env.bridge.SetPerson("debbie", "api", bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityAway}})
	at = l.waitStatus(at, "Debbie", "Away")
	env.bridge.SetPerson("debbie", "api", bridge.PersonState{Activities: []bridge.Activity{bridge.ActivityDND}})
	at = l.waitStatus(at, "Debbie", "Do not disturb")
	env.bridge.ClearPerson("debbie", "api")
	l.waitStatus(at, "Debbie", "Online")
}
