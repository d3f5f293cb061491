package cluster

import (
	"context"
	"encoding/json"
	"time"

	"github.com/nats-io/nats.go"
)

// Live hints: a person state set on a node reaches the others through
// the persons bucket, which needs the bucket's JetStream leader; when
// the NATS server that led it goes, nothing crosses until the engine has
// elected another (4 to 9 s of Raft election on nats-server, measured 9.5
// s here). So each write is also published at once on a plain NATS
// subject, which any live server routes: the others show it straight
// away, as provisional, and the bucket's entry, when it comes, is the
// truth again (apply). A hint never outranks the bucket: one older than
// what the bucket showed from the same node is dropped, and a hint shown
// is replaced by the bucket's newest entry for its key as soon as the
// bucket delivers anything for that key.

// liveSubject is where the hints go.
func (n *Node) liveSubject() string { return n.cfg.BucketPrefix + ".live.persons" }

// hint publishes v (queued for the bucket) to the other nodes now; a
// connection being re-established keeps it until it is (nats.go buffers
// what is published meanwhile).
func (n *Node) hint(v *personValue) {
	n.mu.Lock()
	nc := n.nc
	n.mu.Unlock()
	if nc == nil || v.Origin == bindingsOrigin {
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		return
	}
	_ = nc.Publish(n.liveSubject(), b)
}

// onHint shows another node's write here before the bucket brings it.
func (n *Node) onHint(m *nats.Msg) {
	var v personValue
	if err := json.Unmarshal(m.Data, &v); err != nil || v.Node == n.cfg.Node || v.Origin == bindingsOrigin {
		return
	}
	key := personKey(v.User, v.Origin)
	n.mu.Lock()
	ks := n.keys[key]
	if ks == nil {
		ks = &keyState{}
		n.keys[key] = ks
	}
	if ks.writing || ks.stale(v.Node, v.Seq) || (ks.hintNode == v.Node && v.Seq <= ks.hintSeq) {
		// Ours is on its way (the bucket orders the two), or the bucket
		// already delivered this write or a newer one of that node, or a
		// hint showed it.
		n.mu.Unlock()
		return
	}
	ks.hinted, ks.hint, ks.hintNode, ks.hintSeq = true, &v, v.Node, v.Seq
	ks.ver++
	n.mu.Unlock()
	n.stats.Hinted.Add(1)
	n.settle(key)
}

// rehintLoop publishes again, twice a second, the hints of writes the
// bucket has not taken yet: a node whose connection was being
// re-established when the first went (its server was the one that died)
// gets them once it is back.
func (n *Node) rehintLoop(ctx context.Context) {
	every(ctx, 500*time.Millisecond, func() bool {
		n.mu.Lock()
		var pending []*personValue
		for _, v := range n.queue {
			pending = append(pending, v)
		}
		n.mu.Unlock()
		for _, v := range pending {
			n.hint(v)
		}
		return true
	})
}
