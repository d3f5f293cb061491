package main

import (
	"fmt"
	"github.com/emiago/sipgo/sip"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// process is a lamplighter binary running as its own process.
type process struct {
	t   *testing.T
	cmd *exec.Cmd
	out *syncBuffer
	end chan struct{} // closed when the process has exited
	err error         // its exit, once end is closed
}

// buildBinary builds lamplighter into dir.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "lamplighter")
	out, err := exec.Command("go", "build", "-race", "-o", bin, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func start(t *testing.T, bin, config string) *process {
	t.Helper()
	p := launch(t, "lamplighter output", exec.Command(bin, "-config", config))
	waitFor(t, p.out, "lamplighter running", 20*time.Second)
	return p
}

// launch starts cmd in a process group of its own, killed (with all it
// started) when the test ends; its output is logged, as what, if the
// test failed.
func launch(t *testing.T, what string, cmd *exec.Cmd) *process {
	t.Helper()
	p := &process{t: t, cmd: cmd, out: &syncBuffer{}, end: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.end) }()
	t.Cleanup(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.end
		if t.Failed() {
			t.Logf("%s:\n%s", what, p.out.String())
		}
	})
	return p
}

// kill ends the process with SIGKILL: no flush, no goodbye.
func (p *process) kill() {
	p.cmd.Process.Kill()
	<-p.end
}

// metric reads one sample from /metrics.
func metric(t *testing.T, httpAddr, name string) float64 {
	t.Helper()
	res, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in /metrics", name)
	}
	v, _ := strconv.ParseFloat(string(m[1]), 64)
	return v
}

func apiDo(t *testing.T, method, url, token, body string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b)
}

// TestRestartKeepsSubscriptions is the durability test: real
// subscriptions over UDP and TCP, Lamplighter killed with SIGKILL and
// started again. Each subscriber gets a NOTIFY in its dialog with a higher
// CSeq and dialog-info version, without subscribing again, and an
// in-dialog refresh gets 200, not 481. The person state set through the
// API before the crash is still there. A SIGTERM then stops it within
// seconds.
func TestRestartKeepsSubscriptions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	dir := t.TempDir()
	sipPort, httpPort := freePort(t), freePort(t)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	config := filepath.Join(dir, "lamplighter.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`
sip:
  domain: restart.test
  listen:
    - {transport: udp, address: "127.0.0.1:%d"}
    - {transport: tcp, address: "127.0.0.1:%d"}
  trusted_networks: [127.0.0.0/8]
http: {listen: "%s", token: s3cret}
state_dir: %s
log: {level: debug}
users:
  - {id: debbie, name: Debbie Harry, extensions: ["100"]}
  - {id: bob, name: Bob Marley, extensions: ["101"]}
lists:
  - {name: team, members: [debbie, bob]}
`, sipPort, sipPort, httpAddr, filepath.Join(dir, "state"))), 0o644)
	server := fmt.Sprintf("127.0.0.1:%d", sipPort)

	first := start(t, bin, config)
	type sub struct {
		w       *watcher
		cseq    uint32
		version int
	}
	var subs []*sub
	for _, tr := range []string{"UDP", "TCP"} {
		w := newWatcher(t, tr)
		if res := w.subscribe(server, "100", "dialog", 3600); res.StatusCode != 200 {
			t.Fatalf("%s SUBSCRIBE: %d", tr, res.StatusCode)
		}
		w.notifyWhere("active", 5*time.Second)
		subs = append(subs, &sub{w: w})
	}
	// A busy-lamp list (RFC 4662), a receptionist's side car.
	team := newWatcher(t, "UDP")
	team.extra = []sip.Header{sip.NewHeader("Supported", "eventlist")}
	if res := team.subscribe(server, "team", "dialog", 3600); res.StatusCode != 200 {
		t.Fatalf("list SUBSCRIBE: %d", res.StatusCode)
	}
	team.notifyWhere("<name>Bob Marley</name>", 5*time.Second)
	// A change, so that CSeq and version move past their first values.
	if code, body := apiDo(t, "PUT", "http://"+httpAddr+"/api/v1/users/100/presence", "s3cret",
		`{"activity":"dnd","note":"Quarterly close"}`); code != 200 || !strings.Contains(body, `"state": "dnd"`) {
		t.Fatalf("PUT presence: %d %s", code, body)
	}
	teamCSeq := team.nextNotify(5 * time.Second).CSeq().SeqNo
	for _, s := range subs {
		n := s.w.notifyWhere("active", 5*time.Second)
		s.cseq = n.CSeq().SeqNo
		var err error
		if s.version, err = dialogVersion(n); err != nil {
			t.Fatal(err)
		}
	}
	// Wait until the store has everything, then crash.
	deadline := time.Now().Add(10 * time.Second)
	for metric(t, httpAddr, "lamplighter_state_unsaved_changes") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("changes not saved within 10s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	first.kill()

	second := start(t, bin, config)
	waitFor(t, second.out, "restored saved state", 5*time.Second)
	for _, s := range subs {
		n := s.w.notifyWhere("active", 5*time.Second)
		if got := n.CSeq().SeqNo; got <= s.cseq {
			t.Errorf("%s: CSeq %d after the restart, not above %d", s.w.transport, got, s.cseq)
		}
		if v, err := dialogVersion(n); err != nil || v <= s.version {
			t.Errorf("%s: version %d after the restart, not above %d (%v)", s.w.transport, v, s.version, err)
		}
		if tag, _ := n.From().Params.Get("tag"); tag != s.w.toTag {
			t.Errorf("%s: NOTIFY From tag %q, not the dialog's %q", s.w.transport, tag, s.w.toTag)
		}
		if res := s.w.subscribe("", "", "", 3600); res.StatusCode != 200 {
			t.Errorf("%s: refresh after the restart got %d, want 200", s.w.transport, res.StatusCode)
		}
	}
	// The list subscription is back too: its full state in its dialog.
	if n := team.notifyWhere("<name>Bob Marley</name>", 5*time.Second); n.CSeq().SeqNo <= teamCSeq {
		t.Errorf("list: CSeq %d after the restart, not above %d", n.CSeq().SeqNo, teamCSeq)
	}
	if res := team.subscribe("", "", "", 3600); res.StatusCode != 200 {
		t.Errorf("list: refresh after the restart got %d, want 200", res.StatusCode)
	}
	if code, body := apiDo(t, "GET", "http://"+httpAddr+"/api/v1/users/debbie", "s3cret", ""); code != 200 ||
		!strings.Contains(body, `"state": "dnd"`) || !strings.Contains(body, "Quarterly close") || !strings.Contains(body, `"watchers": 3`) {
		t.Errorf("after the restart: %d %s", code, body)
	}

	// SIGTERM: stop accepting, save, exit 0 within a few seconds.
	second.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-second.end:
		if second.err != nil {
			t.Errorf("exit after SIGTERM: %v", second.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("still running 5s after SIGTERM")
	}
	waitFor(t, second.out, "lamplighter stopped", time.Second)
}
