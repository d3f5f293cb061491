package main

import (
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"
	"sync"
	"time"

	sddaemon "github.com/coreos/go-systemd/v22/daemon"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/adapters/ari"
	"github.com/lamplighter/lamplighter/adapters/esl"
	"github.com/lamplighter/lamplighter/adapters/sim"
	"github.com/lamplighter/lamplighter/adapters/sipcalls"
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/calendar"
	"github.com/lamplighter/lamplighter/cluster"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/api"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/config"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/discovery"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/memtrim"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/ops"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/switchboard"
	"github.com/lamplighter/lamplighter/presence"
	"github.com/lamplighter/lamplighter/presence/body"
	"github.com/lamplighter/lamplighter/presence/durable"
	"github.com/lamplighter/lamplighter/presence/proxy"
)

// daemon is one running Lamplighter: the bridge, the PBX adapters and the
// servers around them, with a lifecycle driven by a context.
type daemon struct {
	log      *slog.Logger
	level    *slog.LevelVar
	bridge   *bridge.Bridge
	sip      *presence.Server
	proxy    *proxy.Proxy                 // nil unless a PBX is in proxy mode
	sipPBXs  map[string]*sipcalls.Adapter // the adapters of PBXs of kind sip, by name
	adapters []adapters.Adapter
	ops      *ops.Server
	api      *api.API
	board    *switchboard.Switchboard
	db       *durable.DB
	node     *cluster.Node     // nil when running alone
	demo     bool              // only simulated PBXs: lamp changes are logged at info level
	found    *discovery.Keeper // what the PBXs' own directories hold
	cals     *calendar.Keeper  // people's calendars, read into their person state

	cfgMu     sync.Mutex // held through a reload and a discovered change
	cfg       *config.Config
	yamlCreds []presence.Credential                // the YAML's SIP logins, secrets read at the last (re)load
	calPlan   *config.CalendarPlan                 // the calendars, secrets read at the last (re)load
	liveMu    sync.RWMutex                         // guards single, logins and conflicts, which reloads replace
	single    func(userAgent, watcher string) bool // follows reloads
	logins    map[string]presence.Credential       // by SIP username and user id; follows reloads
	conflicts []discovery.LeftOut                  // discovered users left out of the directory
}

// restoreWait bounds how long restored subscriptions wait for the PBXs to
// resynchronise before they are notified with what is known.
const restoreWait = 3 * time.Second

func newDaemon(cfg *config.Config, log *slog.Logger, level *slog.LevelVar) (d *daemon, err error) {
	// The directory starts as the PBXs' directories were last read, so
	// that restored subscriptions find their users before the PBXs answer.
	found := discovery.Open(cfg.StateDir, log.With("component", "discovery"))
	dir, conflicts, err := cfg.Directory(found.Found())
	if err != nil {
		return nil, err
	}
	d = &daemon{cfg: cfg, log: log, level: level, bridge: bridge.New(dir), demo: onlySim(cfg),
		single: singleDialogPolicy(cfg), found: found}
	d.noteConflicts(conflicts)
	opt, err := presenceOptions(cfg)
	if err != nil {
		return nil, err
	}
	// Discovered phones' logins, where their PBX gives them.
	d.yamlCreds = opt.Credentials
	opt.Credentials = d.withDiscoveredCreds(cfg, dir, d.yamlCreds)
	opt.Logger = log.With("component", "sip")
	opt.SingleDialog = d.singleDialog
	d.ops = ops.New()
	opt.Metrics = d.ops.Metrics
	if d.db, err = durable.Open(cfg.StateDir, log); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			d.db.Close()
		}
	}()
	now := time.Now()
	if opt.Restore, err = d.db.Load(now); err != nil {
		return nil, fmt.Errorf("read %s: %w", d.db.Path(), err)
	}
	opt.Store = d.db
	// A phone's DND key sets the same dnd as the API and the switchboard,
	// kept across restarts as theirs is.
	opt.PersonOrigin, opt.PersonStates = api.Origin, d.db
	// What the SIP server and the API set as person state goes through
	// states: the bridge, or with a cluster the bridge shared with every
	// node.
	var states interface {
		presence.States
		api.Bridge
	} = d.bridge
	// The API's person states as the state file kept them: alone, the
	// truth; in a cluster, what holds until the engine says otherwise
	// (applied to the bridge itself, not written to the engine).
	persons, err := d.db.Persons(now)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", d.db.Path(), err)
	}
	var applied [][2]string
	for _, p := range persons {
		if d.bridge.SetPerson(p.UserID, p.Origin, p.State) == nil { // a user gone from the config is skipped
			applied = append(applied, [2]string{p.UserID, p.Origin})
		}
	}
	if cfg.Cluster != nil {
		// Dialogs go to the state file and to the engine, NOTIFYs wait
		// while the node may not own what it holds, and a refresh for
		// another node's dialog takes it over (cluster/README.md).
		d.node = cluster.New(*cfg.Cluster, d.bridge, log.With("component", "cluster"))
		d.node.Provisional(applied)
		states = d.node.Share(d.bridge)
		opt.Store, opt.MayNotify, opt.Claim = d.node.Store(d.db), d.node.MayNotify, d.node.Claim
		opt.ContactHost = cfg.Cluster.Address
	}
	if d.proxy, d.sipPBXs, err = newProxy(cfg, d.bridge, d.ops.Metrics, log.With("component", "proxy")); err != nil {
		return nil, err
	}
	if d.proxy != nil {
		opt.Forwarder = d.proxy
		if d.node != nil {
			// Every node signs Paths and Record-Routes with the
			// cluster's key, so that what one node wrote routes through
			// any other; it is kept in the state file's directory too.
			px, plog := d.proxy, log.With("component", "proxy")
			d.node.ShareKey("proxy-token-key", px.TokenKey(), func(key []byte) {
				px.SetTokenKey(key)
				if err := proxy.SaveTokenKey(cfg.StateDir, key); err != nil {
					plog.Warn("cannot keep the cluster's token key in the state directory", "err", err)
				}
			})
			// Every node knows every phone's flow, so that the node
			// taking over trusts it as the one the phone registered
			// through did.
			node := d.node
			px.ShareFlows(func(id string, data []byte, until time.Time) {
				node.ShareRecord(proxy.FlowKind, id, data, until)
			})
			node.FollowRecords(proxy.FlowKind, px.ApplyFlow)
		}
	}
	if d.sip, err = presence.New(states, opt); err != nil {
		return nil, err
	}
	// People's calendars: their word goes where the API's does (shared
	// with the cluster, where one node, the leader, reads them).
	copt := cfg.CalendarOptions()
	copt.People, copt.Logger, copt.StateDir, copt.UserAgent = states, log.With("component", "calendar"), cfg.StateDir, userAgent(cfg)
	if node := d.node; node != nil {
		copt.Leads = func() bool { return node.Settled() && node.Leads() }
	}
	d.cals = calendar.New(copt)
	if d.calPlan, err = cfg.CalendarPlan(nil); err != nil {
		return nil, err
	}
	d.cals.Set(d.calPlan.For(dir.Users()))
	if d.node != nil {
		d.node.Attach(d.sip)
	}
	d.setLogins(opt.Credentials)
	d.api = api.New(api.Options{Bridge: states, Watchers: d.sip.Watchers, Registrations: d.proxiedRegistrations(), Store: d.db, Reload: d.reload,
		CheckUser: d.checkLogin, Discovery: d.discovery, RefreshDiscovery: d.found.Refresh, Calendars: d.cals, AuthFailed: func() { d.ops.Metrics.AuthFailure("HTTP") }, Log: log})
	token, err := cfg.HTTPToken(nil)
	if err != nil {
		return nil, fmt.Errorf("http token: %w", err)
	}
	d.api.SetToken(token)
	d.ops.SetHosts(cfg.HTTP.Hosts)
	d.api.Handle(d.ops)
	tenantTokens, err := tenantTokens(cfg)
	if err != nil {
		return nil, err
	}
	d.api.SetTenantTokens(tenantTokens)
	// The page is open to whoever reaches it: the default domain's people
	// only, never a tenant's; and people, not feature keys' lamps.
	defaultDomainOnly := func(u *bridge.User) bool { return u.Tenant == "" && !u.Resource }
	d.board = switchboard.New(switchboard.Options{Bridge: d.bridge, View: d.api.PublicView, Shows: defaultDomainOnly,
		Audience: d.boardAudience, Title: cfg.HTTP.Title,
		PBXs: d.pbxStates, MaxStreams: cfg.HTTP.MaxStreams, MaxStreamsPerAddress: cfg.HTTP.MaxStreamsPerAddress, Log: log})
	d.board.Handle(d.ops)
	if cfg.HTTP.Pprof {
		d.ops.Handle("GET /debug/pprof/", http.HandlerFunc(pprof.Index))
		d.ops.Handle("GET /debug/pprof/profile", http.HandlerFunc(pprof.Profile))
		d.ops.Handle("GET /debug/pprof/trace", http.HandlerFunc(pprof.Trace))
		log.Warn("the profiler is served under /debug/pprof/ (http.pprof)", "address", cfg.HTTP.Listen)
	}
	var kinds []ops.Adapter
	for i := range cfg.PBX {
		a, err := d.newAdapter(&cfg.PBX[i], dir)
		if err != nil {
			return nil, fmt.Errorf("pbx %q: %w", cfg.PBX[i].Name, err)
		}
		d.adapters = append(d.adapters, a)
		kinds = append(kinds, ops.Adapter{Adapter: a, Kind: cfg.PBX[i].Kind})
	}
	src := ops.Sources{SIPReady: d.sip.Ready(), SIPServing: d.sip.Serving, Subscriptions: d.sip.SubscriptionsByKind, Unsaved: d.sip.UnsavedChanges, Adapters: kinds,
		Alive: func() bool { return d.bridgeAnswers(time.Second) }, Proxied: d.proxiedHealth(), ProxyRegistrations: d.proxiedCounts()}
	if d.node != nil {
		src.Cluster, src.ClusterStats = d.node.Status, d.node.Stats()
	}
	src.Calendars, src.CalendarReads = d.cals.Status, d.cals.Reads
	d.ops.Attach(src)
	return d, nil
}

// pbxStates is each PBX connection's state, for the switchboard.
func (d *daemon) pbxStates() []switchboard.PBX {
	out := make([]switchboard.PBX, 0, len(d.adapters))
	for _, a := range d.adapters {
		st := a.Status()
		out = append(out, switchboard.PBX{Name: a.Name(), Connected: st.Connected && st.Synchronised, Down: st.Down, Since: st.Since})
	}
	return out
}

// newAdapter builds the adapter for one PBX entry.
func (d *daemon) newAdapter(p *config.PBX, dir *bridge.Directory) (adapters.Adapter, error) {
	pw, err := d.cfg.PBXPassword(p, nil)
	if err != nil {
		return nil, err
	}
	conn := adapters.Connection{Name: p.Name, Address: p.Address, Username: p.Username, Password: pw}
	switch p.Kind {
	case config.KindSim:
		return sim.New(conn, *p.Sim, simPhones(p.Name, dir), d.log), nil
	case config.KindARI:
		cfg, err := d.cfg.ARISection(p, nil)
		if err != nil {
			return nil, err
		}
		if d.node != nil {
			// Asterisk gives an ARI application's events to one websocket
			// only (the last connected): nodes sharing one YAML would
			// take them from each other. Each node registers its own.
			cfg.App = nodeApp(cfg.App, d.node.Name())
		}
		return ari.New(conn, cfg, d.devicesOn(p.Name), d.log)
	case config.KindESL:
		return esl.New(conn, *p.ESL, d.devicesOn(p.Name), d.log)
	case config.KindSIP:
		return d.sipPBXs[p.Name], nil
	}
	return nil, fmt.Errorf("unknown pbx kind %q", p.Kind)
}

// boardAudience is whom a switchboard stream shows people to: with a
// ticket of the API token everyone (people, not feature keys), of a
// tenant's token or one of its users that tenant's people; without, the
// default domain's.
func (d *daemon) boardAudience(r *http.Request) (switchboard.Audience, error) {
	t := r.URL.Query().Get("ticket")
	if t == "" {
		return switchboard.Audience{}, nil
	}
	c, err := d.api.TicketCaller(t)
	if err != nil {
		return switchboard.Audience{}, err
	}
	if c.Admin {
		return switchboard.Audience{Key: "admin", Shows: func(u *bridge.User) bool { return !u.Resource }}, nil
	}
	tenant := c.Tenant
	return switchboard.Audience{Key: "tenant:" + tenant, Shows: func(u *bridge.User) bool { return u.Tenant == tenant && !u.Resource }}, nil
}

// withDiscoveredCreds is yaml (the YAML's logins) and the discovered
// users' where their PBX gives them, for the directory dir.
func (d *daemon) withDiscoveredCreds(cfg *config.Config, dir *bridge.Directory, yaml []presence.Credential) []presence.Credential {
	return append(slices.Clip(yaml), cfg.DiscoveredCredentials(dir, d.found.Secrets(), d.found.PendingLogins())...)
}

// tenantTokens are the tenants' API tokens: token → tenant domain.
func tenantTokens(cfg *config.Config) (map[string]string, error) {
	out := map[string]string{}
	for i := range cfg.Tenants {
		t := &cfg.Tenants[i]
		tok, err := cfg.TenantToken(t, nil)
		if err != nil {
			return nil, fmt.Errorf("tenant %s: token: %w", t.Domain, err)
		}
		if tok != "" {
			out[tok] = strings.ToLower(t.Domain)
		}
	}
	return out, nil
}

// discovery is what the PBXs' directories gave, for the API.
func (d *daemon) discovery() api.Discovery {
	d.liveMu.RLock()
	left := slices.Clone(d.conflicts)
	d.liveMu.RUnlock()
	return api.Discovery{PBXs: d.found.Status(), LeftOut: left}
}

// discoverySources are the PBXs whose own directories are read.
func (d *daemon) discoverySources() []discovery.Source {
	var out []discovery.Source
	for i, a := range d.adapters {
		pb := &d.cfg.PBX[i]
		disc, ok := a.(adapters.Discoverer)
		if pb.Discovering() == nil || !ok {
			continue
		}
		every := pb.Discovering().Interval
		if every == 0 {
			every = config.DefaultDiscoverInterval
		}
		out = append(out, discovery.Source{Name: a.Name(), Discoverer: disc, Status: a.Status, Interval: every,
			Passwords: pb.Discovering().Passwords})
	}
	return out
}

// nodeApp is the ARI application name a node of a cluster registers:
// app and the node's name, in the characters an application name takes.
func nodeApp(app, node string) string {
	if app == "" {
		app = "lamplighter"
	}
	suffix := []byte(node)
	for i, c := range suffix {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			suffix[i] = '_'
		}
	}
	return app + "-" + string(suffix)
}

// devicesOn returns a function listing the devices users have on a PBX
// in the directory in force (it follows reloads).
func (d *daemon) devicesOn(pbx string) func() []string {
	return func() []string {
		var out []string
		for _, u := range d.bridge.Directory().Users() {
			for _, ref := range u.Devices {
				if ref.Source == pbx {
					out = append(out, ref.Device)
				}
			}
		}
		return out
	}
}

// simPhones lists the devices that users have on a sim PBX.
func simPhones(pbx string, dir *bridge.Directory) []sim.Phone {
	var phones []sim.Phone
	for _, u := range dir.Users() {
		for _, ref := range u.Devices {
			if ref.Source == pbx {
				phones = append(phones, sim.Phone{Device: ref.Device, Extension: u.Presentity(), Name: u.Name})
			}
		}
	}
	return phones
}

// Run runs everything until ctx ends.
func (d *daemon) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cancelLog := d.bridge.Listen(d.logChange)
	defer cancelLog()
	cancelSIP := d.bridge.Listen(d.sip.HandleChange)
	defer cancelSIP()
	cancelMirror := d.mirrorPersons()
	defer cancelMirror()

	defer d.db.Close()
	var wg sync.WaitGroup
	sipDone := make(chan error, 1)
	go func() { sipDone <- d.sip.Run(ctx) }()
	select {
	case <-d.sip.Ready():
	case err := <-sipDone:
		return err
	}
	if d.cfg.HTTP.Listen != "" {
		ln, err := net.Listen("tcp", d.cfg.HTTP.Listen)
		if err != nil {
			cancel()
			<-sipDone
			return fmt.Errorf("http listen %s: %w", d.cfg.HTTP.Listen, err)
		}
		d.log.Info("http listening", "address", ln.Addr().String(), "paths", "/healthz /readyz /metrics")
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := d.ops.Run(ctx, ln, d.log); err != nil {
				d.log.Error("http server stopped", "err", err)
			}
		}()
	}
	// The node stops after the SIP server, whose last save it writes to
	// the engine before giving its lease up (cluster.Node.Run).
	nodeCtx, stopNode := context.WithCancel(context.WithoutCancel(ctx))
	defer stopNode()
	nodeDone := make(chan struct{})
	if d.node != nil {
		go func() {
			defer close(nodeDone)
			if err := d.node.Run(nodeCtx); err != nil {
				d.log.Error("cluster node stopped: running alone", "err", err)
			}
		}()
	} else {
		close(nodeDone)
	}
	for _, a := range d.adapters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Run(ctx, d.bridge); err != nil {
				d.log.Error("pbx adapter stopped", "pbx", a.Name(), "err", err)
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.found.Run(ctx, d.discoverySources(), d.rediscovered)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.cals.Run(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.expirePersons(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.board.Run(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.notifyRestored(ctx)
	}()
	hup, stopHangups := hangups()
	defer stopHangups()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.reloadOnHangup(ctx, hup)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		d.feedWatchdog(ctx)
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		memtrim.New(memtrim.Policy{}).Run(ctx, d.log) // memory a burst left free goes back
	}()
	d.log.Info("lamplighter running", "users", d.bridge.Directory().Len(), "pbx", len(d.adapters))
	notifySystemd(d.log, sddaemon.SdNotifyReady)
	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-sipDone:
		cancel()
	}
	notifySystemd(d.log, sddaemon.SdNotifyStopping)
	if runErr == nil {
		runErr = <-sipDone // the SIP server saves what changed last as it stops
	}
	stopNode() // and then the node writes it to the engine and leaves
	<-nodeDone
	wg.Wait()
	if runErr != nil {
		return runErr
	}
	d.log.Info("lamplighter stopped")
	return nil
}

// setLogins keeps the users' SIP credentials for signing in to the API
// and the switchboard page, by SIP username and by user id.
func (d *daemon) setLogins(creds []presence.Credential) {
	logins := map[string]presence.Credential{}
	for _, c := range creds {
		if c.Pending || c.Password == "" {
			continue // a login whose password is not known lets no one in
		}
		name := c.Username
		if c.Tenant != "" {
			name += "@" + c.Tenant // a tenant's username may be another's too
		}
		logins[name] = c
		if _, taken := logins[c.UserID]; !taken {
			logins[c.UserID] = c
		}
	}
	d.liveMu.Lock()
	d.logins = logins
	d.liveMu.Unlock()
}

// checkLogin checks a user's own credentials: the SIP username (or user
// id, extension or alias) and SIP password.
func (d *daemon) checkLogin(name, password string) (string, bool) {
	d.liveMu.RLock()
	c, ok := d.logins[name]
	if !ok {
		if u, found := d.bridge.Directory().Lookup(name); found {
			c, ok = d.logins[u.ID]
		}
	}
	d.liveMu.RUnlock()
	if !ok || subtle.ConstantTimeCompare([]byte(password), []byte(c.Password)) != 1 {
		return "", false
	}
	return c.UserID, true
}

// singleDialog is the presence server's per-subscriber single-dialog
// policy, as of the config in force.
func (d *daemon) singleDialog(userAgent, watcher string) bool {
	d.liveMu.RLock()
	f := d.single
	d.liveMu.RUnlock()
	return f(userAgent, watcher)
}

// notifyRestored sends the subscriptions restored from the state file
// their first NOTIFY once every PBX is synchronised (so that a restart
// does not flash lamps to idle and back), or after restoreWait.
func (d *daemon) notifyRestored(ctx context.Context) {
	start := time.Now()
	deadline := time.NewTimer(restoreWait)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !d.allSynchronised() {
		select {
		case <-ctx.Done():
			return
		case <-deadline.C:
			d.log.Warn("not every PBX is synchronised: notifying restored subscriptions with what is known")
			n := d.sip.NotifyRestored()
			d.log.Info("restored subscriptions notified", "subscriptions", n, "after", time.Since(start).Round(time.Millisecond))
			return
		case <-tick.C:
		}
	}
	if n := d.sip.NotifyRestored(); n > 0 {
		d.log.Info("restored subscriptions notified", "subscriptions", n, "after", time.Since(start).Round(time.Millisecond))
	}
}

func (d *daemon) allSynchronised() bool {
	for _, a := range d.adapters {
		if !a.Status().Synchronised {
			return false
		}
	}
	return true
}

// mirrorPersons hands every user's person state to the adapters that
// write it back into their PBX (the ARI dnd device), now and on every
// change, for the PBXs the user has devices on.
func (d *daemon) mirrorPersons() (cancel func()) {
	mirrors := map[string]adapters.PersonMirror{}
	for _, a := range d.adapters {
		if m, ok := a.(adapters.PersonMirror); ok {
			mirrors[a.Name()] = m
		}
	}
	if len(mirrors) == 0 {
		return func() {}
	}
	tell := func(u bridge.User, p bridge.PersonState) {
		if d.node != nil && !d.node.Leads() {
			return // in a cluster one node writes to the PBXs
		}
		seen := map[string]bool{}
		for _, ref := range u.Devices {
			if m := mirrors[ref.Source]; m != nil && !seen[ref.Source] {
				seen[ref.Source] = true
				m.MirrorPerson(u, p)
			}
		}
	}
	unlisten := d.bridge.Listen(func(c bridge.Change) {
		if c.State != nil && (c.Previous == nil || c.State.Person.DND() != c.Previous.Person.DND()) {
			tell(*c.State.User, c.State.Person)
		}
	})
	for _, st := range d.bridge.States() {
		tell(*st.User, st.Person)
	}
	if d.node == nil {
		return unlisten
	}
	// A node that comes to lead writes every person's dnd again.
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(time.Second)
		defer t.Stop()
		led := d.node.Leads()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
			}
			leads := d.node.Leads()
			if leads && !led {
				d.log.Info("this node now writes person states to the PBXs (dnd mirror)")
				for _, st := range d.bridge.States() {
					tell(*st.User, st.Person)
				}
			}
			led = leads
		}
	}()
	// (Not the named result in the closure: it would call itself.)
	return func() { unlisten(); close(stop) }
}

// expirePersons lets person states lapse when their expiry comes.
func (d *daemon) expirePersons(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			if next := d.bridge.NextExpiry(); !next.IsZero() && !next.After(now) {
				d.bridge.Expire()
			}
		}
	}
}

// logChange logs every lamp change: at info level in the demo (so that a
// newcomer sees it work), at debug level otherwise.
func (d *daemon) logChange(c bridge.Change) {
	level := slog.LevelDebug
	if d.demo {
		level = slog.LevelInfo
	}
	if !d.log.Enabled(context.Background(), level) {
		return
	}
	if c.State == nil {
		d.log.Log(context.Background(), level, "user removed", "user", c.UserID)
		return
	}
	d.log.Log(context.Background(), level, "lamp",
		"user", c.UserID, "state", c.State.Phone.String(), "devices", c.State.Device.String(),
		"note", body.LineNote(c.State), "calls", len(c.State.Calls))
}

func onlySim(cfg *config.Config) bool {
	for _, p := range cfg.PBX {
		if p.Kind != config.KindSim {
			return false
		}
	}
	return true
}

// feedWatchdog tells systemd the process is alive at half the WatchdogSec
// interval, but only after checking that the bridge answers: a deadlocked
// core stops the pings and systemd restarts the service.
func (d *daemon) feedWatchdog(ctx context.Context) {
	interval, err := sddaemon.SdWatchdogEnabled(false)
	if err != nil || interval <= 0 {
		return
	}
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if d.bridgeAnswers(interval / 4) {
				notifySystemd(d.log, sddaemon.SdNotifyWatchdog)
			} else {
				d.log.Error("bridge did not answer: withholding the systemd watchdog ping")
			}
		}
	}
}

// bridgeAnswers tells whether the bridge answers a read within wait (its
// lock is not wedged).
func (d *daemon) bridgeAnswers(wait time.Duration) bool {
	alive := make(chan struct{})
	go func() { d.bridge.States(); close(alive) }()
	select {
	case <-alive:
		return true
	case <-time.After(wait):
		return false
	}
}

// notifySystemd sends a state to systemd when running under Type=notify;
// elsewhere it does nothing.
func notifySystemd(log *slog.Logger, state string) {
	if _, err := sddaemon.SdNotify(false, state); err != nil {
		log.Warn("cannot notify systemd", "state", state, "err", err)
	}
}

// proxiedRegistrations are the phones registered through proxy mode, by
// the user their address-of-record names (nil without proxy mode).
func (d *daemon) proxiedRegistrations() func() map[string][]proxy.Registration {
	if d.proxy == nil {
		return nil
	}
	return func() map[string][]proxy.Registration {
		dir := d.bridge.Directory()
		out := map[string][]proxy.Registration{}
		for _, r := range d.proxy.Registrations() {
			if u, ok := dir.Resolve(r.Domain, r.AOR); ok {
				out[u.ID] = append(out[u.ID], r)
			}
		}
		return out
	}
}

// proxiedCounts counts the registrations through proxy mode per PBX
// (nil without proxy mode).
func (d *daemon) proxiedCounts() func() map[string]int {
	if d.proxy == nil {
		return nil
	}
	return d.proxy.RegistrationCounts
}

// proxiedHealth is what /readyz reports of the PBXs in proxy mode (nil
// without any).
func (d *daemon) proxiedHealth() func() map[string]bool {
	if d.proxy == nil {
		return nil
	}
	return d.proxy.Health
}
