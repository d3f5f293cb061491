package calendar

import (
	"os"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// The Google fixture's 8 December: lunch 12-13 UTC, then two meetings
// 13-14: one run of meetings until 14:00 UTC (15:00 in Berlin).
func TestStatusRunsBackToBack(t *testing.T) {
	loc := berlin(t)
	data, _ := os.ReadFile("testdata/google.ics")
	evs, _, err := Expand(data, utc("2026-12-07T00:00:00Z"), utc("2026-12-21T00:00:00Z"), Rules{Location: loc})
	if err != nil {
		t.Fatal(err)
	}
	now := utc("2026-12-08T12:30:00Z")
	s := StatusAt(evs, now, false)
	if s.Show != ShowBusy || !s.Until.Equal(utc("2026-12-08T14:00:00Z")) || s.Title != "Lunch with Bob" {
		t.Fatalf("at 12:30 UTC: %+v", s)
	}
	p := s.Person(now, loc, Notes{}, false)
	if p.Note != "In a meeting until 15:00" || !p.Has(bridge.ActivityMeeting) || !p.Until.Equal(s.Until) {
		t.Errorf("person state %+v", p)
	}
	if p := s.Person(now, loc, Notes{}, true); p.Note != "In a meeting (Lunch with Bob) until 15:00" {
		t.Errorf("with titles: %q", p.Note)
	}
	// The next change is the run's end, not the second meeting's start
	// (which changes only the title: that is a change too).
	if next := NextChange(evs, now, false); !next.Equal(utc("2026-12-08T13:00:00Z")) {
		t.Errorf("next change after 12:30: %v", next)
	}
	if next := NextChange(evs, utc("2026-12-08T13:30:00Z"), false); !next.Equal(utc("2026-12-08T14:00:00Z")) {
		t.Errorf("next change after 13:30: %v", next)
	}
	if s := StatusAt(evs, utc("2026-12-08T14:00:00Z"), false); s.Show != ShowFree {
		t.Errorf("at the run's end: %+v", s)
	}
}

// Out of office over a weekend reads "until Monday"; tentative counts
// only where configured; a meeting inside the out-of-office time does
// not hide it.
func TestOutOfOfficeAndTentative(t *testing.T) {
	loc := berlin(t)
	data, _ := os.ReadFile("testdata/outlook.ics")
	evs, _, err := Expand(data, utc("2026-12-07T00:00:00Z"), utc("2026-12-21T00:00:00Z"), Rules{Location: loc})
	if err != nil {
		t.Fatal(err)
	}
	now := utc("2026-12-11T09:00:00Z") // Friday
	s := StatusAt(evs, now, false)
	p := s.Person(now, loc, Notes{}, false)
	if s.Show != ShowOutOfOffice || !s.AllDay || p.Note != "Out of office until Monday" || !p.Has(bridge.ActivityVacation) {
		t.Errorf("Friday of the holiday: %+v %q", s, p.Note)
	}
	demo := utc("2026-12-09T14:30:00Z")
	if s := StatusAt(evs, demo, false); s.Show != ShowFree {
		t.Errorf("a tentative event counted by default: %+v", s)
	}
	if s := StatusAt(evs, demo, true); s.Show != ShowBusy {
		t.Errorf("a tentative event not counted where configured: %+v", s)
	}
}

func TestUntilText(t *testing.T) {
	loc := berlin(t)
	now := time.Date(2026, 12, 7, 10, 0, 0, 0, loc) // a Monday
	for _, c := range []struct {
		until time.Time
		want  string
	}{
		{time.Date(2026, 12, 7, 13, 0, 0, 0, loc), "13:00"},
		{time.Date(2026, 12, 8, 9, 30, 0, 0, loc), "tomorrow 09:30"},
		{time.Date(2026, 12, 8, 0, 0, 0, 0, loc), "tomorrow"},
		{time.Date(2026, 12, 11, 17, 0, 0, 0, loc), "Friday 17:00"},
		{time.Date(2026, 12, 14, 0, 0, 0, 0, loc), "Monday 14 December"},
		{time.Date(2027, 1, 4, 0, 0, 0, 0, loc), "Monday 4 January"},
	} {
		if got := untilText(c.until, now, loc, "15:04"); got != c.want {
			t.Errorf("until %v: %q, want %q", c.until, got, c.want)
		}
	}
	if got := untilText(time.Date(2026, 12, 7, 13, 0, 0, 0, loc), now, loc, "3:04 PM"); got != "1:00 PM" {
		t.Errorf("a 12-hour layout: %q", got)
	}
}
