package cluster

import (
	"context"
	"encoding/json"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Membership: each node follows the leases bucket with one watch (not a
// listing of its keys twice a second, which made a consumer on the engine
// each time and dropped nodes from the list whenever a listing was slow)
// and judges each lease by when it last saw it renewed. A node is a
// member while its lease was renewed within the TTL, and not once it
// left (a planned stop marks its lease so) or another node declared it
// dead (a tombstone on its key).

// leaseSeen is a lease as the watch last delivered it.
type leaseSeen struct {
	l    lease
	at   time.Time // when this node received it
	rev  uint64
	gone bool // deleted, or purged
}

// live reports whether the lease is a member's at now.
func (e leaseSeen) live(now time.Time, ttl time.Duration) bool {
	return !e.gone && e.l.DeadBy == "" && !e.l.Left && now.Sub(e.at) < ttl
}

// followLeases keeps n.view from the leases bucket's watch.
func (n *Node) followLeases(ctx context.Context, w jetstream.KeyWatcher) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.lrewatch:
			n.mu.Lock()
			n.viewSynced = false
			n.mu.Unlock()
			return
		case e, ok := <-w.Updates():
			if !ok {
				n.mu.Lock()
				n.viewSynced = false
				n.mu.Unlock()
				return
			}
			if e == nil {
				n.mu.Lock()
				n.viewSynced = true
				n.mu.Unlock()
				continue
			}
			if rev := e.Revision(); rev > n.lseen.Load() {
				n.lseen.Store(rev)
			}
			s := leaseSeen{at: time.Now(), rev: e.Revision(), gone: e.Operation() != jetstream.KeyValuePut}
			if !s.gone {
				_ = json.Unmarshal(e.Value(), &s.l)
			}
			n.mu.Lock()
			n.view[e.Key()] = s
			n.mu.Unlock()
		}
	}
}

// nodeGone is a node whose dialogs may be taken over, as the lease watch
// shows it.
type nodeGone struct {
	name string
	left bool      // it gave its lease up (a planned stop)
	seen leaseSeen // its lease as last seen (rev 0: none)
}

// judgeMembers sets the member list from the lease watch and returns the
// nodes owning dialogs that are no longer members. It judges nothing
// while the watch has not shown this node's own last renewal (a watch
// fallen behind the engine would make every node look dead): the
// previous member list stands, and the watch is started again.
func (n *Node) judgeMembers(owners map[string]bool) (gone []nodeGone, judged bool) {
	now := time.Now()
	n.mu.Lock()
	defer n.mu.Unlock()
	mine, ok := n.view[n.cfg.Node]
	current := ok && !mine.gone && mine.l.Instance == n.instance && mine.rev == n.leaseRev
	if !n.viewSynced || !current {
		// Behind for a moment after each renewal (until the watch
		// brings it); behind for a third of the TTL, the watch is stuck
		// (its server went): started again.
		if n.viewBehind.IsZero() {
			n.viewBehind = now
		} else if n.viewSynced && now.Sub(n.viewBehind) > n.cfg.LeaseTTL/3 {
			n.viewBehind = time.Time{}
			n.restartLeaseWatch()
		}
		return nil, false
	}
	n.viewBehind = time.Time{}
	var members []string
	for name, e := range n.view {
		if e.live(now, n.cfg.LeaseTTL) || name == n.cfg.Node && n.leaseFresh() {
			members = append(members, name)
		}
	}
	slices.Sort(members)
	if !slices.Equal(members, n.members) {
		n.log.Info("cluster members", "members", members, "was", n.members)
		n.members = members
	}
	for o := range owners {
		e, seen := n.view[o]
		if seen && e.live(now, n.cfg.LeaseTTL) {
			continue
		}
		if seen && e.l.DeadBy != "" {
			continue // another node is taking it over
		}
		gone = append(gone, nodeGone{name: o, left: seen && !e.gone && e.l.Left, seen: e})
	}
	return gone, true
}

// restartLeaseWatch asks the lease watch to start again; called with
// n.mu held.
func (n *Node) restartLeaseWatch() {
	select {
	case n.lrewatch <- struct{}{}:
	default:
	}
}

// tombstone marks a gone node's lease key as taken over by this node:
// over the key's last revision where it is still there (a node that left,
// or one whose renewals stopped before the engine expired its key), else
// a new key. Only one node can write it.
func (n *Node) tombstone(ctx context.Context, g nodeGone, b []byte) (uint64, error) {
	if g.seen.rev != 0 && !g.seen.gone {
		if rev, err := n.leases.Update(ctx, g.name, b, g.seen.rev); err == nil {
			return rev, nil
		}
	}
	return n.leases.Create(ctx, g.name, b)
}
