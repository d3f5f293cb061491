// Package api is Lamplighter's HTTP API under /api/v1: every user with the
// aggregated state, devices, calls and watcher count; the person state an
// outside system sets (a calendar says "meeting", a chat bot "dnd") with a
// note and an optional expiry; and a config reload. Requests carry the
// token from the config's http section as "Authorization: Bearer TOKEN"
// (everything allowed), or a user's own SIP username and password as HTTP
// Basic credentials (read, and set one's own person state).
package api

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/calendar"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/discovery"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/version"
	"github.com/lamplighter/lamplighter/presence/proxy"
)

// Origin is the bridge origin under which the API's person states are
// kept, beside those PUBLISHed by soft clients.
const Origin = "api"

// Bridge is what the API reads and sets; *bridge.Bridge implements it.
type Bridge interface {
	Directory() *bridge.Directory
	State(userID string) (*bridge.State, bool)
	States() []*bridge.State
	SetPerson(userID, origin string, p bridge.PersonState) error
	ClearPerson(userID, origin string)
	Person(userID, origin string) (bridge.PersonState, bool)
}

// PersonStore keeps the API's person states across restarts.
type PersonStore interface {
	SavePerson(userID, origin string, p bridge.PersonState) error
	DeletePerson(userID, origin string) error
}

// ReloadResult says what a reload changed.
type ReloadResult struct {
	Users   int      `json:"users"`
	Added   []string `json:"added,omitempty"`
	Removed []string `json:"removed,omitempty"`
	Changed []string `json:"changed,omitempty"`
	// NeedRestart lists settings that changed but only take effect at
	// the next start (listeners, PBX connections, the state directory).
	NeedRestart []string `json:"need_restart,omitempty"`
}

// Options configure the API.
type Options struct {
	Bridge Bridge
	// Watchers counts the SIP subscriptions to a user.
	Watchers func(userID string) int
	// Registrations returns the phone registrations held through proxy
	// mode, by user id; nil without proxy mode.
	Registrations func() map[string][]proxy.Registration
	// Store keeps person states; nil keeps them in memory.
	Store PersonStore
	// Reload re-reads the config; an error (config.Errors for a bad
	// file) leaves the running config as it was.
	Reload func() (ReloadResult, error)
	// CheckUser checks a user's own credentials (the SIP username and
	// password from the config) and returns the user id; nil: only the
	// token is accepted.
	CheckUser func(username, password string) (userID string, ok bool)
	// Discovery tells what the PBXs' own directories gave (nil: the
	// endpoint says no PBX is discovered).
	Discovery func() Discovery
	// RefreshDiscovery reads the PBXs' directories again (nil: none is
	// discovered).
	RefreshDiscovery func()
	// Calendars are the people's calendars (nil: none).
	Calendars Calendars
	// AuthFailed counts a request with wrong credentials (nil: not
	// counted); each is also logged with its source, for fail2ban.
	AuthFailed func()
	Log        *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// API serves /api/v1.
type API struct {
	opt     Options
	mu      sync.RWMutex
	token   string
	tenants map[string]string // a tenant's token → its domain
	keyOnce sync.Once         // the stream tickets' key (ticket.go)
	key     []byte
}

// New builds the API; SetToken enables it.
func New(opt Options) *API {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Now == nil {
		opt.Now = time.Now
	}
	if opt.Watchers == nil {
		opt.Watchers = func(string) int { return 0 }
	}
	return &API{opt: opt}
}

// SetToken sets the bearer token (a reload may change it). With no token
// configured the API answers 403 to everything: it is never open.
func (a *API) SetToken(token string) {
	a.mu.Lock()
	a.token = token
	a.mu.Unlock()
}

// SetTenantTokens sets the tenants' tokens (token → tenant domain): each
// reads and sets only its tenant's people, as the tenant's switchboard.
func (a *API) SetTenantTokens(tokens map[string]string) {
	a.mu.Lock()
	a.tenants = tokens
	a.mu.Unlock()
}

// Handle registers the API's routes on mux.
func (a *API) Handle(mux interface {
	Handle(pattern string, h http.Handler)
}) {
	mux.Handle("GET /api/v1/whoami", a.authorised(a.whoami, forUsers))
	mux.Handle("GET /api/v1/users", a.authorised(a.listUsers, forUsers))
	mux.Handle("GET /api/v1/users/{id}", a.authorised(a.getUser, forUsers))
	mux.Handle("PUT /api/v1/users/{id}/presence", a.authorised(a.putPresence, forUsers))
	mux.Handle("DELETE /api/v1/users/{id}/presence", a.authorised(a.deletePresence, forUsers))
	mux.Handle("POST /api/v1/reload", a.authorised(a.reload, adminOnly))
	mux.Handle("GET /api/v1/discovery", a.authorised(a.discovery, adminOnly))
	mux.Handle("POST /api/v1/discovery/refresh", a.authorised(a.refreshDiscovery, adminOnly))
	mux.Handle("POST /api/v1/stream-ticket", a.authorised(a.streamTicket, forUsers))
	mux.Handle("GET /api/v1/calendars", a.authorised(a.listCalendars, forUsers))
	mux.Handle("GET /api/v1/version", a.authorised(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, version.Get())
	}, forUsers))
	mux.Handle("POST /api/v1/users/{id}/calendar/refresh", a.authorised(a.refreshCalendar, forUsers))
}

// refreshDiscovery reads every PBX's directory again now (an extension
// was just added at the PBX), without reading the config again; it
// answers 202 at once: GET /api/v1/discovery says when it was read.
func (a *API) refreshDiscovery(w http.ResponseWriter, r *http.Request) {
	if a.opt.RefreshDiscovery == nil {
		writeError(w, http.StatusNotFound, "no pbx has discover on")
		return
	}
	a.opt.RefreshDiscovery()
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "reading"})
}

// Calendars is what the API asks of the calendars' keeper.
type Calendars interface {
	StatusOf(userID string) (calendar.UserStatus, bool)
	Status() []calendar.UserStatus
	Refresh(userID string) bool
}

// listCalendars shows every calendar the caller may see.
func (a *API) listCalendars(w http.ResponseWriter, r *http.Request) {
	out := []calendar.UserStatus{}
	if a.opt.Calendars != nil {
		c, dir := callerOf(r), a.opt.Bridge.Directory()
		for _, s := range a.opt.Calendars.Status() {
			if u, ok := dir.User(s.User); ok && c.sees(u) {
				out = append(out, s)
			}
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"calendars": out})
}

// refreshCalendar reads a user's calendar now (after an event was
// booked, or to see whether a fixed server answers).
func (a *API) refreshCalendar(w http.ResponseWriter, r *http.Request) {
	u, ok := a.user(w, r)
	if !ok {
		return
	}
	if !callerOf(r).may(u) {
		writeError(w, http.StatusForbidden, "not yours")
		return
	}
	if a.opt.Calendars == nil || !a.opt.Calendars.Refresh(u.ID) {
		writeError(w, http.StatusNotFound, fmt.Sprintf("%s has no calendar", u.ID))
		return
	}
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "reading"})
}

// Discovery is what the PBXs' own directories gave: each PBX's reads, and
// what was found but left out of the directory, and why.
type Discovery struct {
	PBXs    []discovery.Status  `json:"pbxs"`
	LeftOut []discovery.LeftOut `json:"left_out"`
}

func (a *API) discovery(w http.ResponseWriter, r *http.Request) {
	out := Discovery{}
	if a.opt.Discovery != nil {
		out = a.opt.Discovery()
	}
	if out.PBXs == nil {
		out.PBXs = []discovery.Status{}
	}
	if out.LeftOut == nil {
		out.LeftOut = []discovery.LeftOut{}
	}
	writeJSON(w, http.StatusOK, out)
}

// Caller is who made a request: the holder of the token (Admin) or one
// user with their own credentials.
type Caller struct {
	Admin  bool   `json:"admin"`
	UserID string `json:"user,omitempty"`
	// Tenant is the domain of the tenant whose token the caller holds
	// (it may set that tenant's people), or of the user who signed in.
	Tenant string `json:"tenant,omitempty"`
}

// may reports whether the caller may change u's person state.
func (c Caller) may(u *bridge.User) bool {
	return c.Admin || c.UserID == u.ID || c.UserID == "" && c.Tenant != "" && c.Tenant == u.Tenant
}

// sees reports whether the caller may see u: the token sees everyone; a
// tenant's token and a signed-in user see their own tenant's people only
// (without tenants, everyone is in one).
func (c Caller) sees(u *bridge.User) bool { return c.Admin || c.Tenant == u.Tenant }

// Caller returns who r comes from; ok is false without valid credentials.
func (a *API) Caller(r *http.Request) (Caller, bool) {
	a.mu.RLock()
	token, tenants := a.token, a.tenants
	a.mu.RUnlock()
	h := r.Header.Get("Authorization")
	// The scheme is case-insensitive (RFC 9110 §11.1).
	if scheme, got, found := strings.Cut(strings.TrimSpace(h), " "); found && strings.EqualFold(scheme, "Bearer") {
		got = strings.TrimSpace(got)
		if token != "" && subtle.ConstantTimeCompare([]byte(got), []byte(token)) == 1 {
			return Caller{Admin: true}, true
		}
		for t, tenant := range tenants {
			if t != "" && subtle.ConstantTimeCompare([]byte(got), []byte(t)) == 1 {
				return Caller{Tenant: tenant}, true
			}
		}
		return Caller{}, false
	}
	if user, pw, ok := r.BasicAuth(); ok && a.opt.CheckUser != nil {
		if id, ok := a.opt.CheckUser(user, pw); ok {
			c := Caller{UserID: id}
			if u, ok := a.opt.Bridge.Directory().User(id); ok {
				c.Tenant = u.Tenant
			}
			return c, true
		}
	}
	return Caller{}, false
}

type callerKey struct{}

const (
	forUsers  = false
	adminOnly = true
)

func (a *API) authorised(h http.HandlerFunc, admin bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.RLock()
		configured := a.token != "" || len(a.tenants) > 0 || a.opt.CheckUser != nil
		a.mu.RUnlock()
		c, ok := a.Caller(r)
		switch {
		case !configured:
			writeError(w, http.StatusForbidden, "the API is off: set http.token (or token_file, token_env) in the config")
		case !ok:
			if r.Header.Get("Authorization") != "" {
				// Wrong credentials, not missing ones: logged with the
				// source address (fail2ban) and counted.
				host, _, _ := net.SplitHostPort(r.RemoteAddr)
				a.opt.Log.Warn("authentication failed", "method", "HTTP", "source", host, "path", r.URL.Path)
				if a.opt.AuthFailed != nil {
					a.opt.AuthFailed()
				}
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="lamplighter", Basic realm="lamplighter"`)
			writeError(w, http.StatusUnauthorized, "missing or wrong credentials: a bearer token, or your SIP username and password")
		case admin && !c.Admin:
			writeError(w, http.StatusForbidden, "only the API token may do this")
		default:
			h(w, r.WithContext(context.WithValue(r.Context(), callerKey{}, c)))
		}
	})
}

func callerOf(r *http.Request) Caller {
	c, _ := r.Context().Value(callerKey{}).(Caller)
	return c
}

func (a *API) whoami(w http.ResponseWriter, r *http.Request) {
	c := callerOf(r)
	out := map[string]any{"admin": c.Admin}
	if c.Tenant != "" {
		out["tenant"] = c.Tenant
	}
	if u, ok := a.opt.Bridge.Directory().User(c.UserID); ok {
		out["user"], out["name"] = u.ID, u.Name
	}
	writeJSON(w, http.StatusOK, out)
}

// User is one user as the API shows it.
type User struct {
	ID         string   `json:"id"`
	Name       string   `json:"name"`
	Extensions []string `json:"extensions,omitempty"`
	Groups     []string `json:"groups,omitempty"`
	// Domain is the PBX domain the user was found in; Configured says the
	// YAML names the user, Discovered which PBXs' directories do.
	Domain     string   `json:"domain,omitempty"`
	Configured bool     `json:"configured"`
	Discovered []string `json:"discovered,omitempty"`
	// Resource marks a feature key's lamp (no person).
	Resource bool `json:"resource,omitempty"`
	// State is the lamp: idle, dialing, ringing, busy, held, dnd, offline.
	State       string        `json:"state"`
	DeviceState string        `json:"device_state"`
	Open        bool          `json:"open"`
	Person      Person        `json:"person"` // merged from every origin
	Devices     []Device      `json:"devices"`
	Calls       []bridge.Call `json:"calls"`
	Watchers    int           `json:"watchers"` // SIP subscriptions to the user
	// Registrations are the user's phones registered through Lamplighter
	// (proxy mode): contact, flow, transport, expiry.
	Registrations []proxy.Registration `json:"registrations,omitempty"`
	// SetByAPI is the person state set through this API, if any.
	SetByAPI *Person `json:"set_by_api,omitempty"`
	// Calendar is the user's calendar as last read: what it says now,
	// when it was read, when it next changes, its error (not on the open
	// switchboard).
	Calendar *calendar.UserStatus `json:"calendar,omitempty"`
}

// Person is a person state as the API shows and takes it.
type Person struct {
	Activities []bridge.Activity `json:"activities"`
	Note       string            `json:"note,omitempty"`
	// Until is when the activities end, where their source knows (a
	// calendar's meeting).
	Until   *time.Time `json:"until,omitempty"`
	Expires *time.Time `json:"expires,omitempty"`
}

// Device is one device of a user with its state.
type Device struct {
	PBX    string `json:"pbx"`
	Device string `json:"device"`
	State  string `json:"state"`
}

// View renders a user's state for the API (and the switchboard page).
func (a *API) View(st *bridge.State) User {
	var regs map[string][]proxy.Registration
	if a.opt.Registrations != nil {
		regs = a.opt.Registrations()
	}
	return a.view(st, regs)
}

// view is View with the proxy's registrations by user, read once for a
// list of users.
func (a *API) view(st *bridge.State, regs map[string][]proxy.Registration) User {
	u := User{
		ID: st.User.ID, Name: st.User.Name, Extensions: st.User.Extensions, Groups: st.User.Groups,
		Domain: st.User.Domain, Configured: st.User.Configured, Discovered: st.User.Discovered,
		Resource: st.User.Resource,
		State:    st.Phone.String(), DeviceState: st.Device.String(), Open: st.Open(),
		Person: personView(st.Person), Calls: st.Calls, Devices: []Device{},
		Watchers: a.opt.Watchers(st.User.ID),
	}
	if u.Calls == nil {
		u.Calls = []bridge.Call{}
	}
	for _, d := range st.Devices {
		u.Devices = append(u.Devices, Device{PBX: d.Source, Device: d.Device, State: d.State.String()})
	}
	u.Registrations = regs[st.User.ID]
	if p, ok := a.opt.Bridge.Person(st.User.ID, Origin); ok {
		v := personView(p)
		u.SetByAPI = &v
	}
	if a.opt.Calendars != nil {
		if c, ok := a.opt.Calendars.StatusOf(st.User.ID); ok {
			u.Calendar = &c
		}
	}
	return u
}

// PublicView is View without what only authenticated watchers may see:
// the calls' SIP dialog identifiers (Call-ID and tags), which are what a
// pickup with Replaces needs. The switchboard, open to anyone who reaches
// the listener, shows this.
func (a *API) PublicView(st *bridge.State) User {
	u := a.view(st, nil) // where phones are is no one else's business
	u.Calendar = nil     // nor where calendars are read
	calls := make([]bridge.Call, len(u.Calls))
	for i, c := range u.Calls {
		c.CallID, c.LocalTag, c.RemoteTag = "", "", ""
		calls[i] = c
	}
	u.Calls = calls
	return u
}

func personView(p bridge.PersonState) Person {
	v := Person{Activities: p.Activities, Note: p.Note}
	if v.Activities == nil {
		v.Activities = []bridge.Activity{}
	}
	if !p.Expires.IsZero() {
		e := p.Expires
		v.Expires = &e
	}
	if !p.Until.IsZero() {
		u := p.Until
		v.Until = &u
	}
	return v
}

func (a *API) listUsers(w http.ResponseWriter, r *http.Request) {
	states := a.opt.Bridge.States()
	out := struct {
		Users []User `json:"users"`
	}{Users: make([]User, 0, len(states))}
	var regs map[string][]proxy.Registration
	if a.opt.Registrations != nil {
		regs = a.opt.Registrations()
	}
	c := callerOf(r)
	for _, st := range states {
		if c.sees(st.User) {
			out.Users = append(out.Users, a.view(st, regs))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// user finds the user named in the path: an id, or an extension or
// alias in the caller's tenant. Another tenant's user is not found.
func (a *API) user(w http.ResponseWriter, r *http.Request) (*bridge.User, bool) {
	name := r.PathValue("id")
	c := callerOf(r)
	dir := a.opt.Bridge.Directory()
	u, ok := dir.User(name)
	if !ok {
		u, ok = dir.Lookup(bridge.Qualify(name, c.Tenant))
	}
	if ok && !c.sees(u) {
		ok = false
	}
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no user %q", name))
	}
	return u, ok
}

func (a *API) getUser(w http.ResponseWriter, r *http.Request) {
	u, ok := a.user(w, r)
	if !ok {
		return
	}
	st, ok := a.opt.Bridge.State(u.ID)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no user %q", u.ID))
		return
	}
	writeJSON(w, http.StatusOK, a.View(st))
}

// PresenceRequest is the body of PUT /api/v1/users/{id}/presence.
type PresenceRequest struct {
	// Activity is one activity ("dnd", "away", "meeting", any RFC 4480
	// token); Activities several, most important first. Neither (with
	// a note) means available with a note.
	Activity   bridge.Activity   `json:"activity,omitempty"`
	Activities []bridge.Activity `json:"activities,omitempty"`
	Note       string            `json:"note,omitempty"`
	// Expires is when the state lapses (RFC 3339); ExpiresIn is the same
	// as a duration from now ("90m", "2h"). Neither: until cleared.
	Expires   *time.Time `json:"expires,omitempty"`
	ExpiresIn string     `json:"expires_in,omitempty"`
}

const maxNote = 512

// editable finds the user in the path whose person state the caller may
// set, answering 404 or 403 itself.
func (a *API) editable(w http.ResponseWriter, r *http.Request) (*bridge.User, bool) {
	u, ok := a.user(w, r)
	if ok && !callerOf(r).may(u) {
		writeError(w, http.StatusForbidden, "you may only set your own state")
		return nil, false
	}
	return u, ok
}

func (a *API) putPresence(w http.ResponseWriter, r *http.Request) {
	u, ok := a.editable(w, r)
	if !ok {
		return
	}
	var req PresenceRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "bad JSON body: "+err.Error())
		return
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		writeError(w, http.StatusBadRequest, "bad JSON body: more after the object")
		return
	}
	p, err := req.person(a.opt.Now())
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := a.opt.Bridge.SetPerson(u.ID, Origin, p); err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	if a.opt.Store != nil {
		if err := a.opt.Store.SavePerson(u.ID, Origin, p); err != nil {
			a.opt.Log.Error("cannot save person state", "user", u.ID, "err", err)
		}
	}
	a.opt.Log.Info("person state set through the API", "user", u.ID, "activities", p.Activities, "note", p.Note,
		"expires", p.Expires)
	st, _ := a.opt.Bridge.State(u.ID)
	writeJSON(w, http.StatusOK, a.View(st))
}

// person checks the request and turns it into a person state.
func (req *PresenceRequest) person(now time.Time) (bridge.PersonState, error) {
	var p bridge.PersonState
	acts := req.Activities
	if req.Activity != "" {
		acts = append([]bridge.Activity{req.Activity}, acts...)
	}
	for _, act := range acts {
		act = bridge.Activity(strings.ToLower(string(act)))
		if !act.Valid() {
			return p, fmt.Errorf("unknown activity %q: use dnd or an RFC 4480 activity (away, meeting, busy, vacation, meal, …)", act)
		}
		if !p.Has(act) {
			p.Activities = append(p.Activities, act)
		}
	}
	if len(req.Note) > maxNote {
		return p, fmt.Errorf("note longer than %d bytes", maxNote)
	}
	p.Note = req.Note
	switch {
	case req.Expires != nil && req.ExpiresIn != "":
		return p, errors.New("give expires or expires_in, not both")
	case req.Expires != nil:
		p.Expires = *req.Expires
	case req.ExpiresIn != "":
		d, err := time.ParseDuration(req.ExpiresIn)
		if err != nil {
			return p, fmt.Errorf("bad expires_in: %v", err)
		}
		p.Expires = now.Add(d)
	}
	if !p.Expires.IsZero() && !p.Expires.After(now) {
		return p, errors.New("expiry is not in the future")
	}
	if len(p.Activities) == 0 && p.Note == "" {
		return p, errors.New("nothing to set: give an activity or a note (DELETE clears)")
	}
	p.Updated = now
	return p, nil
}

func (a *API) deletePresence(w http.ResponseWriter, r *http.Request) {
	u, ok := a.editable(w, r)
	if !ok {
		return
	}
	a.opt.Bridge.ClearPerson(u.ID, Origin)
	if a.opt.Store != nil {
		if err := a.opt.Store.DeletePerson(u.ID, Origin); err != nil {
			a.opt.Log.Error("cannot delete saved person state", "user", u.ID, "err", err)
		}
	}
	a.opt.Log.Info("person state cleared through the API", "user", u.ID)
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) reload(w http.ResponseWriter, r *http.Request) {
	if a.opt.Reload == nil {
		writeError(w, http.StatusNotImplemented, "reload is not available")
		return
	}
	res, err := a.opt.Reload()
	if err != nil {
		var lines []string
		for _, l := range strings.Split(err.Error(), "\n") {
			if l != "" {
				lines = append(lines, l)
			}
		}
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": "config rejected; the running config is unchanged", "problems": lines})
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
