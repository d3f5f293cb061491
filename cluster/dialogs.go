package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"strconv"
	"time"
	"unique"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lamplighter/lamplighter/presence"
)

// Subscription dialogs in the engine. Each node writes the dialogs it
// accepted (presence's Store batches, through Store) to one bucket, each
// under its id with the node as owner; every node follows the bucket, so
// it knows who owns what. Ownership changes only by compare-and-set on a
// key's revision, so exactly one node wins each dialog:
//   - a node whose lease is gone (killed, powered off, stopped cleanly) is
//     first declared dead by a tombstone created on its lease key (only
//     one node can create it, and the dead node cannot renew over it);
//     the node that created it claims the dead node's dialogs and
//     NOTIFYs each in its dialog (presence.Server.Adopt);
//   - a refresh that reaches a node for another node's dialog makes that
//     node its owner (presence Options.Claim);
//   - a node that sees one of its dialogs owned by another forgets it.
// A node whose lease lapsed sends no NOTIFY (presence Options.MayNotify)
// until it has read the bucket again and dropped what it lost (reconcile).

// Host is the SIP server whose dialogs a node keeps in the engine
// (*presence.Server is one).
type Host interface {
	Adopt(recs []presence.SavedSubscription, reserved bool) int
	Forget(ids []string) int
	SubscriptionIDs() []string
	Resave(ids []string)
	Unfence() int
	SetBindings(userID string, bs []presence.Binding)
}

// dialogValue is what a dialog key holds.
type dialogValue struct {
	Owner  string                     `json:"owner"`
	Dialog presence.SavedSubscription `json:"dialog"`
}

// dialogEntry is what a node knows of a dialog key without its record:
// who owns it at which revision ("" for deleted).
type dialogEntry struct {
	owner unique.Handle[string]
	rev   uint64
	sum   uint64 // FNV-1a of the value this node last wrote (0: none)
}

// dialogOp is a queued write: a record, or nil to delete.
type dialogOp struct {
	rec *presence.SavedSubscription
}

// Store wraps the node's own state file: every batch is saved there and
// the dialogs in it are queued for the engine, so that a node started
// while the engine is away still has what it held.
type Store struct {
	local presence.Store
	node  *Node
}

// Store returns a presence.Store that saves to local and to the engine.
func (n *Node) Store(local presence.Store) *Store { return &Store{local: local, node: n} }

// Save implements presence.Store.
func (s *Store) Save(b presence.Batch) error {
	if err := s.local.Save(b); err != nil {
		return err
	}
	s.node.queueDialogs(b.Subscriptions, b.Unsubscribed)
	for userID, bs := range b.Bindings {
		s.node.shareBindings(userID, bs)
	}
	return nil
}

// queueDialogs queues dialog writes and deletes for the engine.
func (n *Node) queueDialogs(recs []presence.SavedSubscription, gone []string) {
	if len(recs) == 0 && len(gone) == 0 {
		return
	}
	n.dmu.Lock()
	for i := range recs {
		r := recs[i]
		n.dqueue[r.ID] = dialogOp{rec: &r}
	}
	for _, id := range gone {
		n.dqueue[id] = dialogOp{}
	}
	n.dmu.Unlock()
	select {
	case n.dwake <- struct{}{}:
	default:
	}
}

// Attach gives the node the SIP server whose dialogs it keeps; call it
// before Run.
func (n *Node) Attach(h Host) { n.host = h }

// MayNotify reports whether this node may send NOTIFYs now: its lease is
// fresh and it has reconciled what it holds with the engine. A node that
// lost the engine (its connection, or JetStream's answers) before its
// lease ran out keeps sending: the engine is down, so nobody can take its
// dialogs (or this node is on the wrong side of a network split: README
// says what that costs); once a renewal succeeds again, it stops until it
// has reconciled. A node whose lease ran out first (paused) sends nothing.
func (n *Node) MayNotify() bool {
	if time.Now().UnixNano() < n.notifyUntil.Load() {
		return true // fast path: a fresh lease, reconciled
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	fresh := n.leaseFresh()
	if fresh {
		return n.reconciled
	}
	if n.leasedAt.IsZero() || !n.reconciled {
		return false
	}
	// The engine went away before the lease ran out, and the lease loop
	// has kept trying since (a node that was paused has not: it waits
	// for its next attempt to say where it stands).
	expiry := n.leasedAt.Add(n.cfg.LeaseTTL)
	slack := 2 * n.cfg.LeaseTTL / 3
	trying := time.Since(n.lastAttempt) < slack ||
		(!n.renewingSince.IsZero() && time.Since(n.renewingSince) < slack)
	away := !n.awaySince.IsZero() && n.awaySince.Before(expiry)
	// An attempt that began before the lease ran out and has not been
	// answered yet: the engine is slow or away, not this node paused.
	pending := !n.renewingSince.IsZero() && n.renewingSince.Before(expiry)
	return trying && (away || pending)
}

// dialogWriteLoop writes queued dialogs: each new one created, each of
// ours updated at its revision, each deleted at its revision; one found
// owned by another node is forgotten here.
func (n *Node) dialogWriteLoop(ctx context.Context) {
	for {
		n.dmu.Lock()
		batch := n.dqueue
		n.dqueue = map[string]dialogOp{}
		n.dmu.Unlock()
		failed := n.writeDialogs(ctx, batch)
		if len(failed) > 0 {
			n.dmu.Lock()
			for id, op := range failed {
				if _, newer := n.dqueue[id]; !newer {
					n.dqueue[id] = op
				}
			}
			n.dmu.Unlock()
		}
		var retry <-chan time.Time
		if len(failed) > 0 {
			retry = time.After(time.Second)
		}
		select {
		case <-ctx.Done():
			return
		case <-n.dwake:
		case <-retry:
		}
	}
}

// pending is one asynchronous write waiting for the engine's answer.
type pending struct {
	id  string
	op  dialogOp
	ack jetstream.PubAckFuture
}

func (n *Node) writeDialogs(ctx context.Context, batch map[string]dialogOp) (failed map[string]dialogOp) {
	failed = map[string]dialogOp{}
	me := unique.Make(n.cfg.Node)
	var ids []string
	var ops []dialogOp
	var sums []uint64
	var msgs []*nats.Msg
	var lost []string
	for id, op := range batch {
		n.dmu.Lock()
		e, known := n.dindex[id]
		n.dmu.Unlock()
		if op.rec == nil && (!known || e.owner != me) {
			continue // never written, deleted already, or another node's
		}
		if known && e.owner != me && e.owner.Value() != "" {
			lost = append(lost, id) // another node's now: not ours to write
			continue
		}
		m := nats.NewMsg(n.dialogSubject(id))
		var sum uint64
		if op.rec == nil {
			m.Header.Set("KV-Operation", "DEL")
		} else {
			b, err := json.Marshal(dialogValue{Owner: n.cfg.Node, Dialog: *op.rec})
			if err != nil {
				continue
			}
			if sum = fnv64(b); known && e.owner == me && e.sum == sum {
				continue // the engine holds exactly this already (an adopted dialog's)
			}
			m.Data = b
		}
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(e.rev, 10))
		ids, ops, sums, msgs = append(ids, id), append(ops, op), append(sums, sum), append(msgs, m)
	}
	for i, r := range n.publishAll(ctx, msgs) {
		switch {
		case r.err == nil:
			n.noteDialog(ids[i], n.cfg.Node, ops[i].rec == nil, r.seq)
			n.noteSum(ids[i], sums[i])
			n.stats.Writes.Add(1)
		case isConflict(r.err):
			lost = append(lost, ids[i])
		default:
			n.failed("writing a dialog", r.err)
			failed[ids[i]] = ops[i]
		}
	}
	if len(lost) > 0 {
		n.checkLost(ctx, lost)
	}
	return failed
}

// published is the engine's answer to one message.
type published struct {
	seq uint64
	err error
}

// publishWindow is how many messages publishAll has in flight at once
// (nats.go stalls past 4,000 by default).
const publishWindow = 2000

// publishAll publishes msgs to JetStream, a window at a time, and returns
// each one's sequence or error.
func (n *Node) publishAll(ctx context.Context, msgs []*nats.Msg) []published {
	out := make([]published, len(msgs))
	for lo := 0; lo < len(msgs); lo += publishWindow {
		hi := min(lo+publishWindow, len(msgs))
		acks := make([]jetstream.PubAckFuture, hi-lo)
		sent := time.Now()
		for i := lo; i < hi; i++ {
			ack, err := n.js.PublishMsgAsync(msgs[i])
			if err != nil {
				out[i].err = err
				continue
			}
			acks[i-lo] = ack
		}
		timeout := time.After(10 * time.Second)
		for i := lo; i < hi; i++ {
			ack := acks[i-lo]
			if ack == nil {
				continue
			}
			select {
			case pa := <-ack.Ok():
				out[i].seq = pa.Sequence
			case err := <-ack.Err():
				out[i].err = err
			case <-timeout:
				out[i].err = context.DeadlineExceeded
			case <-ctx.Done():
				out[i].err = ctx.Err()
			}
		}
		n.stats.EngineNanos.Add(int64(time.Since(sent)))
		n.stats.EngineOps.Add(int64(hi - lo))
	}
	return out
}

// checkLost reads dialogs whose write met another revision: those another
// node owns now are forgotten here; ours (the index was behind) are
// written again.
func (n *Node) checkLost(ctx context.Context, ids []string) {
	var forget, again []string
	for _, id := range ids {
		e, err := n.dialogs.Get(ctx, id)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
			forget = append(forget, id)
		case err != nil:
			again = append(again, id)
		default:
			var v dialogValue
			if json.Unmarshal(e.Value(), &v) != nil || v.Owner != n.cfg.Node {
				n.noteDialog(id, v.Owner, false, e.Revision())
				forget = append(forget, id)
				continue
			}
			n.noteDialog(id, v.Owner, false, e.Revision())
			again = append(again, id)
		}
	}
	if len(forget) > 0 && n.host != nil {
		n.host.Forget(forget)
	}
	if len(again) > 0 && n.host != nil {
		n.host.Resave(again)
	}
}

func isConflict(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == 10164
	}
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}

func (n *Node) dialogSubject(id string) string { return "$KV." + n.cfg.BucketPrefix + "_dialogs." + id }

// noteDialog records a dialog key's owner and revision, if newer than
// what the index holds.
func (n *Node) noteDialog(id, owner string, deleted bool, rev uint64) (prev dialogEntry, changed bool) {
	if deleted {
		owner = ""
	}
	n.dmu.Lock()
	defer n.dmu.Unlock()
	prev, known := n.dindex[id]
	if known && rev <= prev.rev {
		return prev, false
	}
	next := dialogEntry{owner: unique.Make(owner), rev: rev}
	n.dindex[id] = next
	if known {
		n.uncount(prev.owner)
	}
	n.byOwner[next.owner]++
	if deleted {
		n.dgone[id] = time.Now()
	}
	return prev, true
}

// uncount takes one dialog off an owner's count; called with dmu held.
func (n *Node) uncount(owner unique.Handle[string]) {
	if n.byOwner[owner]--; n.byOwner[owner] <= 0 {
		delete(n.byOwner, owner)
	}
}

// noteSum records the value this node wrote for a dialog at the revision
// just noted.
func (n *Node) noteSum(id string, sum uint64) {
	n.dmu.Lock()
	if e, ok := n.dindex[id]; ok {
		e.sum = sum
		n.dindex[id] = e
	}
	n.dmu.Unlock()
}

// fnv64 is FNV-1a over b.
func fnv64(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

// forgetEnded takes dialogs that ended more than age ago out of the
// index and purges their delete markers from the bucket: the index and
// the bucket hold the dialogs alive and the recently ended only.
func (n *Node) forgetEnded(ctx context.Context, age time.Duration) {
	cut := time.Now().Add(-age)
	n.dmu.Lock()
	for id, at := range n.dgone {
		if at.Before(cut) {
			if e, ok := n.dindex[id]; ok && e.owner.Value() == "" {
				delete(n.dindex, id)
				n.uncount(e.owner)
			}
			delete(n.dgone, id)
		}
	}
	n.dmu.Unlock()
	if err := n.dialogs.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(age)); err != nil {
		n.failed("purging ended dialogs", err)
	}
}

// dialogWatchLoop follows the dialogs bucket (owners and revisions).
func (n *Node) dialogWatchLoop(ctx context.Context) {
	for ctx.Err() == nil {
		var opts []jetstream.WatchOpt
		if seen := n.dseen.Load(); seen > 0 {
			opts = append(opts, jetstream.ResumeFromRevision(seen+1))
		}
		w, err := n.dialogs.WatchAll(ctx, opts...)
		if err != nil {
			n.failed("watching dialogs", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		n.followDialogs(ctx, w)
		_ = w.Stop()
	}
}

func (n *Node) followDialogs(ctx context.Context, w jetstream.KeyWatcher) {
	me := unique.Make(n.cfg.Node)
	var lost []string
	flush := func() {
		if len(lost) > 0 && n.host != nil {
			n.host.Forget(lost)
		}
		lost = lost[:0]
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.drewatch:
			flush()
			return
		case e, ok := <-w.Updates():
			if !ok {
				flush()
				return
			}
			if e == nil {
				flush()
				n.mu.Lock()
				n.dsynced = true
				n.mu.Unlock()
				n.dsyncCond()
				continue
			}
			if rev := e.Revision(); rev > n.dseen.Load() {
				n.dseen.Store(rev)
			}
			owner := ""
			deleted := e.Operation() != jetstream.KeyValuePut
			if !deleted {
				owner = ownerOf(e.Value())
			}
			prev, changed := n.noteDialog(e.Key(), owner, deleted, e.Revision())
			if changed && !deleted && owner != n.cfg.Node && (prev.rev == 0 || prev.owner == me) {
				lost = append(lost, e.Key())
			}
			if len(lost) >= 256 || len(w.Updates()) == 0 {
				flush()
			}
		}
	}
}

// dsyncCond wakes whoever waits for the dialogs watch to have read the
// bucket whole.
func (n *Node) dsyncCond() {
	select {
	case n.dsyncedCh <- struct{}{}:
	default:
	}
}

// readDialogs reads every dialog record in the bucket (a fresh watch's
// initial values) and returns those keep selects.
func (n *Node) readDialogs(ctx context.Context, keep func(owner string) bool) ([]presence.SavedSubscription, map[string]uint64, error) {
	w, err := n.dialogs.WatchAll(ctx)
	if err != nil {
		return nil, nil, err
	}
	defer w.Stop()
	var out []presence.SavedSubscription
	revs := map[string]uint64{}
	for {
		select {
		case <-ctx.Done():
			return nil, nil, ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return nil, nil, errors.New("the watch ended")
			}
			if e == nil {
				return out, revs, nil
			}
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var v dialogValue
			// Only the records kept are decoded (a claim keeps a third).
			if !keep(ownerOf(e.Value())) || json.Unmarshal(e.Value(), &v) != nil {
				continue
			}
			out = append(out, v.Dialog)
			revs[v.Dialog.ID] = e.Revision()
		}
	}
}

// claimFrom takes the dialogs of a dead node: each is rewritten with this
// node as owner at its revision (one node wins each), and the won ones
// are adopted (each NOTIFYed in its dialog).
func (n *Node) claimFrom(ctx context.Context, dead string) {
	start := time.Now()
	recs, revs, err := n.readDialogs(ctx, func(owner string) bool { return owner == dead })
	if err != nil {
		n.failed("reading a dead node's dialogs", err)
		return
	}
	read := time.Since(start)
	rand.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
	// Claimed and adopted a chunk at a time, so that the first phones
	// hear from this node while the rest are still being claimed.
	won, adopted := 0, 0
	for lo := 0; lo < len(recs); lo += publishWindow {
		chunk := recs[lo:min(lo+publishWindow, len(recs))]
		msgs := make([]*nats.Msg, len(chunk))
		sums := make([]uint64, len(chunk))
		for i, r := range chunk {
			b, _ := json.Marshal(dialogValue{Owner: n.cfg.Node, Dialog: presence.Reserved(r)})
			sums[i] = fnv64(b)
			m := nats.NewMsg(n.dialogSubject(r.ID))
			m.Data = b
			m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(revs[r.ID], 10))
			msgs[i] = m
		}
		var mine []presence.SavedSubscription
		for i, p := range n.publishAll(ctx, msgs) {
			if p.err == nil {
				n.noteDialog(chunk[i].ID, n.cfg.Node, false, p.seq)
				n.noteSum(chunk[i].ID, sums[i])
				mine = append(mine, chunk[i])
			}
		}
		won += len(mine)
		n.stats.Claims.Add(int64(len(mine)))
		if n.host != nil && len(mine) > 0 {
			adopted += n.host.Adopt(mine, true)
		}
	}
	n.log.Info("took over a dead node's dialogs", "dead", dead, "dialogs", len(recs), "won", won,
		"adopted", adopted, "read", read.Round(time.Millisecond), "took", time.Since(start).Round(time.Millisecond))
}

// Claim implements presence Options.Claim: another node's dialog that a
// refresh brought here is taken over (compare-and-set on its revision).
func (n *Node) Claim(id string) (presence.SavedSubscription, bool) {
	if n.dialogs == nil {
		return presence.SavedSubscription{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := n.dialogs.Get(ctx, id)
	if err != nil {
		return presence.SavedSubscription{}, false
	}
	var v dialogValue
	if json.Unmarshal(e.Value(), &v) != nil {
		return presence.SavedSubscription{}, false
	}
	// Stored with its reservations moved on (presence.Reserved), owner
	// or not: the adopted dialog's NOTIFYs run below them.
	b, _ := json.Marshal(dialogValue{Owner: n.cfg.Node, Dialog: presence.Reserved(v.Dialog)})
	rev, err := n.dialogs.Update(ctx, id, b, e.Revision())
	if err != nil {
		return presence.SavedSubscription{}, false
	}
	n.noteDialog(id, n.cfg.Node, false, rev)
	n.noteSum(id, fnv64(b))
	if v.Owner != n.cfg.Node {
		n.stats.Claims.Add(1)
		n.log.Info("took over a dialog a refresh brought here", "id", id, "from", v.Owner)
	}
	return v.Dialog, true
}

// ownerOf reads a dialog value's owner: from the start of the document,
// where dialogValue puts it (node names hold no quotes), else by decoding.
func ownerOf(v []byte) string {
	const prefix = `{"owner":"`
	if rest, ok := bytes.CutPrefix(v, []byte(prefix)); ok {
		if i := bytes.IndexByte(rest, '"'); i >= 0 {
			return string(rest[:i])
		}
	}
	var d struct {
		Owner string `json:"owner"`
	}
	_ = json.Unmarshal(v, &d)
	return d.Owner
}
