package cluster

import (
	"encoding/json"
	"hash/fnv"
	"slices"
	"time"

	"github.com/lamplighter/lamplighter/presence"
)

// Registrations to Lamplighter (a busy-lamp line's REGISTER) are shared
// through the persons bucket: all of one user's bindings are one key,
// under an origin no person state can have, so they are written, ordered
// by revision, applied and swept exactly as person states are. A REGISTER
// refresh that reaches another node after a failover then finds the
// binding there, its 200 lists every binding of the user, a Contact: *
// removes them on every node, and the per-user cap counts the cluster's.

// bindingsOrigin is the origin of a user's bindings key: the NUL keeps it
// apart from every bridge origin (the API's, a PUBLISH's).
const bindingsOrigin = "\x00bindings"

// shareBindings queues a user's bindings (all of them; none: removed) for
// the other nodes, unless they are what this node last applied or wrote
// for the user (the server saves what it applied from the engine too:
// without this check the nodes would echo it back and forth).
func (n *Node) shareBindings(userID string, bs []presence.Binding) {
	sum := bindingsSum(bs)
	n.mu.Lock()
	if prev, ok := n.bindSums[userID]; ok && prev == sum {
		n.mu.Unlock()
		return
	}
	n.bindSums[userID] = sum
	n.queueLocked(personKey(userID, bindingsOrigin), &personValue{Node: n.cfg.Node, User: userID,
		Origin: bindingsOrigin, Cleared: len(bs) == 0, Bindings: slices.Clone(bs)})
	n.mu.Unlock()
	n.kick()
}

// applyBindings shows another node's word on a user's bindings here.
func (n *Node) applyBindings(userID string, bs []presence.Binding) {
	n.mu.Lock()
	n.bindSums[userID] = bindingsSum(bs)
	n.mu.Unlock()
	if n.host != nil {
		n.host.SetBindings(userID, bs)
	}
	n.stats.Applied.Add(1)
}

// bindingsSum identifies a set of bindings whatever the time zone their
// expiry was read in.
func bindingsSum(bs []presence.Binding) uint64 {
	norm := make([]presence.Binding, len(bs))
	for i, b := range bs {
		b.Expires = b.Expires.UTC().Round(time.Microsecond)
		norm[i] = b
	}
	h := fnv.New64a()
	_ = json.NewEncoder(h).Encode(norm)
	return h.Sum64()
}

// latestExpiry is when the last of bs lapses.
func latestExpiry(bs []presence.Binding) time.Time {
	var t time.Time
	for _, b := range bs {
		if b.Expires.After(t) {
			t = b.Expires
		}
	}
	return t
}
