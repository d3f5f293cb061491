package presence

import (
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Resource lists (RFC 4662): a SUBSCRIBE with Supported: eventlist to a
// list of the directory (a receptionist's BLF list) is one subscription
// dialog that watches every member. Its NOTIFYs carry a multipart/related
// body: an RLMI document, then one part per member in the package asked
// for (dialog or presence). The first NOTIFY, a refresh's, the final one
// and the one after the list's members change carry every member; any
// other carries only the members whose state changed, gathered within
// Options.Coalesce (a member starting to ring goes at once, for pickup).
//
// Where this does better than Asterisk's lists (fixtures/asterisk-native-
// rls): instance ids are stable per member (RFC 4662 §5.2), a member's
// document version grows with every part sent (Asterisk sends the same
// version again in full-state NOTIFYs, which a strict RFC 4235 watcher
// drops as old), members are labelled with the person's name, and a
// SUBSCRIBE without Supported: eventlist gets the RFC's 421, not 404.
//
// A list subscription is a Subscription with List set and UserID empty;
// the store indexes it under each member, so a member's change reaches it
// as any watcher's does, and a member's watcher counts and watcher info
// include it.

// listable is a package a list may be subscribed in: it renders one
// member's document for its entity.
type listable interface {
	RenderMember(dst []byte, entity, mediaType string, st *bridge.State, opt body.Options) []byte
}

// listView is what a list subscription shows: its members as last
// resolved from the directory, and what each was last sent. Guarded by
// the subscription's mu.
type listView struct {
	display string
	members []listMember
	full    bool      // the next NOTIFY carries every member
	urgent  bool      // a member started ringing: no batching
	paced   bool      // a batching timer will queue the subscription
	sentAt  time.Time // when the last NOTIFY was built
	// indexed are the users the store holds the subscription under (its
	// members); guarded by the store's mu, not the subscription's.
	indexed []string
}

// listMember is one member of a list subscription.
type listMember struct {
	userID string
	uri    string // the resource URI: the list's with the member's user part
	name   string
	last   *bridge.State // the state its last part showed; nil: none sent
	// version is the next version of its document (dialog-info). It
	// starts at the list's own version when the member joins, which no
	// part of it can have reached (one part per NOTIFY at most), so a
	// member that leaves and comes back, or a restart, never goes back.
	version uint32
}

// resolve sets the members from the directory's list; old members keep
// what they were sent. It reports whether members or labels changed.
func (lv *listView) resolve(in *interner, rl *bridge.ResolvedList, entity string, version uint32) bool {
	display := rl.Display
	if display == "" {
		display = rl.Name
	}
	changed := display != lv.display || len(rl.Users) != len(lv.members)
	lv.display = display
	next := make([]listMember, 0, len(rl.Users))
	for i, u := range rl.Users {
		m := listMember{userID: u.ID, uri: in.get(memberURI(entity, u.Presentity())), name: u.Name, version: version}
		if j := slices.IndexFunc(lv.members, func(o listMember) bool { return o.userID == u.ID }); j >= 0 {
			old := lv.members[j]
			m.last, m.version = old.last, old.version
			changed = changed || j != i || old.uri != m.uri || old.name != m.name
		} else {
			changed = true
		}
		next = append(next, m)
	}
	lv.members = next
	return changed
}

// ids returns the members' user ids.
func (lv *listView) ids() []string {
	out := make([]string, len(lv.members))
	for i := range lv.members {
		out[i] = lv.members[i].userID
	}
	return out
}

// memberURI is the list's URI with user as its user part (as Asterisk
// names members, so phones set up for it key the same way).
func memberURI(listURI, user string) string {
	scheme, rest, ok := strings.Cut(listURI, ":")
	if !ok {
		return "sip:" + user
	}
	if _, host, ok := strings.Cut(rest, "@"); ok {
		return scheme + ":" + user + "@" + host
	}
	return scheme + ":" + user + "@" + rest
}

// supportsEventlist reports whether a SUBSCRIBE says Supported: eventlist.
func supportsEventlist(req *sipmsg.Request) bool {
	for v := range req.Values(sipmsg.Supported) {
		for tok := range sipmsg.SplitList(v) {
			if strings.EqualFold(strings.TrimSpace(tok), "eventlist") {
				return true
			}
		}
	}
	return false
}

// negotiateList picks a list subscription's member type: its Accept must
// take the multipart body and RLMI (or name no type at all), and the
// package must take one of the other types it names.
func negotiateList(pkg eventPackage, accept string) (string, bool) {
	if !saysNothing(accept) && (!acceptable(accept, body.TypeMultipartRelated) || !acceptable(accept, body.TypeRLMI)) {
		return "", false
	}
	return pkg.Negotiate(accept)
}

// listAccept is the Accept of a 406 to a list subscription.
func listAccept(pkg eventPackage) string {
	return strings.Join(append([]string{body.TypeMultipartRelated, body.TypeRLMI}, pkg.MediaTypes()...), ", ")
}

// listAllowEvents names the packages lists are served in.
func (ps *packages) listAllowEvents() string {
	var out []string
	for _, p := range ps.list {
		if _, ok := p.(listable); ok {
			out = append(out, p.Token().String())
		}
	}
	return strings.Join(out, ", ")
}

// DirectoryChanged is called after the bridge's directory changed (a
// reload): list subscriptions whose members or labels changed get a
// full-state NOTIFY with the new list; those whose list is gone end with
// noresource.
func (s *Server) DirectoryChanged() {
	for _, sub := range s.subs.all() {
		if sub.List != "" {
			s.relist(sub)
		}
	}
}

// relist resolves a list subscription's members again.
func (s *Server) relist(sub *Subscription) {
	rl, ok := s.states.Directory().List(sub.List)
	if !ok {
		s.terminate(sub, "noresource")
		return
	}
	sub.mu.Lock()
	if sub.removed || sub.list == nil {
		sub.mu.Unlock()
		return
	}
	changed := sub.list.resolve(s.strs, rl, sub.Entity, sub.version)
	ids := sub.list.ids()
	if changed {
		sub.list.full = true
	}
	sub.mu.Unlock()
	if !changed {
		return
	}
	added, gone := s.subs.reindex(sub, ids)
	s.membersChanged(sub, added, gone)
	s.log.Info("list changed: sending its full state", "list", sub.List, "members", len(ids), "source", sub.Source)
	s.enqueue(sub, time.Time{}, true)
}

// sendListNotify builds the NOTIFY of a list subscription and sends it:
// the whole list, or the members that changed.
func (s *Server) sendListNotify(sub *Subscription) {
	if !s.notifyDue(sub) {
		return
	}
	if sub.list == nil {
		sub.mu.Unlock()
		return
	}
	ids := sub.list.ids()
	sub.mu.Unlock()
	// The bridge is read with no subscription lock held (doc.go).
	states := make(map[string]*bridge.State, len(ids))
	for _, id := range ids {
		if st, ok := s.states.State(id); ok {
			states[id] = st
		}
	}
	if !s.stillDue(sub) {
		return
	}
	now := time.Now()
	lv := sub.list
	final := sub.final
	full := sub.force || final != "" || lv.full
	if !full && !lv.urgent && s.opt.Coalesce > 0 && now.Sub(lv.sentAt) < s.opt.Coalesce {
		// Batch: what changes until the window ends goes in one NOTIFY.
		if !lv.paced {
			lv.paced = true
			time.AfterFunc(lv.sentAt.Add(s.opt.Coalesce).Sub(now), func() {
				sub.mu.Lock()
				sub.list.paced = false
				sub.mu.Unlock()
				s.enqueue(sub, time.Time{}, false)
			})
		}
		sub.mu.Unlock()
		return
	}
	parts := make([]int, 0, len(lv.members))
	for i := range lv.members {
		m := &lv.members[i]
		st, had := states[m.userID]
		if !had {
			if full || m.last != nil {
				parts = append(parts, i) // shown as gone
			}
			continue
		}
		if full || m.last == nil || !m.last.LooksEqual(st) {
			parts = append(parts, i)
		}
	}
	if !full && len(parts) == 0 {
		sub.dirty = false // nothing new since the last NOTIFY
		sub.mu.Unlock()
		return
	}
	lv.full, lv.urgent, lv.sentAt = false, false, now
	// What a rendering leaves for the next NOTIFY: the one in tx's
	// buffer, and the one made to fit a datagram (kept as the fallback
	// when TCP is tried first).
	var deferred, fitDeferred []int
	// The RLMI version grows with every NOTIFY.
	d := s.draftNotify(sub, final, true)
	n := &listNotify{states: states, parts: parts, full: full, version: d.version, final: final,
		remaining: d.remaining, branch: d.tx.Branch}
	s.sendDraft(sub, d, func(dst []byte, h hop, fit bool) []byte {
		limit := 0
		if fit {
			limit = s.opt.MaxUDPNotify
		}
		dst, deferred = s.appendListNotify(dst, sub, h, n, limit)
		if fit {
			fitDeferred = deferred
		}
		return dst
	}, func(fallback bool) func() {
		for _, i := range parts {
			m := &lv.members[i]
			if st, ok := states[m.userID]; ok {
				m.last = st
				m.version++
			} else {
				m.last = nil
			}
		}
		s.deferMembers(sub, deferred)
		if !fallback || len(fitDeferred) == 0 {
			return nil
		}
		return func() {
			sub.mu.Lock()
			s.deferMembers(sub, fitDeferred)
			sub.mu.Unlock()
		}
	})
}

// deferMembers marks members whose documents a NOTIFY had no room for
// (indices into the list's members): each goes in the next NOTIFY, at
// once after this one's 200. Called with sub.mu held, after the NOTIFY's
// members were marked sent.
func (s *Server) deferMembers(sub *Subscription, deferred []int) {
	if len(deferred) == 0 || sub.done {
		return
	}
	for _, i := range deferred {
		m := &sub.list.members[i]
		m.last = nil // not shown: sent again
		m.version--  // its version was not used
	}
	sub.dirty, sub.list.urgent = true, true
}

// listNotify is what one list NOTIFY carries: the members at parts
// (indices into the subscription's members) in their states, and the
// dialog's details for it.
type listNotify struct {
	states    map[string]*bridge.State
	parts     []int
	full      bool
	version   uint32
	final     string
	remaining int
	branch    string
}

// appendListNotify renders a list subscription's NOTIFY: the members at
// n.parts, each in its current state. With limit > 0 the NOTIFY is at
// most limit bytes (a datagram): documents that do not fit are left out
// and their members returned (RFC 4662 §4.4 lets an RLMI instance come
// without its body), to go in the NOTIFYs that follow, so a phone
// without TCP gets a big list whole over several NOTIFYs rather than
// never. A full-state NOTIFY still lists every member; a partial one
// only those whose document it carries (and those that are gone).
// Called with sub.mu held.
func (s *Server) appendListNotify(dst []byte, sub *Subscription, h hop, n *listNotify, limit int) ([]byte, []int) {
	dst = s.appendNotifyHead(dst, sub, h, n.final, n.remaining, n.branch)
	dst = append(dst, "Require: eventlist\r\nContent-Type: "...)
	boundary := "LL-" + sub.ID
	dst = body.MultipartType(dst, boundary)

	lv := sub.list
	instState, reason := "active", ""
	switch n.final {
	case "":
	case reasonUnsubscribed:
		instState = "terminated"
	default:
		instState, reason = "terminated", n.final
	}
	host := sub.LocalHost
	if strings.IndexByte(host, ':') >= 0 {
		host = "[" + host + "]"
	}
	suffix := "." + strconv.FormatUint(uint64(n.version), 10) + "." + sub.ID + "@" + host
	resources := make([]body.Resource, 0, len(n.parts))
	for _, i := range n.parts {
		m := &lv.members[i]
		r := body.Resource{URI: m.uri, Name: m.name, Instance: m.userID, State: instState, Reason: reason}
		if _, ok := n.states[m.userID]; ok {
			r.CID = "m" + strconv.Itoa(i) + suffix
		} else if n.final == "" {
			r.State, r.Reason = "terminated", "noresource"
		}
		resources = append(resources, r)
	}
	// Every member's document, as a part, one after the other.
	scratch := s.notifier.Scratch()
	defer s.notifier.PutScratch(scratch)
	lister := sub.pkg.(listable)
	render := func(dst []byte, k int, compact bool) []byte {
		m := &lv.members[n.parts[k]]
		opt := body.Options{Version: m.version, SingleDialog: sub.Single || compact, Plain: sub.Single || compact,
			Compact: compact, DNDText: sub.DNDText}
		doc := lister.RenderMember((*scratch)[:0], m.uri, sub.MediaType, n.states[m.userID], opt)
		*scratch = doc[:0]
		return body.AppendPart(dst, boundary, resources[k].CID, sub.MediaType, doc)
	}
	rlmiCID := "rlmi" + suffix
	if limit <= 0 {
		b := body.AppendPart(nil, boundary, rlmiCID, body.TypeRLMI,
			body.RLMI((*scratch)[:0], sub.Entity, lv.display, n.version, n.full, resources))
		for k := range n.parts {
			if resources[k].CID != "" {
				b = render(b, k, false)
			}
		}
		return appendBody(dst, body.EndParts(b, boundary)), nil
	}
	// Room for the documents: the limit less the head, the Content-Length
	// line, the RLMI without resources, the closing boundary, and the
	// resources the RLMI names whatever fits: all of a full state's, the
	// members that are gone of a partial one. A partial NOTIFY names a
	// member only with its document, which then costs both.
	tail := body.EndParts(nil, boundary)
	empty := len(body.RLMI((*scratch)[:0], sub.Entity, lv.display, n.version, n.full, nil))
	entry := func(r body.Resource) int {
		return len(body.RLMI((*scratch)[:0], sub.Entity, lv.display, n.version, n.full, []body.Resource{r})) - empty
	}
	room := limit - len(dst) - len("\r\nContent-Length: 1000000\r\n\r\n") - len(tail) -
		len(body.AppendPart(nil, boundary, rlmiCID, body.TypeRLMI, make([]byte, empty)))
	for _, r := range resources {
		if n.full || r.CID == "" {
			room -= entry(r)
		}
	}
	if room < 0 {
		// Nothing RFC 4662 allows makes it smaller: a full state names
		// every member.
		s.log.Error("a list's member index alone is larger than a UDP NOTIFY may be: the phone needs SIP over TCP",
			"list", sub.List, "members", len(resources), "max_udp_notify", limit, "source", sub.Source)
	}
	var docs []byte
	var deferred []int
	used := 0
	for k := range n.parts {
		if resources[k].CID == "" {
			continue
		}
		cost := 0
		if !n.full {
			cost = entry(resources[k])
		}
		start := len(docs)
		docs = render(docs, k, false)
		if used+cost+len(docs)-start <= room {
			used += cost + len(docs) - start
			continue
		}
		if start == 0 && !n.full {
			// Alone it does not fit (a partial NOTIFY has all the room
			// there is): its compact form (one dialog, no extras) may,
			// else the member is sent nothing at all.
			if docs = render(docs[:0], k, true); cost+len(docs) <= room {
				used += cost + len(docs)
				continue
			}
			s.log.Error("a list member's document is larger than a UDP NOTIFY may be: left out",
				"list", sub.List, "member", lv.members[n.parts[k]].userID, "bytes", len(docs), "source", sub.Source)
		} else {
			deferred = append(deferred, n.parts[k])
		}
		docs = docs[:start]
		resources[k].CID = ""
	}
	if len(deferred) > 0 && !n.full {
		// A partial NOTIFY names only the members it shows.
		resources = slices.DeleteFunc(resources, func(r body.Resource) bool {
			return r.CID == "" && r.State == "active"
		})
	}
	b := body.AppendPart(nil, boundary, rlmiCID, body.TypeRLMI,
		body.RLMI((*scratch)[:0], sub.Entity, lv.display, n.version, n.full, resources))
	b = append(b, docs...)
	return appendBody(dst, append(b, tail...)), deferred
}

// appendBody appends the Content-Length line, the blank line and b.
func appendBody(dst, b []byte) []byte {
	dst = append(dst, "\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(b)), 10)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, b...)
}
