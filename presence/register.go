package presence

import (
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Binding is one registered contact of a user: the line a phone dedicates
// to busy lamps registers here so that its BLF keys subscribe to
// Lamplighter. It is not a PBX device and does not change the user's
// state.
type Binding struct {
	UserID  string
	Contact string // the Contact URI
	// Params are the Contact's header parameters but expires
	// (+sip.instance, reg-id, ...), echoed in every 200 so that a client
	// recognises its binding (RFC 5626, 5627).
	Params    string `json:",omitempty"`
	CallID    string
	CSeq      uint32
	Source    string
	Transport string
	UserAgent string
	Expires   time.Time
}

// registrar keeps the bindings of every user.
type registrar struct {
	mu     sync.Mutex // guards byUser; under it only the journal's lock, never a reply
	byUser map[string][]Binding
}

func newRegistrar() *registrar { return &registrar{byUser: map[string][]Binding{}} }

// current returns a user's unexpired bindings, dropping the expired.
func (r *registrar) current(userID string, now time.Time) []Binding {
	bs := r.byUser[userID]
	out := bs[:0]
	for _, b := range bs {
		if b.Expires.After(now) {
			out = append(out, b)
		}
	}
	if len(out) == 0 {
		delete(r.byUser, userID)
		return nil
	}
	r.byUser[userID] = out
	return out
}

// Registrations returns every current binding.
func (s *Server) Registrations() []Binding {
	r := s.regs
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	var out []Binding
	for id := range r.byUser {
		out = append(out, r.current(id, now)...)
	}
	return out
}

// handleRegister is a small registrar (RFC 3261 §10.3) for the users in
// the directory, with digest authentication.
func (s *Server) handleRegister(req *sipmsg.Request, tx serverTx) {
	id, ok := s.authenticate(req, tx)
	if !ok {
		return
	}
	// The address of record is the To URI's user: a SIP username, an
	// extension or an alias of the user.
	aor := req.To.URI.User
	tenant, ok := s.requestTenant(req, tx, id)
	if !ok {
		return
	}
	userID := ""
	if c, ok := s.auth.userByName(credKey(tenant, aor)); ok {
		userID = c.UserID
	} else if u, ok := s.states.Directory().Lookup(bridge.Qualify(aor, tenant)); ok {
		userID = u.ID
	}
	if userID == "" {
		s.reply(req, tx, 404, "Not Found")
		return
	}
	if !id.Trusted && id.UserID != userID {
		s.reply(req, tx, 403, "Forbidden")
		return
	}
	defaultExpires := s.expiresOf(req)
	if defaultExpires < 0 {
		s.reply(req, tx, 400, "Bad Expires")
		return
	}
	var contacts []string
	for v := range req.Values(sipmsg.Contact) {
		contacts = append(contacts, v)
	}
	now := time.Now()
	ua := headerValue(req, sipmsg.UserAgent)
	r := s.regs
	r.mu.Lock()
	// A copy: the request changes nothing unless it is taken whole.
	bindings := append([]Binding(nil), r.current(userID, now)...)
	before := len(bindings)
	// Contact: * with Expires: 0 removes every binding.
	for _, h := range contacts {
		if h == "*" {
			if defaultExpires != 0 || len(contacts) != 1 {
				r.mu.Unlock()
				s.reply(req, tx, 400, "Bad Wildcard Contact")
				return
			}
			delete(r.byUser, userID)
			r.mu.Unlock()
			s.journal.bindings(userID)
			s.reply(req, tx, 200, "OK", field{"Date", now.UTC().Format(http.TimeFormat)})
			return
		}
	}
	for _, h := range contacts {
		c, err := sipmsg.ParseAddress(h)
		if err != nil || c.URI.Host == "" {
			r.mu.Unlock()
			s.reply(req, tx, 400, "Bad Contact")
			return
		}
		exp := defaultExpires
		if v, ok := c.Params.Get("expires"); ok {
			n := parseDeltaSeconds(v)
			if n < 0 {
				r.mu.Unlock()
				s.reply(req, tx, 400, "Bad Contact Expires")
				return
			}
			exp = n
		}
		exp, valid := s.clampExpires(exp)
		if !valid {
			r.mu.Unlock()
			s.intervalTooBrief(req, tx)
			return
		}
		uri := strings.Clone(c.URI.Raw) // kept: not a piece of the request
		idx := -1
		for i := range bindings {
			if bindings[i].Contact == uri {
				idx = i
			}
		}
		if idx >= 0 && bindings[idx].CallID == req.CallID && req.CSeq <= bindings[idx].CSeq {
			continue // an old or repeated request must not undo a newer one
		}
		if exp == 0 {
			if idx >= 0 {
				bindings = append(bindings[:idx], bindings[idx+1:]...)
			}
			continue
		}
		b := Binding{UserID: userID, Contact: uri, Params: strings.Clone(c.Params.Without("expires")), CallID: strings.Clone(req.CallID), CSeq: req.CSeq,
			Source: req.Source, Transport: strings.ToUpper(req.Transport), UserAgent: strings.Clone(ua),
			Expires: now.Add(time.Duration(exp) * time.Second)}
		if idx >= 0 {
			bindings[idx] = b
		} else {
			bindings = append(bindings, b)
		}
	}
	if len(bindings) > s.opt.MaxBindingsPerUser && len(bindings) > before {
		r.mu.Unlock()
		s.log.Info("too many registrations for one user", "user", userID, "source", req.Source,
			"limit", s.opt.MaxBindingsPerUser)
		s.reply(req, tx, 403, "Too Many Registrations")
		return
	}
	if len(bindings) == 0 {
		delete(r.byUser, userID)
	} else {
		r.byUser[userID] = bindings
	}
	res := s.response(req, 200, "OK", "")
	for _, b := range bindings {
		res = sipmsg.AppendHeader(res, "Contact", "<"+b.Contact+">"+b.Params+";expires="+
			strconv.Itoa(int(time.Until(b.Expires).Round(time.Second)/time.Second)))
	}
	r.mu.Unlock()
	if len(contacts) > 0 {
		s.journal.bindings(userID)
	}
	res = sipmsg.AppendHeader(res, "Date", now.UTC().Format(http.TimeFormat))
	if len(contacts) > 0 {
		s.log.Debug("registered", "user", userID, "bindings", len(bindings), "source", req.Source)
	}
	s.send(req, tx, res, 200)
}

// SetBindings replaces a user's bindings with bs, as another node of a
// cluster registered them (the expired are dropped; none removes the
// user's). They are saved like any REGISTER's; a user the directory no
// longer has is ignored.
func (s *Server) SetBindings(userID string, bs []Binding) {
	if _, ok := s.states.Directory().User(userID); !ok {
		return
	}
	now := time.Now()
	var keep []Binding
	for _, b := range bs {
		if b.UserID == userID && b.Expires.After(now) {
			keep = append(keep, b)
		}
	}
	r := s.regs
	r.mu.Lock()
	if len(keep) == 0 {
		delete(r.byUser, userID)
	} else {
		r.byUser[userID] = keep
	}
	r.mu.Unlock()
	s.journal.bindings(userID)
}
