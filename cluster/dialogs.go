package cluster

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/maphash"
	"strconv"
	"strings"
	"time"
	"unique"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lamplighter/lamplighter/presence"
	"github.com/lamplighter/lamplighter/presence/durable"
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
// who owns it at which revision ("" for deleted), and under which key.
type dialogEntry struct {
	owner unique.Handle[string]
	// acceptor is the node that wrote the dialog first: its key is
	// "<acceptor>.<id>", so that the node taking over a dead node's
	// dialogs reads only the keys of the acceptors among them, not the
	// whole bucket. "" is a key without a prefix (written by an older
	// version): the dialog's id alone.
	acceptor unique.Handle[string]
	rev      uint64
	sum      uint64 // FNV-1a of the value this node last wrote (0: none)
}

// key is the bucket key of the dialog id this entry is of.
func (e dialogEntry) key(id string) string {
	if a := e.acceptor.Value(); a != "" {
		return a + "." + id
	}
	return id
}

// splitDialogKey reads a dialog key: its acceptor ("" when it has none)
// and the dialog's id (ids hold no dots).
func splitDialogKey(key string) (acceptor, id string) {
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		return key[:i], key[i+1:]
	}
	return "", key
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
		} else if len(batch) > 0 {
			n.recovered("writing a dialog")
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
	me := n.me
	var ids []string
	var accs []unique.Handle[string]
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
		if !known {
			e.acceptor = me // a new dialog: under this node's prefix
		}
		var sum uint64
		var b []byte
		if op.rec != nil {
			if sum = recordSum(n.seed, op.rec); known && e.owner == me && e.sum == sum {
				continue // the engine holds exactly this already (an adopted dialog's)
			}
			b = encodeDialog(n.cfg.Node, op.rec)
		}
		m := nats.NewMsg(n.dialogSubject(e.key(id)))
		if op.rec == nil {
			m.Header.Set("KV-Operation", "DEL")
		} else {
			m.Data = b
		}
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(e.rev, 10))
		ids, accs, ops, sums, msgs = append(ids, id), append(accs, e.acceptor), append(ops, op), append(sums, sum), append(msgs, m)
	}
	for i, r := range n.publishAll(ctx, msgs) {
		switch {
		case r.err == nil:
			n.noteDialog(ids[i], accs[i], n.cfg.Node, ops[i].rec == nil, r.seq)
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
	out := make([]published, 0, len(msgs))
	for lo := 0; lo < len(msgs); lo += publishWindow {
		w := n.publishAsync(msgs[lo:min(lo+publishWindow, len(msgs))])
		out = append(out, w.wait(ctx)...)
	}
	return out
}

// inFlight is a window of messages published, waiting for their answers.
type inFlight struct {
	n    *Node
	acks []jetstream.PubAckFuture
	errs []error
	sent time.Time
}

// publishAsync publishes msgs without waiting for the engine's answers.
func (n *Node) publishAsync(msgs []*nats.Msg) *inFlight {
	f := &inFlight{n: n, acks: make([]jetstream.PubAckFuture, len(msgs)), errs: make([]error, len(msgs)), sent: time.Now()}
	for i, m := range msgs {
		f.acks[i], f.errs[i] = n.js.PublishMsgAsync(m)
	}
	return f
}

// wait returns each message's sequence or error.
func (f *inFlight) wait(ctx context.Context) []published {
	out := make([]published, len(f.acks))
	timeout := time.After(10 * time.Second)
	for i, ack := range f.acks {
		if f.errs[i] != nil || ack == nil {
			out[i].err = f.errs[i]
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
	f.n.stats.EngineNanos.Add(int64(time.Since(f.sent)))
	f.n.stats.EngineOps.Add(int64(len(f.acks)))
	return out
}

// checkLost reads dialogs whose write met another revision: those another
// node owns now are forgotten here; ours (the index was behind) are
// written again.
func (n *Node) checkLost(ctx context.Context, ids []string) {
	var forget, again []string
	for _, id := range ids {
		n.dmu.Lock()
		de := n.dindex[id]
		n.dmu.Unlock()
		if de.acceptor == (unique.Handle[string]{}) {
			de.acceptor = n.me
		}
		e, err := n.dialogs.Get(ctx, de.key(id))
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
			forget = append(forget, id)
		case err != nil:
			again = append(again, id)
		default:
			v, err := decodeDialog(e.Value())
			if err != nil || v.Owner != n.cfg.Node {
				n.noteDialog(id, de.acceptor, v.Owner, false, e.Revision())
				forget = append(forget, id)
				continue
			}
			n.noteDialog(id, de.acceptor, v.Owner, false, e.Revision())
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

func (n *Node) dialogSubject(key string) string {
	return "$KV." + n.cfg.BucketPrefix + "_dialogs." + key
}

// noteDialog records a dialog key's owner and revision, if newer than
// what the index holds.
func (n *Node) noteDialog(id string, acceptor unique.Handle[string], owner string, deleted bool, rev uint64) (prev dialogEntry, changed bool) {
	if deleted {
		owner = ""
	}
	n.dmu.Lock()
	defer n.dmu.Unlock()
	prev, known := n.dindex[id]
	if known && rev <= prev.rev {
		return prev, false
	}
	next := dialogEntry{owner: unique.Make(owner), acceptor: acceptor, rev: rev}
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

// recordSum identifies a dialog record as this node wrote it, so that a
// write of what the engine holds already is skipped. It reads every field
// the record is stored with, straight (encoding the record to compare
// would cost as much as the write it may save).
func recordSum(seed maphash.Seed, r *presence.SavedSubscription) uint64 {
	var h maphash.Hash
	h.SetSeed(seed)
	str := func(v string) {
		num(&h, uint64(len(v)))
		h.WriteString(v)
	}
	for _, v := range []string{r.ID, r.CallID, r.RemoteTag, r.UserID, r.List, r.Entity, string(r.Package), r.EventID,
		r.Accept, r.LocalURI, r.RemoteURI, r.Target, r.Transport, r.Source, r.Watcher, r.Grant, r.UserAgent} {
		str(v)
	}
	num(&h, uint64(len(r.Routes)))
	for _, v := range r.Routes {
		str(v)
	}
	single := uint64(0)
	if r.Single {
		single = 1
	}
	num(&h, single)
	num(&h, uint64(r.Expires.UnixNano()))
	num(&h, uint64(r.RemoteCSeq))
	num(&h, uint64(r.CSeq))
	num(&h, uint64(r.Version))
	return h.Sum64()
}

// num hashes v's eight bytes.
func num(h *maphash.Hash, v uint64) {
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], v)
	h.Write(buf[:])
}

// forgetEnded takes dialogs that ended more than age ago out of the
// index, which holds the dialogs alive and the recently ended only (the
// leading node purges their delete markers from the bucket: purgeMarkers).
func (n *Node) forgetEnded(age time.Duration) {
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
}

// followDialogs follows the dialogs bucket (owners and revisions), for
// watchLoop.
func (n *Node) followDialogs(ctx context.Context, w jetstream.KeyWatcher) {
	me := n.me
	// The acceptors' handles, made once each (unique.Make costs).
	acceptors := map[string]unique.Handle[string]{}
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
			acc, id := splitDialogKey(e.Key())
			h, ok := acceptors[acc]
			if !ok {
				h = unique.Make(acc)
				acceptors[acc] = h
			}
			prev, changed := n.noteDialog(id, h, owner, deleted, e.Revision())
			if changed && !deleted && owner != n.cfg.Node && (prev.rev == 0 || prev.owner == me) {
				lost = append(lost, id)
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

// stored is where a dialog record was read: its key and revision.
type stored struct {
	key string
	rev uint64
}

// readDialogsOf hands each dialog record that owner holds to each, with
// where it was read. The index says under which acceptors' prefixes they
// are: only those keys are read (a dead node's share of the bucket,
// mostly under its own prefix), unless some are under keys without a
// prefix (an older version wrote them), when the whole bucket is.
func (n *Node) readDialogsOf(ctx context.Context, owner string, each func(presence.SavedSubscription, stored)) error {
	who := unique.Make(owner)
	prefixes := map[string]bool{}
	n.dmu.Lock()
	for _, e := range n.dindex {
		if e.owner == who {
			prefixes[e.acceptor.Value()] = true
		}
	}
	n.dmu.Unlock()
	if prefixes[""] {
		return n.readDialogs(ctx, ">", owner, each)
	}
	for p := range prefixes {
		if err := n.readDialogs(ctx, p+".*", owner, each); err != nil {
			return err
		}
	}
	return nil
}

// collectDialogsOf is readDialogsOf into a slice.
func (n *Node) collectDialogsOf(ctx context.Context, owner string) ([]presence.SavedSubscription, map[string]stored, error) {
	var out []presence.SavedSubscription
	at := map[string]stored{}
	err := n.readDialogsOf(ctx, owner, func(r presence.SavedSubscription, where stored) {
		out = append(out, r)
		at[r.ID] = where
	})
	return out, at, err
}

// readDialogs reads the dialog records under the keys the pattern keys
// matches (a fresh watch's initial values) and hands those owner holds
// to each.
func (n *Node) readDialogs(ctx context.Context, keys, owner string, each func(presence.SavedSubscription, stored)) error {
	w, err := n.dialogs.Watch(ctx, keys)
	if err != nil {
		return err
	}
	defer w.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("the watch ended")
			}
			if e == nil {
				return nil
			}
			if e.Operation() != jetstream.KeyValuePut {
				continue
			}
			// Only the records kept are decoded.
			if ownerOf(e.Value()) != owner {
				continue
			}
			v, err := decodeDialog(e.Value())
			if err != nil {
				continue
			}
			each(v.Dialog, stored{key: e.Key(), rev: e.Revision()})
		}
	}
}

// claimWindow is how many claims are in flight at once; the next window
// is published before the answers to the last are read, and the won
// dialogs are adopted meanwhile, so that the engine, this node and the
// phones all work at once.
const claimWindow = 1000

// claimItem is a dead node's dialog to claim, as read.
type claimItem struct {
	rec presence.SavedSubscription
	at  stored
}

// claimFrom takes the dialogs of a dead node: each is rewritten with this
// node as owner at its revision (one node wins each), and the won ones
// are adopted (each NOTIFYed in its dialog). The claims start as soon as
// the first records are read, and each window won is adopted while the
// next is in flight: the read, the engine's answers and the NOTIFYs
// overlap.
func (n *Node) claimFrom(ctx context.Context, dead string) {
	start := time.Now()
	items := make(chan claimItem, claimWindow)
	var readErr error
	var read time.Duration
	go func() {
		defer close(items)
		readErr = n.readDialogsOf(ctx, dead, func(r presence.SavedSubscription, at stored) {
			select {
			case items <- claimItem{r, at}:
			case <-ctx.Done():
			}
		})
		read = time.Since(start)
	}()
	collect := func() []claimItem {
		var out []claimItem
		for it := range items {
			if out = append(out, it); len(out) == claimWindow {
				break
			}
		}
		return out
	}

	adopt := make(chan []presence.SavedSubscription, 4)
	adopted := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for mine := range adopt {
			if n.host != nil {
				adopted += n.host.Adopt(mine, true)
			}
		}
	}()
	acceptors := map[string]unique.Handle[string]{}
	type window struct {
		items []claimItem
		sums  []uint64
		f     *inFlight
	}
	send := func(items []claimItem) *window {
		if len(items) == 0 {
			return nil
		}
		w := &window{items: items, sums: make([]uint64, len(items))}
		msgs := make([]*nats.Msg, len(items))
		for i, it := range items {
			rec := presence.Reserved(it.rec)
			b := encodeDialog(n.cfg.Node, &rec)
			w.sums[i] = recordSum(n.seed, &rec)
			m := nats.NewMsg(n.dialogSubject(it.at.key))
			m.Data = b
			m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(it.at.rev, 10))
			msgs[i] = m
		}
		w.f = n.publishAsync(msgs)
		return w
	}
	total, won := 0, 0
	for cur := send(collect()); cur != nil; {
		next := send(collect())
		var mine []presence.SavedSubscription
		for i, p := range cur.f.wait(ctx) {
			if p.err != nil {
				continue
			}
			it := cur.items[i]
			acc, _ := splitDialogKey(it.at.key)
			h, ok := acceptors[acc]
			if !ok {
				h = unique.Make(acc)
				acceptors[acc] = h
			}
			n.noteDialog(it.rec.ID, h, n.cfg.Node, false, p.seq)
			n.noteSum(it.rec.ID, cur.sums[i])
			mine = append(mine, it.rec)
		}
		total += len(cur.items)
		won += len(mine)
		n.stats.Claims.Add(int64(len(mine)))
		if len(mine) > 0 {
			adopt <- mine
		}
		cur = next
	}
	close(adopt)
	<-done
	if readErr != nil {
		n.failed("reading a dead node's dialogs", readErr)
	}
	n.log.Info("took over a node's dialogs", "from", dead, "dialogs", total, "won", won,
		"adopted", adopted, "read", read.Round(time.Millisecond), "took", time.Since(start).Round(time.Millisecond))
}

// Claim implements presence Options.Claim: another node's dialog that a
// refresh brought here is taken over (compare-and-set on its revision).
func (n *Node) Claim(id string) (presence.SavedSubscription, bool) {
	if n.dialogs == nil {
		return presence.SavedSubscription{}, false
	}
	n.dmu.Lock()
	de, known := n.dindex[id]
	n.dmu.Unlock()
	if !known {
		return presence.SavedSubscription{}, false // no node wrote it
	}
	key := de.key(id)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	e, err := n.dialogs.Get(ctx, key)
	if err != nil {
		return presence.SavedSubscription{}, false
	}
	v, err := decodeDialog(e.Value())
	if err != nil {
		return presence.SavedSubscription{}, false
	}
	// Stored with its reservations moved on (presence.Reserved), owner
	// or not: the adopted dialog's NOTIFYs run below them.
	rec := presence.Reserved(v.Dialog)
	b := encodeDialog(n.cfg.Node, &rec)
	rev, err := n.dialogs.Update(ctx, key, b, e.Revision())
	if err != nil {
		return presence.SavedSubscription{}, false
	}
	n.noteDialog(id, de.acceptor, n.cfg.Node, false, rev)
	n.noteSum(id, recordSum(n.seed, &rec))
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

// encodeDialog is a dialog key's value: what encoding/json writes for a
// dialogValue, written directly (durable.AppendSubscription).
func encodeDialog(owner string, rec *presence.SavedSubscription) []byte {
	b := make([]byte, 0, 512)
	b = append(b, `{"owner":`...)
	ob, _ := json.Marshal(owner)
	b = append(b, ob...)
	b = append(b, `,"dialog":`...)
	b = durable.AppendSubscription(b, rec)
	return append(b, '}')
}

// decodeDialog reads a dialog key's value: its record read directly
// (durable.ParseSubscription) when the value has the shape encodeDialog
// gives it, by encoding/json otherwise.
func decodeDialog(v []byte) (dialogValue, error) {
	const prefix = `{"owner":"`
	if rest, ok := bytes.CutPrefix(v, []byte(prefix)); ok {
		if i := bytes.IndexByte(rest, '"'); i >= 0 && bytes.IndexByte(rest[:i], '\\') < 0 {
			if rec, ok := bytes.CutPrefix(rest[i+1:], []byte(`,"dialog":`)); ok && len(rec) > 0 && rec[len(rec)-1] == '}' {
				if d, err := durable.ParseSubscription(rec[:len(rec)-1]); err == nil {
					return dialogValue{Owner: string(rest[:i]), Dialog: d}, nil
				}
			}
		}
	}
	var d dialogValue
	err := json.Unmarshal(v, &d)
	return d, err
}
