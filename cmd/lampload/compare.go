package main

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"text/template"
	"time"
)

// -compare: the same load against Kamailio's presence server and then
// against Lamplighter, in one run, with the state changed by PUBLISH,
// which both take. Only what both do is measured: subscriptions to the
// presence package over UDP, and one person's published note changing
// while many watch.

//go:embed kamailio/presence.cfg
var kamailioConfig string

// peerServer is a presence server under comparison.
type peerServer interface {
	name() string
	sipAddr() string
	stop() error
}

// compareResult holds each server's figures.
type compareResult struct {
	Machine machineInfo   `json:"machine"`
	Servers []peerFigures `json:"servers"`
}

// peerFigures are one server's figures.
type peerFigures struct {
	Server string      `json:"server"`
	Setup  setupResult `json:"setup"`
	Fanout roundResult `json:"fanout"`
	Error  string      `json:"error,omitempty"`
}

// roundResult is the fan-out: rounds PUBLISHes interval apart, each
// changing the note of one person that watchers watch.
type roundResult struct {
	Watchers  int     `json:"watchers"`
	Rounds    int     `json:"rounds"`
	Interval  float64 `json:"interval_seconds"`
	Delivered int     `json:"delivered"` // NOTIFYs carrying a round's note, at most one per watcher and round
	Expected  int     `json:"expected"`
	// Converged counts the watchers that saw the last round: a server
	// that sends the state as it is when a NOTIFY leaves (Lamplighter)
	// may skip a round that a later one overtook in its queue, and still
	// show every lamp right.
	Converged int     `json:"converged"`
	P50       float64 `json:"p50_ms"`
	P99       float64 `json:"p99_ms"`
	Max       float64 `json:"max_ms"`
	Error     string  `json:"error,omitempty"`
}

// kamailioModules finds the directory of Kamailio's modules as Debian
// installs them (per architecture), "" when there is none.
func kamailioModules() string {
	for _, pattern := range []string{"/usr/lib/*/kamailio/modules", "/usr/lib/kamailio/modules", "/usr/local/lib64/kamailio/modules"} {
		found, _ := filepath.Glob(filepath.Join(pattern, "presence_xml.so"))
		if len(found) > 0 {
			return filepath.Dir(found[0]) + "/"
		}
	}
	return ""
}

// kamailio runs Kamailio's presence server from the config above.
type kamailio struct {
	cmd  *exec.Cmd
	addr string
	log  *os.File
}

func (k *kamailio) name() string    { return "Kamailio" }
func (k *kamailio) sipAddr() string { return k.addr }

// startKamailio writes the config into dir and starts Kamailio on port,
// returning once it answers OPTIONS.
func startKamailio(ctx context.Context, binary, modules, dir string, port, children int) (*kamailio, error) {
	var cfg bytes.Buffer
	err := template.Must(template.New("cfg").Parse(kamailioConfig)).Execute(&cfg,
		map[string]any{"Port": port, "Children": children, "ModulePath": modules})
	if err != nil {
		return nil, err
	}
	path := filepath.Join(dir, "kamailio.cfg")
	if err := os.WriteFile(path, cfg.Bytes(), 0o600); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "kamailio.log"))
	if err != nil {
		return nil, err
	}
	k := &kamailio{addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), log: logf}
	// -DD: stay in the foreground (its workers are children); -E: log to
	// stderr; its own pid file and no privileges needed; shared memory
	// enough for 10,000 NOTIFY transactions per change (512 MB ran out).
	k.cmd = exec.Command(binary, "-DD", "-E", "-f", path, "-P", filepath.Join(dir, "kamailio.pid"), "-m", "4096", "-M", "64")
	k.cmd.Stdout, k.cmd.Stderr = logf, logf
	k.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := k.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", binary, err)
	}
	if err := waitOptions(ctx, k.addr, 15*time.Second); err != nil {
		k.stop()
		return nil, fmt.Errorf("kamailio (log in %s): %w", logf.Name(), err)
	}
	return k, nil
}

// stop ends Kamailio and its workers.
func (k *kamailio) stop() error {
	if k.cmd == nil || k.cmd.Process == nil {
		return nil
	}
	pgid := k.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- k.cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
	}
	k.cmd = nil
	return k.log.Close()
}

// waitOptions sends OPTIONS to addr until it answers 200 or within passes.
func waitOptions(ctx context.Context, addr string, within time.Duration) error {
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	defer conn.Close()
	to, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return err
	}
	port := conn.LocalAddr().(*net.UDPAddr).Port
	deadline := time.Now().Add(within)
	buf := make([]byte, 65536)
	for i := 0; time.Now().Before(deadline); i++ {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg := fmt.Sprintf("OPTIONS sip:%s SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-probe-%d;rport\r\n"+
			"Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag=probe\r\nTo: <sip:%s>\r\nCall-ID: probe-%d@lampload\r\n"+
			"CSeq: %d OPTIONS\r\nContent-Length: 0\r\n\r\n", addr, port, i, addr, i, i+1)
		if _, err := conn.WriteToUDP([]byte(msg), to); err != nil {
			return err
		}
		_ = conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, _, err := conn.ReadFromUDP(buf)
		if err == nil && bytes.HasPrefix(buf[:n], []byte("SIP/2.0 200")) {
			return nil
		}
	}
	return errors.New("no 200 to OPTIONS")
}

// lamplighterPeer is the target lampload starts, seen as a peer.
type lamplighterPeer struct{ t *target }

func (l lamplighterPeer) name() string    { return "Lamplighter" }
func (l lamplighterPeer) sipAddr() string { return l.t.sipAddr }
func (l lamplighterPeer) stop() error     { return l.t.stop() }

// publisher changes one person's note by PUBLISH over UDP: the first
// makes the publication, each later one modifies it (SIP-If-Match).
type publisher struct {
	conn   *net.UDPConn
	server *net.UDPAddr
	ext    string
	etag   string
	seq    int
}

func newPublisher(server, ext string) (*publisher, error) {
	to, err := net.ResolveUDPAddr("udp", server)
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	return &publisher{conn: conn, server: to, ext: ext}, nil
}

// publish sends round's note and waits for the 200 (retransmitting on
// Timer E).
func (p *publisher) publish(round int) error {
	p.seq++
	body := fmt.Sprintf(`<?xml version="1.0" encoding="UTF-8"?>`+"\n"+
		`<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="sip:%s@127.0.0.1">`+
		`<tuple id="lampload"><status><basic>open</basic></status><note>lampload-round-%d</note></tuple></presence>`,
		p.ext, round)
	match := ""
	if p.etag != "" {
		match = "SIP-If-Match: " + p.etag + "\r\n"
	}
	port := p.conn.LocalAddr().(*net.UDPAddr).Port
	msg := fmt.Sprintf("PUBLISH sip:%s@%s SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;branch=z9hG4bK-pub-%d;rport\r\n"+
		"Max-Forwards: 70\r\nFrom: <sip:%s@127.0.0.1>;tag=pub\r\nTo: <sip:%s@127.0.0.1>\r\nCall-ID: publish-%s@lampload\r\n"+
		"CSeq: %d PUBLISH\r\nEvent: presence\r\nExpires: 3600\r\n%sContent-Type: application/pidf+xml\r\n"+
		"Content-Length: %d\r\n\r\n%s", p.ext, p.server, port, p.seq, p.ext, p.ext, p.ext, p.seq, match, len(body), body)
	sent := time.Now()
	buf := make([]byte, 65536)
	for interval := 500 * time.Millisecond; time.Since(sent) < 32*time.Second; interval = min(2*interval, 4*time.Second) {
		if _, err := p.conn.WriteToUDP([]byte(msg), p.server); err != nil {
			return err
		}
		_ = p.conn.SetReadDeadline(time.Now().Add(interval))
		for {
			n, _, err := p.conn.ReadFromUDP(buf)
			if err != nil {
				break // resend
			}
			m, _, err := parseMessage(buf[:n])
			if err != nil || m.status < 200 || m.cseqNum != uint32(p.seq) {
				continue
			}
			if m.status >= 300 {
				return fmt.Errorf("PUBLISH answered %d", m.status)
			}
			p.etag = string(m.etag)
			return nil
		}
	}
	return errors.New("PUBLISH not answered")
}

func (p *publisher) close() { p.conn.Close() }

// rounds follows which watcher has seen which round.
type rounds struct {
	mu        sync.Mutex
	sent      map[int]time.Time
	seen      map[*sub]map[int]bool
	latencies []time.Duration
	delivered int
}

func (r *rounds) notice(n notice) {
	if n.round <= 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.sent[n.round]
	if !ok {
		return
	}
	m := r.seen[n.sub]
	if m == nil {
		m = map[int]bool{}
		r.seen[n.sub] = m
	}
	if m[n.round] {
		return
	}
	m[n.round] = true
	r.delivered++
	r.latencies = append(r.latencies, n.at.Sub(at))
}

// lastSeen is the number of watchers that saw round; called with mu held.
func (r *rounds) lastSeen(round int) int {
	n := 0
	for _, m := range r.seen {
		if m[round] {
			n++
		}
	}
	return n
}

// measureRounds publishes rounds changes interval apart and waits until
// every watcher has each or a deadline passes.
func measureRounds(ctx context.Context, ps *phones, pub *publisher, watchers []*sub, count int, interval time.Duration) roundResult {
	res := roundResult{Watchers: len(watchers), Rounds: count, Interval: interval.Seconds(), Expected: len(watchers) * count}
	r := &rounds{sent: map[int]time.Time{}, seen: map[*sub]map[int]bool{}}
	ps.onNotify(r.notice)
	defer ps.onNotify(nil)
	next := time.Now()
	for i := 1; i <= count; i++ {
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		next = next.Add(interval)
		r.mu.Lock()
		r.sent[i] = time.Now() // before sending: a NOTIFY may beat the 200
		r.mu.Unlock()
		if err := pub.publish(i); err != nil {
			res.Error = err.Error()
			break
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		r.mu.Lock()
		done := r.delivered >= res.Expected || (count > 0 && r.lastSeen(count) == len(watchers) && time.Since(r.sent[count]) > 5*time.Second)
		r.mu.Unlock()
		if done {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	res.Delivered = r.delivered
	for _, w := range watchers {
		if r.seen[w][count] {
			res.Converged++
		}
	}
	if len(r.latencies) > 0 {
		slices.Sort(r.latencies)
		pick := func(q float64) float64 {
			return float64(r.latencies[min(len(r.latencies)-1, int(q*float64(len(r.latencies))))]) / 1e6
		}
		res.P50, res.P99, res.Max = pick(0.50), pick(0.99), pick(1)
	}
	return res
}

// measurePeer runs the set-up and the fan-out against one server.
func measurePeer(ctx context.Context, peer peerServer, o options, users []*user, hot *user, say func(string, ...any)) peerFigures {
	fig := peerFigures{Server: peer.name()}
	ps := newPhones(peer.sipAddr())
	ps.rounds = true
	defer func() {
		for _, p := range ps.list {
			p.close()
		}
	}()
	// Presence over UDP: what both serve.
	oc := o
	oc.dialogShare, oc.tcpShare = 0, 0
	held, err := buildSubs(ctx, ps, oc, o.subs, func(i int) *user { return users[i%len(users)] })
	if err != nil {
		fig.Error = err.Error()
		return fig
	}
	fan, err := buildSubs(ctx, ps, oc, o.fanout, func(int) *user { return hot })
	if err != nil {
		fig.Error = err.Error()
		return fig
	}
	ps.seal()
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go ps.retransmit(rctx, o.expires)
	pub, err := newPublisher(peer.sipAddr(), hot.ext)
	if err != nil {
		fig.Error = err.Error()
		return fig
	}
	defer pub.close()
	// The person has a published state before anyone watches.
	if err := pub.publish(0); err != nil {
		fig.Error = "first PUBLISH: " + err.Error()
		return fig
	}
	say("%s: setting up %d subscriptions", peer.name(), len(held))
	fig.Setup = setUp(ctx, ps, held, o.window, o.expires, 0)
	say("%s: %d watchers of one person", peer.name(), len(fan))
	if fs := setUp(ctx, ps, fan, o.window, o.expires, 0); fs.OK < len(fan) {
		fig.Error = fmt.Sprintf("only %d of %d watchers subscribed", fs.OK, len(fan))
	}
	say("%s: %d changes by PUBLISH, %v apart", peer.name(), o.fanoutRounds, o.compareInterval)
	fig.Fanout = measureRounds(ctx, ps, pub, fan, o.fanoutRounds, o.compareInterval)
	return fig
}

// runCompare measures Kamailio and then Lamplighter.
func runCompare(ctx context.Context, o options, stderr io.Writer) (*compareResult, error) {
	say := progress{stderr}.say
	res := &compareResult{Machine: newResult(o).Machine}
	dir, cleanup, err := workDir("lampload-compare-", o.keep, say)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	users, hot := makeUsers(o.users, 0)

	port, err := freePort()
	if err != nil {
		return nil, err
	}
	modules := o.kamailioModules
	if modules == "" {
		if modules = kamailioModules(); modules == "" {
			return nil, errors.New("no Kamailio modules found under /usr/lib: install kamailio-presence-modules or give -kamailio-modules")
		}
	}
	say("starting %s (%d UDP workers)", o.kamailio, o.kamailioChildren)
	k, err := startKamailio(ctx, o.kamailio, modules, dir, port, o.kamailioChildren)
	if err != nil {
		return nil, err
	}
	res.Servers = append(res.Servers, measurePeer(ctx, k, o, users, hot, say))
	if err := k.stop(); err != nil {
		say("stopping kamailio: %v", err)
	}
	for _, u := range users {
		u.watchers = 0
	}
	hot.watchers = 0

	esl, err := eslDouble()
	if err != nil {
		return res, err
	}
	defer esl.Close()
	esl.SetRegistrations(registrations(append(users, hot)))
	sipPort, err := freePort()
	if err != nil {
		return res, err
	}
	httpPort, err := freePort()
	if err != nil {
		return res, err
	}
	ldir := filepath.Join(dir, "lamplighter")
	if err := os.Mkdir(ldir, 0o700); err != nil {
		return res, err
	}
	t := &target{binary: o.binary, dir: ldir, logLevel: o.logLevel}
	if err := t.writeConfig(sipPort, httpPort, esl.Addr(), append(users, hot), o.subs+o.fanout+100); err != nil {
		return res, err
	}
	say("starting %s", o.binary)
	if err := t.start(ctx); err != nil {
		return res, err
	}
	defer t.stop()
	if err := t.ready(ctx, 30*time.Second); err != nil {
		return res, err
	}
	res.Servers = append(res.Servers, measurePeer(ctx, lamplighterPeer{t}, o, users, hot, say))
	return res, nil
}

// print writes the comparison as a table with the ratio of each figure.
func (r *compareResult) print(w io.Writer) {
	fmt.Fprintf(w, "Kamailio and Lamplighter, the same load in one run\n")
	fmt.Fprintf(w, "machine: %s, %d cores, %d MiB, %s\n\n", r.Machine.CPU, r.Machine.Cores, r.Machine.MemoryMB, r.Machine.Go)
	if len(r.Servers) == 0 {
		return
	}
	row := func(name string, cell func(peerFigures) string, ratio string) {
		fmt.Fprintf(w, "%-36s", name)
		for _, s := range r.Servers {
			fmt.Fprintf(w, " %-24s", cell(s))
		}
		fmt.Fprintf(w, " %s\n", ratio)
	}
	row("", func(s peerFigures) string { return s.Server }, "Lamplighter vs Kamailio")
	ratio := func(f func(peerFigures) float64, higherBetter bool) string {
		if len(r.Servers) < 2 {
			return ""
		}
		a, b := f(r.Servers[0]), f(r.Servers[1])
		if a <= 0 || b <= 0 {
			return "-"
		}
		factor := a / b // Lamplighter's advantage where lower is better
		if higherBetter {
			factor = b / a
		}
		if factor >= 1 {
			return fmt.Sprintf("%.1f× better", factor)
		}
		return fmt.Sprintf("%.1f× worse", 1/factor)
	}
	row("subscription set-up", func(s peerFigures) string {
		return fmt.Sprintf("%.0f/s (%d ok)", s.Setup.PerSecond, s.Setup.OK)
	}, ratio(func(s peerFigures) float64 { return s.Setup.PerSecond }, true))
	row("  all first NOTIFYs by", func(s peerFigures) string {
		return fmt.Sprintf("%.2f s", s.Setup.FirstNotifySeconds)
	}, ratio(func(s peerFigures) float64 { return s.Setup.FirstNotifySeconds }, false))
	f := r.Servers[0].Fanout
	row(fmt.Sprintf("fan-out: %d watchers, %d changes %v apart, delivered", f.Watchers, f.Rounds, time.Duration(f.Interval*float64(time.Second))),
		func(s peerFigures) string {
			pct := 0.0
			if s.Fanout.Expected > 0 {
				pct = 100 * float64(s.Fanout.Delivered) / float64(s.Fanout.Expected)
			}
			return fmt.Sprintf("%.1f%% (%d)", pct, s.Fanout.Delivered)
		}, ratio(func(s peerFigures) float64 { return float64(s.Fanout.Delivered) }, true))
	row("  watchers showing the last change", func(s peerFigures) string {
		return fmt.Sprintf("%d of %d", s.Fanout.Converged, s.Fanout.Watchers)
	}, ratio(func(s peerFigures) float64 { return float64(s.Fanout.Converged) }, true))
	row("  PUBLISH→NOTIFY p50", func(s peerFigures) string { return fmt.Sprintf("%.1f ms", s.Fanout.P50) },
		ratio(func(s peerFigures) float64 { return s.Fanout.P50 }, false))
	row("  PUBLISH→NOTIFY p99", func(s peerFigures) string { return fmt.Sprintf("%.1f ms", s.Fanout.P99) },
		ratio(func(s peerFigures) float64 { return s.Fanout.P99 }, false))
	row("  PUBLISH→NOTIFY max", func(s peerFigures) string { return fmt.Sprintf("%.1f ms", s.Fanout.Max) },
		ratio(func(s peerFigures) float64 { return s.Fanout.Max }, false))
	for _, s := range r.Servers {
		for _, e := range []string{s.Error, s.Setup.Error, s.Fanout.Error} {
			if e != "" {
				fmt.Fprintf(w, "%s: %s\n", s.Server, e)
			}
		}
	}
}
