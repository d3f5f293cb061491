package cluster

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/maphash"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unique"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence"
)

// Local is this node's bridge, where person states from other nodes are
// applied (*bridge.Bridge is one).
type Local interface {
	SetPerson(userID, origin string, p bridge.PersonState) error
	ClearPerson(userID, origin string)
}

// Node is this Lamplighter's membership of a cluster: its NATS
// connection, its lease, and the person states it shares. It never
// blocks the SIP or HTTP paths on the engine: writes are queued and
// retried, and while the engine is away the node serves from memory.
type Node struct {
	cfg      Config
	log      *slog.Logger
	local    Local
	instance string // this process, among restarts of the node

	wake    chan struct{} // the writer has work
	rewatch chan struct{} // the watch should start again (see checkWatch)
	seen    atomic.Uint64 // the newest revision the watch delivered
	lagging bool          // the watch was behind at the last check

	host Host                  // the SIP server whose dialogs are kept (Attach)
	me   unique.Handle[string] // cfg.Node's handle
	seed maphash.Seed          // of recordSum

	mu            sync.Mutex
	keys          map[string]*keyState // person key → what this node wrote and applied
	queue         map[string]*personValue
	nc            *nats.Conn
	js            jetstream.JetStream
	persons       jetstream.KeyValue
	leases        jetstream.KeyValue
	dialogs       jetstream.KeyValue
	shared        jetstream.KeyValue // keys every node holds alike (keys.go)
	leasedAt      time.Time          // when the last lease renewal the engine took was sent
	leaseRev      uint64             // the revision of our lease key
	awaySince     time.Time          // since when the engine has been out of reach (connection lost or renewals failing); zero while a renewal succeeds
	renewingSince time.Time          // when the renewal under way began (zero: none)
	lastAttempt   time.Time          // when the last renewal attempt ended
	reconciled    bool               // what this node holds agrees with the engine (MayNotify)
	reconciling   bool               // a reconcile is under way
	synced        bool               // the persons bucket was read whole since the watch began
	dsynced       bool               // the dialogs bucket too
	members       []string
	created       time.Time // when New made the node
	lastError     string
	lastErrorOp   string // the operation lastError came from
	// view holds the leases as the lease watch last showed them, by
	// node (members.go); viewSynced: it has read the bucket whole.
	view       map[string]leaseSeen
	viewSynced bool
	viewBehind time.Time // since when the view has lacked this node's last renewal
	lseen      atomic.Uint64
	lrewatch   chan struct{}
	// leasedSince is when this node last held a fresh lease after being
	// without one.
	leasedSince time.Time
	leaseLost   bool      // a renewal failed since the lease was last held (logged once)
	started     time.Time // when Run began

	// provisional are the person states applied at start from this node's
	// state file, until the engine's first read says what holds (keys).
	provisional map[string]bool

	sharedKeys []sharedKey // set before Run (ShareKey)

	// followers apply other nodes' records, by origin (records.go); set
	// before Run.
	followers map[string]func(id string, data []byte)

	// bindSums holds, per user, the sum of the bindings this node last
	// applied from the engine or wrote to it (registrations.go).
	bindSums map[string]uint64

	// sweep holds the person keys to sweep (noteSweep); the ages are
	// constants but for tests.
	sweep                               map[string]sweepItem
	sweepEvery, tombstoneAge, markerAge time.Duration

	// Dialogs (dialogs.go).
	dmu       sync.Mutex
	dqueue    map[string]dialogOp
	dindex    map[string]dialogEntry
	dgone     map[string]time.Time          // when each deleted dialog of dindex was deleted
	byOwner   map[unique.Handle[string]]int // dialogs of dindex per owner (deleted ones under "")
	dwake     chan struct{}
	drewatch  chan struct{}
	dsyncedCh chan struct{}
	dseen     atomic.Uint64

	// writeSeq numbers this node's person writes (live.go).
	writeSeq atomic.Uint64

	// notifyUntil is when the lease last renewed runs out, while the node
	// is reconciled: before it, MayNotify needs no lock (unix nanos).
	notifyUntil atomic.Int64

	stats Stats
}

// Stats are a node's counts since it started.
type Stats struct {
	Writes        atomic.Int64 // person states written to the engine
	WriteErrors   atomic.Int64 // engine operations that failed (retried)
	Applied       atomic.Int64 // person states from other nodes applied here
	Claims        atomic.Int64 // dialogs taken over from other nodes
	Hinted        atomic.Int64 // person states shown from live hints before the bucket brought them
	LeaseRenewals atomic.Int64
	LeaseFailures atomic.Int64
	// EngineNanos and EngineOps give the mean latency of engine writes.
	EngineNanos atomic.Int64
	EngineOps   atomic.Int64
}

// keyState is one person key's bookkeeping (see apply).
type keyState struct {
	applied uint64 // the newest revision shown here
	writing bool   // a local write is queued or under way
	gen     uint64 // local writes queued so far
	skipped jetstream.KeyValueEntry
	// last is the value at revision applied (the newest this node knows,
	// whether the watch brought it or our own write put it); hinted: a
	// live hint shows instead (live.go).
	last   *personValue
	hinted bool
	hint   *personValue
	// mine is our newest write while one is queued or under way (the
	// local bridge shows it already).
	mine *personValue
	// ver counts changes of what this node should show for the key
	// (settle).
	ver uint64
	// seen is, per node, the newest write of that node the bucket has
	// delivered here (shown or not): a hint of it or of an older one
	// is stale. hintNode and hintSeq are the last hint shown, so that its
	// repeats are not.
	seen     []nodeSeq
	hintNode string
	hintSeq  uint64
}

// nodeSeq is one node's write sequence number.
type nodeSeq struct {
	node string
	seq  uint64
}

// saw notes that the bucket holds node's write seq.
func (ks *keyState) saw(node string, seq uint64) {
	for i := range ks.seen {
		if ks.seen[i].node == node {
			ks.seen[i].seq = max(ks.seen[i].seq, seq)
			return
		}
	}
	ks.seen = append(ks.seen, nodeSeq{node, seq})
}

// stale reports whether the bucket has delivered node's write seq or a
// newer one.
func (ks *keyState) stale(node string, seq uint64) bool {
	for _, s := range ks.seen {
		if s.node == node {
			return seq <= s.seq
		}
	}
	return false
}

// personValue is what a person key holds.
type personValue struct {
	Node    string              `json:"node"`
	User    string              `json:"user"`
	Origin  string              `json:"origin"`
	Cleared bool                `json:"cleared,omitempty"`
	Person  *bridge.PersonState `json:"person,omitempty"`
	Extra   [][]byte            `json:"extra,omitempty"` // Person.Extra, which bridge does not marshal
	// Bindings are a user's registrations, under bindingsOrigin.
	Bindings []presence.Binding `json:"bindings,omitempty"`
	// Record and Until are a record's data and when it lapses, under a
	// record kind's origin (records.go).
	Record []byte    `json:"record,omitempty"`
	Until  time.Time `json:"until,omitzero"`
	// Seq orders the writes of one node (live.go).
	Seq uint64 `json:"seq,omitempty"`
	gen uint64
}

// New makes a node; Run connects it and keeps it going.
func New(cfg Config, local Local, log *slog.Logger) *Node {
	cfg.Defaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var id [8]byte
	_, _ = rand.Read(id[:])
	return &Node{cfg: cfg, log: log, local: local, instance: hex.EncodeToString(id[:]), me: unique.Make(cfg.Node), seed: maphash.MakeSeed(),
		wake: make(chan struct{}, 1), rewatch: make(chan struct{}, 1), keys: map[string]*keyState{}, followers: map[string]func(string, []byte){}, queue: map[string]*personValue{},
		bindSums: map[string]uint64{}, sweep: map[string]sweepItem{}, sweepEvery: sweepEvery, tombstoneAge: tombstoneAge,
		markerAge: deleteMarkerAge, dqueue: map[string]dialogOp{}, dindex: map[string]dialogEntry{}, dgone: map[string]time.Time{}, byOwner: map[unique.Handle[string]]int{}, dwake: make(chan struct{}, 1),
		drewatch: make(chan struct{}, 1), dsyncedCh: make(chan struct{}, 1), view: map[string]leaseSeen{}, lrewatch: make(chan struct{}, 1),
		created: time.Now()}
}

// Provisional tells the node which person states the daemon applied at
// start from its own state file (userID, origin pairs), so that the node
// serves them while the engine is away and clears those the engine no
// longer has once it has read it (they were cleared on another node
// meanwhile). Call it before Run.
func (n *Node) Provisional(keys [][2]string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.provisional = make(map[string]bool, len(keys))
	for _, k := range keys {
		n.provisional[personKey(k[0], k[1])] = true
	}
}

// Name is the node's name.
func (n *Node) Name() string { return n.cfg.Node }

// Stats returns the node's counts.
func (n *Node) Stats() *Stats { return &n.stats }

// Status is what /readyz says of the cluster.
type Status struct {
	Node      string   `json:"node"`
	Connected bool     `json:"connected"` // to a NATS server
	Leased    bool     `json:"leased"`    // the lease is fresh: other nodes count this one alive
	Synced    bool     `json:"synced"`    // every shared person state and dialog owner has been read
	Dialogs   int      `json:"dialogs_owned"`
	Members   []string `json:"members"` // nodes whose lease is fresh
	Pending   int      `json:"pending_writes"`
	Server    string   `json:"server,omitempty"`
	LastError string   `json:"last_error,omitempty"`
}

// Degraded reports whether the node runs on its own: the engine is away
// or its lease has lapsed.
func (s Status) Degraded() bool { return !s.Connected || !s.Leased || !s.Synced }

// Status returns the node's view of the cluster.
func (n *Node) Status() Status {
	owned := n.owned()
	n.mu.Lock()
	defer n.mu.Unlock()
	st := Status{Node: n.cfg.Node, Synced: n.synced && n.dsynced, Members: slices.Clone(n.members), Pending: len(n.queue),
		LastError: n.lastError, Dialogs: owned}
	if n.nc != nil {
		st.Connected = n.nc.IsConnected()
		st.Server = n.nc.ConnectedUrlRedacted()
	}
	st.Leased = n.leaseFresh()
	return st
}

// Leads reports whether this node is the one of the cluster that writes
// to the PBXs (the dnd mirror): the first, by name, of the nodes whose
// lease is fresh. Alone or cut off, a node leads.
func (n *Node) Leads() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	fresh := n.leaseFresh()
	if !fresh || len(n.members) == 0 {
		return true
	}
	for _, m := range n.members {
		if m != n.cfg.Node && m < n.cfg.Node {
			return false
		}
	}
	return true
}

// Settled reports whether Leads can be believed for work every node
// could do but one should (reading people's calendars): the node has
// judged the members from the engine's leases, or it has run a lease's
// length without an engine (and then does the work alone).
func (n *Node) Settled() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.members) > 0 || time.Since(n.created) > n.cfg.LeaseTTL
}

// leaseFresh reports whether this node's lease was renewed within its
// TTL; called with n.mu held.
func (n *Node) leaseFresh() bool {
	return !n.leasedAt.IsZero() && time.Since(n.leasedAt) < n.cfg.LeaseTTL
}

// every calls f every d until ctx ends or f says to stop.
func every(ctx context.Context, d time.Duration, f func() bool) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !f() {
			return
		}
	}
}

// owned counts the dialogs the engine says this node owns.
func (n *Node) owned() int {
	n.dmu.Lock()
	defer n.dmu.Unlock()
	return n.byOwner[unique.Make(n.cfg.Node)]
}

// Run connects to NATS, binds the buckets, and then renews the lease,
// writes queued person states and applies other nodes' until ctx ends.
// An engine that is away is waited for; Run returns only with ctx.
func (n *Node) Run(ctx context.Context) error {
	n.mu.Lock()
	n.started = time.Now()
	n.mu.Unlock()
	nc, err := n.connect()
	if err != nil {
		return err
	}
	n.mu.Lock()
	n.nc = nc
	n.mu.Unlock()
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	n.js = js
	began := time.Now()
	for tries := 1; ; tries++ {
		if err = n.bind(ctx, js); err == nil {
			break
		}
		n.failed("binding the buckets", err)
		if tries%5 == 1 {
			// A fresh engine elects its JetStream leader and places the
			// buckets' replicas first: say what we wait for.
			n.log.Info("cluster: waiting for the engine to create the buckets (a JetStream leader, enough servers for the replicas)",
				"waited", time.Since(began).Round(time.Second), "replicas", n.cfg.Replicas, "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
	n.recovered("binding the buckets")
	if sub, err := nc.Subscribe(n.liveSubject(), n.onHint); err == nil {
		defer func() { _ = sub.Unsubscribe() }()
	}
	n.log.Info("cluster joined", "node", n.cfg.Node, "server", nc.ConnectedUrlRedacted(), "replicas", n.cfg.Replicas)
	var wg, writers sync.WaitGroup
	wg.Add(8)
	writers.Add(2)
	go func() { defer wg.Done(); n.rehintLoop(ctx) }()
	go func() { defer wg.Done(); n.watchLoop(ctx, n.leases, &n.lseen, "node leases", n.followLeases) }()
	go func() { defer wg.Done(); n.agreeKeys(ctx) }()
	go func() { defer wg.Done(); n.nodesLoop(ctx) }()
	go func() { defer wg.Done(); n.sweepLoop(ctx) }()
	go func() { defer writers.Done(); n.writeLoop(ctx) }()
	go func() { defer wg.Done(); n.watchLoop(ctx, n.persons, &n.seen, "person states", n.follow) }()
	go func() { defer writers.Done(); n.dialogWriteLoop(ctx) }()
	go func() { defer wg.Done(); n.watchLoop(ctx, n.dialogs, &n.dseen, "dialogs", n.followDialogs) }()
	go func() { defer wg.Done(); n.renewLoop(ctx) }()
	<-ctx.Done()
	writers.Wait() // their writes under way are answered or queued again
	n.leave()
	nc.Close() // whatever still waits on the engine gives up now
	wg.Wait()
	return nil
}

// leave ends a planned stop (Run's context ended after the SIP server's
// last save): what is still queued for the engine, dialogs and person
// states, is written first, within a third of the lease's TTL, and only
// then the lease is given up. So the node that takes the dialogs over
// knows every refresh answered here, up to the last one: giving the
// lease up first lost a refresh answered in the second before SIGTERM.
func (n *Node) leave() {
	ctx, cancel := context.WithTimeout(context.Background(), max(n.cfg.LeaseTTL/3, time.Second))
	defer cancel()
	dialogs, persons, left := n.flush(ctx)
	n.release()
	if left > 0 {
		n.log.Warn("cluster: left with writes the engine did not take (it is away or slow): the node that takes the dialogs over has older ones",
			"dialogs_written", dialogs, "persons_written", persons, "unwritten", left)
		return
	}
	n.log.Info("cluster: left (planned stop): every queued write taken, lease given up", "dialogs_written", dialogs,
		"persons_written", persons)
}

// flush writes what is queued for the engine until nothing is or ctx
// ends; it returns the dialogs and person states written and the writes
// left over. Called once the write loops have stopped.
func (n *Node) flush(ctx context.Context) (dialogs, persons, left int) {
	for ctx.Err() == nil {
		n.dmu.Lock()
		batch := n.dqueue
		n.dqueue = map[string]dialogOp{}
		n.dmu.Unlock()
		if len(batch) == 0 {
			break
		}
		failed := n.writeDialogs(ctx, batch)
		dialogs += len(batch) - len(failed)
		n.dmu.Lock()
		for id, op := range failed {
			if _, newer := n.dqueue[id]; !newer {
				n.dqueue[id] = op
			}
		}
		n.dmu.Unlock()
		if len(failed) > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	for ctx.Err() == nil {
		n.mu.Lock()
		batch := make(map[string]*personValue, len(n.queue))
		for k, v := range n.queue {
			batch[k] = v
		}
		n.mu.Unlock()
		if len(batch) == 0 {
			break
		}
		failed := false
		for key, v := range batch {
			if failed = ctx.Err() != nil || !n.write(ctx, key, v); failed {
				break
			}
			persons++
		}
		if failed {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	n.dmu.Lock()
	left = len(n.dqueue)
	n.dmu.Unlock()
	n.mu.Lock()
	left += len(n.queue)
	n.mu.Unlock()
	return dialogs, persons, left
}

// connect opens the NATS connection; it reconnects by itself for ever.
func (n *Node) connect() (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name("lamplighter " + n.cfg.Node),
		nats.RetryOnFailedConnect(true),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.DisconnectErrHandler(func(c *nats.Conn, err error) {
			if err == nil && c.IsClosed() {
				return // this node stopping closed it
			}
			n.mu.Lock()
			if n.awaySince.IsZero() {
				n.awaySince = time.Now()
			}
			n.mu.Unlock()
			n.log.Warn("cluster engine connection lost: serving from memory", "err", err)
		}),
		nats.ReconnectHandler(func(c *nats.Conn) {
			n.log.Info("cluster engine connection back", "server", c.ConnectedUrlRedacted())
			n.kick()
			n.restartWatch()
			select {
			case n.drewatch <- struct{}{}:
			default:
			}
			n.mu.Lock()
			n.restartLeaseWatch()
			n.mu.Unlock()
		}),
	}
	switch {
	case n.cfg.CredsFile != "":
		opts = append(opts, nats.UserCredentials(n.cfg.CredsFile))
	case n.cfg.Username != "":
		pw := n.cfg.Password
		if n.cfg.PasswordFile != "" {
			b, err := os.ReadFile(n.cfg.PasswordFile)
			if err != nil {
				return nil, fmt.Errorf("cluster password: %w", err)
			}
			pw = strings.TrimRight(string(b), "\r\n")
		}
		opts = append(opts, nats.UserInfo(n.cfg.Username, pw))
	}
	if n.cfg.CAFile != "" {
		opts = append(opts, nats.RootCAs(n.cfg.CAFile))
	}
	if n.cfg.CertFile != "" {
		opts = append(opts, nats.ClientCert(n.cfg.CertFile, n.cfg.KeyFile))
	}
	return nats.Connect(strings.Join(n.cfg.URLs, ","), opts...)
}

// bind creates (or takes) the buckets: person states, and the leases
// whose entries lapse by themselves after LeaseTTL.
func (n *Node) bind(ctx context.Context, js jetstream.JetStream) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	buckets := []struct {
		name, what string
		ttl        time.Duration
	}{
		{"_persons", "person states (PUBLISH, API, feature keys) shared by every node", 0},
		{"_nodes", "the nodes alive, each key renewed within its TTL", n.cfg.LeaseTTL},
		{"_dialogs", "subscription dialogs, each with the node that NOTIFYs it", 0},
		{"_shared", "keys every node holds alike (proxy mode's token key)", 0},
	}
	kvs := make([]jetstream.KeyValue, len(buckets))
	for i, b := range buckets {
		kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket: n.cfg.BucketPrefix + b.name, History: 1, Replicas: n.cfg.Replicas, TTL: b.ttl,
			Description: "Lamplighter: " + b.what,
		})
		if err != nil {
			return err
		}
		kvs[i] = kv
	}
	n.mu.Lock()
	n.persons, n.leases, n.dialogs, n.shared = kvs[0], kvs[1], kvs[2], kvs[3]
	n.mu.Unlock()
	return nil
}

// failed notes an engine error.
func (n *Node) failed(what string, err error) {
	n.stats.WriteErrors.Add(1)
	n.mu.Lock()
	n.lastError, n.lastErrorOp = what+": "+err.Error(), what
	n.mu.Unlock()
	n.log.Debug("cluster engine operation failed", "op", what, "err", err)
}

// recovered clears the last error when it was what's, which has now
// succeeded: /readyz's last_error says what is wrong now, not at start.
func (n *Node) recovered(what string) {
	n.mu.Lock()
	if n.lastErrorOp == what {
		n.lastError, n.lastErrorOp = "", ""
	}
	n.mu.Unlock()
}

// lease is the value of a node's lease key. A tombstone is written on a
// dead node's key by the node that takes its dialogs over.
type lease struct {
	Instance string    `json:"instance,omitempty"`
	Renewed  time.Time `json:"renewed,omitzero"`
	DeadBy   string    `json:"dead_by,omitempty"`
	// Left marks a lease given up at a planned stop: the others take the
	// node's dialogs over at once, and say it left rather than died.
	Left bool `json:"left,omitempty"`
}

// renewLoop renews the lease every third of its TTL, reconciles after
// a lapse, and takes over the dialogs of nodes whose leases are gone.
func (n *Node) renewLoop(ctx context.Context) {
	t := time.NewTicker(n.cfg.LeaseTTL / 3)
	defer t.Stop()
	for {
		n.renew(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// nodesLoop, beside the lease loop (whose renewals must never wait on
// anything slower), checks the watch and takes over the dialogs of nodes
// whose leases are gone, while this node holds its own.
//
// The leases are read four times as often as they are renewed: a dead
// node is noticed within a twelfth of the TTL of its lease running out,
// not a third (the failover bound counts from the lease running out).
func (n *Node) nodesLoop(ctx context.Context) {
	tick := 0
	every(ctx, max(n.cfg.LeaseTTL/12, 50*time.Millisecond), func() bool {
		n.mu.Lock()
		fresh := n.leaseFresh()
		n.mu.Unlock()
		if fresh {
			if tick%4 == 0 {
				cctx, cancel := context.WithTimeout(ctx, n.cfg.LeaseTTL/3)
				n.checkWatch(cctx)
				cancel()
			}
			n.watchNodes(ctx)
		}
		tick++
		return true
	})
}

// renew renews the lease (compare-and-set on its revision, so that a
// tombstone another node wrote is never written over) and reports
// whether this node holds it. A lease taken again after a lapse, or for
// the first time, is followed by a reconcile before NOTIFYs may go.
func (n *Node) renew(parent context.Context) bool {
	ctx, cancel := context.WithTimeout(parent, n.cfg.LeaseTTL/3)
	defer cancel()
	sent := time.Now()
	b, _ := json.Marshal(lease{Instance: n.instance, Renewed: sent})
	n.mu.Lock()
	rev, prev := n.leaseRev, n.leasedAt
	n.renewingSince = sent
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		n.renewingSince, n.lastAttempt = time.Time{}, time.Now()
		n.mu.Unlock()
	}()
	var err error
	if rev != 0 {
		rev, err = n.leases.Update(ctx, n.cfg.Node, b, rev)
	}
	if rev == 0 || err != nil {
		// No lease yet, or it lapsed (its key is gone or another node's
		// tombstone holds it): take it anew where the key is free.
		rev, err = n.acquire(ctx, b)
	}
	if err != nil {
		n.stats.LeaseFailures.Add(1)
		n.failed("renewing the lease", err)
		n.mu.Lock()
		// A JetStream without quorum answers no renewal either, with
		// the connection up: the engine is away all the same. Unless the
		// attempt took far longer than it may: this node was paused.
		if n.awaySince.IsZero() && time.Since(sent) < 2*n.cfg.LeaseTTL/3 {
			n.awaySince = sent
		}
		held := !prev.IsZero() && !n.leaseLost
		n.leaseLost = n.leaseLost || held
		n.mu.Unlock()
		if held {
			n.log.Warn("cluster: cannot renew this node's lease; serving from memory meanwhile, and the others take its dialogs if it lapses",
				"dialogs_owned", n.owned(), "lease_ttl", n.cfg.LeaseTTL, "err", err)
		}
		return false
	}
	n.stats.LeaseRenewals.Add(1)
	n.recovered("renewing the lease")
	n.observe(sent)
	lapsed := prev.IsZero() || sent.Sub(prev) >= n.cfg.LeaseTTL
	n.mu.Lock()
	lost := n.leaseLost
	n.leaseRev, n.leasedAt, n.awaySince, n.leaseLost = rev, sent, time.Time{}, false
	switch {
	case prev.IsZero():
		n.log.Info("cluster: lease taken", "node", n.cfg.Node, "since_start", time.Since(n.started).Round(time.Millisecond))
	case lapsed:
		n.log.Warn("cluster: lease taken again after it lapsed: reconciling with the engine before NOTIFYs go",
			"without_it_for", sent.Sub(prev).Round(time.Millisecond))
	case lost:
		n.log.Info("cluster: lease renewed again before it lapsed", "after", sent.Sub(prev).Round(time.Millisecond))
	}
	if lapsed {
		n.reconciled, n.leasedSince = false, sent
		n.notifyUntil.Store(0)
	}
	reconciled := n.reconciled
	if reconciled {
		n.notifyUntil.Store(sent.Add(n.cfg.LeaseTTL).UnixNano())
	}
	start := !reconciled && !n.reconciling
	if start {
		n.reconciling = true
	}
	n.mu.Unlock()
	if start {
		// Beside the lease loop: reading every dialog owner takes time,
		// and the lease must not lapse meanwhile.
		go func() {
			rctx, rcancel := context.WithTimeout(parent, 30*time.Second)
			defer rcancel()
			n.reconcile(rctx)
			n.mu.Lock()
			n.reconciling = false
			n.mu.Unlock()
		}()
	}
	return true
}

// acquire creates this node's lease key; a key left by this node's
// previous run (a restart within the TTL) is taken over, a tombstone is
// waited out (the node that wrote it is taking this node's dialogs).
func (n *Node) acquire(ctx context.Context, b []byte) (uint64, error) {
	rev, err := n.leases.Create(ctx, n.cfg.Node, b)
	if err == nil {
		return rev, nil
	}
	e, gerr := n.leases.Get(ctx, n.cfg.Node)
	if gerr != nil {
		return 0, err
	}
	var l lease
	_ = json.Unmarshal(e.Value(), &l)
	if l.DeadBy != "" {
		n.mu.Lock()
		first := n.reconciled || !n.leasedAt.IsZero()
		n.reconciled = false
		n.notifyUntil.Store(0)
		n.mu.Unlock()
		if first && n.host != nil {
			// Declared dead: every dialog here may have a new owner.
			n.log.Warn("this node was declared dead by another (its lease lapsed): dropping its dialogs", "by", l.DeadBy)
			n.host.Forget(n.host.SubscriptionIDs())
		}
		return 0, fmt.Errorf("declared dead by %s: waiting for the tombstone to lapse", l.DeadBy)
	}
	return n.leases.Update(ctx, n.cfg.Node, b, e.Revision())
}

// reconcile makes what this node holds agree with the engine, then lets
// NOTIFYs go: it reads the dialog owners afresh; forgets dialogs another
// node owns, writes again those the engine never got, and adopts those
// the engine says are its own but it does not hold (a restart that lost
// its state file).
func (n *Node) reconcile(ctx context.Context) {
	if n.host == nil {
		n.setReconciled()
		return
	}
	select {
	case n.drewatch <- struct{}{}:
	default:
	}
	if !n.waitDialogsRead(ctx) {
		return // the next renewal tries again
	}
	me := unique.Make(n.cfg.Node)
	local := n.host.SubscriptionIDs()
	held := make(map[string]bool, len(local))
	var forget, resave []string
	n.dmu.Lock()
	for _, id := range local {
		held[id] = true
		e, ok := n.dindex[id]
		switch {
		case !ok:
			resave = append(resave, id) // never reached the engine
		case e.owner != me:
			forget = append(forget, id) // another node's, or ended there
		}
	}
	missing := 0
	for id, e := range n.dindex {
		if e.owner == me && !held[id] {
			missing++
		}
	}
	n.dmu.Unlock()
	n.host.Forget(forget)
	n.host.Resave(resave)
	adopted := 0
	if missing > 0 {
		recs, _, err := n.collectDialogsOf(ctx, n.cfg.Node)
		if err != nil {
			n.failed("reading this node's dialogs", err)
			return
		}
		adopted = n.host.Adopt(recs, false)
	}
	n.setReconciled()
	sent := n.host.Unfence()
	n.log.Info("cluster reconciled: NOTIFYs go", "held", len(local), "forgotten", len(forget), "written_again", len(resave),
		"adopted", adopted, "waiting_notifies", sent)
}

func (n *Node) setReconciled() {
	n.mu.Lock()
	n.reconciled = true
	if !n.leasedAt.IsZero() {
		n.notifyUntil.Store(n.leasedAt.Add(n.cfg.LeaseTTL).UnixNano())
	}
	n.mu.Unlock()
}

// waitDialogsRead waits until a fresh dialogs watch has read the bucket.
func (n *Node) waitDialogsRead(ctx context.Context) bool {
	n.mu.Lock()
	n.dsynced = false
	n.mu.Unlock()
	deadline := time.After(n.cfg.LeaseTTL)
	for {
		n.mu.Lock()
		done := n.dsynced
		n.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-deadline:
			return false
		case <-n.dsyncedCh:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// watchNodes sets the member list from the lease watch and takes over
// the dialogs of a node that is no longer a member: at once when it left
// (a planned stop), else once its lease went a whole TTL without renewal,
// and only once this node has held its own lease for a whole TTL (after
// an engine outage every lease is gone for a moment: the others get time
// to renew).
func (n *Node) watchNodes(parent context.Context) {
	owners := map[string]bool{}
	n.dmu.Lock()
	for h, c := range n.byOwner {
		if o := h.Value(); c > 0 && o != "" && o != n.cfg.Node {
			owners[o] = true
		}
	}
	n.dmu.Unlock()
	gone, judged := n.judgeMembers(owners)
	if !judged {
		return
	}
	n.mu.Lock()
	settled := time.Since(n.leasedSince) >= n.cfg.LeaseTTL && n.reconciled
	n.mu.Unlock()
	if !settled {
		return
	}
	// Bounded: a JetStream without quorum answers nothing, and the lease
	// loop must go on trying to renew.
	ctx, cancel := context.WithTimeout(parent, n.cfg.LeaseTTL/3)
	defer cancel()
	for _, g := range gone {
		b, _ := json.Marshal(lease{DeadBy: n.cfg.Node})
		tomb, err := n.tombstone(ctx, g, b)
		if err != nil {
			continue // it came back, or another node is taking over
		}
		if g.left {
			n.log.Info("a node left (planned stop): taking its dialogs over", "node", g.name)
		} else {
			n.log.Warn("a node's lease lapsed (it died, hung or lost the engine): taking its dialogs over", "node", g.name)
		}
		// Beside the lease loop: a large share takes seconds, and the
		// lease must not lapse meanwhile.
		go func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(parent), 2*time.Minute)
			defer cancel()
			go n.keepTombstone(cctx, g.name, tomb, b)
			n.claimFrom(cctx, g.name)
		}()
	}
}

// keepTombstone renews a dead node's tombstone while its dialogs are
// being claimed, so that no other node starts claiming them too.
func (n *Node) keepTombstone(ctx context.Context, dead string, rev uint64, b []byte) {
	every(ctx, n.cfg.LeaseTTL/3, func() bool {
		r, err := n.leases.Update(ctx, dead, b, rev)
		rev = r
		return err == nil
	})
}

// release gives the lease up at a clean stop, so that the others take
// this node's dialogs over without waiting out its TTL.
func (n *Node) release() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	n.mu.Lock()
	rev := n.leaseRev
	n.mu.Unlock()
	if rev == 0 {
		return
	}
	b, _ := json.Marshal(lease{Instance: n.instance, Renewed: time.Now(), Left: true})
	if _, err := n.leases.Update(ctx, n.cfg.Node, b, rev); err != nil {
		_ = n.leases.Delete(ctx, n.cfg.Node, jetstream.LastRevision(rev))
	}
}

func (n *Node) observe(sent time.Time) {
	n.stats.EngineNanos.Add(int64(time.Since(sent)))
	n.stats.EngineOps.Add(1)
}

// personKey is the bucket key of one origin's state of one user: both
// base64url-encoded, so that any id and origin make a valid key.
func personKey(userID, origin string) string {
	return base64.RawURLEncoding.EncodeToString([]byte(userID)) + "." + base64.RawURLEncoding.EncodeToString([]byte(origin))
}

func (n *Node) kick() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

// share queues a person state set (p) or cleared (nil) on this node for
// every other node.
func (n *Node) share(userID, origin string, p *bridge.PersonState) {
	v := &personValue{Node: n.cfg.Node, User: userID, Origin: origin, Cleared: p == nil, Seq: n.writeSeq.Add(1)}
	if p != nil {
		cp := *p
		v.Person, v.Extra = &cp, cp.Extra
	}
	n.publish(v)
}

// publish queues v, a write of ours, for the engine and hints it to the
// other nodes at once.
func (n *Node) publish(v *personValue) {
	n.mu.Lock()
	n.queueLocked(personKey(v.User, v.Origin), v)
	n.mu.Unlock()
	n.kick()
	n.hint(v)
}

// queueLocked queues v as the newest write of key; called with n.mu held.
func (n *Node) queueLocked(key string, v *personValue) {
	ks := n.keys[key]
	if ks == nil {
		ks = &keyState{}
		n.keys[key] = ks
	}
	ks.writing = true
	ks.gen++
	v.gen = ks.gen
	// Our write supersedes a hint shown: the bucket orders the two.
	ks.mine, ks.hinted, ks.hint = v, false, nil
	ks.ver++
	n.queue[key] = v
}

// desired is what this node should show for a key: our own write while
// one is on its way, else a live hint shown, else the bucket's newest.
func (ks *keyState) desired() *personValue {
	switch {
	case ks.writing && ks.mine != nil:
		return ks.mine
	case ks.hinted && ks.hint != nil:
		return ks.hint
	}
	return ks.last
}

// settle shows here what this node should show for key, and again until
// nothing changed what that is while it was being shown: the watch, the
// hints, a write's answer and the SIP server or API setting a state run
// on goroutines of their own, and one deciding before another but
// showing after it would otherwise leave the older word on show.
func (n *Node) settle(key string) {
	user, origin, ok := splitKey(key)
	if !ok {
		return
	}
	n.mu.Lock()
	for {
		ks := n.keys[key]
		if ks == nil {
			n.mu.Unlock()
			return
		}
		v, ver := ks.desired(), ks.ver
		n.mu.Unlock()
		if v != nil {
			n.show(user, origin, v, true)
		}
		n.mu.Lock()
		if n.keys[key] != ks || ks.ver == ver {
			n.mu.Unlock()
			return
		}
	}
}

// writeLoop writes queued person states, the newest of each key, and
// retries what the engine did not take.
func (n *Node) writeLoop(ctx context.Context) {
	for {
		n.mu.Lock()
		batch := make(map[string]*personValue, len(n.queue))
		for k, v := range n.queue {
			batch[k] = v
		}
		n.mu.Unlock()
		failed := false
		for key, v := range batch {
			if ctx.Err() != nil {
				return
			}
			if !n.write(ctx, key, v) {
				failed = true
				break
			}
		}
		wait := time.Duration(-1)
		if failed {
			wait = time.Second
		}
		if !n.idle(ctx, wait) {
			return
		}
	}
}

// idle waits for work (or wait, when not negative).
func (n *Node) idle(ctx context.Context, wait time.Duration) bool {
	var retry <-chan time.Time
	if wait >= 0 {
		retry = time.After(wait)
	}
	select {
	case <-ctx.Done():
		return false
	case <-n.wake:
	case <-retry:
	}
	return true
}

// write puts one person value; it reports whether the engine took it.
func (n *Node) write(ctx context.Context, key string, v *personValue) bool {
	b, err := json.Marshal(v)
	if err != nil {
		n.log.Error("cannot encode a person state for the cluster", "user", v.User, "err", err)
		n.mu.Lock()
		delete(n.queue, key)
		n.mu.Unlock()
		return true
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sent := time.Now()
	rev, err := n.persons.Put(ctx, key, b)
	if err != nil {
		n.failed("writing a person state", err)
		return false
	}
	n.observe(sent)
	n.stats.Writes.Add(1)
	n.recovered("writing a person state")
	n.wrote(key, v, rev)
	return true
}

// wrote notes that the bucket took our write v of key at revision rev.
func (n *Node) wrote(key string, v *personValue, rev uint64) {
	n.mu.Lock()
	ks := n.keys[key]
	if rev > ks.applied {
		ks.applied, ks.last = rev, v
	}
	ks.saw(v.Node, v.Seq)
	if q := n.queue[key]; q == v {
		delete(n.queue, key)
	}
	var late jetstream.KeyValueEntry
	if ks.gen == v.gen {
		ks.writing, ks.mine = false, nil
		ks.ver++
		// Another node wrote the key after us while we waited for the
		// engine's answer: theirs is the newer truth.
		if ks.skipped != nil && ks.skipped.Revision() > ks.applied {
			late = ks.skipped
		}
		ks.skipped = nil
	}
	n.mu.Unlock()
	if late != nil {
		n.apply(late)
	}
}

// restartWatch asks the watch to start again from where it was.
func (n *Node) restartWatch() {
	select {
	case n.rewatch <- struct{}{}:
	default:
	}
}

// checkWatch restarts a watch that has fallen behind the bucket for two
// checks in a row. The watch is an ordered consumer on the bucket's
// stream leader: when that server goes, nats.go notices only after
// missed heartbeats (ten seconds or more), and other nodes' changes would
// not show meanwhile.
func (n *Node) checkWatch(ctx context.Context) {
	st, err := n.persons.Status(ctx)
	if err != nil {
		return
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return
	}
	behind := bs.StreamInfo().State.LastSeq > n.seen.Load()
	if behind && n.lagging {
		n.log.Info("cluster watch behind the engine: starting it again", "seen", n.seen.Load(),
			"last", bs.StreamInfo().State.LastSeq)
		n.restartWatch()
		behind = false
	}
	n.lagging = behind
}

// watchLoop follows a bucket: every key, then each change, handed to
// follow until it returns. A watch that ends or falls behind is started
// again from the revision after the last it delivered (seen).
func (n *Node) watchLoop(ctx context.Context, kv jetstream.KeyValue, seen *atomic.Uint64, what string,
	follow func(context.Context, jetstream.KeyWatcher)) {
	for ctx.Err() == nil {
		var opts []jetstream.WatchOpt
		if last := seen.Load(); last > 0 {
			opts = append(opts, jetstream.ResumeFromRevision(last+1))
		}
		w, err := kv.WatchAll(ctx, opts...)
		if err != nil {
			n.failed("watching "+what, err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
			continue
		}
		n.recovered("watching " + what)
		follow(ctx, w)
		_ = w.Stop()
	}
}

func (n *Node) follow(ctx context.Context, w jetstream.KeyWatcher) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.rewatch:
			return
		case e, ok := <-w.Updates():
			if !ok {
				n.mu.Lock()
				n.synced = false
				n.mu.Unlock()
				return
			}
			if e == nil { // everything there was has been read
				n.mu.Lock()
				n.synced = true
				stale := n.provisional
				n.provisional = nil
				n.mu.Unlock()
				// What the state file held that the engine no longer
				// has was cleared on another node meanwhile.
				for key := range stale {
					if user, origin, ok := splitKey(key); ok {
						n.local.ClearPerson(user, origin)
					}
				}
				n.log.Info("cluster person states read", "node", n.cfg.Node, "stale_local", len(stale))
				continue
			}
			if rev := e.Revision(); rev > n.seen.Load() {
				n.seen.Store(rev)
			}
			n.mu.Lock()
			delete(n.provisional, e.Key())
			n.mu.Unlock()
			n.apply(e)
		}
	}
}

// apply shows one entry of the persons bucket here, unless it is older
// than what this node shows for its key, or a write of ours to the key
// is under way (its answer decides: see write).
func (n *Node) apply(e jetstream.KeyValueEntry) {
	key := e.Key()
	var v personValue
	if e.Operation() == jetstream.KeyValuePut {
		if err := json.Unmarshal(e.Value(), &v); err != nil {
			n.log.Warn("a person state in the cluster cannot be read: ignored", "key", key, "err", err)
			return
		}
	}
	n.mu.Lock()
	n.noteSweep(key, e, &v)
	ks := n.keys[key]
	if ks == nil {
		ks = &keyState{}
		n.keys[key] = ks
	}
	if v.Node != "" {
		ks.saw(v.Node, v.Seq)
	}
	switch {
	case ks.writing:
		if ks.skipped == nil || e.Revision() > ks.skipped.Revision() {
			ks.skipped = e
		}
		n.mu.Unlock()
		return
	case e.Revision() <= ks.applied:
		// An older entry; but a live hint shown meanwhile gives way to
		// the newest value the bucket holds.
		rehint := ks.hinted
		ks.hinted, ks.hint = false, nil
		if rehint {
			ks.ver++
		}
		n.mu.Unlock()
		if rehint {
			n.settle(key)
		}
		return
	}
	ks.applied, ks.hinted, ks.hint = e.Revision(), false, nil
	ks.ver++
	if e.Operation() != jetstream.KeyValuePut {
		// Deleted (swept): any later write has a higher revision, and
		// the bookkeeping of every PUBLISH ever made must not pile up.
		// (What a sweep deletes was cleared long ago: showing the clear
		// again cannot undo a newer word.)
		delete(n.keys, key)
		n.mu.Unlock()
		if user, origin, ok := splitKey(key); ok {
			n.show(user, origin, &v, false)
		}
		return
	}
	ks.last = &v
	n.mu.Unlock()
	n.settle(key)
}

// show applies a person key's value (put: a value, else deleted) to the
// local bridge.
func (n *Node) show(user, origin string, v *personValue, put bool) {
	if n.showRecord(user, origin, v, put) {
		return
	}
	if origin == bindingsOrigin {
		var bs []presence.Binding
		if put && !v.Cleared {
			bs = v.Bindings
		}
		n.applyBindings(user, bs)
		return
	}
	if !put || v.Cleared || v.Person == nil {
		n.local.ClearPerson(user, origin)
	} else {
		p := *v.Person
		p.Extra = v.Extra
		if err := n.local.SetPerson(user, origin, p); err != nil {
			n.log.Debug("a person state from the cluster is for a user this node does not know", "user", user, "err", err)
			return
		}
	}
	n.stats.Applied.Add(1)
}

// A person key whose state was cleared, or lapsed long ago, is swept
// from the bucket by the node that leads (each PUBLISH of a soft client is
// a key of its own: without sweeping the bucket would only grow). The
// clear is kept as a value for a while, so that every node orders it by
// revision; then it becomes a delete marker (compare-and-set: a newer
// write keeps the key), and old markers are purged.
const (
	sweepEvery      = time.Minute
	tombstoneAge    = 10 * time.Minute // how long a cleared value stays
	lapsedAge       = time.Minute      // how long past its expiry a state stays
	deleteMarkerAge = 30 * time.Minute
)

// sweepItem is a key to sweep at a revision, once due.
type sweepItem struct {
	rev uint64
	due time.Time
}

// noteSweep records whether a person key is to be swept; called with
// n.mu held.
func (n *Node) noteSweep(key string, e jetstream.KeyValueEntry, v *personValue) {
	switch {
	case e.Operation() != jetstream.KeyValuePut:
		delete(n.sweep, key)
	case len(v.Bindings) > 0:
		n.sweep[key] = sweepItem{e.Revision(), latestExpiry(v.Bindings).Add(lapsedAge)}
	case v.Record != nil && !v.Cleared && !v.Until.IsZero():
		n.sweep[key] = sweepItem{e.Revision(), v.Until.Add(lapsedAge)}
	case v.Record != nil && !v.Cleared:
		delete(n.sweep, key)
	case v.Cleared || v.Person == nil:
		n.sweep[key] = sweepItem{e.Revision(), e.Created().Add(n.tombstoneAge)}
	case !v.Person.Expires.IsZero():
		n.sweep[key] = sweepItem{e.Revision(), v.Person.Expires.Add(lapsedAge)}
	default:
		delete(n.sweep, key)
	}
}

// sweepLoop sweeps due person keys and purges old delete markers, on the
// node that leads.
func (n *Node) sweepLoop(ctx context.Context) {
	purged := time.Now() // markers are old only after markerAge
	every(ctx, n.sweepEvery, func() bool {
		leads := n.Leads()
		if leads {
			n.sweepOnce(ctx)
		}
		// Every node drops ended dialogs from its index. The leading
		// node purges old delete markers, a third of their age apart:
		// each purge reads the bucket with a consumer of its own, which
		// the engine elects a leader for and logs.
		n.forgetEnded(n.markerAge)
		if leads && time.Since(purged) >= n.markerAge/3 {
			purged = time.Now()
			n.purgeMarkers(ctx)
		}
		return true
	})
}

// sweepOnce deletes the person keys that are due and purges old markers;
// it returns how many it deleted.
func (n *Node) sweepOnce(ctx context.Context) int {
	now := time.Now()
	n.mu.Lock()
	due := map[string]uint64{}
	for k, it := range n.sweep {
		if now.After(it.due) {
			due[k] = it.rev
		}
	}
	n.mu.Unlock()
	swept := 0
	for k, rev := range due {
		if err := n.persons.Delete(ctx, k, jetstream.LastRevision(rev)); err == nil {
			swept++
		}
	}
	return swept
}

// purgeMarkers purges the delete markers older than markerAge from the
// persons and dialogs buckets.
func (n *Node) purgeMarkers(ctx context.Context) {
	if err := n.persons.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(n.markerAge)); err != nil {
		n.failed("purging old person states", err)
	} else {
		n.recovered("purging old person states")
	}
	if err := n.dialogs.PurgeDeletes(ctx, jetstream.DeleteMarkersOlderThan(n.markerAge)); err != nil {
		n.failed("purging ended dialogs", err)
	} else {
		n.recovered("purging ended dialogs")
	}
}

func splitKey(key string) (user, origin string, ok bool) {
	a, b, found := strings.Cut(key, ".")
	if !found {
		return "", "", false
	}
	u, err1 := base64.RawURLEncoding.DecodeString(a)
	o, err2 := base64.RawURLEncoding.DecodeString(b)
	return string(u), string(o), err1 == nil && err2 == nil
}
