package presence

import (
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// handleSubscribe answers SUBSCRIBE (RFC 6665, 3856, 4235): a new
// subscription out of dialog, a refresh or unsubscribe in dialog.
func (s *Server) handleSubscribe(req *sipmsg.Request, tx serverTx) {
	fromTag := req.From.Tag()
	if fromTag == "" {
		s.reply(req, tx, 400, "Missing From Tag")
		return
	}
	ev, ok := req.Get(sipmsg.Event)
	if !ok {
		s.reply(req, tx, 489, "Bad Event", field{"Allow-Events", s.packages.allowEvents})
		return
	}
	pkgName, eventID := parseEvent(ev)
	pkg, ok := s.packages.lookup(Package(pkgName))
	if !ok {
		s.reply(req, tx, 489, "Bad Event", field{"Allow-Events", s.packages.allowEvents})
		return
	}
	expires := s.expiresOf(req)
	if expires < 0 {
		s.reply(req, tx, 400, "Bad Expires")
		return
	}
	if toTag := req.To.Tag(); toTag != "" {
		s.refreshSubscription(req, tx, toTag, fromTag, pkg, expires)
		return
	}
	s.newSubscription(req, tx, fromTag, pkg, eventID, expires)
}

// contactOf reads the request's (first) Contact; ok is false when there
// is none or it names no host.
func contactOf(req *sipmsg.Request) (sipmsg.Address, bool) {
	for v := range req.Values(sipmsg.Contact) {
		a, err := sipmsg.ParseAddress(v)
		return a, err == nil && a.URI.Host != ""
	}
	return sipmsg.Address{}, false
}

func (s *Server) newSubscription(req *sipmsg.Request, tx serverTx, fromTag string, pkg eventPackage, eventID string, expires int) {
	contact, ok := contactOf(req)
	if !ok {
		s.reply(req, tx, 400, "Missing Contact")
		return
	}
	// Authenticate before looking anyone up: an unknown caller must not
	// learn which extensions exist, let alone their state.
	id, ok := s.authenticate(req, tx)
	if !ok {
		return
	}
	userPart := req.URI.User
	if userPart == "" {
		userPart = req.To.URI.User
	}
	tenant, ok := s.requestTenant(req, tx, id)
	if !ok {
		return
	}
	dir := s.states.Directory()
	user, found := dir.Lookup(bridge.Qualify(userPart, tenant))
	var list *bridge.ResolvedList
	if !found {
		list, found = dir.List(bridge.Qualify(userPart, tenant))
	}
	if !found {
		s.reply(req, tx, 404, "Not Found")
		return
	}
	accept := acceptList(req)
	var mediaType string
	if list != nil {
		// RFC 4662 §4.1: a list is served only to a subscriber that
		// takes lists; the 421 says what it must support.
		if !supportsEventlist(req) {
			s.reply(req, tx, 421, "Extension Required", field{"Require", "eventlist"})
			return
		}
		if _, ok := pkg.(listable); !ok {
			s.reply(req, tx, 489, "Bad Event", field{"Allow-Events", s.packages.listAllowEvents()})
			return
		}
		if mediaType, ok = negotiateList(pkg, accept); !ok {
			s.reply(req, tx, 406, "Not Acceptable", field{"Accept", listAccept(pkg)})
			return
		}
	} else {
		if _, own := pkg.(ownOnly); own && !id.Trusted && id.UserID != user.ID {
			s.reply(req, tx, 403, "Forbidden")
			return
		}
		if mediaType, ok = pkg.Negotiate(accept); !ok {
			s.reply(req, tx, 406, "Not Acceptable", field{"Accept", strings.Join(pkg.MediaTypes(), ", ")})
			return
		}
	}
	expires, ok = s.clampExpires(expires)
	if !ok {
		s.intervalTooBrief(req, tx)
		return
	}
	ua := headerValue(req, sipmsg.UserAgent)
	var uriBuf [128]byte
	sub := &Subscription{
		ID: s.ids.dialogID(),
		// Strings kept beyond the request are copied out of it (a
		// substring would keep the whole message alive); those that many
		// subscriptions share (one phone's thirty BLF keys, the watchers
		// of one person) are kept once (shared).
		CallID:    strings.Clone(req.CallID),
		RemoteTag: strings.Clone(fromTag),
		Entity:    s.strs.getBytes(appendPresentityURI(uriBuf[:0], req)),
		Package:   pkg.Token(),
		EventID:   strings.Clone(eventID),
		Accept:    s.strs.get(accept),
		LocalURI:  s.strs.get(req.To.URI.Raw),
		RemoteURI: s.strs.get(req.From.URI.Raw),
		Transport: s.strs.get(strings.ToUpper(req.Transport)),
		Source:    s.strs.get(req.Source),
		Watcher:   id.UserID,
		Grant:     s.strs.get(s.auth.grant(id)),
		UserAgent: s.strs.get(ua),
		MediaType: mediaType,
		pkg:       pkg,
		DNDText:   body.WantsDNDText(ua),

		remoteCSeq: req.CSeq,
		expires:    time.Now().Add(time.Duration(expires) * time.Second),
		// Changes of the user from the moment the subscription is in the
		// store wait for the 200 (RFC 6665 lets a subscriber cope with an
		// early NOTIFY; many phones answer it 481 and lose the lamp).
		unanswered: true,
	}
	if list != nil {
		sub.List, sub.list = list.Key, &listView{}
		sub.list.resolve(s.strs, list, sub.Entity, 0)
		sub.list.indexed = sub.list.ids()
	} else {
		sub.UserID = user.ID
	}
	sub.setTarget(s.strs, contact.URI)
	sub.setRoutes(s.strs, recordRoutes(req))
	sub.LocalHost, sub.LocalPort = s.localAddr(sub.Transport, sub.Source)
	sub.LocalHost = s.strs.get(sub.LocalHost)
	if s.opt.SingleDialog != nil {
		sub.Single = s.opt.SingleDialog(ua, id.UserID)
	}
	if !s.takeBody(req, tx, sub) {
		return
	}
	if expires > 0 && !s.subs.add(sub, s.opt.MaxSubscriptionsPerSource) {
		s.log.Warn("too many subscriptions from one source", "source", req.Source,
			"limit", s.opt.MaxSubscriptionsPerSource)
		s.reply(req, tx, 503, "Too Many Subscriptions", field{"Retry-After", "300"})
		return
	}
	if expires > 0 {
		s.journal.subscription(sub, false)
	}
	s.began(sub, expires > 0, false)
	s.answer(req, tx, sub, expires)
	sub.mu.Lock()
	sub.unanswered = false
	sub.mu.Unlock()
	if expires == 0 {
		// A fetch: one NOTIFY with the state, terminated at once.
		s.log.Debug("fetch", "user", sub.UserID, "list", sub.List, "event", pkg.Token(), "source", sub.Source)
		sub.mu.Lock()
		sub.final, sub.removed = "timeout", true
		sub.mu.Unlock()
		s.enqueue(sub, time.Time{}, true)
		return
	}
	s.expiry.add(sub, sub.expires)
	if s.log.Enabled(s.ctx, slog.LevelDebug) { // its arguments alone cost allocations
		s.log.Debug("subscribed", "user", sub.UserID, "list", sub.List, "event", pkg.Token(), "watcher", id.UserID, "source", sub.Source, "expires", expires)
	}
	s.enqueue(sub, time.Time{}, true)
}

func (s *Server) refreshSubscription(req *sipmsg.Request, tx serverTx, toTag, fromTag string, pkg eventPackage, expires int) {
	sub, ok := s.subs.get(toTag)
	if !ok && s.opt.Claim != nil {
		// Another node's dialog, now reaching this one (it died, or a
		// virtual address moved): taken over.
		if rec, found := s.opt.Claim(toTag); found {
			sub = s.adoptOne(&rec, true)
			ok = sub != nil
		}
	}
	// The dialog's identifiers, matched in full, are the refresh's
	// credential on the flow the watcher subscribed from: refreshes need
	// no new digest round. From anywhere else (identifiers seen on the
	// wire, or a phone whose NAT binding moved) the refresh must
	// authenticate as the subscription's watcher.
	if !ok || sub.CallID != req.CallID || sub.RemoteTag != fromTag || sub.Package != pkg.Token() {
		s.reply(req, tx, 481, "Subscription Does Not Exist")
		return
	}
	if req.Source != sub.Source || !strings.EqualFold(req.Transport, sub.Transport) {
		id, ok := s.authenticate(req, tx)
		if !ok {
			return
		}
		// A trusted network stands for a watcher who never authenticated.
		if id.UserID != sub.Watcher && (!id.Trusted || sub.Watcher != "") {
			s.log.Info("refresh of another watcher's subscription refused", "source", req.Source, "user", id.UserID)
			s.reply(req, tx, 403, "Forbidden")
			return
		}
	}
	// The dialog's identifiers stand for the watcher's credentials only
	// while the config still lets them in.
	if reason := s.auth.revoked(sub.Grant, req.Source, sub.Watcher); reason != "" {
		s.reply(req, tx, 403, "Forbidden")
		s.terminate(sub, reason)
		return
	}
	expires, valid := s.clampExpires(expires)
	if !valid {
		s.intervalTooBrief(req, tx)
		return
	}
	sub.mu.Lock()
	if sub.removed {
		sub.mu.Unlock()
		s.reply(req, tx, 481, "Subscription Does Not Exist")
		return
	}
	if req.CSeq <= sub.remoteCSeq {
		sub.mu.Unlock()
		s.reply(req, tx, 500, "CSeq Out Of Order", field{"Retry-After", "1"})
		return
	}
	sub.remoteCSeq = req.CSeq
	if c, ok := contactOf(req); ok {
		sub.setTarget(s.strs, c.URI)
	}
	if expires > 0 {
		// The expiry wheel finds the new time when the old one comes up.
		sub.expires = time.Now().Add(time.Duration(expires) * time.Second)
	}
	sub.mu.Unlock()
	if !s.takeBody(req, tx, sub) {
		return
	}
	if expires > 0 {
		s.journal.subscription(sub, false)
	}
	s.answer(req, tx, sub, expires)
	if expires == 0 {
		s.terminate(sub, reasonUnsubscribed)
		return
	}
	s.enqueue(sub, time.Time{}, true)
}

// answer sends the 200 for a SUBSCRIBE with our tag, Contact and Expires.
func (s *Server) answer(req *sipmsg.Request, tx serverTx, sub *Subscription, expires int) {
	b := s.response(req, 200, "OK", sub.ID)
	// The route set goes back to the subscriber in the same order
	// (RFC 3261 §12.1.1).
	for i := range req.Fields {
		if f := &req.Fields[i]; f.Key == sipmsg.RecordRoute {
			b = sipmsg.AppendHeader(b, "Record-Route", f.Value)
		}
	}
	b = append(b, "Contact: <"...)
	b = appendContactURI(b, sub.Transport, s.contactHost(sub.LocalHost), sub.LocalPort)
	b = append(b, ">\r\nExpires: "...)
	b = strconv.AppendInt(b, int64(expires), 10)
	b = append(b, "\r\n"...)
	if sub.List != "" {
		b = append(b, "Require: eventlist\r\n"...) // RFC 4662 §5.1
	}
	b = sipmsg.AppendHeader(b, "Allow-Events", s.packages.allowEvents)
	s.send(req, tx, b, 200)
}

// setTarget sets the remote target and where requests to it go.
func (sub *Subscription) setTarget(in *interner, u sipmsg.URI) {
	var buf [80]byte
	sub.target, sub.targetAddr = in.get(u.Raw), in.getBytes(appendURIAddr(buf[:0], u, sub.Transport))
}

// setRoutes sets the route set and where its first hop is.
func (sub *Subscription) setRoutes(in *interner, routes []sipmsg.URI) {
	sub.routes, sub.routeAddr = nil, ""
	for i := range routes {
		sub.routes = append(sub.routes, in.get(routes[i].Raw))
	}
	if len(routes) > 0 {
		var buf [80]byte
		sub.routeAddr = in.getBytes(appendURIAddr(buf[:0], routes[0], sub.Transport))
	}
}

// appendURIAddr appends the host:port requests to u go to (its port,
// else the transport's default) to dst, an IPv6 host in brackets as
// net.JoinHostPort writes it.
func appendURIAddr(dst []byte, u sipmsg.URI, transport string) []byte {
	port := u.Port
	if port == 0 {
		port = int(sip.DefaultPort(transport))
	}
	host := strings.Trim(u.Host, "[]")
	if strings.IndexByte(host, ':') >= 0 {
		dst = append(dst, '[')
		dst = append(dst, host...)
		dst = append(dst, ']')
	} else {
		dst = append(dst, host...)
	}
	dst = append(dst, ':')
	return strconv.AppendInt(dst, int64(port), 10)
}

// acceptList is the request's Accept values as one list.
func acceptList(req *sipmsg.Request) string {
	// One header with one type, as nearly every phone sends it: the
	// value as it is, with no copy.
	single, n := "", 0
	for i := range req.Fields {
		if req.Fields[i].Key == sipmsg.Accept {
			single, n = req.Fields[i].Value, n+1
		}
	}
	if n == 1 && strings.IndexByte(single, ',') < 0 {
		return strings.TrimSpace(single)
	}
	var b strings.Builder
	for v := range req.Values(sipmsg.Accept) {
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		b.WriteString(v)
	}
	return b.String()
}

// appendPresentityURI appends the URI the watcher subscribed to, as they
// wrote it (scheme, user and host), which is what entity must say.
func appendPresentityURI(dst []byte, req *sipmsg.Request) []byte {
	u := req.URI
	scheme := u.Scheme
	if scheme == "" {
		scheme = "sip"
	}
	user := u.User
	if user == "" {
		user = req.To.URI.User
	}
	dst = append(dst, scheme...)
	dst = append(dst, ':')
	dst = append(dst, user...)
	dst = append(dst, '@')
	dst = append(dst, u.Host...)
	if u.Port > 0 {
		dst = append(dst, ':')
		dst = strconv.AppendInt(dst, int64(u.Port), 10)
	}
	return dst
}

// recordRoutes returns the route set a UAS takes from Record-Route: in the
// order the headers appear; one that cannot be read is left out.
func recordRoutes(req *sipmsg.Request) []sipmsg.URI {
	var out []sipmsg.URI
	for v := range req.Values(sipmsg.RecordRoute) {
		if a, err := sipmsg.ParseAddress(v); err == nil {
			out = append(out, a.URI)
		}
	}
	return out
}

// takeBody hands a SUBSCRIBE's body to a package that takes requests in
// it (as-feature-event), answering for it when it refuses; packages that
// take none ignore bodies. It reports whether to go on.
func (s *Server) takeBody(req *sipmsg.Request, tx serverTx, sub *Subscription) bool {
	bt, ok := sub.pkg.(bodyTaker)
	if !ok || len(req.Body) == 0 {
		return true
	}
	code, reason := bt.TakeBody(&s.pkgHost, sub, headerValue(req, sipmsg.ContentType), req.Body)
	if code >= 300 {
		s.reply(req, tx, code, reason)
		return false
	}
	return true
}
