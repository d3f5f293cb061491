package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/cmd/lamplighter/version"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitFor polls out until it contains want or the deadline passes.
func waitFor(t *testing.T, out *syncBuffer, want string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("no %q within %v in:\n%s", want, d, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCheckConfig(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("users:\n  - {id: a, extensions: [\"100\"]}\n"), 0o644)
	os.WriteFile(bad, []byte("users:\n  - {id: a, extensions: [\"100\"]}\n  - {id: b, extensions: [\"100\"], devices: [{pbx: x, device: y}]}\n"), 0o644)

	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"-check-config", good}, &out, &errOut); code != 0 || out.String() != "ok\n" {
		t.Errorf("good file: exit %d, output %q %q", code, out.String(), errOut.String())
	}
	out.Reset()
	code := run(context.Background(), []string{"-check-config", bad}, &out, &errOut)
	want := []string{bad + `:3: "100" is already used by user "a"`, bad + `:3: user "b" refers to unknown pbx "x"`}
	if code != 1 {
		t.Errorf("bad file: exit %d", code)
	}
	for _, w := range want {
		if !strings.Contains(out.String(), w) {
			t.Errorf("bad file: output lacks %q:\n%s", w, out.String())
		}
	}
	if code := run(context.Background(), []string{"-check-config", filepath.Join(dir, "missing.yaml")}, &out, &errOut); code != 1 {
		t.Errorf("missing file: exit %d", code)
	}
}

// demoOnFreePorts is the built-in demo config with its listeners moved to
// free ports, so that the test does not fight a running demo for 5060.
func demoOnFreePorts(t *testing.T) string {
	t.Helper()
	src := strings.NewReplacer(`127.0.0.1:5060`, `127.0.0.1:0`, `127.0.0.1:8080`, `127.0.0.1:0`).Replace(string(demoConfig))
	dir := t.TempDir()
	src += "state_dir: " + filepath.Join(dir, "state") + "\n"
	path := filepath.Join(dir, "demo.yaml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDemoRunsAndStops(t *testing.T) {
	// The demo directory on the simulated PBX: it must start, show lamps
	// changing and stop cleanly when its context ends.
	ctx, cancel := context.WithCancel(context.Background())
	var out syncBuffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"-config", demoOnFreePorts(t)}, &out, &out) }()
	waitFor(t, &out, "sip listening", 10*time.Second)
	waitFor(t, &out, "lamplighter running", 10*time.Second)
	waitFor(t, &out, "msg=lamp user=debbie state=idle", 10*time.Second)
	// The operations endpoint: ready once the demo PBX is synchronised,
	// and its state in the metrics.
	m := regexp.MustCompile(`"http listening" address=(\S+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no http address in the log:\n%s", out.String())
	}
	for path, want := range map[string]string{
		"/healthz": "ok", "/readyz": `"synchronised":true`,
		"/metrics": `lamplighter_pbx_synchronised{kind="sim",pbx="demo"} 1`,
	} {
		res, err := http.Get("http://" + m[1] + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != http.StatusOK || !strings.Contains(string(body), want) {
			t.Errorf("GET %s: %d, want %q in:\n%.2000s", path, res.StatusCode, want, body)
		}
	}
	// The demo's list of everyone, as a receptionist's phone takes it:
	// every member first, then each call as it rings.
	sipAddr := regexp.MustCompile(`"sip listening" .*transport=udp address=(\S+)`).FindStringSubmatch(out.String())
	if sipAddr == nil {
		t.Fatalf("no SIP address in the log:\n%s", out.String())
	}
	w := newWatcher(t, "UDP")
	w.extra = []sip.Header{sip.NewHeader("Supported", "eventlist")}
	if res := w.subscribe(sipAddr[1], "everyone", "dialog", 600); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE to the demo list: %d", res.StatusCode)
	}
	if n := w.notifyWhere(`fullState="true"`, 5*time.Second); strings.Count(string(n.Body()), "<resource ") != 8 {
		t.Errorf("the demo list's first NOTIFY:\n%s", n.Body())
	}
	// The demo places a call every five seconds on average.
	w.notifyWhere("<state>early</state>", 60*time.Second)
	waitFor(t, &out, "state=ringing", 10*time.Second)
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d:\n%s", code, out.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("did not stop within 10s of its context ending")
	}
}

func TestSIPPortInUseIsAnError(t *testing.T) {
	ln, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	path := filepath.Join(t.TempDir(), "c.yaml")
	os.WriteFile(path, []byte("sip:\n  listen: [{transport: udp, address: \""+ln.LocalAddr().String()+"\"}]\n"+
		"http: {listen: \"127.0.0.1:0\"}\nstate_dir: "+t.TempDir()+"\nusers: [{id: a, extensions: [\"100\"]}]\n"), 0o644)
	var out syncBuffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if code := run(ctx, []string{"-config", path}, &out, &out); code != 1 || !strings.Contains(out.String(), "address already in use") {
		t.Errorf("exit %d:\n%s", code, out.String())
	}
}

func TestBadFlags(t *testing.T) {
	var out bytes.Buffer
	if code := run(context.Background(), []string{"-nope"}, &out, &out); code != 2 {
		t.Errorf("unknown flag: exit %d", code)
	}
	if code := run(context.Background(), []string{"extra"}, &out, &out); code != 2 {
		t.Errorf("stray argument: exit %d", code)
	}
}

// runInProcess runs lamplighter with a config file until the test ends,
// and returns its log and the address of its HTTP listener.
func runInProcess(t *testing.T, config string) (*syncBuffer, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"-config", config}, out, out) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	waitFor(t, out, "lamplighter running", 10*time.Second)
	m := regexp.MustCompile(`"http listening" address=(\S+)`).FindStringSubmatch(out.String())
	if m == nil {
		t.Fatalf("no http address in the log:\n%s", out.String())
	}
	return out, m[1]
}

// TestPprofOnlyWhenAsked: the profiler is served under /debug/pprof/ with
// http.pprof and not without it.
func TestPprofOnlyWhenAsked(t *testing.T) {
	plain := demoOnFreePorts(t)
	src, err := os.ReadFile(plain)
	if err != nil {
		t.Fatal(err)
	}
	profiled := filepath.Join(t.TempDir(), "pprof.yaml")
	on := strings.Replace(string(src), "http:\n", "http:\n  pprof: true\n", 1)
	on = strings.Replace(on, "state_dir: ", "state_dir: "+t.TempDir()+"/", 1)
	if err := os.WriteFile(profiled, []byte(on), 0o644); err != nil {
		t.Fatal(err)
	}
	for config, want := range map[string]int{plain: 404, profiled: 200} {
		_, addr := runInProcess(t, config)
		res, err := http.Get("http://" + addr + "/debug/pprof/heap?debug=1")
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("%s: /debug/pprof/heap answered %d, want %d", filepath.Base(config), res.StatusCode, want)
		}
	}
}

// TestVersionIsShown: -version prints the build's version, commit and Go
// version; the running server names its version in /metrics
// (lamplighter_build_info), GET /api/v1/version, the switchboard's
// snapshot and its SIP User-Agent, unless sip.user_agent says otherwise.
func TestVersionIsShown(t *testing.T) {
	v := version.Get()
	var out bytes.Buffer
	if code := run(context.Background(), []string{"-version"}, &out, &out); code != 0 ||
		!strings.HasPrefix(out.String(), "lamplighter "+v.Version+"\n") || !strings.Contains(out.String(), v.Go) {
		t.Errorf("-version: %d %q", code, out.String())
	}
	for _, ua := range []string{"", "PBX presence"} {
		config, _, _ := stateConfig(t)
		src := strings.Replace(mustRead(t, config), `http: {listen: "127.0.0.1:`, `http: {token: s3cret, listen: "127.0.0.1:`, 1)
		if ua != "" {
			src = strings.Replace(src, "  trusted_networks:", "  user_agent: "+ua+"\n  trusted_networks:", 1)
		}
		os.WriteFile(config, []byte(src), 0o644)
		log, httpAddr := runInProcess(t, config)
		sipAddr := regexp.MustCompile(`"sip listening".* transport=udp address=(\S+)`).FindStringSubmatch(log.String())[1]
		w := newWatcher(t, "UDP")
		res := w.subscribe(sipAddr, "100", "dialog", 600)
		n := w.notifyWhere("active", 5*time.Second)
		want := "Lamplighter/" + v.Version
		if ua != "" {
			want = ua
		}
		for what, h := range map[string]sip.Header{"NOTIFY User-Agent": n.GetHeader("User-Agent"), "200 Server": res.GetHeader("Server")} {
			if h == nil || h.Value() != want {
				t.Errorf("user_agent %q: %s %v, want %q", ua, what, h, want)
			}
		}
		if ua != "" {
			continue
		}
		if code, body := apiDo(t, "GET", "http://"+httpAddr+"/api/v1/version", "s3cret", ""); code != 200 ||
			!strings.Contains(body, `"version": "`+v.Version+`"`) || !strings.Contains(body, `"go": "`+v.Go+`"`) {
			t.Errorf("GET /api/v1/version: %d %s", code, body)
		}
		if m := metricsText(t, httpAddr); !strings.Contains(m, `lamplighter_build_info{commit="`+v.Commit+`",goversion="`+v.Go+`",version="`+v.Version+`"} 1`) {
			t.Errorf("metrics: %s", grepLines(m, "build_info"))
		}
		snap := firstEvent(t, "http://"+httpAddr+"/events")
		if !strings.Contains(snap, `"version":"`+v.Version+`"`) {
			t.Errorf("the switchboard's snapshot: %.300s", snap)
		}
	}
}
