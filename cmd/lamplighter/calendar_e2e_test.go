package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/lamplighter/lamplighter/calendar/radicaletest"
)

// calendarConfig: everyone's calendar is their home on one CalDAV
// server ({user} in the URL), read every five minutes; bob has none.
const calendarConfig = `sip:
  domain: example.com
  listen: [{transport: udp, address: "127.0.0.1:0"}]
  trusted_networks: [127.0.0.0/8]
http: {listen: "127.0.0.1:0", token: admin}
state_dir: %s
calendar:
  timezone: UTC
  default: {kind: caldav, url: "%s/{user}/", username: "{user}", password_file: %s}
users:
  - {id: alice, name: Alice, extensions: ["100"]}
  - {id: bob, name: Bob, extensions: ["101"], calendar: {off: true}}
`

// TestCalendarOnARealCalDAVServer: Lamplighter reads alice's calendar
// from Radicale; a presence watcher of 100 sees her meeting (RPID
// meeting with until, the note with its end) and sees it end at the
// event's end, not at the next read five minutes later; what she says
// through the API wins while it lasts; the API and the metrics show the
// calendar; a reload that drops the calendar clears the meeting and the
// subscription goes on.
func TestCalendarOnARealCalDAVServer(t *testing.T) {
	srv := radicaletest.Start(t, map[string]string{"alice": "secret"})
	work := srv.MakeCalendar("alice", "work")
	now := time.Now().UTC().Truncate(time.Second)
	end := now.Add(6 * time.Second)
	srv.Put("alice", work, "standup", radicaletest.Event("standup", now.Add(-time.Minute), end, "Stand-up"))

	path, cfg := writeCalendarConfig(t, srv)
	out, httpAddr := runInProcess(t, path)
	sipAddr := regexp.MustCompile(`"sip listening".* transport=udp address=(\S+)`).FindStringSubmatch(out.String())[1]
	api := "http://" + httpAddr + "/api/v1"

	w := newWatcher(t, "UDP")
	if res := w.subscribe(sipAddr, "100", "presence", 600); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE 100: %d", res.StatusCode)
	}
	key := newWatcher(t, "UDP") // a busy-lamp key on 100
	if res := key.subscribe(sipAddr, "100", "dialog", 600); res.StatusCode != 200 {
		t.Fatalf("SUBSCRIBE 100 dialog: %d", res.StatusCode)
	}
	until := fmt.Sprintf(`until="%s"`, end.Format(time.RFC3339))
	n := w.notifyWhere("<rpid:meeting/>", 10*time.Second)
	if b := string(n.Body()); !strings.Contains(b, until) || !strings.Contains(b, "In a meeting until "+end.Format("15:04")) ||
		strings.Contains(b, "Stand-up") {
		t.Errorf("the meeting's document (no title: alice did not opt in):\n%s", b)
	}
	var u struct {
		Person   struct{ Until *time.Time }
		Calendar *struct {
			LastFetch  time.Time `json:"last_fetch"`
			NextChange time.Time `json:"next_change"`
			Error      string
		}
	}
	_, body := apiDo(t, "GET", api+"/users/alice", "admin", "")
	if err := json.Unmarshal([]byte(body), &u); err != nil || u.Calendar == nil || u.Calendar.LastFetch.IsZero() ||
		!u.Calendar.NextChange.Equal(end) || u.Person.Until == nil || !u.Person.Until.Equal(end) {
		t.Errorf("the API of alice: %s", body)
	}
	if _, m := apiDo(t, "GET", "http://"+httpAddr+"/metrics", "admin", ""); !strings.Contains(m, `lamplighter_calendars{state="ok"} 1`) ||
		!strings.Contains(m, `lamplighter_calendar_showing{show="busy"} 1`) {
		t.Errorf("metrics: %s", grepLines(m, "calendar"))
	}
	// The meeting ends at its end: a timer, not the next read.
	n = w.notifyWhere("<dm:note>Unavailable</dm:note>", 15*time.Second)
	if at := time.Now(); at.Before(end.Add(-200 * time.Millisecond)) {
		t.Errorf("the meeting ended at %v, before its end %v: %s", at, end, n.Body())
	}

	// The busy-lamp key showed no call, whatever the calendar said.
	for len(key.notifies) > 0 {
		if n := <-key.notifies; strings.Contains(string(n.Body()), "<dialog ") {
			t.Errorf("the busy lamp showed the meeting:\n%s", n.Body())
		}
	}

	// A meeting booked now; alice says dnd through the API: hers wins,
	// and when she clears it the meeting shows again.
	srv.Put("alice", work, "review", radicaletest.Event("review", now, now.Add(time.Hour), "Review"))
	if code, b := apiDo(t, "POST", api+"/users/alice/calendar/refresh", "admin", ""); code != http.StatusAccepted {
		t.Fatalf("refresh: %d %s", code, b)
	}
	w.notifyWhere("<rpid:meeting/>", 10*time.Second)
	if code, b := apiDo(t, "PUT", api+"/users/alice/presence", "admin", `{"activity": "dnd"}`); code != 200 {
		t.Fatalf("dnd: %d %s", code, b)
	}
	n = w.notifyWhere("<ps:phonestate>dnd</ps:phonestate>", 10*time.Second)
	if strings.Contains(string(n.Body()), "meeting") {
		t.Errorf("the calendar showed beside alice's own dnd:\n%s", n.Body())
	}
	apiDo(t, "DELETE", api+"/users/alice/presence", "admin", "")
	w.notifyWhere("<rpid:meeting/>", 10*time.Second)

	// A reload without the calendar clears it; the subscription stays.
	os.WriteFile(path, []byte(noCalendar(cfg)), 0o644)
	if code, b := apiDo(t, "POST", api+"/reload", "admin", ""); code != 200 {
		t.Fatalf("reload: %d %s", code, b)
	}
	n = w.notifyWhere("<dm:note>Unavailable</dm:note>", 10*time.Second)
	if s := n.GetHeader("Subscription-State"); s == nil || !strings.HasPrefix(s.Value(), "active") {
		t.Errorf("the subscription after the reload: %v", s)
	}
}

// writeCalendarConfig writes calendarConfig for a Radicale whose alice
// has the password "secret" (in a file, as an administrator keeps it),
// and returns its path and text.
func writeCalendarConfig(t *testing.T, srv *radicaletest.Server) (path, cfg string) {
	t.Helper()
	dir := t.TempDir()
	pass := filepath.Join(dir, "caldav.secret")
	os.WriteFile(pass, []byte("secret\n"), 0o600)
	path = filepath.Join(dir, "lamplighter.yaml")
	cfg = fmt.Sprintf(calendarConfig, filepath.Join(dir, "state"), srv.URL, pass)
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return path, cfg
}

// noCalendar is the config without its calendar section.
func noCalendar(cfg string) string {
	return regexp.MustCompile(`(?s)calendar:\n(  .*?\n)+`).ReplaceAllString(cfg, "")
}

// TestCalendarOnTheSwitchboardInChromium: the open switchboard page shows
// a person's meeting from their calendar once, with its end.
func TestCalendarOnTheSwitchboardInChromium(t *testing.T) {
	browser := chromium(t)
	srv := radicaletest.Start(t, map[string]string{"alice": "secret"})
	work := srv.MakeCalendar("alice", "work")
	now := time.Now().UTC().Truncate(time.Minute)
	end := now.Add(2 * time.Hour)
	srv.Put("alice", work, "offsite", radicaletest.Event("offsite", now.Add(-time.Hour), end, "Offsite"))
	path, _ := writeCalendarConfig(t, srv)
	_, httpAddr := runInProcess(t, path)

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox,
		chromedp.Flag("disable-dev-shm-usage", true))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	bctx, tcancel := context.WithTimeout(bctx, time.Minute)
	defer tcancel()
	if err := chromedp.Do(bctx, chromedp.Navigate("http://"+httpAddr+"/"), chromedp.WaitVisible(`.tile[data-user="alice"] .person`)); err != nil {
		t.Fatal(err)
	}
	text, err := chromedp.Run(bctx, chromedp.Text(`.tile[data-user="alice"] .person`))
	if err != nil {
		t.Fatal(err)
	}
	if want := "“In a meeting until " + end.Format("15:04") + "”"; text != want {
		t.Errorf("alice's tile says %q, want %q", text, want)
	}
	if hidden, _ := chromedp.Run(bctx, chromedp.Evaluate[bool](`document.querySelector('.tile[data-user="bob"] .person').hidden`)); !hidden {
		t.Error("bob's tile shows a person state he has not")
	}
}
