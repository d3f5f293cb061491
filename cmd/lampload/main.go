// Command lampload measures a Lamplighter under load, on loopback only.
//
// It starts the Lamplighter binary it is given with a generated
// configuration: N users on one FreeSWITCH, which is lampload's own event
// socket double. It opens subscriptions from many simulated phones (raw
// UDP sockets and TCP connections that answer every NOTIFY with 200),
// drives calls through the event socket at a set rate and measures, as
// the phones receive them: event→NOTIFY latency, subscription set-up
// rate, NOTIFY fan-out (one change to many watchers; many changes at
// once), failures and retransmissions, memory per subscription, and how
// long a restart takes to re-NOTIFY every subscription. It prints a table
// and, with -json, writes the figures as JSON. See README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"
)

// options are lampload's flags.
type options struct {
	binary       string
	flood        int           // SUBSCRIBEs per flood in the flood phase (0: none)
	floodModes   []floodMode   // the floods of the flood phase, one after the other
	floodFor     time.Duration // how long the flood lasts
	subs         int
	users        int
	perPhone     int
	tcpShare     float64
	dialogShare  float64
	rate         float64
	duration     time.Duration
	fanout       int
	fanoutRounds int
	burst        bool
	restart      bool
	window       int
	expires      int
	sipPort      int
	httpPort     int
	jsonPath     string
	pprofDir     string
	ceiling      bool
	settle       time.Duration // for settled memory readings (tests shorten it)
	selfProfile  string
	storm        float64
	cluster      int // nodes of the -cluster run (0: one Lamplighter)

	compare          bool
	compareInterval  time.Duration
	kamailio         string
	kamailioModules  string
	kamailioChildren int
	keep             bool
	logLevel         string
	skipHeld         bool // no wait for Timer J before the held-memory reading

	// tenants > 0: the users are discovered from the FreeSWITCH double's
	// directory (list_users) across this many domains, each a tenant, and
	// watched at their domain; refresh > 0: the latency is measured again
	// while the directory changes and is read again this often.
	tenants int
	refresh time.Duration
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("lampload: ")
	var o options
	fs := flag.NewFlagSet("lampload", flag.ExitOnError)
	fs.StringVar(&o.binary, "lamplighter", "./lamplighter", "the Lamplighter `binary` to start and measure")
	fs.IntVar(&o.subs, "subs", 10000, "subscriptions held through the run")
	fs.IntVar(&o.users, "users", 0, "users in the directory; subscription i watches user i mod users (0: one per 10 subscriptions)")
	fs.IntVar(&o.perPhone, "per-phone", 50, "subscriptions per simulated phone (one socket or connection each)")
	fs.Float64Var(&o.tcpShare, "tcp", 0.1, "share of phones on TCP (the rest on UDP)")
	fs.Float64Var(&o.dialogShare, "dialog", 0.5, "share of subscriptions to the dialog package (the rest presence)")
	fs.Float64Var(&o.rate, "rate", 1000, "PBX events per second in the latency phase")
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of the latency phase")
	fs.IntVar(&o.fanout, "fanout", 10000, "watchers of one user for the fan-out phase (0 skips it)")
	fs.IntVar(&o.fanoutRounds, "fanout-rounds", 10, "changes of that user, one at a time")
	fs.BoolVar(&o.burst, "burst", true, "also change every user at once (many changes, many watchers)")
	fs.BoolVar(&o.restart, "restart", true, "restart Lamplighter and time the re-NOTIFY of every subscription")
	fs.IntVar(&o.window, "window", 1000, "SUBSCRIBEs in flight at once while setting up")
	fs.IntVar(&o.cluster, "cluster", 0, "run this many Lamplighter nodes on one nats-server (JetStream) instead of one: set-up over all, the engine's cost per set-up and per refresh, and the failover of one node's share (-subs, -users apply)")
	fs.Float64Var(&o.storm, "storm", 0, "a reboot storm: send the SUBSCRIBEs at this many a second whatever is in flight, instead of -window at a time (0: no storm)")
	fs.IntVar(&o.expires, "expires", 7200, "Expires of the SUBSCRIBEs, seconds")
	fs.IntVar(&o.sipPort, "sip-port", 0, "Lamplighter's SIP port on 127.0.0.1 (0: a free one)")
	fs.IntVar(&o.httpPort, "http-port", 0, "Lamplighter's HTTP port on 127.0.0.1 (0: a free one)")
	fs.StringVar(&o.jsonPath, "json", "", "write the results as JSON to this `file` (- for stdout)")
	fs.StringVar(&o.pprofDir, "pprof", "", "save Lamplighter's CPU profiles of the latency and fan-out phases (with -cluster: of the surviving nodes during the failover) in this `directory`")
	fs.BoolVar(&o.keep, "keep", false, "keep the working directory (config, state, Lamplighter's log)")
	fs.StringVar(&o.logLevel, "log", "warn", "Lamplighter's log `level` (its log is in the working directory)")
	fs.IntVar(&o.tenants, "tenants", 0, "discover the users from the PBX's directory, spread over this many domains (tenants), and watch each at its domain (0: users in the YAML, one domain)")
	fs.DurationVar(&o.refresh, "refresh", 0, "with -tenants: measure the latency again while the directory changes (one user added or removed) and is read again this often")
	fs.IntVar(&o.flood, "flood", 0, "SUBSCRIBEs sent from one untrusted address (127.0.0.2) over -flood-for, per flood mode, while the latency is measured again (0 skips it)")
	fs.Func("flood-modes", "the floods, one after the other: AUTH/TRANSPORT,... with AUTH none (no credentials), wrong-password (a real user's name, a nonce of the server's, a wrong password) or unknown-user, and TRANSPORT udp or tcp; or all (default none/udp)", func(v string) error {
		m, err := parseFloodModes(v)
		o.floodModes = m
		return err
	})
	fs.DurationVar(&o.floodFor, "flood-for", 10*time.Second, "how long the flood lasts")
	fs.BoolVar(&o.skipHeld, "quick", false, "read the held memory at once, without waiting out the SUBSCRIBE transactions")
	fs.StringVar(&o.selfProfile, "cpuprofile", "", "write the load tool's own CPU profile (its phones) to this `file`")
	fs.BoolVar(&o.compare, "compare", false, "run the set-up and a PUBLISH-driven fan-out against Kamailio's presence server and then against Lamplighter, and print both with their ratio (-subs, -fanout, -fanout-rounds, -window apply)")
	fs.DurationVar(&o.compareInterval, "compare-interval", 200*time.Millisecond, "time between the PUBLISHed changes of -compare")
	fs.StringVar(&o.kamailio, "kamailio", "kamailio", "the Kamailio `binary` for -compare")
	fs.StringVar(&o.kamailioModules, "kamailio-modules", "", "Kamailio's module `directory` (default: where Debian puts it)")
	fs.IntVar(&o.kamailioChildren, "kamailio-children", 8, "Kamailio's UDP worker processes")
	fs.BoolVar(&o.ceiling, "ceiling", false, "set up -subs subscriptions against a server that only answers (no state, no file) instead of Lamplighter: the set-up rate the phones and the machine allow")
	answerAddr := fs.String("answer-only", "", "")
	fs.Parse(os.Args[1:])
	if *answerAddr != "" { // the ceiling run's server, started by lampload itself
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := answerOnly(ctx, *answerAddr); err != nil {
			log.Fatal(err)
		}
		return
	}
	if o.users == 0 {
		o.users = max(1, o.subs/10)
	}
	if err := o.check(); err != nil {
		fmt.Fprintln(os.Stderr, "lampload:", err)
		fs.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.selfProfile != "" {
		f, err := os.Create(o.selfProfile)
		if err != nil {
			log.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			log.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	// One of three runs; each result prints itself and goes to -json.
	var res interface{ print(io.Writer) }
	var err error
	switch {
	case o.cluster > 0:
		r, e := runCluster(ctx, o, os.Stderr)
		if r != nil {
			res = r
		}
		err = e
	case o.ceiling:
		r, e := runCeiling(ctx, o, os.Stderr)
		if r != nil {
			res = r
		}
		err = e
	case o.compare:
		r, e := runCompare(ctx, o, os.Stderr)
		if r != nil {
			res = r
		}
		err = e
	default:
		r, e := run(ctx, o, os.Stderr)
		if r != nil {
			res = r
		}
		err = e
	}
	if res != nil {
		res.print(os.Stdout)
		if o.jsonPath != "" {
			if werr := writeJSON(o.jsonPath, res); werr != nil {
				err = errors.Join(err, werr)
			}
		}
	}
	if err != nil {
		log.Fatal(err)
	}
}

func (o *options) check() error {
	switch {
	case o.subs < 1 || o.users < 1 || o.perPhone < 1:
		return errors.New("-subs, -users and -per-phone must be at least 1")
	case o.users > o.subs:
		return errors.New("-users must not exceed -subs (every user needs a watcher)")
	case o.tcpShare < 0 || o.tcpShare > 1 || o.dialogShare < 0 || o.dialogShare > 1:
		return errors.New("-tcp and -dialog are shares between 0 and 1")
	case o.rate <= 0 || o.duration <= 0:
		return errors.New("-rate and -duration must be positive")
	case o.duration > time.Hour:
		return errors.New("-duration is at most 1h")
	case o.flood < 0 || (o.flood > 0 && (o.floodFor <= 0 || o.floodFor > time.Hour)):
		return errors.New("-flood must not be negative and -flood-for between 0 and 1h")
	case o.compare && (o.compareInterval <= 0 || o.kamailioChildren < 1 || o.fanout < 1):
		return errors.New("-compare needs -fanout, -compare-interval and -kamailio-children above 0")
	case o.storm < 0:
		return errors.New("-storm must not be negative")
	case o.tenants < 0 || o.tenants > o.users || o.refresh < 0 || (o.refresh > 0 && o.tenants == 0):
		return errors.New("-tenants must be between 0 and -users; -refresh needs -tenants")
	case o.fanout < 0 || o.fanoutRounds < 1 || o.window < 1:
		return errors.New("-fanout must not be negative; -fanout-rounds and -window at least 1")
	}
	return nil
}

func writeJSON(path string, res any) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if path == "-" {
		_, err = os.Stdout.Write(b)
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// progress prints what lampload is doing, to stderr.
type progress struct{ w io.Writer }

func (p progress) say(format string, args ...any) {
	fmt.Fprintf(p.w, "lampload: "+format+"\n", args...)
}

// workDir makes a temporary working directory; cleanup removes it unless
// keep is set, in which case where it is is said.
func workDir(prefix string, keep bool, say func(string, ...any)) (dir string, cleanup func(), err error) {
	if dir, err = os.MkdirTemp("", prefix); err != nil {
		return "", nil, err
	}
	if keep {
		say("working directory %s (kept)", dir)
		return dir, func() {}, nil
	}
	return dir, func() { os.RemoveAll(dir) }, nil
}

// makeUsers makes n users with extensions from 100000, and the one the
// fan-out watches; with tenants, the users are spread over that many
// domains (t0.lampload, ...), each numbered from 1000 as a company's
// extensions are.
func makeUsers(n, tenants int) (users []*user, hot *user) {
	users = make([]*user, n)
	if tenants == 0 {
		for i := range users {
			users[i] = &user{id: fmt.Sprintf("u%d", i), ext: fmt.Sprint(100000 + i), domain: "lampload"}
		}
		return users, &user{id: "hot", ext: "99999", domain: "lampload"}
	}
	per := (n + tenants - 1) / tenants
	for i := range users {
		d := fmt.Sprintf("t%d.lampload", i/per)
		ext := fmt.Sprint(1000 + i%per)
		users[i] = &user{id: ext + "@" + d, ext: ext, domain: d, tenant: true}
	}
	return users, &user{id: "99999@t0.lampload", ext: "99999", domain: "t0.lampload", tenant: true}
}

// run does the whole measurement.
func run(ctx context.Context, o options, stderr io.Writer) (*result, error) {
	say := progress{stderr}.say
	res := newResult(o)
	say("raw UDP send rate on loopback (1 s)")
	res.RawUDP = measureRawUDP(time.Second)

	dir, cleanup, err := workDir("lampload-", o.keep, say)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	esl, err := eslDouble()
	if err != nil {
		return nil, err
	}
	defer esl.Close()
	users, hot := makeUsers(o.users, o.tenants)
	esl.SetRegistrations(registrations(append(users, hot)))
	esl.SetUsers(directory(append(users, hot), nil))
	sipPort, httpPort := o.sipPort, o.httpPort
	if sipPort == 0 {
		if sipPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	if httpPort == 0 {
		if httpPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	t := &target{binary: o.binary, dir: dir, logLevel: o.logLevel, settle: o.settle, discover: o.tenants > 0}
	if err := t.writeConfig(sipPort, httpPort, esl.Addr(), append(users, hot), o.subs+o.fanout+100); err != nil {
		return nil, err
	}
	say("starting %s (%d users)", o.binary, len(users)+1)
	if err := t.start(ctx); err != nil {
		return nil, err
	}
	defer t.stop()
	if err := t.ready(ctx, 30*time.Second); err != nil {
		return res, err
	}
	if o.tenants > 0 {
		say("discovery: waiting for the %d users of %d tenants", len(users)+1, o.tenants)
		if res.Discovery.LoadSeconds, err = t.discovered(ctx, len(users)+1, time.Minute); err != nil {
			return res, err
		}
		res.Discovery.Tenants, res.Discovery.Users = o.tenants, len(users)+1
	}
	if res.Memory.Before, err = t.settledMemory(ctx); err != nil {
		return res, fmt.Errorf("reading memory: %w", err)
	}

	// The phones and their subscriptions, all made before any is sent.
	ps := newPhones(t.sipAddr)
	defer func() {
		for _, p := range ps.list {
			p.close()
		}
	}()
	held, err := buildSubs(ctx, ps, o, o.subs, func(i int) *user { return users[i%len(users)] })
	if err != nil {
		return res, err
	}
	fan, err := buildSubs(ctx, ps, o, o.fanout, func(int) *user { return hot })
	if err != nil {
		return res, err
	}
	ps.seal()
	res.Phones = len(ps.list)
	rctx, stopRetransmit := context.WithCancel(ctx)
	defer stopRetransmit()
	go ps.retransmit(rctx, o.expires)
	var tracker changes
	freeswitch := &pbx{esl: esl}
	ps.onNotify(tracker.notice)

	say("setting up %d subscriptions from %d phones", len(held), res.Phones)
	stopProfile := t.profileDuring(o.pprofDir, "setup", 3*time.Second, say)
	serverCPU, phonesCPU := cpuSeconds(t.cmd.Process.Pid), cpuSeconds(os.Getpid())
	res.Setup = setUp(ctx, ps, held, o.window, o.expires, o.storm)
	stopProfile()
	if res.Setup.OK > 0 {
		res.Setup.ServerCPUMicros = (cpuSeconds(t.cmd.Process.Pid) - serverCPU) / float64(res.Setup.OK) * 1e6
		res.Setup.PhonesCPUMicros = (cpuSeconds(os.Getpid()) - phonesCPU) / float64(res.Setup.OK) * 1e6
	}
	if res.Setup.Failed > 0 {
		say("%d subscriptions failed", res.Setup.Failed)
	}
	if res.Memory.Loaded, err = t.memory(); err != nil {
		return res, fmt.Errorf("reading memory: %w", err)
	}
	lastSubscribe := time.Now()

	say("latency: %.0f events/s for %v", o.rate, o.duration)
	stopProfile = t.profileDuring(o.pprofDir, "latency", o.duration, say)
	res.Latency = measureLatency(ctx, &tracker, freeswitch, users, o.rate, o.duration)
	stopProfile()
	if o.refresh > 0 {
		say("latency while the directory is read again every %v: %.0f events/s for %v", o.refresh, o.rate, o.duration)
		stopProfile = t.profileDuring(o.pprofDir, "refresh", o.duration, say)
		res.Discovery.Refreshing = measureRefreshing(ctx, t, esl, &tracker, freeswitch, users, append(users, hot), o.rate, o.duration, o.refresh)
		stopProfile()
	}

	if o.fanout > 0 {
		say("fan-out: setting up %d watchers of one user", len(fan))
		res.FanoutSetup = setUp(ctx, ps, fan, o.window, o.expires, 0)
		lastSubscribe = time.Now()
		say("fan-out: %d changes of that user, one at a time", o.fanoutRounds)
		stopProfile = t.profileDuring(o.pprofDir, "fanout", 5*time.Second, say)
		res.FanoutOne = measureFanout(ctx, &tracker, freeswitch, hot, o.fanoutRounds)
		res.FanoutOne.FractionOfRawUDP = res.FanoutOne.PerSecond / res.RawUDP.PerSecond
		stopProfile()
	}
	if o.burst {
		say("fan-out: every user changes at once")
		stopProfile = t.profileDuring(o.pprofDir, "burst", 3*time.Second, say)
		res.FanoutMany = measureBurst(ctx, &tracker, freeswitch, users)
		res.FanoutMany.FractionOfRawUDP = res.FanoutMany.PerSecond / res.RawUDP.PerSecond
		stopProfile()
	}
	// What subscriptions hold once set up: sipgo keeps each SUBSCRIBE's
	// server transaction for Timer J (64*T1 = 32 s over UDP) to absorb
	// retransmissions, so the held figure waits for that to pass.
	if wait := time.Until(lastSubscribe.Add(33 * time.Second)); wait > 0 && !o.skipHeld {
		say("memory: waiting %v for the SUBSCRIBE transactions to end (Timer J)", wait.Round(time.Second))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return res, ctx.Err()
		}
	}
	if res.Memory.Held, err = t.settledMemory(ctx); err != nil {
		return res, fmt.Errorf("reading memory: %w", err)
	}
	res.Memory.perSubscription(res.Setup.OK+res.FanoutSetup.OK, res.Setup.OK)

	// The flood comes once the subscriptions are held (their transactions
	// gone, memory settled), so that what it adds to RSS is its own and
	// not the set-up's heap still finding its level.
	if o.flood > 0 {
		modes := o.floodModes
		if modes == nil {
			modes = []floodMode{{"none", "udp"}}
		}
		for _, m := range modes {
			say("flood %s: %d SUBSCRIBEs from %s over %v, events going on", m, o.flood, floodSource, o.floodFor)
			// Profiled from the first request on (not while memory settles).
			stopProfile = func() {}
			started := func() {
				stopProfile = t.profileDuring(o.pprofDir, "flood-"+strings.ReplaceAll(m.String(), "/", "-"), o.floodFor, say)
			}
			res.Floods = append(res.Floods, measureFlood(ctx, t, &tracker, freeswitch, users, o.flood, o.floodFor, o.rate, m, started))
			stopProfile()
		}
	}
	if o.pprofDir != "" {
		if err := t.fetch("/debug/pprof/heap", filepath.Join(o.pprofDir, "heap.pprof")); err != nil {
			say("heap profile: %v", err)
		}
	}
	if res.Server, err = serverCounts(t); err != nil {
		return res, err
	}
	res.Phone = phoneCounts(ps)

	if o.restart {
		say("restart: SIGTERM, start again, wait for a NOTIFY on every subscription")
		res.Restart, err = measureRestart(ctx, t, ps, append(held, fan...))
		if err != nil {
			return res, err
		}
		// The restarted process holds the same subscriptions without
		// ever having had their SUBSCRIBE transactions.
		if res.Memory.Restored, err = t.settledMemory(ctx); err != nil {
			return res, fmt.Errorf("reading memory: %w", err)
		}
		res.Memory.restored(res.Restart.Renotified)
	}
	if err := t.stop(); err != nil {
		return res, fmt.Errorf("lamplighter: %w (log: %s)", err, filepath.Join(dir, "lamplighter.log"))
	}
	return res, nil
}
