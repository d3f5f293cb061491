package config

import (
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/calendar"
)

// Calendars is the `calendar:` section: people's calendars as a source of
// their person state ("In a meeting until 13:00"), see calendar/README.md.
type Calendars struct {
	// Interval is how often each calendar is read (default 5m, ±10 %).
	Interval time.Duration `yaml:"interval"`
	// Horizon is how far ahead events are read (default 336h, two weeks).
	Horizon time.Duration `yaml:"horizon"`
	// Timeout bounds one read (default 20s); MaxBytes one answer
	// (default 4 MiB); Parallel the reads at once (default 8).
	Timeout  time.Duration `yaml:"timeout"`
	MaxBytes int64         `yaml:"max_bytes"`
	Parallel int           `yaml:"parallel"`
	// TimeZone is the people's zone unless theirs says otherwise
	// (default the host's).
	TimeZone string `yaml:"timezone"`
	// Tentative counts tentative events as busy (default: they show
	// nothing).
	Tentative bool `yaml:"tentative"`
	// OutOfOffice are event categories that mean out of office, besides
	// Outlook's own out-of-office events.
	OutOfOffice []string `yaml:"out_of_office_categories"`
	// Notes are the notes' templates ({until}, {title}).
	Notes CalendarNotes `yaml:"notes"`
	// Default is everyone's calendar who has none of their own; Groups a
	// group's. Their URL (and username) may hold {user} (the user id),
	// {extension} (the first extension) and {domain} (the tenant's).
	Default *CalendarSource            `yaml:"default"`
	Groups  map[string]*CalendarSource `yaml:"groups"`
}

// CalendarNotes are the templates of calendar notes.
type CalendarNotes struct {
	Meeting           string `yaml:"meeting"`
	MeetingTitled     string `yaml:"meeting_titled"`
	OutOfOffice       string `yaml:"out_of_office"`
	OutOfOfficeTitled string `yaml:"out_of_office_titled"`
	TimeLayout        string `yaml:"time_layout"`
}

// CalendarSource is where a calendar is read, and how.
type CalendarSource struct {
	// Kind is ical (a feed read whole; the default) or caldav.
	Kind string `yaml:"kind"`
	// URL is the feed or the CalDAV collection (or calendar home). A
	// secret iCal address is a secret: url_file or url_env keep it out
	// of the config.
	URL      string `yaml:"url"`
	URLFile  string `yaml:"url_file"`
	URLEnv   string `yaml:"url_env"`
	Username string `yaml:"username"`
	Password string `yaml:"password"`
	// Email is the person's address in the calendar's invitations
	// ("{user}@example.com" in a template): a meeting they declined
	// shows nothing, one they have not answered is tentative.
	Email        string `yaml:"email"`
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
}

// UserCalendar is a user's `calendar:`: their own source and how it is
// shown.
type UserCalendar struct {
	CalendarSource `yaml:",inline"`
	// TimeZone is the person's own zone.
	TimeZone string `yaml:"timezone"`
	// Titles shows event titles in the person's note (off by default:
	// titles are private).
	Titles bool `yaml:"titles"`
	// Tentative, when set, overrides the section's.
	Tentative *bool `yaml:"tentative"`
	// Off: no calendar for this user, whatever the defaults give.
	Off bool `yaml:"off"`
}

// Calendar defaults.
const (
	DefaultCalendarInterval = 5 * time.Minute
	MinCalendarInterval     = 30 * time.Second
)

// checkCalendars checks the calendar section and users' calendars.
func (v *validator) checkCalendars(c *Config) {
	cs := c.Calendar
	if cs != nil {
		path := p("calendar")
		if cs.Interval != 0 && cs.Interval < MinCalendarInterval {
			v.at(append(path, "interval"), "calendar interval %v is below %v (calendar servers limit clients that poll so often)", cs.Interval, MinCalendarInterval)
		}
		if cs.Horizon < 0 || cs.Timeout < 0 || cs.MaxBytes < 0 || cs.Parallel < 0 {
			v.at(path, "calendar horizon, timeout, max_bytes and parallel cannot be negative")
		}
		if cs.TimeZone != "" {
			if _, err := time.LoadLocation(cs.TimeZone); err != nil {
				v.at(append(path, "timezone"), "unknown time zone %q (an IANA name such as Europe/Berlin)", cs.TimeZone)
			}
		}
		if cs.Notes.TimeLayout != "" && !strings.ContainsAny(cs.Notes.TimeLayout, "0123456789") {
			v.at(append(path, "notes", "time_layout"), "time layout %q is no Go time layout (\"15:04\", \"3:04 PM\")", cs.Notes.TimeLayout)
		}
		if cs.Default != nil {
			v.checkCalendarSource(append(path, "default"), cs.Default, true)
		}
		for g, s := range cs.Groups {
			if s != nil {
				v.checkCalendarSource(append(path, "groups", g), s, true)
			}
		}
	}
	for i, u := range c.Users {
		uc := u.Calendar
		if uc == nil {
			continue
		}
		path := p("users", i, "calendar")
		if uc.TimeZone != "" {
			if _, err := time.LoadLocation(uc.TimeZone); err != nil {
				v.at(append(path, "timezone"), "unknown time zone %q (an IANA name such as Europe/Berlin)", uc.TimeZone)
			}
		}
		if uc.URL != "" || uc.URLFile != "" || uc.URLEnv != "" {
			v.checkCalendarSource(path, &uc.CalendarSource, false)
		} else if !uc.Off && cs == nil {
			v.at(path, "user %q has a calendar without a url (and there is no calendar section whose default could give one)", u.ID)
		}
	}
}

// checkCalendarSource checks one source; a template may hold
// placeholders.
func (v *validator) checkCalendarSource(path []any, s *CalendarSource, template bool) {
	switch s.Kind {
	case "", string(calendar.KindICal), string(calendar.KindCalDAV):
	default:
		v.at(append(path, "kind"), "calendar kind %q is not ical or caldav", s.Kind)
	}
	n := 0
	for _, x := range []string{s.URL, s.URLFile, s.URLEnv} {
		if x != "" {
			n++
		}
	}
	if n != 1 {
		v.at(path, "a calendar needs exactly one of url, url_file, url_env")
	}
	if s.URL != "" {
		raw := s.URL
		if template {
			raw = fillTemplate(raw, "user", "100", "example.com")
		}
		if u, err := url.Parse(raw); err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "webcal") || u.Host == "" {
			v.at(append(path, "url"), "calendar url %q is not an http(s) or webcal URL", s.URL)
		}
	}
	if s.Email != "" && (!strings.Contains(s.Email, "@") || strings.ContainsAny(s.Email, " <>")) {
		v.at(append(path, "email"), "calendar email %q is no address (alice@example.com, or {user}@example.com in a template)", s.Email)
	}
	v.checkSecret(path, "url", s.URLFile, s.URLEnv)
	v.checkSecret(path, "password", s.PasswordFile, s.PasswordEnv)
}

// fillTemplate puts a user's names into a template.
func fillTemplate(s, user, ext, domain string) string {
	return strings.NewReplacer("{user}", url.PathEscape(user), "{extension}", url.PathEscape(ext), "{domain}", url.PathEscape(domain)).Replace(s)
}

// CalendarOptions are the calendar section's settings for the keeper.
func (c *Config) CalendarOptions() calendar.Options {
	cs := c.Calendar
	if cs == nil {
		cs = &Calendars{}
	}
	return calendar.Options{Interval: cs.Interval, Horizon: cs.Horizon, Timeout: cs.Timeout, MaxBody: cs.MaxBytes, Parallel: cs.Parallel}
}

// CalendarPlan is the calendar section and the users' own calendars
// with their secrets read (files, environment) and their zones loaded:
// For gives each user of a directory their calendar. The daemon keeps
// the plan of the last (re)load, so that a directory the PBX changes
// reads no secret again (a default with a password file would read it
// once per person otherwise).
type CalendarPlan struct {
	section Calendars
	zone    *time.Location
	notes   calendar.Notes
	own     map[string]*UserCalendar // by user id
	ownZone map[string]*time.Location
	sources map[*CalendarSource]resolvedSource
}

// resolvedSource is a source's URL (or template) and password, read.
type resolvedSource struct{ url, password string }

// CalendarPlan reads what the calendars need once; nil when no calendar
// is configured.
func (c *Config) CalendarPlan(env Env) (*CalendarPlan, error) {
	p := &CalendarPlan{own: map[string]*UserCalendar{}, ownZone: map[string]*time.Location{},
		sources: map[*CalendarSource]resolvedSource{}, zone: time.Local}
	for i := range c.Users {
		if uc := c.Users[i].Calendar; uc != nil {
			p.own[c.Users[i].ID] = uc
		}
	}
	if c.Calendar == nil && len(p.own) == 0 {
		return nil, nil
	}
	if c.Calendar != nil {
		p.section = *c.Calendar
	}
	cs := &p.section
	if cs.TimeZone != "" {
		z, err := time.LoadLocation(cs.TimeZone)
		if err != nil {
			return nil, err
		}
		p.zone = z
	}
	p.notes = calendar.Notes{Meeting: cs.Notes.Meeting, MeetingTitled: cs.Notes.MeetingTitled,
		OutOfOffice: cs.Notes.OutOfOffice, OutOfOfficeTitled: cs.Notes.OutOfOfficeTitled, TimeLayout: cs.Notes.TimeLayout}
	read := func(src *CalendarSource, what string) error {
		url, err := resolveSecret(src.URL, src.URLFile, src.URLEnv, env)
		if err == nil {
			var pass string
			if pass, err = resolveSecret(src.Password, src.PasswordFile, src.PasswordEnv, env); err == nil {
				p.sources[src] = resolvedSource{url: strings.TrimSpace(url), password: pass}
				return nil
			}
		}
		return fmt.Errorf("calendar of %s: %w", what, err)
	}
	if cs.Default != nil {
		if err := read(cs.Default, "the default"); err != nil {
			return nil, err
		}
	}
	for g, src := range cs.Groups {
		if src != nil {
			if err := read(src, "group "+g); err != nil {
				return nil, err
			}
		}
	}
	for id, uc := range p.own {
		if uc.Off {
			continue
		}
		if uc.URL != "" || uc.URLFile != "" || uc.URLEnv != "" {
			if err := read(&uc.CalendarSource, id); err != nil {
				return nil, err
			}
		}
		if uc.TimeZone != "" {
			z, err := time.LoadLocation(uc.TimeZone)
			if err != nil {
				return nil, fmt.Errorf("calendar of %s: %w", id, err)
			}
			p.ownZone[id] = z
		}
	}
	return p, nil
}

// For is every person's calendar: their own, else their group's, else
// the default; users of the directory (YAML or discovered), no
// resources. A nil plan has none.
func (p *CalendarPlan) For(users []*bridge.User) []calendar.Calendar {
	if p == nil {
		return nil
	}
	cs := &p.section
	var out []calendar.Calendar
	for _, u := range users {
		if u.Resource {
			continue
		}
		uc := p.own[u.ID]
		if uc != nil && uc.Off {
			continue
		}
		src, template := (*CalendarSource)(nil), false
		if uc != nil {
			if _, ok := p.sources[&uc.CalendarSource]; ok {
				src = &uc.CalendarSource
			}
		}
		for _, g := range u.Groups {
			if src == nil && cs.Groups[g] != nil {
				src, template = cs.Groups[g], true
			}
		}
		if src == nil && cs.Default != nil {
			src, template = cs.Default, true
		}
		if src == nil {
			continue
		}
		r := p.sources[src]
		cal := calendar.Calendar{User: u.ID, Location: p.zone, Tentative: cs.Tentative, OutOfOffice: cs.OutOfOffice, Notes: p.notes,
			Source: calendar.Source{Kind: calendar.KindICal, URL: r.url, Username: src.Username, Password: r.password}, Owner: src.Email}
		if src.Kind == string(calendar.KindCalDAV) {
			cal.Source.Kind = calendar.KindCalDAV
		}
		if template {
			cal.Source.URL = fillTemplate(r.url, u.ID, u.Presentity(), u.Tenant)
			n := strings.NewReplacer("{user}", u.ID, "{extension}", u.Presentity(), "{domain}", u.Tenant)
			cal.Source.Username, cal.Owner = n.Replace(src.Username), n.Replace(src.Email)
		}
		if uc != nil {
			cal.Titles = uc.Titles
			if uc.Tentative != nil {
				cal.Tentative = *uc.Tentative
			}
			if z := p.ownZone[u.ID]; z != nil {
				cal.Location = z
			}
		}
		out = append(out, cal)
	}
	return out
}
