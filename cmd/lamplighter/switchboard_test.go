package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/lamplighter/lamplighter/cmd/lamplighter/version"
)

// chromium returns Debian's Chromium, or skips (fails where end-to-end
// tests are required: .ci/deps installs it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("LAMPLIGHTER_E2E") == "require" {
		t.Fatal("chromium not installed (.ci/deps installs it)")
	}
	t.Skip("chromium not installed")
	return ""
}

// artifacts is where browser tests leave their screenshots.
func artifacts(t *testing.T) string {
	dir := os.Getenv("LAMPLIGHTER_ARTIFACTS")
	if dir == "" {
		dir = filepath.Join("..", "..", "testdata", "artifacts")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestSwitchboardInChromium loads the switchboard in headless Chromium
// against the demo PBX: a tile goes ringing, then in a call, then idle,
// live; signing in with the token and pressing a tile's DND button turns
// its lamp to dnd. Screenshots are saved as test artefacts.
func TestSwitchboardInChromium(t *testing.T) {
	browser := chromium(t)
	if testing.Short() {
		t.Skip("runs a browser")
	}
	// The demo, livelier: every call answered, short rings and talks.
	src := strings.NewReplacer(`127.0.0.1:5060`, `127.0.0.1:0`, `127.0.0.1:8080`, `127.0.0.1:0`,
		"calls_per_minute: 12", "calls_per_minute: 40\n      answer_rate: 1\n      hold_rate: 0\n      ring_time: 3s\n      talk_time: 4s\n      outages_per_hour: 0",
		"token: demo", "token: board-test\n  title: Front desk").Replace(string(demoConfig))
	dir := t.TempDir()
	src += "state_dir: " + filepath.Join(dir, "state") + "\n"
	path := filepath.Join(dir, "demo.yaml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_, httpAddr := runInProcess(t, path)
	url := "http://" + httpAddr + "/"

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 900), chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	bctx, tcancel := context.WithTimeout(bctx, 3*time.Minute)
	defer tcancel()

	shot := func(name string) {
		t.Helper()
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot: %v", err)
		}
		if err := os.WriteFile(filepath.Join(artifacts(t), name), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// stateOf reads a tile's lamp state.
	stateOf := func(user string) string {
		s, _ := chromedp.Run(bctx, chromedp.Evaluate[string](fmt.Sprintf(
			`(document.querySelector('.tile[data-user=%q]') || {dataset: {}}).dataset.state || ""`, user)))
		return s
	}
	waitState := func(user, want string, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for stateOf(user) != want {
			if time.Now().After(deadline) {
				shot("switchboard-failure.png")
				t.Fatalf("tile %s: state %q, want %q within %v", user, stateOf(user), want, within)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	if err := chromedp.Do(bctx, chromedp.Navigate(url), chromedp.WaitVisible(`.tile[data-user="debbie"]`),
		chromedp.WaitVisible(`#link[data-state="live"]`)); err != nil {
		t.Fatal(err)
	}
	title, _ := chromedp.Run(bctx, chromedp.Text(`#title`))
	if title != "Front desk" {
		t.Errorf("title %q", title)
	}
	if footer, _ := chromedp.Run(bctx, chromedp.Text(`#version`)); footer != "Lamplighter "+version.Get().Version {
		t.Errorf("footer %q", footer)
	}
	// Any tile that rings: follow it through the call.
	// The tile and its text are read in one go: a demo call may be
	// answered a moment after it rings.
	var ringing, caller string
	deadline := time.Now().Add(90 * time.Second)
	for ringing == "" {
		if time.Now().After(deadline) {
			t.Fatal("no tile rang within 90s")
		}
		seen, _ := chromedp.Run(bctx, chromedp.Evaluate[[]string](
			`(() => { const t = document.querySelector('.tile[data-state="ringing"]');
			  return t ? [t.dataset.user, (t.querySelector('.remote') || {}).textContent || ""] : ["", ""]; })()`))
		if len(seen) == 2 {
			ringing, caller = seen[0], strings.TrimSpace(seen[1])
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.HasPrefix(caller, "From ") && !strings.HasPrefix(caller, "To ") {
		t.Errorf("ringing tile shows %q, not who is calling", caller)
	}
	shot("switchboard-ringing.png")
	// Not signed in: read-only, no buttons.
	if n, _ := chromedp.Run(bctx, chromedp.Evaluate[int](
		`[...document.querySelectorAll('.tile .dnd')].filter((b) => b.checkVisibility()).length`)); n != 0 {
		t.Errorf("%d DND buttons visible before signing in", n)
	}
	waitState(ringing, "busy", 30*time.Second)
	shot("switchboard-in-call.png")
	waitState(ringing, "idle", 30*time.Second)

	// The filter hides who does not match.
	if err := chromedp.Do(bctx, chromedp.SendKeys(`#filter`, "Zappa")); err != nil {
		t.Fatal(err)
	}
	hidden, err := chromedp.Run(bctx, chromedp.Evaluate[bool](
		`document.querySelector('.tile[data-user="debbie"]').closest('[hidden]') !== null`))
	if err != nil {
		t.Fatal(err)
	}
	if !hidden {
		t.Error("filtering for Zappa left Debbie visible")
	}
	// Clear it as a user does: select all, delete.
	chromedp.Run(bctx, chromedp.Evaluate[bool](`(() => { const f = document.querySelector('#filter');
		f.value = ''; f.dispatchEvent(new Event('input')); return true })()`))

	// Sign in with the token and set Debbie to DND from her tile.
	step := func(what string, a chromedp.Action[chromedp.Void]) {
		t.Helper()
		sctx, cancel := context.WithTimeout(bctx, 15*time.Second)
		defer cancel()
		if err := chromedp.Do(sctx, a); err != nil {
			shot("switchboard-failure.png")
			t.Fatalf("%s: %v", what, err)
		}
	}
	step("open the sign-in dialog", chromedp.Click(`#signin`))
	step("type the token", chromedp.SendKeys(`#login input[name=token]`, "board-test"))
	step("sign in", chromedp.Click(`#loginsubmit`))
	step("dialog closes", chromedp.WaitNotVisible(`#login`))
	step("DND button shows", chromedp.WaitVisible(`.tile[data-user="debbie"] .dnd`))
	step("press DND", chromedp.Click(`.tile[data-user="debbie"] .dnd`))
	waitState("debbie", "dnd", 5*time.Second)
	shot("switchboard-dnd.png")
	// And off again.
	step("press DND again", chromedp.Click(`.tile[data-user="debbie"] .dnd`))
	deadline = time.Now().Add(5 * time.Second)
	for stateOf("debbie") == "dnd" {
		if time.Now().After(deadline) {
			t.Fatal("dnd not cleared from the page")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A phone-sized screen: one column, nothing wider than the screen.
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(390, 844)); err != nil {
		t.Fatal(err)
	}
	overflow, err := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth`))
	if err != nil {
		t.Fatal(err)
	}
	if overflow {
		t.Error("the page is wider than a phone's screen")
	}
	shot("switchboard-phone.png")
}

// TestTenantSwitchboardInChromium: in headless Chromium the open page
// shows the default domain's people; signed in with a tenant's token it
// shows that tenant's people and no one else's, and sets their states.
func TestTenantSwitchboardInChromium(t *testing.T) {
	browser := chromium(t)
	if testing.Short() {
		t.Skip("runs a browser")
	}
	_, api := startTenants(t, "[]")
	url := strings.TrimSuffix(api, "/api/v1") + "/"
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 900), chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	bctx, tcancel := context.WithTimeout(bctx, 2*time.Minute)
	defer tcancel()
	tiles := func() string {
		s, _ := chromedp.Run(bctx, chromedp.Evaluate[string](
			`[...document.querySelectorAll('.tile')].map((t) => t.dataset.user).sort().join(",")`))
		return s
	}
	waitTiles := func(what, want string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for tiles() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: tiles %q, want %q", what, tiles(), want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	if err := chromedp.Do(bctx, chromedp.Navigate(url)); err != nil {
		t.Fatal(err)
	}
	waitTiles("the open page", "root100")
	for _, a := range []chromedp.Action[chromedp.Void]{chromedp.Click(`#signin`), chromedp.SendKeys(`#login input[name=token]`, "token-a"),
		chromedp.Click(`#loginsubmit`), chromedp.WaitNotVisible(`#login`)} {
		if err := chromedp.Do(bctx, a); err != nil {
			t.Fatal(err)
		}
	}
	waitTiles("signed in as a.example", "a100,a101")
	if err := chromedp.Do(bctx, chromedp.Click(`.tile[data-user="a101"] .dnd`)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, _ := chromedp.Run(bctx, chromedp.Evaluate[string](`document.querySelector('.tile[data-user="a101"]').dataset.state`))
		if s == "dnd" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a101 did not go dnd from the tenant's page: %q", s)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Signed out: the open page again.
	if err := chromedp.Do(bctx, chromedp.Click(`#signin`)); err != nil {
		t.Fatal(err)
	}
	waitTiles("signed out", "root100")
}
