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
	for _, id := range added {
		s.watchersChanged(id, nil, "")
	}
	for _, id := range gone {
		s.watchersChanged(id, sub, "deactivated")
	}
	s.log.Info("list changed: sending its full state", "list", sub.List, "members", len(ids), "source", sub.Source)
	s.enqueue(sub, time.Time{}, true)
}

// noteWatched tells watcher info that sub began (ended false) or ended:
// news to its user, or to every member of its list.
func (s *Server) noteWatched(sub *Subscription, ended bool, reason string) {
	var e *Subscription
	if ended {
		e = sub
	}
	if sub.List == "" {
		s.watchersChanged(sub.UserID, e, reason)
		return
	}
	for _, id := range s.subs.usersOf(sub) {
		s.watchersChanged(id, e, reason)
	}
}

// sendListNotify builds the NOTIFY of a list subscription and sends it:
// the whole list, or the members that changed.
func (s *Server) sendListNotify(sub *Subscription) {
	sub.mu.Lock()
	sub.queued = false
	if sub.done || !sub.dirty || sub.inflight || sub.list == nil {
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
	now := time.Now()
	sub.mu.Lock()
	lv := sub.list
	if sub.done || !sub.dirty || sub.inflight || sub.queued {
		sub.mu.Unlock()
		return
	}
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
	// The RLMI version grows with every NOTIFY.
	version, remaining, changedAt := s.beginNotify(sub, final, true)
	tx := s.notifier.newTx(sub)
	network, addr := s.address(sub)
	render := func(dst []byte, h hop, compact bool) []byte {
		return s.appendListNotify(dst, sub, h, states, parts, full, version, final, remaining, tx.branch, compact)
	}
	network, h, compact, size := s.renderNotify(sub, tx, network, render)
	for _, i := range parts {
		m := &lv.members[i]
		if st, ok := states[m.userID]; ok {
			m.last = st
			m.version++
		} else {
			m.last = nil
		}
	}
	cseq := sub.cseq
	sub.mu.Unlock()
	s.transmit(sub, tx, network, addr, h, compact, size, changedAt, cseq)
}

// appendListNotify renders a list subscription's NOTIFY: the members at
// parts (indices into its members), each in its current state. Called
// with sub.mu held.
func (s *Server) appendListNotify(dst []byte, sub *Subscription, h hop, states map[string]*bridge.State,
	parts []int, full bool, version uint32, final string, remaining int, branch string, compact bool) []byte {
	dst = s.appendNotifyHead(dst, sub, h, final, remaining, branch)
	dst = append(dst, "Require: eventlist\r\nContent-Type: "...)
	boundary := "LL-" + sub.ID
	dst = body.MultipartType(dst, boundary)

	lv := sub.list
	instState, reason := "active", ""
	switch final {
	case "":
	case reasonUnsubscribed:
		instState = "terminated"
	default:
		instState, reason = "terminated", final
	}
	host := sub.LocalHost
	if strings.IndexByte(host, ':') >= 0 {
		host = "[" + host + "]"
	}
	cid := func(i int) string {
		return "m" + strconv.Itoa(i) + "." + strconv.FormatUint(uint64(version), 10) + "." + sub.ID + "@" + host
	}
	scratch := s.notifier.bufs.Get().(*[]byte)
	resources := make([]body.Resource, 0, len(parts))
	for _, i := range parts {
		m := &lv.members[i]
		r := body.Resource{URI: m.uri, Name: m.name, Instance: m.userID, State: instState, Reason: reason}
		if _, ok := states[m.userID]; ok {
			r.CID = cid(i)
		} else if final == "" {
			r.State, r.Reason = "terminated", "noresource"
		}
		resources = append(resources, r)
	}
	b := body.AppendPart(nil, boundary, "rlmi."+strconv.FormatUint(uint64(version), 10)+"."+sub.ID+"@"+host, body.TypeRLMI,
		body.RLMI((*scratch)[:0], sub.Entity, lv.display, version, full, resources))
	lister := sub.pkg.(listable)
	for k, i := range parts {
		m := &lv.members[i]
		st, ok := states[m.userID]
		if !ok {
			continue
		}
		opt := body.Options{Version: m.version, SingleDialog: sub.Single || compact, Plain: sub.Single || compact,
			Compact: compact, DNDText: sub.DNDText}
		doc := lister.RenderMember((*scratch)[:0], m.uri, sub.MediaType, st, opt)
		b = body.AppendPart(b, boundary, resources[k].CID, sub.MediaType, doc)
		*scratch = doc[:0]
	}
	b = body.EndParts(b, boundary)
	s.notifier.bufs.Put(scratch)
	dst = append(dst, "\r\nContent-Length: "...)
	dst = strconv.AppendInt(dst, int64(len(b)), 10)
	dst = append(dst, "\r\n\r\n"...)
	return append(dst, b...)
}
