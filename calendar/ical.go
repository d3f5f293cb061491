package calendar

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-ical"
	"github.com/teambition/rrule-go"
)

// Show is how an event shows its time, as Outlook's free/busy does.
type Show uint8

// Shows, weakest first.
const (
	ShowFree        Show = iota // transparent, free or cancelled: ignored
	ShowTentative               // tentatively accepted, or tentative
	ShowBusy                    // busy: a meeting
	ShowOutOfOffice             // out of office (vacation)
)

var showNames = [...]string{"free", "tentative", "busy", "out-of-office"}

// String is the show's name in the API and logs.
func (s Show) String() string {
	if int(s) < len(showNames) {
		return showNames[s]
	}
	return fmt.Sprintf("Show(%d)", s)
}

// MarshalText implements encoding.TextMarshaler.
func (s Show) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Show) UnmarshalText(b []byte) error {
	for i, n := range showNames {
		if n == string(b) {
			*s = Show(i)
			return nil
		}
	}
	return fmt.Errorf("unknown show %q", b)
}

// An Event is one span of a calendar's time that is not free: a single
// event, or one instance of a recurring one.
type Event struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Show  Show      `json:"show"`
	// AllDay marks an event of whole days (DTSTART;VALUE=DATE), which
	// start and end at midnight in the person's own time zone.
	AllDay bool `json:"all_day,omitempty"`
	// Title is the event's SUMMARY, empty for a private or confidential
	// one (CLASS); shown only where its person opted in.
	Title string `json:"title,omitempty"`
}

// Rules say how a calendar's events are read.
type Rules struct {
	// Location is the person's own time zone: floating times and
	// all-day events are in it (default UTC).
	Location *time.Location
	// OutOfOffice are categories (CATEGORIES, any case) that make an
	// event out of office besides Outlook's BUSYSTATUS:OOF.
	OutOfOffice []string
	// Owner is the person's address in the calendar ("alice@example.com"):
	// an invitation they declined is free, one they have not answered
	// is tentative. Empty: every event counts as the calendar says.
	Owner string
}

// maxInstances bounds the instances one recurring event may expand to
// (a hostile FREQ=SECONDLY from 1970 ends here instead of using the
// CPU for hours).
const maxInstances = 100000

// maxEvents bounds the events kept of one calendar's window (the
// earliest); no person has more, and what they say is worked out anew at
// every boundary.
const maxEvents = 2000

// Expand reads iCalendar data (one or more VCALENDAR objects) and
// returns its events that overlap [from, to), ordered by start. A
// calendar that cannot be read at all is an error; an event that cannot
// be read is left out and counted in skipped.
func Expand(data []byte, from, to time.Time, r Rules) (events []Event, skipped int, err error) {
	var cals []*ical.Calendar
	dec := ical.NewDecoder(bytes.NewReader(data))
	for {
		cal, err := dec.Decode()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, 0, fmt.Errorf("iCalendar: %w", err)
		}
		cals = append(cals, cal)
	}
	if len(cals) == 0 {
		return nil, 0, errors.New("iCalendar: no VCALENDAR in the data")
	}
	return ExpandCalendars(cals, from, to, r)
}

// ExpandCalendars is Expand for calendars already decoded (a CalDAV
// query's answer is one per event).
func ExpandCalendars(cals []*ical.Calendar, from, to time.Time, r Rules) (events []Event, skipped int, err error) {
	if r.Location == nil {
		r.Location = time.UTC
	}
	x := &expander{rules: r, from: from, to: to}
	// Each UID's master and its overridden instances (RECURRENCE-ID),
	// which may come in separate objects (CalDAV) or files.
	type series struct {
		master    *ical.Component
		zones     *zones
		overrides []*ical.Component
		zonesOf   []*zones
	}
	byUID := map[string]*series{}
	var order []string
	for _, cal := range cals {
		zs := newZones(cal.Component, r.Location, from, to)
		for _, c := range cal.Children {
			if c.Name != ical.CompEvent {
				continue
			}
			uid, _ := c.Props.Text(ical.PropUID)
			if uid == "" { // not valid, but seen: each is its own
				uid = fmt.Sprintf("\x00%d", len(order))
			}
			s := byUID[uid]
			if s == nil {
				s = &series{}
				byUID[uid] = s
				order = append(order, uid)
			}
			if c.Props.Get(ical.PropRecurrenceID) != nil {
				s.overrides = append(s.overrides, c)
				s.zonesOf = append(s.zonesOf, zs)
			} else if s.master == nil {
				s.master, s.zones = c, zs
			}
		}
	}
	for _, uid := range order {
		s := byUID[uid]
		// The instants the overrides replace.
		replaced := map[int64]bool{}
		for i, o := range s.overrides {
			at, err := x.instantOf(o.Props.Get(ical.PropRecurrenceID), s.zonesOf[i])
			if err != nil {
				skipped++
				continue
			}
			replaced[at.Unix()] = true
			if err := x.single(o, s.zonesOf[i]); err != nil {
				skipped++
			}
		}
		if s.master != nil {
			if err := x.master(s.master, s.zones, replaced); err != nil {
				skipped++
			}
		}
	}
	slices.SortStableFunc(x.out, func(a, b Event) int {
		if c := a.Start.Compare(b.Start); c != 0 {
			return c
		}
		return a.End.Compare(b.End)
	})
	if len(x.out) > maxEvents {
		skipped += len(x.out) - maxEvents
		x.out = x.out[:maxEvents]
	}
	return x.out, skipped, nil
}

// expander gathers the events of a window.
type expander struct {
	rules    Rules
	from, to time.Time
	out      []Event
}

// show is how an event shows its time.
func (x *expander) show(c *ical.Component) Show {
	if st, _ := c.Props.Text(ical.PropStatus); strings.EqualFold(st, "CANCELLED") {
		return ShowFree
	}
	// The person's own answer to an invitation (Google's feed lists the
	// meetings they declined too).
	switch x.answer(c) {
	case "DECLINED":
		return ShowFree
	case "NEEDS-ACTION", "TENTATIVE":
		return x.categorised(c, ShowTentative)
	}
	for _, name := range []string{"X-MICROSOFT-CDO-BUSYSTATUS", "X-MICROSOFT-CDO-INTENDEDSTATUS"} {
		v, _ := c.Props.Text(name)
		switch strings.ToUpper(v) {
		case "FREE", "WORKINGELSEWHERE":
			return ShowFree
		case "TENTATIVE":
			return ShowTentative
		case "OOF":
			return ShowOutOfOffice
		case "BUSY":
			return x.categorised(c, ShowBusy)
		}
	}
	if tr, _ := c.Props.Text(ical.PropTransparency); strings.EqualFold(tr, "TRANSPARENT") {
		return ShowFree
	}
	if st, _ := c.Props.Text(ical.PropStatus); strings.EqualFold(st, "TENTATIVE") {
		return x.categorised(c, ShowTentative)
	}
	return x.categorised(c, ShowBusy)
}

// answer is the owner's PARTSTAT among the event's attendees, "" when
// the owner is not one (their own event) or unknown.
func (x *expander) answer(c *ical.Component) string {
	if x.rules.Owner == "" {
		return ""
	}
	for _, a := range c.Props.Values(ical.PropAttendee) {
		addr := strings.TrimSpace(a.Value)
		if len(addr) > 7 && strings.EqualFold(addr[:7], "mailto:") {
			addr = addr[7:]
		}
		if strings.EqualFold(addr, x.rules.Owner) {
			return strings.ToUpper(a.Params.Get(ical.ParamParticipationStatus))
		}
	}
	return ""
}

// categorised is s, or out of office when the event has one of the
// configured out-of-office categories.
func (x *expander) categorised(c *ical.Component, s Show) Show {
	if len(x.rules.OutOfOffice) == 0 {
		return s
	}
	for _, p := range c.Props.Values(ical.PropCategories) {
		cats, _ := p.TextList()
		for _, cat := range cats {
			for _, want := range x.rules.OutOfOffice {
				if strings.EqualFold(strings.TrimSpace(cat), want) {
					return ShowOutOfOffice
				}
			}
		}
	}
	return s
}

// title is the event's summary unless it is private.
func title(c *ical.Component) string {
	if cl, _ := c.Props.Text(ical.PropClass); strings.EqualFold(cl, "PRIVATE") || strings.EqualFold(cl, "CONFIDENTIAL") {
		return ""
	}
	t, _ := c.Props.Text(ical.PropSummary)
	return strings.TrimSpace(t)
}

// same reports whether two events are the same span, show and title.
func (e Event) same(o Event) bool {
	return e.Start.Equal(o.Start) && e.End.Equal(o.End) && e.Show == o.Show && e.AllDay == o.AllDay && e.Title == o.Title
}

// add keeps an instance that overlaps the window.
func (x *expander) add(e Event) {
	if e.End.After(x.from) && e.Start.Before(x.to) && e.End.After(e.Start) {
		x.out = append(x.out, e)
	}
}

// span is an event's start (as a wall time in its zone) and length.
type span struct {
	start  time.Time // wall clock, in UTC's fields
	zone   zone
	allDay bool
	// wallLen is the length in wall-clock time (an hour's meeting stays
	// an hour long across a change of summer time); for an event whose
	// end is in another zone, absLen is used instead.
	wallLen, absLen time.Duration
	useAbs          bool
}

// spanOf reads an event's DTSTART and DTEND or DURATION.
func (x *expander) spanOf(c *ical.Component, zs *zones) (span, error) {
	ds := c.Props.Get(ical.PropDateTimeStart)
	if ds == nil {
		return span{}, errors.New("no DTSTART")
	}
	start, z, allDay, err := zs.wallOf(ds)
	if err != nil {
		return span{}, err
	}
	s := span{start: start, zone: z, allDay: allDay}
	switch de, dur := c.Props.Get(ical.PropDateTimeEnd), c.Props.Get(ical.PropDuration); {
	case de != nil:
		end, ez, _, err := zs.wallOf(de)
		if err != nil {
			return span{}, err
		}
		if ez.name() == z.name() {
			s.wallLen = end.Sub(start)
		} else {
			s.useAbs = true
			s.absLen = ez.instant(end).Sub(z.instant(start))
		}
	case dur != nil:
		d, err := dur.Duration()
		if err != nil {
			return span{}, err
		}
		s.wallLen = d
	case allDay:
		s.wallLen = 24 * time.Hour
	}
	return s, nil
}

// event is the instance of s that starts at the wall time at.
func (x *expander) event(s span, at time.Time, show Show, title string) Event {
	start := s.zone.instant(at)
	end := s.zone.instant(at.Add(s.wallLen))
	if s.useAbs {
		end = start.Add(s.absLen)
	}
	return Event{Start: start, End: end, Show: show, AllDay: s.allDay, Title: title}
}

// single adds an event that does not recur (or an overridden instance).
func (x *expander) single(c *ical.Component, zs *zones) error {
	show := x.show(c)
	if show == ShowFree {
		return nil
	}
	s, err := x.spanOf(c, zs)
	if err != nil {
		return err
	}
	x.add(x.event(s, s.start, show, title(c)))
	return nil
}

// master adds the instances of an event that may recur, but for those
// an override replaced.
func (x *expander) master(c *ical.Component, zs *zones, replaced map[int64]bool) error {
	rr := c.Props.Get(ical.PropRecurrenceRule)
	rdates := c.Props.Values(ical.PropRecurrenceDates)
	if rr == nil && len(rdates) == 0 {
		if replaced[x.mustInstant(c, zs)] {
			return nil
		}
		return x.single(c, zs)
	}
	show := x.show(c)
	if show == ShowFree {
		return nil
	}
	s, err := x.spanOf(c, zs)
	if err != nil {
		return err
	}
	excluded := map[int64]bool{}
	for _, p := range c.Props.Values(ical.PropExceptionDates) {
		for _, at := range x.instantsOf(&p, zs) {
			excluded[at.Unix()] = true
		}
	}
	// The wall-clock window in which instances may overlap [from, to):
	// widened by a day each side for the zone's offset and the event's
	// length.
	lo := s.zone.wall(x.from).Add(-s.wallLen - s.absLen - 26*time.Hour)
	hi := s.zone.wall(x.to).Add(26 * time.Hour)
	starts := []time.Time{s.start}
	if rr != nil {
		opt, err := rrule.StrToROption(rr.Value)
		if err != nil {
			return fmt.Errorf("RRULE: %w", err)
		}
		opt.Dtstart = s.start
		if !opt.Until.IsZero() && untilIsUTC(rr.Value) {
			// A UTC UNTIL (RFC 5545 asks for one with a zoned DTSTART)
			// is compared in the event's wall clock.
			opt.Until = s.zone.wall(opt.Until)
		}
		rule, err := rrule.NewRRule(*opt)
		if err != nil {
			return fmt.Errorf("RRULE: %w", err)
		}
		next := rule.Iterator()
		starts = starts[:0]
		for n := 0; ; n++ {
			at, ok := next()
			if !ok || at.After(hi) {
				break
			}
			if n >= maxInstances {
				return fmt.Errorf("RRULE: more than %d instances before the window", maxInstances)
			}
			if !at.Before(lo) {
				starts = append(starts, at)
			}
		}
	}
	for _, p := range rdates {
		for _, at := range x.instantsOf(&p, zs) {
			starts = append(starts, s.zone.wall(at))
		}
	}
	t := title(c)
	seen := map[int64]bool{}
	for _, at := range starts {
		key := s.zone.instant(at).Unix()
		if seen[key] || excluded[key] || replaced[key] {
			continue
		}
		seen[key] = true
		x.add(x.event(s, at, show, t))
	}
	return nil
}

// untilIsUTC reports whether an RRULE's UNTIL is a UTC date-time.
func untilIsUTC(rule string) bool {
	for _, part := range strings.Split(rule, ";") {
		k, v, _ := strings.Cut(part, "=")
		if strings.EqualFold(k, "UNTIL") {
			return strings.HasSuffix(strings.ToUpper(v), "Z")
		}
	}
	return false
}

// mustInstant is the instant of an event's DTSTART, 0 when unreadable.
func (x *expander) mustInstant(c *ical.Component, zs *zones) int64 {
	at, err := x.instantOf(c.Props.Get(ical.PropDateTimeStart), zs)
	if err != nil {
		return 0
	}
	return at.Unix()
}

// instantOf is the instant a date or date-time property names.
func (x *expander) instantOf(p *ical.Prop, zs *zones) (time.Time, error) {
	if p == nil {
		return time.Time{}, errors.New("missing date")
	}
	w, z, _, err := zs.wallOf(p)
	if err != nil {
		return time.Time{}, err
	}
	return z.instant(w), nil
}

// instantsOf are the instants of a property with a list of values
// (EXDATE, RDATE: "20261201T100000,20261208T100000"); a PERIOD's start.
func (x *expander) instantsOf(p *ical.Prop, zs *zones) []time.Time {
	var out []time.Time
	for _, v := range strings.Split(p.Value, ",") {
		v, _, _ = strings.Cut(strings.TrimSpace(v), "/") // PERIOD: its start
		one := *p
		one.Value = v
		if at, err := x.instantOf(&one, zs); err == nil {
			out = append(out, at)
		}
	}
	return out
}
