package calendar

import (
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// fakeClock is a clock the test moves; timers fire when it passes them.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	c    chan time.Time
	at   time.Time
	done bool
	clk  *fakeClock
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }
func (t *fakeTimer) Stop() bool {
	t.clk.mu.Lock()
	defer t.clk.mu.Unlock()
	was := !t.done
	t.done = true
	return was
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) NewTimer(d time.Duration) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{c: make(chan time.Time, 1), at: c.now.Add(d), clk: c}
	if d <= 0 {
		t.c <- c.now
		t.done = true
	} else {
		c.timers = append(c.timers, t)
	}
	return t
}

// waiting is how many timers wait.
func (c *fakeClock) waiting() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, t := range c.timers {
		if !t.done {
			n++
		}
	}
	return n
}

// settle waits until n timers wait (everyone is asleep).
func (c *fakeClock) settle(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for c.waiting() < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d timers wait, want %d", c.waiting(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// set moves the clock to at and fires the timers it passes.
func (c *fakeClock) set(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = at
	keep := c.timers[:0]
	for _, t := range c.timers {
		switch {
		case t.done:
		case !t.at.After(at):
			t.done = true
			t.c <- at
		default:
			keep = append(keep, t)
		}
	}
	c.timers = keep
}

// people records what the keeper sets.
type people struct {
	mu  sync.Mutex
	now map[string]bridge.PersonState
	ch  chan string
}

func newPeople() *people {
	return &people{now: map[string]bridge.PersonState{}, ch: make(chan string, 100)}
}

func (p *people) SetPerson(user, origin string, s bridge.PersonState) error {
	p.mu.Lock()
	p.now[user] = s
	p.mu.Unlock()
	p.ch <- user + ": " + s.Note
	return nil
}

func (p *people) Person(user, origin string) (bridge.PersonState, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s, ok := p.now[user]
	return s, ok
}

func (p *people) ClearPerson(user, origin string) {
	p.mu.Lock()
	delete(p.now, user)
	p.mu.Unlock()
	p.ch <- user + ": -"
}

// expect waits for the next change to be want.
func (p *people) expect(t *testing.T, want string) {
	t.Helper()
	select {
	case got := <-p.ch:
		if got != want {
			t.Fatalf("the calendar set %q, want %q", got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("the calendar set nothing, want %q", want)
	}
}

// quiet checks that nothing more was set.
func (p *people) quiet(t *testing.T) {
	t.Helper()
	select {
	case got := <-p.ch:
		t.Fatalf("the calendar set %q, want nothing", got)
	default:
	}
}

// feed is an iCalendar feed over HTTP with an ETag, that can fail.
type feed struct {
	mu           sync.Mutex
	body         string
	status       int
	gets, unmod  atomic.Int32
	lastAgent    atomic.Value
	authRequired bool
}

func (f *feed) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.gets.Add(1)
	f.lastAgent.Store(r.UserAgent())
	f.mu.Lock()
	body, status := f.body, f.status
	f.mu.Unlock()
	if status != 0 {
		http.Error(w, "down", status)
		return
	}
	h := fnv.New64a()
	h.Write([]byte(body))
	etag := fmt.Sprintf(`"%x"`, h.Sum64())
	if r.Header.Get("If-None-Match") == etag {
		f.unmod.Add(1)
		w.WriteHeader(http.StatusNotModified)
		return
	}
	w.Header().Set("ETag", etag)
	w.Header().Set("Content-Type", "text/calendar")
	fmt.Fprint(w, body)
}

func (f *feed) set(body string, status int) {
	f.mu.Lock()
	f.body, f.status = body, status
	f.mu.Unlock()
}

// ics is a calendar of the events given as "start end summary [extra
// lines]" in UTC.
func ics(events ...string) string {
	var b strings.Builder
	b.WriteString("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//test//EN\r\n")
	for i, e := range events {
		f := strings.SplitN(e, " ", 3)
		fmt.Fprintf(&b, "BEGIN:VEVENT\r\nUID:e%d\r\nDTSTAMP:20261201T000000Z\r\nDTSTART:%s\r\nDTEND:%s\r\nSUMMARY:%s\r\nEND:VEVENT\r\n", i, f[0], f[1], f[2])
	}
	b.WriteString("END:VCALENDAR\r\n")
	return b.String()
}

// TestKeeperFollowsACalendar: a person's feed read over a real socket;
// the meeting starts and ends at its own times, not at the next read;
// a feed that fails keeps the meeting until it would have ended, logged
// once; an unchanged feed is not downloaded again; a removed calendar's
// word is cleared.
func TestKeeperFollowsACalendar(t *testing.T) {
	loc := berlin(t)
	f := &feed{}
	f.set(ics("20261208T120000Z 20261208T130000Z Lunch", "20261208T130000Z 20261208T133000Z Review"), 0)
	srv := httptest.NewServer(f)
	defer srv.Close()
	clk := &fakeClock{now: utc("2026-12-08T11:00:00Z")}
	who := newPeople()
	var logs bytes.Buffer
	var logMu sync.Mutex
	k := New(Options{People: who, Clock: clk, Logger: slog.New(slog.NewTextHandler(lockedWriter{&logs, &logMu}, nil)),
		UserAgent: "Lamplighter/test", StateDir: t.TempDir(), Interval: 2 * time.Hour})
	who.now["alice"] = bridge.PersonState{Note: "In a meeting until yesterday"}
	k.Set([]Calendar{{User: "alice", Source: Source{Kind: KindICal, URL: srv.URL + "/alice.ics"}, Location: loc}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { k.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	who.expect(t, "alice: -") // what an earlier run (or another node) left is cleared
	clk.settle(t, 2)          // Run's own timer and alice's
	if f.gets.Load() != 1 || f.lastAgent.Load() != "Lamplighter/test" {
		t.Fatalf("%d reads (agent %v), want 1", f.gets.Load(), f.lastAgent.Load())
	}
	clk.set(utc("2026-12-08T12:00:00Z"))
	who.expect(t, "alice: In a meeting until 14:30")
	clk.settle(t, 2)
	who.mu.Lock()
	p := who.now["alice"]
	who.mu.Unlock()
	if !p.Until.Equal(utc("2026-12-08T13:30:00Z")) || !p.Has(bridge.ActivityMeeting) {
		t.Errorf("the meeting's person state: %+v", p)
	}
	if n := f.gets.Load(); n != 1 {
		t.Errorf("the meeting's start read the feed again (%d reads)", n)
	}

	// The server fails from here: the meeting stays, one line is logged.
	f.set("", 503)
	for i := 0; i < 3; i++ {
		read(t, k, clk, &f.gets)
	}
	who.quiet(t)
	st := k.Status()
	if len(st) != 1 || !strings.Contains(st[0].Error, "503") || st[0].Now.Show != ShowBusy || !st[0].NextChange.Equal(utc("2026-12-08T13:30:00Z")) {
		t.Errorf("status while the feed fails: %+v", st)
	}
	logMu.Lock()
	if n := strings.Count(logs.String(), "calendar not read"); n != 1 {
		t.Errorf("%d log lines for three failed reads, want one", n)
	}
	logMu.Unlock()
	clk.set(utc("2026-12-08T13:30:00Z"))
	who.expect(t, "alice: -")
	clk.settle(t, 2)

	// Back, unchanged: not downloaded again (If-None-Match).
	f.set(ics("20261208T120000Z 20261208T130000Z Lunch", "20261208T130000Z 20261208T133000Z Review"), 0)
	read(t, k, clk, &f.gets)
	if f.unmod.Load() != 1 {
		t.Errorf("an unchanged feed was downloaded again")
	}
	if st := k.Status(); st[0].Error != "" || !st[0].LastFetch.Equal(utc("2026-12-08T13:30:00Z")) {
		t.Errorf("status after the feed came back: %+v", st[0])
	}

	// A calendar gone from the config clears what it said.
	clk.set(utc("2026-12-08T13:31:00Z"))
	f.set(ics("20261208T133000Z 20261208T150000Z Workshop"), 0)
	k.Refresh("alice")
	who.expect(t, "alice: In a meeting until 16:00")
	k.Set(nil)
	who.expect(t, "alice: -")
}

// read makes the keeper read alice's calendar now and waits until it
// has and sleeps again.
func read(t *testing.T, k *Keeper, clk *fakeClock, gets *atomic.Int32) {
	t.Helper()
	n := gets.Load()
	k.Refresh("alice")
	deadline := time.Now().Add(10 * time.Second)
	for gets.Load() == n {
		if time.Now().After(deadline) {
			t.Fatal("the calendar was not read")
		}
		time.Sleep(time.Millisecond)
	}
	clk.settle(t, 2)
}

type lockedWriter struct {
	b  *bytes.Buffer
	mu *sync.Mutex
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// runKeeper runs k until the test ends.
func runKeeper(t *testing.T, k *Keeper) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { k.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// A feed larger than the bound, and a server that never answers, are
// errors the status shows (and nothing is kept of them); neither holds
// a read slot for long.
func TestKeeperBounds(t *testing.T) {
	big := strings.Repeat("X-PAD:"+strings.Repeat("x", 60)+"\r\n", 20000) // ~1.3 MB
	huge := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "BEGIN:VCALENDAR\r\n"+big+"END:VCALENDAR\r\n")
	}))
	defer huge.Close()
	hang := make(chan struct{})
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer slow.Close()
	defer close(hang)
	clk := &fakeClock{now: utc("2026-12-08T11:00:00Z")}
	k := New(Options{People: newPeople(), Clock: clk, MaxBody: 1 << 20, Timeout: 300 * time.Millisecond})
	k.Set([]Calendar{
		{User: "big", Source: Source{Kind: KindICal, URL: huge.URL}, Location: time.UTC},
		{User: "slow", Source: Source{Kind: KindICal, URL: slow.URL}, Location: time.UTC},
	})
	runKeeper(t, k)
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := k.Status()
		if len(st) == 2 && st[0].Error != "" && st[1].Error != "" {
			if !strings.Contains(st[0].Error, "larger than the limit") || !strings.Contains(st[1].Error, "Timeout") && !strings.Contains(st[1].Error, "deadline") {
				t.Errorf("errors: %q, %q", st[0].Error, st[1].Error)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A restart while the calendar server is down: the last good read, kept
// in the state directory, still shows the meeting.
func TestKeeperRestartKeepsTheLastRead(t *testing.T) {
	f := &feed{}
	f.set(ics("20261208T120000Z 20261208T130000Z Lunch"), 0)
	srv := httptest.NewServer(f)
	defer srv.Close()
	dir := t.TempDir()
	cal := []Calendar{{User: "alice", Source: Source{Kind: KindICal, URL: srv.URL}, Location: time.UTC}}
	clk := &fakeClock{now: utc("2026-12-08T11:00:00Z")}
	who := newPeople()
	k := New(Options{People: who, Clock: clk, StateDir: dir})
	k.Set(cal)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { k.Run(ctx); close(done) }()
	waitStatus(t, k, func(s UserStatus) bool { return !s.LastFetch.IsZero() })
	cancel()
	<-done // and the state file is written

	f.set("", 503)
	clk.set(utc("2026-12-08T12:10:00Z"))
	who = newPeople()
	k = New(Options{People: who, Clock: clk, StateDir: dir})
	k.Set(cal)
	runKeeper(t, k)
	who.expect(t, "alice: In a meeting until 13:00")
	// Read again within a tenth of the interval (not all at once).
	clk.settle(t, 2)
	clk.set(utc("2026-12-08T12:10:31Z"))
	waitFor := time.Now().Add(10 * time.Second)
	for st, _ := k.StatusOf("alice"); st.Error == ""; st, _ = k.StatusOf("alice") {
		if time.Now().After(waitFor) {
			t.Fatal("the server's failure was not read")
		}
		time.Sleep(5 * time.Millisecond)
	}
	// A changed source is read afresh, not taken from the file.
	k2 := New(Options{People: newPeople(), Clock: clk, StateDir: dir})
	other := cal[0]
	other.Source.URL += "/other"
	k2.Set([]Calendar{other})
	if st, _ := k2.StatusOf("alice"); st.Events != 0 {
		t.Errorf("another source's events were taken from the file: %+v", st)
	}
}

// A thousand calendars read at once (a start with no state) are read
// again spread over ±10 % of the interval, not in the same second.
func TestReadsAreSpread(t *testing.T) {
	f := &feed{}
	f.set(ics("20261208T120000Z 20261208T130000Z Lunch"), 0)
	srv := httptest.NewServer(f)
	defer srv.Close()
	clk := &fakeClock{now: utc("2026-12-08T11:00:00Z")}
	k := New(Options{People: discard{}, Clock: clk, Parallel: 32})
	var cals []Calendar
	for i := range 1000 {
		cals = append(cals, Calendar{User: fmt.Sprint("u", i), Source: Source{Kind: KindICal, URL: fmt.Sprintf("%s/%d", srv.URL, i)}, Location: time.UTC})
	}
	k.Set(cals)
	runKeeper(t, k)
	clk.settle(t, 1001)
	perSecond := map[int64]int{}
	for _, s := range k.Status() {
		d := s.NextRead.Sub(clk.Now())
		if d < 270*time.Second || d > 330*time.Second {
			t.Fatalf("%s is read next in %v, want 5 min ± 10 %%", s.User, d)
		}
		perSecond[s.NextRead.Unix()]++
	}
	most := 0
	for _, n := range perSecond {
		most = max(most, n)
	}
	if most > 60 || len(perSecond) < 50 {
		t.Errorf("the next reads fall in %d seconds, up to %d in one", len(perSecond), most)
	}
}

type discard struct{}

func (discard) SetPerson(string, string, bridge.PersonState) error { return nil }
func (discard) ClearPerson(string, string)                         {}
func (discard) Person(string, string) (bridge.PersonState, bool)   { return bridge.PersonState{}, false }

// The state file is written again only when the events changed: a feed
// whose DTSTAMPs (and so its ETag) change at every read, as Google's do,
// costs no write.
func TestUnchangedEventsWriteNothing(t *testing.T) {
	f := &feed{}
	stamp := func(body, at string) string {
		return strings.ReplaceAll(body, "DTSTAMP:20261201T000000Z", "DTSTAMP:"+at)
	}
	lunch := ics("20261208T120000Z 20261208T130000Z Lunch")
	f.set(stamp(lunch, "20261208T100000Z"), 0)
	srv := httptest.NewServer(f)
	defer srv.Close()
	clk := &fakeClock{now: utc("2026-12-08T11:00:00Z")}
	k := New(Options{People: newPeople(), Clock: clk, StateDir: t.TempDir()})
	k.Set([]Calendar{{User: "alice", Source: Source{Kind: KindICal, URL: srv.URL}, Location: time.UTC}})
	runKeeper(t, k)
	clk.settle(t, 2)
	if !k.dirty.Swap(false) {
		t.Fatal("the first read left nothing to write")
	}
	f.set(stamp(lunch, "20261208T110100Z"), 0) // another ETag, the same events
	read(t, k, clk, &f.gets)
	if k.dirty.Load() {
		t.Error("the same events (a new DTSTAMP) are to be written again")
	}
	f.set(stamp(ics("20261208T120000Z 20261208T140000Z Lunch"), "20261208T110200Z"), 0)
	read(t, k, clk, &f.gets)
	if !k.dirty.Load() {
		t.Error("changed events are not to be written")
	}
}

// A damaged state file (or one of another format) is kept aside and
// logged; the keeper starts without it and reads the calendars afresh.
func TestDamagedStateFileIsKeptAside(t *testing.T) {
	for name, data := range map[string]string{"cut short": `{"version":1,"calendars":{"alice":{"source":"x","ev`,
		"another format": `{"version":2,"calendars":{}}`} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, FileName)
			os.WriteFile(path, []byte(data), 0o600)
			var logs bytes.Buffer
			k := New(Options{People: discard{}, StateDir: dir, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if len(k.saved) != 0 || !strings.Contains(logs.String(), "kept aside") {
				t.Errorf("saved %v, log %s", k.saved, logs.String())
			}
			aside, _ := filepath.Glob(path + ".broken-*")
			if len(aside) != 1 {
				t.Fatalf("kept aside: %v", aside)
			}
			if b, _ := os.ReadFile(aside[0]); string(b) != data {
				t.Errorf("the file kept aside is not the file as it was")
			}
		})
	}
}
