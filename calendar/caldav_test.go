package calendar

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/calendar/radicaletest"
)

// TestCalDAVOnRadicale: a person's calendar home on a real CalDAV server
// (Radicale), with events written through CalDAV as a client writes
// them: the home's event calendar is found and asked for the window's
// events only (a weekly series begun months ago, a meeting now, one in
// three weeks the window leaves out); an event booked or deleted while
// Lamplighter runs shows at the next read; a wrong password is an error
// the status shows, the last good read kept.
func TestCalDAVOnRadicale(t *testing.T) {
	srv := radicaletest.Start(t, map[string]string{"alice": "secret"})
	work := srv.MakeCalendar("alice", "work")
	srv.MakeCalendar("alice", "personal")
	at := func(s string) time.Time { return utc("2026-12-08T" + s + ":00Z") }
	srv.Put("alice", work, "weekly", radicaletest.Event("weekly", utc("2026-09-01T09:00:00Z"), utc("2026-09-01T09:30:00Z"),
		"Weekly planning", "RRULE:FREQ=WEEKLY;BYDAY=TU"))
	srv.Put("alice", work, "far", radicaletest.Event("far", utc("2026-12-29T12:00:00Z"), utc("2026-12-29T13:00:00Z"), "Far away"))

	clk := &fakeClock{now: at("08:00")}
	who := newPeople()
	k := New(Options{People: who, Clock: clk, Interval: 2 * time.Hour})
	src := Source{Kind: KindCalDAV, URL: srv.URL + "/alice/", Username: "alice", Password: "secret"}
	k.Set([]Calendar{{User: "alice", Source: src, Location: time.UTC, Titles: true}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { k.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	waitStatus(t, k, func(s UserStatus) bool { return !s.LastFetch.IsZero() })
	clk.settle(t, 2)
	st, _ := k.StatusOf("alice")
	if st.Error != "" || st.Events != 2 || !st.NextChange.Equal(at("09:00")) { // the 8th and 15th; not the 29th
		t.Fatalf("after the first read: %+v", st)
	}
	clk.set(at("09:00"))
	who.expect(t, "alice: In a meeting (Weekly planning) until 09:30")
	clk.settle(t, 2)
	clk.set(at("09:30"))
	who.expect(t, "alice: -")
	clk.settle(t, 2)

	// Booked while Lamplighter runs, in the personal calendar too.
	srv.Put("alice", "/alice/personal/", "lunch", radicaletest.Event("lunch", at("12:00"), at("13:00"), "Lunch"))
	k.Refresh("alice")
	waitStatus(t, k, func(s UserStatus) bool { return s.NextChange.Equal(at("12:00")) })
	clk.settle(t, 2)
	clk.set(at("12:00"))
	who.expect(t, "alice: In a meeting (Lunch) until 13:00")
	clk.settle(t, 2)

	// Deleted: the meeting ends at the next read.
	srv.Delete("alice", "/alice/personal/", "lunch")
	k.Refresh("alice")
	who.expect(t, "alice: -")
	clk.settle(t, 2)

	// A wrong password: the error is shown, the last good read kept.
	src.Password = "wrong"
	k.Set([]Calendar{{User: "alice", Source: src, Location: time.UTC, Titles: true}})
	waitStatus(t, k, func(s UserStatus) bool { return s.Error != "" })
	if s, _ := k.StatusOf("alice"); !strings.Contains(s.Error, "401") {
		t.Errorf("a wrong password: %+v", s)
	}
}

// waitStatus waits until alice's calendar status satisfies ok.
func waitStatus(t *testing.T, k *Keeper, ok func(UserStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s, _ := k.StatusOf("alice")
		if ok(s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("alice's calendar: %+v", s)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
