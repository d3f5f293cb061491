package presence

import (
	"mime"
	"strconv"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Publication is one PUBLISHed state (RFC 3903), known by its entity tag.
type Publication struct {
	ETag    string
	UserID  string
	Expires time.Time
	Person  bridge.PersonState
}

// origin is the bridge origin under which a publication's person state is
// kept: one per entity tag, so two clients of one user both count.
func (p *Publication) origin() string { return "publish:" + p.ETag }

// publications holds the event state compositor's entries.
type publications struct {
	s *Server
	// mu guards byTag and perUser. Under it only the journal's lock:
	// never the bridge (its state is read before, set after).
	mu      sync.Mutex
	byTag   map[string]*Publication
	perUser map[string]int
}

func newPublications(s *Server) *publications {
	return &publications{s: s, byTag: map[string]*Publication{}, perUser: map[string]int{}}
}

// add stores p; called with mu held.
func (ps *publications) add(p *Publication) {
	ps.byTag[p.ETag] = p
	ps.perUser[p.UserID]++
}

// remove forgets the publication with tag; called with mu held.
func (ps *publications) remove(tag string) {
	p := ps.byTag[tag]
	if p == nil {
		return
	}
	delete(ps.byTag, tag)
	if ps.perUser[p.UserID]--; ps.perUser[p.UserID] <= 0 {
		delete(ps.perUser, p.UserID)
	}
}

// Publications returns the current publications.
func (s *Server) Publications() []Publication {
	s.pubs.mu.Lock()
	defer s.pubs.mu.Unlock()
	out := make([]Publication, 0, len(s.pubs.byTag))
	for _, p := range s.pubs.byTag {
		out = append(out, *p)
	}
	return out
}

func (ps *publications) expire(now time.Time) {
	ps.mu.Lock()
	var gone []*Publication
	for tag, p := range ps.byTag {
		if !p.Expires.After(now) {
			ps.remove(tag)
			gone = append(gone, p)
			ps.s.journal.publication(tag, nil)
		}
	}
	ps.mu.Unlock()
	for _, p := range gone {
		ps.s.states.ClearPerson(p.UserID, p.origin())
	}
}

// handlePublish answers PUBLISH (RFC 3903) for Event: presence: a soft
// client's own person state (activities, note, open/closed) merged into
// its user's state, so every watcher sees it with the PBX call state.
func (s *Server) handlePublish(req *sipmsg.Request, tx serverTx) {
	ev, ok := req.Get(sipmsg.Event)
	if !ok {
		s.reply(req, tx, 489, "Bad Event", field{"Allow-Events", "presence"})
		return
	}
	if pkg, _ := parseEvent(ev); pkg != "presence" {
		s.reply(req, tx, 489, "Bad Event", field{"Allow-Events", "presence"})
		return
	}
	id, ok := s.authenticate(req, tx)
	if !ok {
		return
	}
	tenant, ok := s.requestTenant(req, tx, id)
	if !ok {
		return
	}
	user, found := s.states.Directory().Lookup(bridge.Qualify(req.URI.User, tenant))
	if !found {
		s.reply(req, tx, 404, "Not Found")
		return
	}
	// A user may only publish for themselves; an anonymous sender on a
	// trusted network (a gateway, the PBX) may speak for anyone.
	if id.UserID != user.ID && !(id.Trusted && id.UserID == "") {
		s.reply(req, tx, 403, "Forbidden")
		return
	}
	expires := s.expiresOf(req)
	if expires < 0 {
		s.reply(req, tx, 400, "Bad Expires")
		return
	}
	expires, ok = s.clampExpires(expires)
	if !ok {
		s.intervalTooBrief(req, tx)
		return
	}
	match := headerValue(req, sipmsg.SIPIfMatch)
	hasBody := len(req.Body) > 0
	var person bridge.PersonState
	if hasBody {
		ct := headerValue(req, sipmsg.ContentType)
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || mt != body.TypePIDF {
			s.reply(req, tx, 415, "Unsupported Media Type", field{"Accept", body.TypePIDF})
			return
		}
		person, err = body.ParsePIDF(req.Body)
		if err != nil {
			s.log.Info("bad PUBLISH body", "user", user.ID, "source", req.Source, "err", err)
			s.reply(req, tx, 400, "Bad PIDF Document")
			return
		}
	}

	// The bridge is read before the publications' lock is taken (doc.go).
	var matched bridge.PersonState
	var shown bool
	if match != "" {
		matched, shown = s.states.Person(user.ID, (&Publication{ETag: match}).origin())
	}
	ps := s.pubs
	ps.mu.Lock()
	var pub *Publication
	if match != "" {
		pub = s.publicationOf(user.ID, match, matched, shown)
		if pub == nil {
			ps.mu.Unlock()
			s.reply(req, tx, 412, "Conditional Request Failed")
			return
		}
		ps.remove(match)
		s.journal.publication(match, nil)
	} else if !hasBody {
		ps.mu.Unlock()
		s.reply(req, tx, 400, "Missing Body")
		return
	} else if expires > 0 && ps.perUser[user.ID] >= s.opt.MaxPublicationsPerUser {
		// Each soft client of a person publishes under its own entity
		// tag: the cap bounds how many a person may hold.
		ps.mu.Unlock()
		s.log.Info("too many publications for one person", "user", user.ID, "source", req.Source,
			"limit", s.opt.MaxPublicationsPerUser)
		s.reply(req, tx, 403, "Too Many Publications")
		return
	}
	oldOrigin := ""
	if pub != nil {
		oldOrigin = pub.origin()
	}
	if expires == 0 {
		ps.mu.Unlock()
		if oldOrigin != "" {
			s.states.ClearPerson(user.ID, oldOrigin)
		}
		s.reply(req, tx, 200, "OK", field{"SIP-ETag", match}, field{"Expires", "0"})
		return
	}
	next := &Publication{ETag: randomToken(), UserID: user.ID,
		Expires: time.Now().Add(time.Duration(expires) * time.Second)}
	if hasBody {
		next.Person = person
	} else {
		next.Person = pub.Person // a refresh keeps the state
	}
	next.Person.Expires = next.Expires
	ps.add(next)
	s.journal.publication(next.ETag, next)
	ps.mu.Unlock()
	// Set the new entry before clearing the old, so that watchers never
	// see the person state vanish between the two.
	if err := s.states.SetPerson(user.ID, next.origin(), next.Person); err != nil {
		s.reply(req, tx, 404, "Not Found")
		return
	}
	if oldOrigin != "" {
		s.states.ClearPerson(user.ID, oldOrigin)
	}
	s.log.Debug("published", "user", user.ID, "etag", next.ETag, "activities", next.Person.Activities, "note", next.Person.Note)
	s.reply(req, tx, 200, "OK", field{"SIP-ETag", next.ETag}, field{"Expires", strconv.Itoa(expires)})
}

// publicationOf finds the publication a SIP-If-Match names, given the
// person state the bridge shows under the entity tag's origin (state,
// shown: read before the lock); called with s.pubs.mu held. That state is
// the truth: a publication this server holds whose state is gone (another
// node of a cluster refreshed or removed it) is stale, and one this
// server never saw whose state is there (published through another node,
// which the cluster shares) is taken up here, so that a soft client's
// refresh works on whichever node it reaches.
func (s *Server) publicationOf(userID, etag string, state bridge.PersonState, shown bool) *Publication {
	if pub := s.pubs.byTag[etag]; pub != nil {
		if pub.UserID != userID || !shown {
			return nil
		}
		return pub
	}
	if !shown || state.Expires.IsZero() || !state.Expires.After(time.Now()) {
		return nil
	}
	return &Publication{ETag: etag, UserID: userID, Expires: state.Expires, Person: state}
}
