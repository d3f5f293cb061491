package calendar

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/emersion/go-ical"
	"github.com/emersion/go-webdav"
	"github.com/emersion/go-webdav/caldav"
)

// Kind is how a calendar is read.
type Kind string

// Kinds of source.
const (
	// KindICal is an iCalendar feed fetched whole with GET (Google's
	// secret address, a published Outlook calendar, Nextcloud's or
	// SOGo's export links): conditional requests save the body when it
	// did not change.
	KindICal Kind = "ical"
	// KindCalDAV is a CalDAV collection (RFC 4791), or a calendar home
	// whose every event calendar is read: a calendar-query with a time
	// range asks only for the events of the window.
	KindCalDAV Kind = "caldav"
)

// Source is where one person's calendar is read.
type Source struct {
	Kind Kind
	URL  string
	// Username and Password are for HTTP basic authentication (none
	// when Username is empty).
	Username, Password string
}

// String is the source without its secrets, for logs and the API (a
// secret iCal address keeps its secret in the path: only the host is
// shown).
func (s Source) String() string {
	u, err := url.Parse(s.URL)
	if err != nil {
		return string(s.Kind) + " (bad URL)"
	}
	return string(s.Kind) + " " + u.Scheme + "://" + u.Host + "/…"
}

// fetched is what one read of a source gave.
type fetched struct {
	events       []Event
	skipped      int
	notModified  bool
	etag, lastMo string
}

// fetcher reads sources over HTTP with bounds.
type fetcher struct {
	client  *http.Client
	maxBody int64
	agent   string
}

// errTooLarge is a body over the bound.
var errTooLarge = errors.New("calendar larger than the limit")

// limitedBody fails a read past its bound instead of cutting the
// calendar short.
type limitedBody struct {
	io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		// One byte more tells a body of exactly the limit from a larger.
		var one [1]byte
		if n, _ := b.ReadCloser.Read(one[:]); n > 0 {
			return 0, errTooLarge
		}
		return 0, io.EOF
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.ReadCloser.Read(p)
	b.left -= int64(n)
	return n, err
}

// boundedClient is the fetcher's client for go-webdav: every answer's
// body is bounded, every request carries the User-Agent.
type boundedClient struct{ f *fetcher }

func (c boundedClient) Do(req *http.Request) (*http.Response, error) {
	req.Header.Set("User-Agent", c.f.agent)
	res, err := c.f.client.Do(req)
	if err != nil {
		return nil, err
	}
	res.Body = &limitedBody{ReadCloser: res.Body, left: c.f.maxBody}
	return res, nil
}

// fetch reads src's events in [from, to); etag and lastMod are the
// validators of the last good read of an iCalendar feed.
func (f *fetcher) fetch(ctx context.Context, src Source, etag, lastMod string, from, to time.Time, r Rules) (fetched, error) {
	if src.Kind == KindCalDAV {
		return f.caldav(ctx, src, from, to, r)
	}
	u := src.URL
	if rest, ok := strings.CutPrefix(u, "webcal://"); ok { // what calendar sites link
		u = "https://" + rest
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fetched{}, err
	}
	req.Header.Set("Accept", "text/calendar, */*;q=0.5")
	if src.Username != "" {
		req.SetBasicAuth(src.Username, src.Password)
	}
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	if lastMod != "" {
		req.Header.Set("If-Modified-Since", lastMod)
	}
	res, err := boundedClient{f}.Do(req)
	if err != nil {
		return fetched{}, err
	}
	defer res.Body.Close()
	switch {
	case res.StatusCode == http.StatusNotModified:
		return fetched{notModified: true, etag: etag, lastMo: lastMod}, nil
	case res.StatusCode/100 != 2:
		io.Copy(io.Discard, io.LimitReader(res.Body, 4096))
		return fetched{}, fmt.Errorf("HTTP %s", res.Status)
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		return fetched{}, err
	}
	evs, skipped, err := Expand(body, from, to, r)
	if err != nil {
		return fetched{}, err
	}
	return fetched{events: evs, skipped: skipped, etag: res.Header.Get("ETag"), lastMo: res.Header.Get("Last-Modified")}, nil
}

// caldav asks each event calendar at src for the events of the window.
func (f *fetcher) caldav(ctx context.Context, src Source, from, to time.Time, r Rules) (fetched, error) {
	var hc webdav.HTTPClient = boundedClient{f}
	if src.Username != "" {
		hc = webdav.HTTPClientWithBasicAuth(hc, src.Username, src.Password)
	}
	c, err := caldav.NewClient(hc, src.URL)
	if err != nil {
		return fetched{}, err
	}
	u, err := url.Parse(src.URL)
	if err != nil {
		return fetched{}, err
	}
	// The URL's collection is a calendar, or a home of calendars: a
	// PROPFIND of depth 1 lists it and its children, calendars among
	// them.
	cals, err := c.FindCalendars(ctx, u.Path)
	if err != nil {
		return fetched{}, fmt.Errorf("CalDAV: %w", err)
	}
	query := &caldav.CalendarQuery{
		CompRequest: caldav.CalendarCompRequest{Name: ical.CompCalendar, AllProps: true, AllComps: true},
		CompFilter: caldav.CompFilter{Name: ical.CompCalendar, Comps: []caldav.CompFilter{{
			Name: ical.CompEvent, Start: from.UTC(), End: to.UTC()}}},
	}
	var objs []*ical.Calendar
	n := 0
	for _, cal := range cals {
		if len(cal.SupportedComponentSet) > 0 && !containsFold(cal.SupportedComponentSet, ical.CompEvent) {
			continue // a task list
		}
		n++
		got, err := c.QueryCalendar(ctx, cal.Path, query)
		if err != nil {
			return fetched{}, fmt.Errorf("CalDAV query of %s: %w", cal.Path, err)
		}
		for _, o := range got {
			if o.Data != nil {
				objs = append(objs, o.Data)
			}
		}
	}
	if n == 0 {
		return fetched{}, fmt.Errorf("CalDAV: no event calendar at %s", u.Path)
	}
	evs, skipped, err := ExpandCalendars(objs, from, to, r)
	return fetched{events: evs, skipped: skipped}, err
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}
