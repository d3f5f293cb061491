// Package switchboard is the live switchboard page at / of the HTTP
// listener: every user as a tile with a lamp, the call and the person
// state, grouped and filterable, updated by server-sent events within
// moments of a change. The page is plain HTML, CSS and JavaScript embedded
// in the binary. Viewing is open to whoever reaches the listener; setting
// a state goes through the API with the caller's own credentials or the
// token.
package switchboard

import (
	"context"
	"embed"
	"encoding/json"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/api"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/version"
)

//go:embed static
var static embed.FS

// Bridge is what the page follows; *bridge.Bridge implements it.
type Bridge interface {
	Listen(bridge.Listener) (cancel func())
	States() []*bridge.State
	State(userID string) (*bridge.State, bool)
}

// Options configure the switchboard.
type Options struct {
	Bridge Bridge
	// View renders a user as the API does (api.API.View).
	View func(*bridge.State) api.User
	// Shows says whether the page shows a user (nil: everyone): the
	// page is open to whoever reaches it, so a tenant's people are not
	// on it.
	Shows func(*bridge.User) bool
	// Audience says who an event stream's request comes from, when it
	// shows it an audience of its own (a tenant's page, signed in with
	// its token): nil, or an audience with no Shows, is everyone's page
	// (Shows); an error refuses the stream (401).
	Audience func(r *http.Request) (Audience, error)
	// Title is shown in the page's header (default "Switchboard").
	Title string
	Log   *slog.Logger
	// Heartbeat is how often an idle stream gets a comment line, so
	// that proxies keep it open (default 15s).
	Heartbeat time.Duration
	// PBXs reports each PBX connection's state, so that the page can say
	// when one is down (nil: none shown).
	PBXs func() []PBX
	// MaxStreams and MaxStreamsPerAddress bound the open event streams
	// (defaults 1000 and 10); past either a new one gets 503.
	MaxStreams, MaxStreamsPerAddress int
	// WriteTimeout bounds each write to a stream: a viewer that stops
	// reading is dropped (default 10s).
	WriteTimeout time.Duration
}

// Audience is who a stream shows its users to: every stream with one Key
// gets the same frames.
type Audience struct {
	Key   string
	Shows func(*bridge.User) bool
}

// PBX is one PBX connection as the page shows it.
type PBX struct {
	Name      string    `json:"name"`
	Connected bool      `json:"connected"`
	Down      bool      `json:"down"` // unreachable past its down_after: its phones show unavailable
	Since     time.Time `json:"since,omitzero"`
}

// Switchboard serves the page and its event stream.
type Switchboard struct {
	opt Options

	mu      sync.Mutex
	clients map[*client]struct{}
	perAddr map[string]int  // open streams by client address
	pbxs    []PBX           // as last sent
	dirty   map[string]bool // users changed since the last broadcast
	wake    chan struct{}
	done    chan struct{} // closed when Run ends: streams end too
}

// client is one open event stream.
type client struct {
	send chan []byte
	gone chan struct{} // closed when the client is dropped for lagging
	aud  Audience
}

// New builds the switchboard; Run follows the bridge.
func New(opt Options) *Switchboard {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Title == "" {
		opt.Title = "Switchboard"
	}
	if opt.Shows == nil {
		opt.Shows = func(*bridge.User) bool { return true }
	}
	if opt.Heartbeat == 0 {
		opt.Heartbeat = 15 * time.Second
	}
	if opt.MaxStreams == 0 {
		opt.MaxStreams = 1000
	}
	if opt.MaxStreamsPerAddress == 0 {
		opt.MaxStreamsPerAddress = 10
	}
	if opt.WriteTimeout == 0 {
		opt.WriteTimeout = 10 * time.Second
	}
	return &Switchboard{opt: opt, clients: map[*client]struct{}{}, perAddr: map[string]int{}, dirty: map[string]bool{},
		wake: make(chan struct{}, 1), done: make(chan struct{})}
}

// Handle registers the page, its files and the event stream on mux.
func (s *Switchboard) Handle(mux interface {
	Handle(pattern string, h http.Handler)
}) {
	files, _ := fs.Sub(static, "static")
	fileServer := http.FileServerFS(files)
	mux.Handle("GET /{$}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		http.ServeFileFS(w, r, files, "index.html")
	}))
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-cache")
		fileServer.ServeHTTP(w, r)
	})))
	mux.Handle("GET /events", http.HandlerFunc(s.events))
}

// Run follows the bridge until ctx ends, turning changes into updates for
// every open stream. The bridge calls its listeners with its lock held,
// so the listener only marks the user; views are built here, outside it.
func (s *Switchboard) Run(ctx context.Context) {
	cancel := s.opt.Bridge.Listen(func(c bridge.Change) {
		s.mu.Lock()
		s.dirty[c.UserID] = true
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	})
	defer cancel()
	defer close(s.done)
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			if pbxs, changed := s.pollPBXs(); changed {
				s.broadcast(frame("update", message{PBXs: pbxs}))
			}
			continue
		case <-s.wake:
		}
		s.mu.Lock()
		dirty := s.dirty
		s.dirty = map[string]bool{}
		s.mu.Unlock()
		states := make(map[string]*bridge.State, len(dirty))
		for id := range dirty {
			states[id], _ = s.opt.Bridge.State(id)
		}
		for _, aud := range s.audiences() {
			var up message
			for id, st := range states {
				if st != nil && aud.Shows(st.User) {
					up.Users = append(up.Users, s.opt.View(st))
				} else {
					up.Removed = append(up.Removed, id)
				}
			}
			s.send(aud.Key, frame("update", up))
		}
	}
}

// audiences are the audiences of the open streams, one of each.
func (s *Switchboard) audiences() []Audience {
	s.mu.Lock()
	defer s.mu.Unlock()
	seen := map[string]bool{}
	var out []Audience
	for c := range s.clients {
		if !seen[c.aud.Key] {
			seen[c.aud.Key] = true
			out = append(out, c.aud)
		}
	}
	return out
}

// message is the data of an event: users to show (all of them in a
// snapshot) and ids of users gone.
type message struct {
	Title   string     `json:"title,omitempty"`
	Version string     `json:"version,omitempty"` // Lamplighter's, in the page's footer
	Users   []api.User `json:"users"`
	Removed []string   `json:"removed,omitempty"`
	PBXs    []PBX      `json:"pbxs,omitempty"` // every PBX, when any changed (and in a snapshot)
	Now     time.Time  `json:"now"`            // the server's clock, for call durations
}

func frame(event string, m message) []byte {
	if m.Users == nil {
		m.Users = []api.User{}
	}
	m.Now = time.Now()
	data, _ := json.Marshal(m)
	return []byte("event: " + event + "\ndata: " + string(data) + "\n\n")
}

// clientBuffer is how many updates a slow client may lag behind before it
// is dropped; its browser reconnects and gets a fresh snapshot.
const clientBuffer = 64

func (s *Switchboard) broadcast(b []byte) { s.sendTo(func(*client) bool { return true }, b) }

// send sends b to the streams of one audience.
func (s *Switchboard) send(key string, b []byte) {
	s.sendTo(func(c *client) bool { return c.aud.Key == key }, b)
}

func (s *Switchboard) sendTo(to func(*client) bool, b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		if !to(c) {
			continue
		}
		select {
		case c.send <- b:
		default:
			delete(s.clients, c)
			close(c.gone)
		}
	}
}

// pollPBXs reads the PBXs' states and reports whether they changed since
// the last look.
func (s *Switchboard) pollPBXs() ([]PBX, bool) {
	if s.opt.PBXs == nil {
		return nil, false
	}
	now := s.opt.PBXs()
	s.mu.Lock()
	defer s.mu.Unlock()
	changed := len(now) != len(s.pbxs)
	for i := 0; !changed && i < len(now); i++ {
		changed = now[i].Connected != s.pbxs[i].Connected || now[i].Down != s.pbxs[i].Down
	}
	s.pbxs = now
	return now, changed
}

// events streams a snapshot, then updates, as server-sent events. Streams
// are capped in total and per client address (503 past either), and each
// write has a deadline, so that viewers who never read cost a bounded
// amount.
func (s *Switchboard) events(w http.ResponseWriter, r *http.Request) {
	if _, ok := w.(http.Flusher); !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	addr, _, _ := net.SplitHostPort(r.RemoteAddr)
	aud := Audience{Shows: s.opt.Shows}
	if s.opt.Audience != nil {
		a, err := s.opt.Audience(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		if a.Shows != nil {
			aud = a
		}
	}
	c := &client{send: make(chan []byte, clientBuffer), gone: make(chan struct{}), aud: aud}
	// Register before taking the snapshot: an update racing with it is
	// then sent after it, never lost.
	s.mu.Lock()
	if len(s.clients) >= s.opt.MaxStreams || s.perAddr[addr] >= s.opt.MaxStreamsPerAddress {
		s.mu.Unlock()
		s.opt.Log.Debug("switchboard stream refused: too many", "source", addr)
		w.Header().Set("Retry-After", "10")
		w.Header().Set("Connection", "close") // its place on the listener goes too
		http.Error(w, "too many open switchboards", http.StatusServiceUnavailable)
		return
	}
	s.clients[c] = struct{}{}
	s.perAddr[addr]++
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.clients, c)
		if s.perAddr[addr]--; s.perAddr[addr] <= 0 {
			delete(s.perAddr, addr)
		}
		s.mu.Unlock()
	}()
	rc := http.NewResponseController(w)
	write := func(b []byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(s.opt.WriteTimeout))
		if _, err := w.Write(b); err != nil {
			return err
		}
		return rc.Flush()
	}
	snap := message{Title: s.opt.Title, Version: version.Get().Version}
	if s.opt.PBXs != nil {
		snap.PBXs = s.opt.PBXs()
	}
	for _, st := range s.opt.Bridge.States() {
		if aud.Shows(st.User) {
			snap.Users = append(snap.Users, s.opt.View(st))
		}
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// retry: how soon the browser reconnects after the stream breaks.
	if write(append([]byte("retry: 1000\n"), frame("snapshot", snap)...)) != nil {
		return
	}
	beat := time.NewTicker(s.opt.Heartbeat)
	defer beat.Stop()
	for {
		var err error
		select {
		case <-r.Context().Done():
			return
		case <-c.gone:
			return
		case <-s.done:
			return
		case b := <-c.send:
			err = write(b)
		case <-beat.C:
			err = write([]byte(": keep-alive\n\n"))
		}
		if err != nil {
			return
		}
	}
}

// Streams returns the number of open event streams.
func (s *Switchboard) Streams() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.clients)
}
