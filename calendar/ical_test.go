package calendar

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// berlin is the person's zone of the fixtures.
func berlin(t *testing.T) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

func utc(s string) time.Time {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		panic(err)
	}
	return t
}

// expandFile expands a fixture over [from, to) and writes its events as
// "start–end show title" lines in UTC.
func expandFile(t *testing.T, name, from, to string, r Rules) []string {
	t.Helper()
	data, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	evs, skipped, err := Expand(data, utc(from), utc(to), r)
	if err != nil {
		t.Fatal(err)
	}
	if skipped != 0 {
		t.Errorf("%s: %d events skipped", name, skipped)
	}
	var out []string
	for _, e := range evs {
		out = append(out, fmt.Sprintf("%s–%s %s %s", e.Start.UTC().Format("01-02T15:04"), e.End.UTC().Format("01-02T15:04"), e.Show, e.Title))
	}
	return out
}

func checkLines(t *testing.T, what string, got, want []string) {
	t.Helper()
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("%s:\ngot\n  %s\nwant\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// Google's secret address: a weekly series with an EXDATE, an instance
// moved by RECURRENCE-ID and one cancelled by it; a daily series whose
// UTC UNTIL falls before its last local start; UTC times; a free all-day
// event.
func TestGoogleFeed(t *testing.T) {
	got := expandFile(t, "google.ics", "2026-12-07T00:00:00Z", "2026-12-21T00:00:00Z", Rules{Location: berlin(t)})
	checkLines(t, "Google", got, []string{
		"12-07T13:00–12-07T14:00 busy Daily review",
		"12-08T12:00–12-08T13:00 busy Lunch with Bob",
		"12-08T13:00–12-08T14:00 busy Daily review",
		"12-08T13:00–12-08T14:00 busy Design review",
		"12-09T09:00–12-09T09:30 busy Stand-up (moved)",
		"12-09T13:00–12-09T14:00 busy Daily review",
		"12-16T08:00–12-16T08:30 busy Stand-up",
	})
	// Across the end of summer time (25 October) the stand-up stays at
	// 9:00 in Berlin: 7:00 UTC before, 8:00 after.
	got = expandFile(t, "google.ics", "2026-10-19T00:00:00Z", "2026-10-29T00:00:00Z", Rules{Location: berlin(t)})
	checkLines(t, "Google across the change of time", got, []string{
		"10-19T07:00–10-19T07:30 busy Stand-up",
		"10-21T07:00–10-21T07:30 busy Stand-up",
		"10-26T08:00–10-26T08:30 busy Stand-up",
		"10-28T08:00–10-28T08:30 busy Stand-up",
	})
}

// Outlook's published calendar: Windows zone names defined only by
// their VTIMEZONE (one a "Customized Time Zone" with America's rules),
// BUSYSTATUS for busy, tentative, free and out of office, a private
// event.
func TestOutlookFeed(t *testing.T) {
	got := expandFile(t, "outlook.ics", "2026-12-07T00:00:00Z", "2026-12-21T00:00:00Z", Rules{Location: berlin(t)})
	checkLines(t, "Outlook", got, []string{
		"12-08T09:00–12-08T09:30 busy 1:1 with Dana",
		"12-09T14:00–12-09T15:00 tentative Maybe: vendor demo",
		"12-10T15:00–12-10T16:00 busy ",
		"12-10T23:00–12-13T23:00 out-of-office Holiday",
		"12-15T09:00–12-15T09:30 busy 1:1 with Dana",
	})
	// The Windows zone's summer time ends on 25 October, the customised
	// zone's on 1 November: on 28 October 9:00 there is 13:00 UTC.
	got = expandFile(t, "outlook.ics", "2026-10-20T00:00:00Z", "2026-10-29T00:00:00Z", Rules{Location: berlin(t)})
	checkLines(t, "Outlook across the change of time", got, []string{
		"10-20T08:00–10-20T08:30 busy 1:1 with Dana",
		"10-27T09:00–10-27T09:30 busy 1:1 with Dana",
		"10-28T13:00–10-28T14:00 busy Call with the New York office",
	})
}

// Nextcloud: an IANA TZID with its VTIMEZONE, DURATION, a monthly rule
// with COUNT and an RDATE, STATUS:TENTATIVE and CANCELLED, and a
// category that the config calls out of office.
func TestNextcloudFeed(t *testing.T) {
	got := expandFile(t, "nextcloud.ics", "2026-12-07T00:00:00Z", "2026-12-21T00:00:00Z",
		Rules{Location: berlin(t), OutOfOffice: []string{"vacation"}})
	checkLines(t, "Nextcloud", got, []string{
		"12-08T15:00–12-08T16:00 tentative Maybe: book club",
		"12-17T10:00–12-17T10:45 busy Team sync",
		"12-20T23:00–12-23T23:00 out-of-office Ski trip",
	})
	got = expandFile(t, "nextcloud.ics", "2027-01-01T00:00:00Z", "2027-03-01T00:00:00Z", Rules{Location: berlin(t)})
	checkLines(t, "Nextcloud's monthly series", got, []string{
		"01-07T10:00–01-07T10:45 busy Team sync",
		"02-04T10:00–02-04T10:45 busy Team sync",
	})
}

// Damaged and hostile calendars: not iCalendar at all is an error; an
// event without a start is skipped and counted; a rule that would run
// for ever before the window stops at its bound.
func TestBadCalendars(t *testing.T) {
	from, to := utc("2026-12-07T00:00:00Z"), utc("2026-12-08T00:00:00Z")
	if _, _, err := Expand([]byte("<html>sign in</html>"), from, to, Rules{}); err == nil {
		t.Error("an HTML page read as a calendar")
	}
	cal := "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\n" +
		"BEGIN:VEVENT\r\nUID:a\r\nDTSTAMP:20261201T000000Z\r\nSUMMARY:no start\r\nEND:VEVENT\r\n" +
		"BEGIN:VEVENT\r\nUID:b\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:19700101T000000Z\r\nDTEND:19700101T000001Z\r\nRRULE:FREQ=SECONDLY\r\nEND:VEVENT\r\n" +
		"BEGIN:VEVENT\r\nUID:c\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:20261207T100000Z\r\nDTEND:20261207T110000Z\r\nSUMMARY:fine\r\nEND:VEVENT\r\n" +
		"END:VCALENDAR\r\n"
	start := time.Now()
	evs, skipped, err := Expand([]byte(cal), from, to, Rules{})
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 1 || evs[0].Title != "fine" || skipped != 2 {
		t.Errorf("events %+v, skipped %d; want the one good event and two skipped", evs, skipped)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("a hostile rule took %v", d)
	}
}

// Floating times are in the calendar's X-WR-TIMEZONE where it names one
// (Google, Apple), else in the person's zone; dates are the person's.
func TestFloatingTimes(t *testing.T) {
	cal := func(header string) []byte {
		return []byte("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\n" + header +
			"BEGIN:VEVENT\r\nUID:f\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:20261208T100000\r\nDTEND:20261208T110000\r\nEND:VEVENT\r\n" +
			"BEGIN:VEVENT\r\nUID:d\r\nDTSTAMP:20261201T000000Z\r\nDTSTART;VALUE=DATE:20261209\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n")
	}
	for _, c := range []struct {
		header, start string
	}{{"", "2026-12-08T09:00:00Z"}, {"X-WR-TIMEZONE:America/New_York\r\n", "2026-12-08T15:00:00Z"}} {
		evs, _, err := Expand(cal(c.header), utc("2026-12-07T00:00:00Z"), utc("2026-12-11T00:00:00Z"), Rules{Location: berlin(t)})
		if err != nil || len(evs) != 2 {
			t.Fatalf("%q: %v %v", c.header, evs, err)
		}
		if !evs[0].Start.Equal(utc(c.start)) {
			t.Errorf("%q: the floating 10:00 is %v, want %s", c.header, evs[0].Start.UTC(), c.start)
		}
		if !evs[1].Start.Equal(utc("2026-12-08T23:00:00Z")) || !evs[1].AllDay || !evs[1].End.Equal(utc("2026-12-09T23:00:00Z")) {
			t.Errorf("%q: the all-day event %+v is not Berlin's 9 December", c.header, evs[1])
		}
	}
}

// BenchmarkExpandOutlook reads the Outlook fixture's two weeks: a
// weekly series, zones defined by VTIMEZONE, an all-day event.
func BenchmarkExpandOutlook(b *testing.B) {
	data, err := os.ReadFile("testdata/outlook.ics")
	if err != nil {
		b.Fatal(err)
	}
	loc, _ := time.LoadLocation("Europe/Berlin")
	from, to := utc("2026-12-07T00:00:00Z"), utc("2026-12-21T00:00:00Z")
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := Expand(data, from, to, Rules{Location: loc}); err != nil {
			b.Fatal(err)
		}
	}
}

// A calendar of 5,000 overlapping events in the window keeps the
// earliest 2,000; what they say and when it next changes are worked out
// in bounded time.
func TestManyEvents(t *testing.T) {
	var b strings.Builder
	b.WriteString("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\n")
	start := utc("2026-12-08T08:00:00Z")
	for i := range 5000 {
		s := start.Add(time.Duration(i) * time.Minute)
		fmt.Fprintf(&b, "BEGIN:VEVENT\r\nUID:%d\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:%s\r\nDTEND:%s\r\nEND:VEVENT\r\n",
			i, s.Format("20060102T150405Z"), s.Add(time.Hour).Format("20060102T150405Z"))
	}
	b.WriteString("END:VCALENDAR\r\n")
	evs, skipped, err := Expand([]byte(b.String()), utc("2026-12-07T00:00:00Z"), utc("2026-12-21T00:00:00Z"), Rules{})
	if err != nil || len(evs) != maxEvents || skipped != 5000-maxEvents {
		t.Fatalf("%d events, %d skipped, %v", len(evs), skipped, err)
	}
	began := time.Now()
	at := start.Add(30 * time.Minute)
	s := StatusAt(evs, at, false)
	next := NextChange(evs, at, false)
	if want := start.Add((maxEvents-1)*time.Minute + time.Hour); !s.Until.Equal(want) || !next.Equal(want) {
		t.Errorf("until %v, next change %v; want both %v (one run)", s.Until, next, want)
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

// Exporters that name a Windows zone without its VTIMEZONE (quoted, as
// some write it) still mean that zone.
func TestWindowsZoneWithoutItsVTIMEZONE(t *testing.T) {
	cal := "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:w\r\nDTSTAMP:20261201T000000Z\r\n" +
		"DTSTART;TZID=\"Eastern Standard Time\":20261208T090000\r\nDTEND;TZID=\"Eastern Standard Time\":20261208T093000\r\n" +
		"X-MICROSOFT-CDO-BUSYSTATUS:OOF\r\nX-MICROSOFT-CDO-INTENDEDSTATUS:BUSY\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
	evs, _, err := Expand([]byte(cal), utc("2026-12-07T00:00:00Z"), utc("2026-12-09T00:00:00Z"), Rules{Location: berlin(t)})
	if err != nil || len(evs) != 1 {
		t.Fatalf("%v %v", evs, err)
	}
	if !evs[0].Start.Equal(utc("2026-12-08T14:00:00Z")) || evs[0].Show != ShowOutOfOffice {
		t.Errorf("9:00 Eastern out of office read as %v %v", evs[0].Start.UTC(), evs[0].Show)
	}
}

// The person's own answer to an invitation: declined shows nothing, not
// answered yet is tentative, accepted is busy; their own event (not an
// attendee) is busy; without an owner every event counts.
func TestTheOwnersAnswer(t *testing.T) {
	ev := func(uid, start, partstat string) string {
		return "BEGIN:VEVENT\r\nUID:" + uid + "\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:20261208T" + start + "00Z\r\nDTEND:20261208T" + start[:2] + "3000Z\r\n" +
			"SUMMARY:" + uid + "\r\nORGANIZER;CN=Boss:mailto:boss@example.com\r\n" +
			"ATTENDEE;CN=Boss;PARTSTAT=ACCEPTED:mailto:boss@example.com\r\n" +
			"ATTENDEE;CUTYPE=INDIVIDUAL;ROLE=REQ-PARTICIPANT;PARTSTAT=" + partstat + ";CN=Alice:mailto:Alice@Example.com\r\nEND:VEVENT\r\n"
	}
	cal := "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\n" + ev("declined", "0900", "DECLINED") + ev("unanswered", "1000", "NEEDS-ACTION") +
		ev("accepted", "1100", "ACCEPTED") + ev("maybe", "1200", "TENTATIVE") +
		"BEGIN:VEVENT\r\nUID:own\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:20261208T130000Z\r\nDTEND:20261208T133000Z\r\nSUMMARY:own\r\nEND:VEVENT\r\n" +
		"END:VCALENDAR\r\n"
	show := func(owner string) string {
		evs, _, err := Expand([]byte(cal), utc("2026-12-08T00:00:00Z"), utc("2026-12-09T00:00:00Z"), Rules{Owner: owner})
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range evs {
			out = append(out, e.Title+"="+e.Show.String())
		}
		return strings.Join(out, " ")
	}
	if got, want := show("alice@example.com"), "unanswered=tentative accepted=busy maybe=tentative own=busy"; got != want {
		t.Errorf("alice's answers: %s, want %s", got, want)
	}
	if got, want := show(""), "declined=busy unanswered=busy accepted=busy maybe=busy own=busy"; got != want {
		t.Errorf("no owner: %s, want %s", got, want)
	}
}
