package calendar

import (
	"strings"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// Status is what a calendar says of its person at one moment.
type Status struct {
	// Show is the strongest show of the events in progress (ShowFree:
	// nothing is).
	Show Show `json:"show"`
	// Since is when the first of them began.
	Since time.Time `json:"since,omitzero"`
	// Until is when the person is free of that show again: the end of
	// the run of back-to-back events of the same show.
	Until time.Time `json:"until,omitzero"`
	// Title is the title of the event in progress that began last.
	Title  string `json:"-"`
	AllDay bool   `json:"all_day,omitempty"`
}

// same reports whether two statuses show a watcher the same.
func (s Status) same(o Status) bool {
	return s.Show == o.Show && s.Until.Equal(o.Until) && s.Title == o.Title && s.AllDay == o.AllDay
}

// effective is how an event counts: tentative counts as busy only
// where the person's calendar is read so.
func effective(e Event, tentativeBusy bool) Show {
	if e.Show == ShowTentative {
		if tentativeBusy {
			return ShowBusy
		}
		return ShowFree
	}
	return e.Show
}

// StatusAt is what events (ordered by start) say at t.
func StatusAt(events []Event, t time.Time, tentativeBusy bool) Status {
	var s Status
	var latest time.Time
	for _, e := range events {
		if e.Start.After(t) {
			break
		}
		show := effective(e, tentativeBusy)
		if !e.End.After(t) || show == ShowFree || show < s.Show {
			continue
		}
		if show > s.Show {
			s = Status{Show: show, Since: e.Start, Until: e.End, AllDay: true}
			latest = time.Time{}
		}
		if e.End.After(s.Until) {
			s.Until = e.End
		}
		if !e.AllDay {
			s.AllDay = false
		}
		if latest.IsZero() || e.Start.After(latest) {
			latest, s.Title = e.Start, e.Title
		}
	}
	if s.Show == ShowFree {
		return Status{}
	}
	// Back-to-back events of the same show make one run: in order of
	// start, each that begins by the run's end may take it further.
	for _, e := range events {
		if e.Start.After(s.Until) {
			break
		}
		if effective(e, tentativeBusy) == s.Show && e.End.After(s.Until) {
			s.Until = e.End
		}
	}
	return s
}

// NextChange is the first moment after t at which what events say
// changes; zero when it never does (within the events given).
func NextChange(events []Event, t time.Time, tentativeBusy bool) time.Time {
	now := StatusAt(events, t, tentativeBusy)
	var next time.Time
	consider := func(b time.Time) {
		if b.After(t) && (next.IsZero() || b.Before(next)) && !StatusAt(events, b, tentativeBusy).same(now) {
			next = b
		}
	}
	for _, e := range events {
		if !next.IsZero() && e.Start.After(next) {
			break
		}
		consider(e.Start)
		consider(e.End)
	}
	return next
}

// Notes are the templates of the notes a calendar's state shows:
// {until} is when it ends, in the person's zone ("13:00", "Monday");
// {title} the event's title (the Titled forms, used only where the
// person lets titles be shown and the event has one).
type Notes struct {
	Meeting, MeetingTitled         string
	OutOfOffice, OutOfOfficeTitled string
	// TimeLayout is how a clock time is written (Go's layout; default
	// "15:04").
	TimeLayout string
}

// DefaultNotes are the notes when the config gives none.
var DefaultNotes = Notes{
	Meeting:           "In a meeting until {until}",
	MeetingTitled:     "In a meeting ({title}) until {until}",
	OutOfOffice:       "Out of office until {until}",
	OutOfOfficeTitled: "Out of office ({title}) until {until}",
	TimeLayout:        "15:04",
}

// Person is the person state s makes at now, for a person in loc who
// lets titles be shown or not. A free status makes none.
func (s Status) Person(now time.Time, loc *time.Location, n Notes, titles bool) bridge.PersonState {
	if s.Show == ShowFree {
		return bridge.PersonState{}
	}
	n = n.withDefaults()
	act, tmpl, titled := bridge.ActivityMeeting, n.Meeting, n.MeetingTitled
	if s.Show == ShowOutOfOffice {
		act, tmpl, titled = bridge.ActivityVacation, n.OutOfOffice, n.OutOfOfficeTitled
	}
	if titles && s.Title != "" {
		tmpl = titled
	}
	note := strings.NewReplacer("{until}", untilText(s.Until, now, loc, n.TimeLayout), "{title}", s.Title).Replace(tmpl)
	return bridge.PersonState{Activities: []bridge.Activity{act}, Note: note, Until: s.Until, Expires: s.Until, Updated: s.Since}
}

func (n Notes) withDefaults() Notes {
	d := DefaultNotes
	for _, f := range []struct{ v, def *string }{{&n.Meeting, &d.Meeting}, {&n.MeetingTitled, &d.MeetingTitled},
		{&n.OutOfOffice, &d.OutOfOffice}, {&n.OutOfOfficeTitled, &d.OutOfOfficeTitled}, {&n.TimeLayout, &d.TimeLayout}} {
		if *f.v == "" {
			*f.v = *f.def
		}
	}
	return n
}

// untilText writes when something ends as a person reads it: a clock
// time today, "tomorrow 9:00", a weekday within the week, else a date;
// an end at midnight is the day the person is back ("Monday").
func untilText(until, now time.Time, loc *time.Location, layout string) string {
	u, n := until.In(loc), now.In(loc)
	today := time.Date(n.Year(), n.Month(), n.Day(), 0, 0, 0, 0, loc)
	day := time.Date(u.Year(), u.Month(), u.Day(), 0, 0, 0, 0, loc)
	days := int(day.Sub(today).Hours()/24 + 0.5) // a day of 23 or 25 hours is a day
	var d string
	switch {
	case days == 0:
		d = ""
	case days == 1:
		d = "tomorrow"
	case days < 7:
		d = u.Weekday().String()
	default:
		d = u.Format("Monday 2 January")
	}
	if u.Hour() == 0 && u.Minute() == 0 && days > 0 {
		return d
	}
	if d == "" {
		return u.Format(layout)
	}
	return d + " " + u.Format(layout)
}
