package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/calendar"
)

// The calendar section and users' calendars: a user's own wins over
// their group's, which wins over the default; templates take each
// user's names; secrets come from files and the environment; off means
// none.
func TestCalendars(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "feed"), []byte("https://calendar.google.com/calendar/ical/a%40example.com/private-abc/basic.ics\n"), 0o600)
	env := func(k string) (string, bool) {
		v, ok := map[string]string{"DAV_PASSWORD": "dav-secret", "FEEDS": dir}[k]
		return v, ok
	}
	src := base + `calendar:
  timezone: Europe/Berlin
  tentative: true
  out_of_office_categories: [Vacation]
  notes: {meeting: "Busy until {until}", time_layout: "3:04 PM"}
  default: {kind: caldav, url: "https://dav.example.com/dav/{user}/", username: "{user}", password_env: DAV_PASSWORD, email: "{user}@example.com"}
  groups:
    sales: {url: "https://crm.example.com/cal/{extension}.ics"}
`
	src = strings.Replace(src, "  - id: b\n    extensions: [\"101\"]\n", `  - id: b
    extensions: ["101"]
    groups: [sales]
  - id: c
    extensions: ["102"]
    calendar: {url_file: "${FEEDS}/feed", timezone: America/New_York, titles: true, tentative: false}
  - id: d
    extensions: ["103"]
    groups: [sales]
    calendar: {off: true}
`, 1)
	cfg, err := Parse("c.yaml", []byte(src), env)
	if err != nil {
		t.Fatal(err)
	}
	dir2, _, err := cfg.Directory(nil)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := cfg.CalendarPlan(env)
	if err != nil {
		t.Fatal(err)
	}
	cals := plan.For(dir2.Users())
	got := map[string]calendar.Calendar{}
	for _, c := range cals {
		got[c.User] = c
	}
	if len(got) != 3 {
		t.Fatalf("calendars of %v, want a, b and c", cals)
	}
	if a := got["a"]; a.Source != (calendar.Source{Kind: calendar.KindCalDAV, URL: "https://dav.example.com/dav/a/", Username: "a", Password: "dav-secret"}) ||
		a.Location.String() != "Europe/Berlin" || !a.Tentative || a.Titles || a.Notes.Meeting != "Busy until {until}" || a.OutOfOffice[0] != "Vacation" ||
		a.Owner != "a@example.com" {
		t.Errorf("a (the default): %+v", a)
	}
	if b := got["b"]; b.Source != (calendar.Source{Kind: calendar.KindICal, URL: "https://crm.example.com/cal/101.ics"}) {
		t.Errorf("b (sales): %+v", b)
	}
	if c := got["c"]; !strings.HasPrefix(c.Source.URL, "https://calendar.google.com/") || c.Location.String() != "America/New_York" || !c.Titles || c.Tentative {
		t.Errorf("c (its own): %+v", c)
	}
	// A discovered user gets the default too; a feature key none.
	more := append(dir2.Users(), &bridge.User{ID: "200", Extensions: []string{"200"}, Discovered: []string{"ast"}},
		&bridge.User{ID: "*76200", Extensions: []string{"*76200"}, Resource: true})
	// The plan read the secrets once: a directory the PBX changes later
	// reads no file again.
	os.Remove(filepath.Join(dir, "feed"))
	cals = plan.For(more)
	if len(cals) != 4 || cals[3].User != "200" || cals[3].Source.URL != "https://dav.example.com/dav/200/" ||
		!strings.HasPrefix(cals[2].Source.URL, "https://calendar.google.com/") {
		t.Errorf("with discovered users: %+v", cals)
	}
	if cfg.CalendarOptions().Interval != 0 {
		t.Errorf("the interval defaults in the keeper, not here")
	}
}

func TestCalendarErrors(t *testing.T) {
	for _, c := range []struct {
		name, yaml string
		line       int
		want       string
	}{
		{"bad kind", "calendar:\n  default: {kind: exchange, url: \"https://x/{user}\"}\n", 22, `calendar kind "exchange" is not ical or caldav`},
		{"no url", "calendar:\n  default: {kind: caldav}\n", 22, "exactly one of url, url_file, url_env"},
		{"two urls", "calendar:\n  default: {url: \"https://x/\", url_env: X}\n", 22, "exactly one of url, url_file, url_env"},
		{"not http", "calendar:\n  default: {url: \"file:///etc/passwd\"}\n", 22, "is not an http(s) or webcal URL"},
		{"zone", "calendar:\n  timezone: Mars/Olympus\n", 22, `unknown time zone "Mars/Olympus"`},
		{"interval", "calendar:\n  interval: 5s\n", 22, "calendar interval 5s is below 30s"},
		{"unset env", "calendar:\n  default: {url_env: NOPE}\n", 22, "environment variable NOPE is not set"},
		{"layout", "calendar:\n  notes: {time_layout: \"HH:mm\"}\n", 22, "is no Go time layout"},
		{"email", "calendar:\n  default: {url: \"https://x/{user}\", email: \"{user}\"}\n", 22, "is no address"},
		{"unknown key", "calendar:\n  defualt: {url: \"https://x/\"}\n", 22, "defualt"},
	} {
		t.Run(c.name, func(t *testing.T) {
			wantConfigError(t, base+c.yaml, c.line, c.want)
		})
	}
	// A user's calendar without a url and no section to default from.
	src := strings.Replace(base, "  - id: b\n", "  - id: b\n    calendar: {titles: true}\n", 1)
	_, err := Parse("c.yaml", []byte(src), fakeEnv(t))
	if err == nil || !strings.Contains(err.Error(), `user "b" has a calendar without a url`) {
		t.Errorf("a calendar without a url: %v", err)
	}
}
