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
	"net/http"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/api"
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
	// Title is shown in the page's header (default "Switchboard").
	Title string
	Log   *slog.Logger
	// Heartbeat is how often an idle stream gets a comment line, so
	// that proxies keep it open (default 15s).
	Heartbeat time.Duration
}

// Switchboard serves the page and its event stream.
type Switchboard struct {
	opt Options

	mu      sync.Mutex
	clients map[*client]struct{}
	dirty   map[string]bool // users changed since the last broadcast
	wake    chan struct{}
	done    chan struct{} // closed when Run ends: streams end too
}

// client is one open event stream.
type client struct {
	send chan []byte
	gone chan struct{} // closed when the client is dropped for lagging
}

// New builds the switchboard; Run follows the bridge.
func New(opt Options) *Switchboard {
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Title == "" {
		opt.Title = "Switchboard"
	}
	if opt.Heartbeat == 0 {
		opt.Heartbeat = 15 * time.Second
	}
	return &Switchboard{opt: opt, clients: map[*client]struct{}{}, dirty: map[string]bool{},
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
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.wake:
		}
		s.mu.Lock()
		dirty := s.dirty
		s.dirty = map[string]bool{}
		s.mu.Unlock()
		var up message
		for id := range dirty {
			if st, ok := s.opt.Bridge.State(id); ok {
				up.Users = append(up.Users, s.opt.View(st))
			} else {
				up.Removed = append(up.Removed, id)
			}
		}
		s.broadcast(frame("update", up))
	}
}

// message is the data of an event: users to show (all of them in a
// snapshot) and ids of users gone.
type message struct {
	Title   string     `json:"title,omitempty"`
	Users   []api.User `json:"users"`
	Removed []string   `json:"removed,omitempty"`
	Now     time.Time  `json:"now"` // the server's clock, for call durations
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

func (s *Switchboard) broadcast(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.clients {
		select {
		case c.send <- b:
		default:
			delete(s.clients, c)
			close(c.gone)
		}
	}
}

// events streams a snapshot, then updates, as server-sent events.
func (s *Switchboard) events(w http.ResponseWriter, r *http.Request) {
	flusher, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	c := &client{send: make(chan []byte, clientBuffer), gone: make(chan struct{})}
	// Register before taking the snapshot: an update racing with it is
	// then sent after it, never lost.
	s.mu.Lock()
	s.clients[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.clients, c)
		s.mu.Unlock()
	}()
	snap := message{Title: s.opt.Title}
	for _, st := range s.opt.Bridge.States() {
		snap.Users = append(snap.Users, s.opt.View(st))
	}
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	// retry: how soon the browser reconnects after the stream breaks.
	if _, err := w.Write(append([]byte("retry: 1000\n"), frame("snapshot", snap)...)); err != nil {
		return
	}
	flusher.Flush()
	beat := time.NewTicker(s.opt.Heartbeat)
	defer beat.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case <-c.gone:
			return
		case <-s.done:
			return
		case b := <-c.send:
			if _, err := w.Write(b); err != nil {
				return
			}
		case <-beat.C:
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return
			}
		}
		flusher.Flush()
	}
}
