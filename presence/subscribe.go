package presence

import (
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/presence/body"
)

// handleSubscribe answers SUBSCRIBE (RFC 6665, 3856, 4235): a new
// subscription out of dialog, a refresh or unsubscribe in dialog.
func (s *Server) handleSubscribe(req *sip.Request, tx sip.ServerTransaction) {
	if len(req.Body()) > s.opt.MaxBodyBytes {
		s.reply(req, tx, 413, "Request Entity Too Large")
		return
	}
	to, from := req.To(), req.From()
	if to == nil || from == nil || req.CallID() == nil || req.CSeq() == nil {
		s.reply(req, tx, 400, "Missing Dialog Headers")
		return
	}
	fromTag, _ := from.Params.Get("tag")
	if fromTag == "" {
		s.reply(req, tx, 400, "Missing From Tag")
		return
	}
	ev := req.GetHeader("Event")
	if ev == nil {
		s.reply(req, tx, 489, "Bad Event", sip.NewHeader("Allow-Events", allowedEvents))
		return
	}
	pkgName, eventID := parseEvent(ev.Value())
	var pkg Package
	switch pkgName {
	case "presence":
		pkg = PackagePresence
	case "dialog":
		pkg = PackageDialog
	default:
		s.reply(req, tx, 489, "Bad Event", sip.NewHeader("Allow-Events", allowedEvents))
		return
	}
	expires := s.expiresOf(req)
	if expires < 0 {
		s.reply(req, tx, 400, "Bad Expires")
		return
	}
	if toTag, ok := to.Params.Get("tag"); ok && toTag != "" {
		s.refreshSubscription(req, tx, toTag, fromTag, pkg, expires)
		return
	}
	s.newSubscription(req, tx, fromTag, pkg, eventID, expires)
}

func mediaTypeOf(pkg Package) string {
	if pkg == PackageDialog {
		return body.TypeDialogInfo
	}
	return body.TypePIDF
}

func (s *Server) newSubscription(req *sip.Request, tx sip.ServerTransaction, fromTag string, pkg Package, eventID string, expires int) {
	contact := req.Contact()
	if contact == nil || contact.Address.Host == "" {
		s.reply(req, tx, 400, "Missing Contact")
		return
	}
	// Authenticate before looking anyone up: an unknown caller must not
	// learn which extensions exist, let alone their state.
	id, ok := s.authenticate(req, tx)
	if !ok {
		return
	}
	userPart := req.Recipient.User
	if userPart == "" {
		userPart = req.To().Address.User
	}
	user, found := s.states.Directory().Lookup(userPart)
	if !found {
		s.reply(req, tx, 404, "Not Found")
		return
	}
	if !accepts(req, mediaTypeOf(pkg)) {
		s.reply(req, tx, 406, "Not Acceptable", sip.NewHeader("Accept", mediaTypeOf(pkg)))
		return
	}
	expires, ok = s.clampExpires(expires)
	if !ok {
		s.intervalTooBrief(req, tx)
		return
	}
	ua := headerValue(req, "User-Agent")
	sub := &Subscription{
		ID:        sip.GenerateTagN(20),
		CallID:    req.CallID().Value(),
		RemoteTag: fromTag,
		UserID:    user.ID,
		Entity:    presentityURI(req),
		Package:   pkg,
		EventID:   eventID,
		Accept:    strings.Join(headerValues(req, "Accept"), ", "),
		LocalURI:  req.To().Address.String(),
		RemoteURI: req.From().Address.String(),
		Transport: strings.ToUpper(req.Transport()),
		Source:    req.Source(),
		Watcher:   id.UserID,
		Grant:     s.auth.grant(id),
		UserAgent: ua,

		remoteCSeq: req.CSeq().SeqNo,
		expires:    time.Now().Add(time.Duration(expires) * time.Second),
		// Changes of the user from the moment the subscription is in the
		// store wait for the 200 (RFC 6665 lets a subscriber cope with an
		// early NOTIFY; many phones answer it 481 and lose the lamp).
		unanswered: true,
	}
	sub.setTarget(&contact.Address)
	sub.setRoutes(recordRoutes(req))
	sub.LocalHost, sub.LocalPort = s.localAddr(sub.Transport, sub.Source)
	if s.opt.SingleDialog != nil {
		sub.Single = s.opt.SingleDialog(ua, id.UserID)
	}
	if expires > 0 && !s.subs.add(sub, s.opt.MaxSubscriptionsPerSource) {
		s.log.Warn("too many subscriptions from one source", "source", req.Source(),
			"limit", s.opt.MaxSubscriptionsPerSource)
		s.reply(req, tx, 503, "Too Many Subscriptions", sip.NewHeader("Retry-After", "300"))
		return
	}
	if expires > 0 {
		s.journal.subscription(sub, false)
	}
	s.answer(req, tx, sub, expires)
	sub.mu.Lock()
	sub.unanswered = false
	sub.mu.Unlock()
	if expires == 0 {
		// A fetch: one NOTIFY with the state, terminated at once.
		s.log.Debug("fetch", "user", user.ID, "event", pkg, "source", sub.Source)
		sub.mu.Lock()
		sub.final, sub.removed = "timeout", true
		sub.mu.Unlock()
		s.enqueue(sub, time.Time{}, true)
		return
	}
	sub.mu.Lock()
	sub.timer = time.AfterFunc(time.Duration(expires)*time.Second, func() { s.terminate(sub, "timeout") })
	sub.mu.Unlock()
	s.log.Debug("subscribed", "user", user.ID, "event", pkg, "watcher", id.UserID, "source", sub.Source, "expires", expires)
	s.enqueue(sub, time.Time{}, true)
}

func (s *Server) refreshSubscription(req *sip.Request, tx sip.ServerTransaction, toTag, fromTag string, pkg Package, expires int) {
	sub, ok := s.subs.get(toTag)
	// The dialog's identifiers are unguessable: matching all of them is
	// the refresh's credential, so refreshes need no new digest round.
	if !ok || sub.CallID != req.CallID().Value() || sub.RemoteTag != fromTag || sub.Package != pkg {
		s.reply(req, tx, 481, "Subscription Does Not Exist")
		return
	}
	// The dialog's identifiers stand for the watcher's credentials only
	// while the config still lets them in.
	if reason := s.auth.revoked(sub.Grant, req.Source(), sub.Watcher); reason != "" {
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
	if cseq := req.CSeq().SeqNo; cseq <= sub.remoteCSeq {
		sub.mu.Unlock()
		s.reply(req, tx, 500, "CSeq Out Of Order", sip.NewHeader("Retry-After", "1"))
		return
	}
	sub.remoteCSeq = req.CSeq().SeqNo
	if c := req.Contact(); c != nil && c.Address.Host != "" {
		sub.setTarget(&c.Address)
	}
	if expires > 0 {
		sub.expires = time.Now().Add(time.Duration(expires) * time.Second)
		if sub.timer != nil {
			sub.timer.Reset(time.Duration(expires) * time.Second)
		}
	}
	sub.mu.Unlock()
	if expires > 0 {
		s.journal.subscription(sub, false)
	}
	s.answer(req, tx, sub, expires)
	if expires == 0 {
		s.terminate(sub, "timeout")
		return
	}
	s.enqueue(sub, time.Time{}, true)
}

// answer sends the 200 for a SUBSCRIBE with our tag, Contact and Expires.
func (s *Server) answer(req *sip.Request, tx sip.ServerTransaction, sub *Subscription, expires int) {
	res := sip.NewResponseFromRequest(req, 200, "OK", nil)
	if to := res.To(); to != nil {
		to.Params.Remove("tag")
		to.Params.Add("tag", sub.ID)
	}
	res.AppendHeader(contactHeader(sub.Transport, sub.LocalHost, sub.LocalPort))
	res.AppendHeader(sip.NewHeader("Expires", strconv.Itoa(expires)))
	res.AppendHeader(sip.NewHeader("Allow-Events", allowedEvents))
	s.respond(tx, res)
}

// contactHeader is our Contact at host:port for a dialog over transport.
// setTarget sets the remote target and where requests to it go.
func (sub *Subscription) setTarget(u *sip.Uri) {
	sub.target, sub.targetAddr = u.String(), uriAddr(u, sub.Transport)
}

// setRoutes sets the route set and where its first hop is.
func (sub *Subscription) setRoutes(routes []sip.Uri) {
	sub.routes, sub.routeAddr = nil, ""
	for i := range routes {
		sub.routes = append(sub.routes, routes[i].String())
	}
	if len(routes) > 0 {
		sub.routeAddr = uriAddr(&routes[0], sub.Transport)
	}
}

// uriAddr is the host:port requests to u go to: its port, else the
// transport's default.
func uriAddr(u *sip.Uri, transport string) string {
	port := u.Port
	if port == 0 {
		port = int(sip.DefaultPort(transport))
	}
	return net.JoinHostPort(strings.Trim(u.Host, "[]"), strconv.Itoa(port))
}

func contactHeader(transport, host string, port int) *sip.ContactHeader {
	u := sip.Uri{Scheme: "sip", Host: host, Port: port}
	switch transport {
	case "TCP":
		u.UriParams = sip.NewParams()
		u.UriParams.Add("transport", "tcp")
	case "TLS":
		u.Scheme = "sips"
	}
	return &sip.ContactHeader{Address: u}
}

// presentityURI is the URI the watcher subscribed to, as they wrote it
// (scheme, user and host), which is what entity must say.
func presentityURI(req *sip.Request) string {
	u := req.Recipient
	scheme := u.Scheme
	if scheme == "" {
		scheme = "sip"
	}
	host := u.Host
	if u.Port > 0 {
		host += ":" + strconv.Itoa(u.Port)
	}
	if u.User == "" {
		return scheme + ":" + req.To().Address.User + "@" + host
	}
	return scheme + ":" + u.User + "@" + host
}

// recordRoutes returns the route set a UAS takes from Record-Route: in the
// order the headers appear.
func recordRoutes(req *sip.Request) []sip.Uri {
	var out []sip.Uri
	for _, h := range req.GetHeaders("Record-Route") {
		if rr, ok := h.(*sip.RecordRouteHeader); ok {
			out = append(out, *rr.Address.Clone())
			continue
		}
		// Several routes in one header line.
		for _, part := range strings.Split(h.Value(), ",") {
			part = strings.TrimSpace(part)
			part = strings.TrimPrefix(part, "<")
			if i := strings.IndexByte(part, '>'); i >= 0 {
				part = part[:i]
			}
			var u sip.Uri
			if err := sip.ParseUri(part, &u); err == nil {
				out = append(out, u)
			}
		}
	}
	return out
}
