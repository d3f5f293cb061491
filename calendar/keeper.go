package calendar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// Calendar is one person's calendar as the config gives it.
type Calendar struct {
	User   string
	Source Source
	// Location is the person's own time zone (notes, all-day events,
	// floating times).
	Location *time.Location
	// Titles lets event titles be shown in the person's note.
	Titles bool
	// Tentative counts tentative events as busy.
	Tentative bool
	// OutOfOffice are categories that make an event out of office.
	OutOfOffice []string
	// Owner is the person's address in the calendar (Rules.Owner).
	Owner string
	Notes Notes
}

// same reports whether two calendars are read and shown alike.
func (c Calendar) same(o Calendar) bool {
	return c.User == o.User && c.Source == o.Source && c.Location.String() == o.Location.String() &&
		c.Titles == o.Titles && c.Tentative == o.Tentative && slices.Equal(c.OutOfOffice, o.OutOfOffice) && c.Owner == o.Owner &&
		c.Notes == o.Notes
}

// People is where the calendars' word goes: the bridge, or the bridge
// shared with a cluster's other nodes.
type People interface {
	SetPerson(userID, origin string, p bridge.PersonState) error
	ClearPerson(userID, origin string)
	Person(userID, origin string) (bridge.PersonState, bool)
}

// Options configure a Keeper.
type Options struct {
	People People
	Logger *slog.Logger
	// Clock is the time (default the system's); tests move it.
	Clock Clock
	// Interval is how often each calendar is read (default 5 min),
	// with ±10 % jitter, and at first within one interval, so that a
	// thousand calendars are not all read in the same second.
	Interval time.Duration
	// Horizon is how far ahead events are read (default 14 days).
	Horizon time.Duration
	// Timeout bounds one read (default 20 s); MaxBody one answer's
	// body (default 4 MiB).
	Timeout time.Duration
	MaxBody int64
	// Parallel bounds the reads under way at once (default 8).
	Parallel int
	// Transport is the HTTP transport (default http.DefaultTransport).
	Transport http.RoundTripper
	// UserAgent names Lamplighter to the calendar servers.
	UserAgent string
	// Leads reports whether this node reads calendars (in a cluster
	// one node does, and the state it sets is shared); nil: always.
	Leads func() bool
	// StateDir keeps the last good read of every calendar, so that a
	// restart with a calendar server down loses nothing ("" keeps none).
	StateDir string
}

// FileName is the file in the state directory that keeps what was read.
const FileName = "calendars.json"

// Keeper reads every person's calendar and sets what it says as their
// person state (origin bridge.OriginCalendar) at each event's start and
// end.
type Keeper struct {
	opt   Options
	fetch *fetcher
	slots chan struct{}

	mu      sync.Mutex
	running map[string]*follower // by user id
	ctx     context.Context
	wg      sync.WaitGroup
	dirty   atomic.Bool
	leading atomic.Bool
	saved   map[string]savedCalendar // read from the file, until each user's follower takes its own
	reads   [3]atomic.Uint64         // changed, unchanged, failed
}

// Reads counts the calendar reads since the start.
type Reads struct {
	Changed, Unchanged, Failed uint64
}

// Reads returns the reads counted so far.
func (k *Keeper) Reads() Reads {
	return Reads{Changed: k.reads[0].Load(), Unchanged: k.reads[1].Load(), Failed: k.reads[2].Load()}
}

// follower reads one person's calendar.
type follower struct {
	cal   Calendar
	kick  chan struct{}
	stop  context.CancelFunc
	done  chan struct{}
	after chan struct{} // the follower it replaces, which ends first

	mu      sync.Mutex
	events  []Event
	etag    string
	lastMod string
	fetched time.Time // last good read
	tried   time.Time // last read
	err     string
	skipped int
	applied Status    // what was last set as the person's state
	once    bool      // whether anything was set yet
	next    time.Time // next change of what the calendar says
	nextRd  time.Time // next read
}

// savedCalendar is one calendar's last good read in the state file.
type savedCalendar struct {
	Source  string    `json:"source"` // a hash of the source: a changed one is read afresh
	Events  []Event   `json:"events"`
	ETag    string    `json:"etag,omitempty"`
	LastMod string    `json:"last_modified,omitempty"`
	Fetched time.Time `json:"fetched"`
}

// New returns a Keeper; Run starts it.
func New(opt Options) *Keeper {
	if opt.Clock == nil {
		opt.Clock = systemClock{}
	}
	if opt.Logger == nil {
		opt.Logger = slog.New(slog.DiscardHandler)
	}
	if opt.Interval <= 0 {
		opt.Interval = 5 * time.Minute
	}
	if opt.Horizon <= 0 {
		opt.Horizon = 14 * 24 * time.Hour
	}
	if opt.Timeout <= 0 {
		opt.Timeout = 20 * time.Second
	}
	if opt.MaxBody <= 0 {
		opt.MaxBody = 4 << 20
	}
	if opt.Parallel <= 0 {
		opt.Parallel = 8
	}
	if opt.Transport == nil {
		opt.Transport = http.DefaultTransport
	}
	if opt.UserAgent == "" {
		opt.UserAgent = "Lamplighter"
	}
	k := &Keeper{opt: opt, slots: make(chan struct{}, opt.Parallel), running: map[string]*follower{},
		fetch: &fetcher{client: &http.Client{Transport: opt.Transport, Timeout: opt.Timeout}, maxBody: opt.MaxBody, agent: opt.UserAgent}}
	k.saved = k.load()
	return k
}

// Run follows the calendars Set gives until ctx ends; what was set as
// person state stays (the cluster's other nodes, a restart) and lapses
// by itself at its end.
func (k *Keeper) Run(ctx context.Context) {
	k.leading.Store(k.opt.Leads == nil || k.opt.Leads())
	k.mu.Lock()
	k.ctx = ctx
	for _, f := range k.running {
		k.start(f)
	}
	k.mu.Unlock()
	// Leadership changes, and the state file is written, every few
	// seconds.
	t := k.opt.Clock.NewTimer(leadCheck)
	for {
		select {
		case <-ctx.Done():
			t.Stop()
			k.wg.Wait()
			k.save()
			return
		case <-t.C():
		}
		if k.opt.Leads != nil {
			now := k.opt.Leads()
			if was := k.leading.Swap(now); now && !was {
				k.opt.Logger.Info("reading calendars: this node leads")
				k.mu.Lock()
				for _, f := range k.running {
					f.mu.Lock()
					f.once = false // what another node set is set again
					f.mu.Unlock()
				}
				k.mu.Unlock()
				k.kickAll()
			}
		}
		if k.dirty.Swap(false) {
			k.save()
		}
		t = k.opt.Clock.NewTimer(leadCheck)
	}
}

// leadCheck is how often leadership and the state file are seen to.
const leadCheck = 2 * time.Second

// Set makes cals the calendars followed (at start and at each reload):
// new ones are read, changed ones read afresh, removed ones end and
// their person state is cleared.
func (k *Keeper) Set(cals []Calendar) {
	k.mu.Lock()
	defer k.mu.Unlock()
	want := map[string]Calendar{}
	for _, c := range cals {
		want[c.User] = c
	}
	replaced := map[string]chan struct{}{} // a changed calendar's old follower
	for user, f := range k.running {
		if c, ok := want[user]; ok && c.same(f.cal) {
			delete(want, user)
			continue
		}
		delete(k.running, user)
		_, stays := want[user]
		switch {
		case f.stop == nil: // never started (before Run)
			if !stays {
				k.opt.People.ClearPerson(user, bridge.OriginCalendar)
			}
		case !stays:
			f.stop()
			go func() {
				<-f.done // its last word first
				k.opt.People.ClearPerson(user, bridge.OriginCalendar)
			}()
		default:
			f.stop()
			replaced[user] = f.done
		}
		k.dirty.Store(true)
	}
	for _, c := range cals {
		if _, ok := want[c.User]; !ok {
			continue
		}
		f := &follower{cal: c, kick: make(chan struct{}, 1), done: make(chan struct{}), after: replaced[c.User]}
		if s, ok := k.saved[c.User]; ok && s.Source == sourceHash(c) {
			f.events, f.etag, f.lastMod, f.fetched = s.Events, s.ETag, s.LastMod, s.Fetched
		}
		k.running[c.User] = f
		if k.ctx != nil {
			k.start(f)
		}
	}
}

// start runs a follower; called with k.mu held.
func (k *Keeper) start(f *follower) {
	ctx, cancel := context.WithCancel(k.ctx)
	f.stop = cancel
	k.wg.Add(1)
	go func() {
		defer k.wg.Done()
		defer close(f.done)
		if f.after != nil {
			<-f.after // the old word is set before the new
		}
		k.follow(ctx, f)
	}()
}

// Refresh reads one person's calendar now ("" for everyone's).
func (k *Keeper) Refresh(user string) bool {
	if user == "" {
		k.kickAll()
		return true
	}
	k.mu.Lock()
	f, ok := k.running[user]
	k.mu.Unlock()
	if ok {
		kick(f)
	}
	return ok
}

func (k *Keeper) kickAll() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, f := range k.running {
		kick(f)
	}
}

func kick(f *follower) {
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// retryMin is the first wait after a failed read; it doubles up to the
// interval.
const retryMin = 30 * time.Second

// follow reads f's calendar every interval and sets its word at every
// boundary.
func (k *Keeper) follow(ctx context.Context, f *follower) {
	log := k.opt.Logger.With("user", f.cal.User, "source", f.cal.Source.String())
	clock := k.opt.Clock
	// The first read: soon when nothing was kept, else within one
	// interval of the last.
	nextRead := clock.Now()
	if !f.fetched.IsZero() {
		nextRead = f.fetched.Add(jitter(k.opt.Interval))
		if now := clock.Now(); nextRead.Before(now) {
			nextRead = now.Add(time.Duration(rand.Int64N(int64(k.opt.Interval) / 10)))
		}
	}
	retry := retryMin
	for {
		now := clock.Now()
		if k.leading.Load() && !now.Before(nextRead) {
			if err := k.read(ctx, f, log); err != nil {
				if ctx.Err() != nil {
					return
				}
				nextRead = clock.Now().Add(retry)
				retry = min(retry*2, k.opt.Interval)
			} else {
				nextRead = clock.Now().Add(jitter(k.opt.Interval))
				retry = retryMin
			}
			now = clock.Now()
		}
		f.mu.Lock()
		f.nextRd = nextRead
		f.mu.Unlock()
		next := k.apply(f, now)
		wait := nextRead.Sub(now)
		if !k.leading.Load() {
			wait = k.opt.Interval
		}
		if !next.IsZero() && next.Sub(now) < wait {
			wait = next.Sub(now)
		}
		// A wall clock that jumps (NTP, a suspended VM) is caught up
		// with within a minute.
		wait = max(min(wait, time.Minute), 0)
		t := clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-f.kick:
			t.Stop()
			nextRead = clock.Now()
		case <-t.C():
		}
	}
}

// jitter is d ± 10 %.
func jitter(d time.Duration) time.Duration {
	return d - d/10 + time.Duration(rand.Int64N(int64(d)/5+1))
}

// read reads f's calendar once; a failed read keeps the last good one.
func (k *Keeper) read(ctx context.Context, f *follower, log *slog.Logger) error {
	select {
	case k.slots <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-k.slots }()
	now := k.opt.Clock.Now()
	f.mu.Lock()
	etag, lastMod := f.etag, f.lastMod
	f.mu.Unlock()
	rules := Rules{Location: f.cal.Location, OutOfOffice: f.cal.OutOfOffice, Owner: f.cal.Owner}
	rctx, cancel := context.WithTimeout(ctx, k.opt.Timeout)
	got, err := k.fetch.fetch(rctx, f.cal.Source, etag, lastMod, now.Add(-24*time.Hour), now.Add(k.opt.Horizon), rules)
	cancel()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tried = now
	if err != nil {
		if ctx.Err() != nil {
			return err
		}
		k.reads[2].Add(1)
		if msg := err.Error(); msg != f.err {
			log.Warn("calendar not read; keeping what was read before", "error", err, "last_read", f.fetched)
			f.err = msg
		}
		return err
	}
	if f.err != "" {
		log.Info("calendar read again")
	}
	f.err = ""
	if got.notModified {
		k.reads[1].Add(1)
	} else {
		k.reads[0].Add(1)
		if !f.cal.Titles {
			for i := range got.events {
				got.events[i].Title = "" // never kept where it is never shown
			}
		}
		// The state file is written again only for other events (a feed
		// whose DTSTAMPs, and so ETag, change at every read says nothing
		// new).
		if f.fetched.IsZero() || !slices.EqualFunc(f.events, got.events, Event.same) {
			k.dirty.Store(true)
		}
		f.events, f.skipped, f.etag, f.lastMod = got.events, got.skipped, got.etag, got.lastMo
		if got.skipped > 0 {
			log.Debug("calendar events not understood", "skipped", got.skipped)
		}
	}
	f.fetched = now
	return nil
}

// apply sets what f's calendar says at now, when it changed, and
// returns when it next changes.
func (k *Keeper) apply(f *follower, now time.Time) time.Time {
	f.mu.Lock()
	events := f.events
	s := StatusAt(events, now, f.cal.Tentative)
	next := NextChange(events, now, f.cal.Tentative)
	changed := !f.once || !s.same(f.applied)
	f.next = next
	leading := k.leading.Load()
	if leading {
		f.applied, f.once = s, true
	}
	f.mu.Unlock()
	if !leading || !changed {
		return next
	}
	if s.Show == ShowFree {
		// (Nothing to clear is the common case at a start: no word to
		// the bridge, nor to a cluster's other nodes.)
		if _, had := k.opt.People.Person(f.cal.User, bridge.OriginCalendar); had {
			k.opt.People.ClearPerson(f.cal.User, bridge.OriginCalendar)
		}
		return next
	}
	p := s.Person(now, f.cal.Location, f.cal.Notes, f.cal.Titles)
	if err := k.opt.People.SetPerson(f.cal.User, bridge.OriginCalendar, p); err != nil {
		k.opt.Logger.Debug("calendar state not set", "user", f.cal.User, "error", err)
	}
	return next
}

// UserStatus is what the API and metrics show of one person's calendar.
type UserStatus struct {
	User   string `json:"user"`
	Source string `json:"source"`
	// Now is what the calendar says at the moment.
	Now        Status    `json:"now"`
	LastFetch  time.Time `json:"last_fetch,omitzero"`
	LastTry    time.Time `json:"last_try,omitzero"`
	NextChange time.Time `json:"next_change,omitzero"`
	NextRead   time.Time `json:"next_read,omitzero"`
	Error      string    `json:"error,omitempty"`
	Events     int       `json:"events"`
	Skipped    int       `json:"skipped,omitempty"`
}

// StatusOf returns one person's calendar status.
func (k *Keeper) StatusOf(user string) (UserStatus, bool) {
	k.mu.Lock()
	f, ok := k.running[user]
	k.mu.Unlock()
	if !ok {
		return UserStatus{}, false
	}
	return f.status(k.opt.Clock.Now()), true
}

// status is f's UserStatus at now.
func (f *follower) status(now time.Time) UserStatus {
	f.mu.Lock()
	defer f.mu.Unlock()
	return UserStatus{User: f.cal.User, Source: f.cal.Source.String(),
		Now: StatusAt(f.events, now, f.cal.Tentative), LastFetch: f.fetched, LastTry: f.tried,
		NextChange: f.next, NextRead: f.nextRd, Error: f.err, Events: len(f.events), Skipped: f.skipped}
}

// Status returns every followed calendar's status, by user id.
func (k *Keeper) Status() []UserStatus {
	k.mu.Lock()
	fs := make([]*follower, 0, len(k.running))
	for _, f := range k.running {
		fs = append(fs, f)
	}
	k.mu.Unlock()
	now := k.opt.Clock.Now()
	out := make([]UserStatus, 0, len(fs))
	for _, f := range fs {
		out = append(out, f.status(now))
	}
	slices.SortFunc(out, func(a, b UserStatus) int { return strings.Compare(a.User, b.User) })
	return out
}

// sourceHash names a calendar's source and how it is read, for the
// state file: not its password (a changed password reads the same
// calendar, and a hash of it is no business of the file's).
func sourceHash(c Calendar) string {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00%s\x00%v\x00%v\x00%s", c.Source.Kind, c.Source.URL, c.Source.Username,
		c.Location, c.Titles, c.OutOfOffice, c.Owner)
	return fmt.Sprintf("%016x", h.Sum64())
}

// savedFile is the state file: its format's version and each user's
// calendar.
type savedFile struct {
	Version   int                      `json:"version"`
	Calendars map[string]savedCalendar `json:"calendars"`
}

// fileVersion is the state file's format.
const fileVersion = 1

// load reads the state file; one that cannot be read (damaged, another
// format) is kept aside as FILE.broken-TIME, as the other state files
// are, and the calendars are read afresh.
func (k *Keeper) load() map[string]savedCalendar {
	if k.opt.StateDir == "" {
		return map[string]savedCalendar{}
	}
	path := filepath.Join(k.opt.StateDir, FileName)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]savedCalendar{}
	}
	var f savedFile
	if err == nil {
		err = json.Unmarshal(data, &f)
		if err == nil && f.Version != fileVersion {
			err = fmt.Errorf("format version %d, this Lamplighter reads %d", f.Version, fileVersion)
		}
	}
	if err != nil {
		aside := fmt.Sprintf("%s.broken-%s", path, time.Now().UTC().Format("20060102T150405.000000000"))
		k.opt.Logger.Warn("the calendars' state file cannot be read: kept aside, the calendars are read again", "file", path, "err", err, "kept_as", aside)
		_ = os.Rename(path, aside)
		return map[string]savedCalendar{}
	}
	if f.Calendars == nil {
		f.Calendars = map[string]savedCalendar{}
	}
	return f.Calendars
}

// save writes every calendar's last good read (atomically).
func (k *Keeper) save() {
	if k.opt.StateDir == "" {
		return
	}
	k.mu.Lock()
	out := make(map[string]savedCalendar, len(k.running))
	for user, f := range k.running {
		f.mu.Lock()
		if !f.fetched.IsZero() {
			out[user] = savedCalendar{Source: sourceHash(f.cal), Events: f.events, ETag: f.etag, LastMod: f.lastMod, Fetched: f.fetched}
		}
		f.mu.Unlock()
	}
	k.mu.Unlock()
	data, err := json.Marshal(savedFile{Version: fileVersion, Calendars: out})
	if err == nil {
		path := filepath.Join(k.opt.StateDir, FileName)
		tmp := path + ".tmp"
		if err = os.WriteFile(tmp, data, 0o600); err == nil {
			err = os.Rename(tmp, path)
		}
	}
	if err != nil {
		k.opt.Logger.Warn("calendar state not written", "error", err)
	}
}
