package calendar

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	_ "time/tzdata" // a calendar names zones the host may lack

	"github.com/emersion/go-ical"
	"github.com/teambition/rrule-go"
)

// Times are reckoned as wall-clock times (a time.Time in UTC whose
// fields are the clock's) in a zone, and turned into instants by it:
// recurrence rules are wall-clock rules (a 9:00 meeting stays at 9:00
// across a change of summer time), and a VTIMEZONE that names no IANA
// zone (Outlook's "W. Europe Standard Time", a "Customized Time Zone")
// can only be read that way.

// A zone turns wall-clock times into instants and back.
type zone interface {
	name() string
	instant(wall time.Time) time.Time
	wall(instant time.Time) time.Time
}

// locZone is a zone of Go's time zone database.
type locZone struct{ loc *time.Location }

func (z locZone) name() string { return z.loc.String() }

func (z locZone) instant(w time.Time) time.Time {
	return time.Date(w.Year(), w.Month(), w.Day(), w.Hour(), w.Minute(), w.Second(), 0, z.loc)
}

func (z locZone) wall(i time.Time) time.Time {
	i = i.In(z.loc)
	return time.Date(i.Year(), i.Month(), i.Day(), i.Hour(), i.Minute(), i.Second(), 0, time.UTC)
}

// zones resolves a calendar's TZIDs.
type zones struct {
	local    zone                       // the person's: all-day events
	floating zone                       // times without a zone: the calendar's X-WR-TIMEZONE, else the person's
	defs     map[string]*ical.Component // VTIMEZONE by TZID
	cache    map[string]zone
	// years bounds the onsets a VTIMEZONE's rules are expanded to: the
	// years around the window read.
	years [2]int
}

// newZones reads a calendar's VTIMEZONEs; local is the person's zone
// (floating times, all-day events).
func newZones(cal *ical.Component, local *time.Location, from, to time.Time) *zones {
	zs := &zones{local: locZone{local}, defs: map[string]*ical.Component{}, cache: map[string]zone{},
		years: [2]int{from.Year() - 1, to.Year() + 2}}
	for _, c := range cal.Children {
		if c.Name == ical.CompTimezone {
			if id, _ := c.Props.Text(ical.PropTimezoneID); id != "" {
				zs.defs[id] = c
			}
		}
	}
	// Google and Apple write the calendar's own zone here and mean it
	// for times that name none.
	zs.floating = zs.local
	if name, _ := cal.Props.Text("X-WR-TIMEZONE"); name != "" {
		if loc, err := time.LoadLocation(name); err == nil {
			zs.floating = locZone{loc}
		}
	}
	return zs
}

// lookup is the zone a TZID names: an IANA name (also inside a
// "/mozilla.org/…/Europe/Berlin" path), else the calendar's VTIMEZONE of
// that id, else a Windows zone name; else the person's own zone.
func (zs *zones) lookup(tzid string) zone {
	if z, ok := zs.cache[tzid]; ok {
		return z
	}
	z := zs.resolve(tzid)
	zs.cache[tzid] = z
	return z
}

func (zs *zones) resolve(tzid string) zone {
	name := strings.Trim(tzid, `"`)
	if loc, err := time.LoadLocation(name); err == nil && name != "" && name != "Local" {
		return locZone{loc}
	}
	if parts := strings.Split(strings.Trim(name, "/"), "/"); len(parts) > 2 {
		for n := 3; n >= 2; n-- {
			if len(parts) >= n {
				if loc, err := time.LoadLocation(strings.Join(parts[len(parts)-n:], "/")); err == nil {
					return locZone{loc}
				}
			}
		}
	}
	if def := zs.defs[tzid]; def != nil {
		if z, err := newDefinedZone(tzid, def, zs.years); err == nil {
			return z
		}
	}
	if iana, ok := windowsZones[name]; ok {
		if loc, err := time.LoadLocation(iana); err == nil {
			return locZone{loc}
		}
	}
	return zs.local
}

// utcZone is UTC.
var utcZone = locZone{time.UTC}

// wallOf reads a DATE or DATE-TIME property: its wall-clock time, the
// zone it is in, and whether it is a date (an all-day event's).
func (zs *zones) wallOf(p *ical.Prop) (time.Time, zone, bool, error) {
	v := strings.TrimSpace(p.Value)
	if p.ValueType() == ical.ValueDate || len(v) == 8 {
		t, err := time.Parse("20060102", v)
		return t, zs.local, true, err
	}
	if strings.HasSuffix(v, "Z") {
		t, err := time.Parse("20060102T150405Z", v)
		return t, utcZone, false, err
	}
	t, err := time.Parse("20060102T150405", v)
	if err != nil {
		return t, nil, false, err
	}
	if tzid := p.Params.Get(ical.PropTimezoneID); tzid != "" {
		return t, zs.lookup(tzid), false, nil
	}
	return t, zs.floating, false, nil
}

// definedZone is a zone a VTIMEZONE defines by its observances.
type definedZone struct {
	id  string
	obs []observance
}

// observance is one STANDARD or DAYLIGHT part: from each onset (wall
// time, in the offset before it) the offset is to.
type observance struct {
	from, to time.Duration
	onsets   []time.Time // sorted
}

func newDefinedZone(id string, c *ical.Component, years [2]int) (*definedZone, error) {
	z := &definedZone{id: id}
	for _, o := range c.Children {
		if o.Name != ical.CompTimezoneStandard && o.Name != ical.CompTimezoneDaylight {
			continue
		}
		from, err1 := parseOffset(o.Props.Get(ical.PropTimezoneOffsetFrom))
		to, err2 := parseOffset(o.Props.Get(ical.PropTimezoneOffsetTo))
		ds := o.Props.Get(ical.PropDateTimeStart)
		if err := errors.Join(err1, err2); err != nil || ds == nil {
			return nil, fmt.Errorf("VTIMEZONE %s: bad observance", id)
		}
		start, err := time.Parse("20060102T150405", strings.TrimSpace(ds.Value))
		if err != nil {
			return nil, fmt.Errorf("VTIMEZONE %s: %w", id, err)
		}
		ob := observance{from: from, to: to, onsets: []time.Time{start}}
		if rr := o.Props.Get(ical.PropRecurrenceRule); rr != nil {
			opt, err := rrule.StrToROption(rr.Value)
			if err != nil {
				return nil, fmt.Errorf("VTIMEZONE %s: %w", id, err)
			}
			// Only the onsets around the window matter (the last one
			// before a time gives its offset), and rrule-go reckons in
			// time.Duration, which spans only 292 years: a rule that
			// began in 1601 (Outlook's) is begun a year before the
			// window (a yearly rule's month and day are its own).
			opt.Dtstart = start
			if start.Year() < years[0] {
				opt.Dtstart = start.AddDate(years[0]-start.Year(), 0, 0)
			}
			if !opt.Until.IsZero() && untilIsUTC(rr.Value) {
				opt.Until = opt.Until.Add(from)
			}
			rule, err := rrule.NewRRule(*opt)
			if err != nil {
				return nil, fmt.Errorf("VTIMEZONE %s: %w", id, err)
			}
			ob.onsets = append(ob.onsets, rule.Between(opt.Dtstart, time.Date(years[1], 1, 1, 0, 0, 0, 0, time.UTC), true)...)
		}
		for _, rd := range o.Props.Values(ical.PropRecurrenceDates) {
			for _, v := range strings.Split(rd.Value, ",") {
				if t, err := time.Parse("20060102T150405", strings.TrimSpace(v)); err == nil {
					ob.onsets = append(ob.onsets, t)
				}
			}
		}
		slices.SortFunc(ob.onsets, func(a, b time.Time) int { return a.Compare(b) })
		z.obs = append(z.obs, ob)
	}
	if len(z.obs) == 0 {
		return nil, fmt.Errorf("VTIMEZONE %s: no observances", id)
	}
	return z, nil
}

// parseOffset reads a UTC offset ("+0100", "-0430", "+013000").
func parseOffset(p *ical.Prop) (time.Duration, error) {
	if p == nil {
		return 0, errors.New("no offset")
	}
	v := strings.TrimSpace(p.Value)
	if len(v) != 5 && len(v) != 7 || (v[0] != '+' && v[0] != '-') {
		return 0, fmt.Errorf("bad UTC offset %q", v)
	}
	n := make([]int, 0, 3)
	for i := 1; i < len(v); i += 2 {
		d, err := strconv.Atoi(v[i : i+2])
		if err != nil {
			return 0, fmt.Errorf("bad UTC offset %q", v)
		}
		n = append(n, d)
	}
	for len(n) < 3 {
		n = append(n, 0)
	}
	d := time.Duration(n[0])*time.Hour + time.Duration(n[1])*time.Minute + time.Duration(n[2])*time.Second
	if v[0] == '-' {
		d = -d
	}
	return d, nil
}

func (z *definedZone) name() string { return "vtimezone:" + z.id }

// offsetAt is the offset in force at a wall time: that of the
// observance with the latest onset at or before it (before every onset,
// the earliest observance's offset before it).
func (z *definedZone) offsetAt(w time.Time) time.Duration {
	var best time.Time
	off, found := time.Duration(0), false
	for _, o := range z.obs {
		i, ok := slices.BinarySearchFunc(o.onsets, w, func(a, b time.Time) int { return a.Compare(b) })
		if !ok {
			i--
		}
		if i >= 0 && (!found || o.onsets[i].After(best)) {
			best, off, found = o.onsets[i], o.to, true
		}
	}
	if !found {
		first := z.obs[0]
		for _, o := range z.obs[1:] {
			if o.onsets[0].Before(first.onsets[0]) {
				first = o
			}
		}
		return first.from
	}
	return off
}

func (z *definedZone) instant(w time.Time) time.Time { return w.Add(-z.offsetAt(w)) }

func (z *definedZone) wall(i time.Time) time.Time {
	for _, o := range z.obs {
		if w := i.Add(o.to); z.offsetAt(w) == o.to {
			return w
		}
	}
	return i.Add(z.offsetAt(i))
}

// windowsZones are the Windows zone names Outlook and Exchange put in
// TZIDs, for a calendar that names one without its VTIMEZONE (the
// commonest of CLDR's windowsZones table).
var windowsZones = map[string]string{
	"UTC": "UTC", "GMT Standard Time": "Europe/London", "Greenwich Standard Time": "Atlantic/Reykjavik",
	"W. Europe Standard Time": "Europe/Berlin", "Romance Standard Time": "Europe/Paris",
	"Central Europe Standard Time": "Europe/Budapest", "Central European Standard Time": "Europe/Warsaw",
	"E. Europe Standard Time": "Europe/Chisinau", "FLE Standard Time": "Europe/Kiev",
	"GTB Standard Time": "Europe/Bucharest", "Russian Standard Time": "Europe/Moscow",
	"Turkey Standard Time": "Europe/Istanbul", "Israel Standard Time": "Asia/Jerusalem",
	"South Africa Standard Time": "Africa/Johannesburg", "Arabian Standard Time": "Asia/Dubai",
	"India Standard Time": "Asia/Calcutta", "China Standard Time": "Asia/Shanghai",
	"Singapore Standard Time": "Asia/Singapore", "Tokyo Standard Time": "Asia/Tokyo",
	"Korea Standard Time": "Asia/Seoul", "AUS Eastern Standard Time": "Australia/Sydney",
	"E. Australia Standard Time": "Australia/Brisbane", "W. Australia Standard Time": "Australia/Perth",
	"New Zealand Standard Time": "Pacific/Auckland", "Eastern Standard Time": "America/New_York",
	"Central Standard Time": "America/Chicago", "Mountain Standard Time": "America/Denver",
	"US Mountain Standard Time": "America/Phoenix", "Pacific Standard Time": "America/Los_Angeles",
	"Alaskan Standard Time": "America/Anchorage", "Hawaiian Standard Time": "Pacific/Honolulu",
	"Atlantic Standard Time": "America/Halifax", "Canada Central Standard Time": "America/Regina",
	"Mexico Standard Time": "America/Mexico_City", "Central Standard Time (Mexico)": "America/Mexico_City",
	"E. South America Standard Time": "America/Sao_Paulo", "Argentina Standard Time": "America/Buenos_Aires",
	"SA Pacific Standard Time": "America/Bogota",
}
