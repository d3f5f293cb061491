package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The cluster run (-cluster N): N Lamplighter nodes on one NATS JetStream
// server (Debian's nats-server), every node following the same PBX double,
// the phones spread over the nodes. It measures the set-up over all
// nodes, what the engine costs (its CPU and its writes per set-up and per
// refresh), and how long the failover of one node's share takes: the
// node is killed (SIGKILL) and every one of its subscriptions must get a
// NOTIFY in its dialog from another node.

// clusterResult is what -cluster measures.
type clusterResult struct {
	Machine       string  `json:"machine"`
	Nodes         int     `json:"nodes"`
	Subscriptions int     `json:"subscriptions"`
	LeaseTTL      float64 `json:"lease_ttl_seconds"`
	Setup         setupResult
	// EngineCPUPerSetup and EngineCPUPerRefresh are nats-server's CPU
	// time per subscription set up and per refresh; WritesPerSetup the
	// engine writes the nodes counted per set-up.
	EngineCPUPerSetupMicros   float64 `json:"engine_cpu_per_setup_us"`
	EngineCPUPerRefreshMicros float64 `json:"engine_cpu_per_refresh_us"`
	NodesCPUPerSetupMicros    float64 `json:"nodes_cpu_per_setup_us"`
	WritesPerSetup            float64 `json:"engine_writes_per_setup"`
	MeanWriteMillis           float64 `json:"engine_write_mean_ms"`
	Refresh                   setupResult
	// Failover: the killed node's share, how many got a NOTIFY from
	// another node, and when the last came (from the kill).
	FailoverShare     int     `json:"failover_share"`
	FailoverNotified  int     `json:"failover_notified"`
	FailoverSeconds   float64 `json:"failover_seconds"`
	FailoverFirstSecs float64 `json:"failover_first_seconds"`
	// LeaseLapsedSecs is when, after the kill, the killed node's lease
	// ran out (its last renewal as the engine stamped it, plus the TTL):
	// the failover bound counts from there.
	LeaseLapsedSecs float64 `json:"lease_lapsed_seconds"`
}

func (r *clusterResult) print(w io.Writer) {
	fmt.Fprintf(w, "Lamplighter cluster: %d nodes on one nats-server (JetStream), %d subscriptions, lease TTL %.0f s\n",
		r.Nodes, r.Subscriptions, r.LeaseTTL)
	fmt.Fprintf(w, "machine: %s\n\n", r.Machine)
	fmt.Fprintf(w, "%-36s %.0f/s (%d ok, %d failed, %d missing, %d retransmitted; all first NOTIFYs by %.2f s)\n",
		"subscription set-up, all nodes", r.Setup.PerSecond, r.Setup.OK, r.Setup.Failed, r.Setup.Missing,
		r.Setup.Retransmissions, r.Setup.FirstNotifySeconds)
	fmt.Fprintf(w, "%-36s %.1f µs nats-server CPU, %.1f µs Lamplighter CPU (all nodes), %.2f engine writes (mean %.2f ms)\n",
		"  per set-up", r.EngineCPUPerSetupMicros, r.NodesCPUPerSetupMicros, r.WritesPerSetup, r.MeanWriteMillis)
	fmt.Fprintf(w, "%-36s %.0f/s; %.1f µs nats-server CPU per refresh\n", "refresh of every subscription",
		r.Refresh.PerSecond, r.EngineCPUPerRefreshMicros)
	fmt.Fprintf(w, "%-36s %d of %d subscriptions NOTIFYed by another node; first %.2f s, last %.2f s after the kill\n",
		"failover of one node (SIGKILL)", r.FailoverNotified, r.FailoverShare, r.FailoverFirstSecs, r.FailoverSeconds)
	if r.LeaseLapsedSecs > 0 {
		fmt.Fprintf(w, "%-36s the lease ran out %.2f s after the kill: first NOTIFY %.2f s, last %.2f s after that\n",
			"", r.LeaseLapsedSecs, r.FailoverFirstSecs-r.LeaseLapsedSecs, r.FailoverSeconds-r.LeaseLapsedSecs)
	}
}

// leaseRenewed reads when a node last renewed its lease, as the engine
// stamped the renewal.
func leaseRenewed(url, node string) (time.Time, error) {
	nc, err := nats.Connect(url)
	if err != nil {
		return time.Time{}, err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return time.Time{}, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, "lamplighter_nodes")
	if err != nil {
		return time.Time{}, err
	}
	e, err := kv.Get(ctx, node)
	if err != nil {
		return time.Time{}, err
	}
	return e.Created(), nil
}

// natsServer runs one JetStream server in dir.
type natsServer struct {
	cmd  *exec.Cmd
	url  string
	done chan error
}

func startNATS(dir string) (*natsServer, error) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if bin, err = exec.LookPath("/usr/sbin/nats-server"); err != nil {
			return nil, fmt.Errorf("-cluster needs nats-server (apt-get install nats-server)")
		}
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "nats-server.log"))
	if err != nil {
		return nil, err
	}
	n := &natsServer{url: "nats://127.0.0.1:" + strconv.Itoa(port), done: make(chan error, 1)}
	n.cmd = exec.Command(bin, "-js", "-sd", filepath.Join(dir, "nats"), "-a", "127.0.0.1", "-p", strconv.Itoa(port))
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	if err := n.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { n.done <- n.cmd.Wait(); logf.Close() }()
	for range 100 {
		if c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 100*time.Millisecond); err == nil {
			c.Close()
			return n, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, fmt.Errorf("nats-server did not listen")
}

func (n *natsServer) stop() {
	n.cmd.Process.Kill()
	<-n.done
}

// cpuSeconds is a process's user and system CPU time.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command (which may hold spaces) in parentheses.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // clock ticks (USER_HZ, 100 on Linux)
}

// clusterReady waits until a node's /readyz says its cluster is not
// degraded (connected, leased, everything read, reconciled).
func (t *target) clusterReady(within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if res, err := http.Get(t.http + "/readyz"); err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			if strings.Contains(string(b), `"degraded":false`) {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("node %s: cluster still degraded after %v", t.http, within)
}

// kill ends a target with SIGKILL.
func (t *target) kill() {
	if t.cmd != nil && t.cmd.Process != nil {
		t.cmd.Process.Signal(syscall.SIGKILL)
		<-t.exited
		t.cmd = nil
	}
}

// runCluster does the -cluster measurement.
func runCluster(ctx context.Context, o options, stderr io.Writer) (*clusterResult, error) {
	say := progress{stderr}.say
	res := &clusterResult{Machine: machine(), Nodes: o.cluster, Subscriptions: o.subs, LeaseTTL: 3}
	dir, cleanup, err := workDir("lampload-cluster-", o.keep, say)
	if err != nil {
		return nil, err
	}
	defer cleanup()
	nats, err := startNATS(dir)
	if err != nil {
		return nil, err
	}
	defer nats.stop()
	esl, err := eslDouble()
	if err != nil {
		return nil, err
	}
	defer esl.Close()
	users, _ := makeUsers(o.users, 0)
	esl.SetRegistrations(registrations(users))
	var nodes []*target
	defer func() {
		for _, t := range nodes {
			t.stop()
		}
	}()
	for i := range o.cluster {
		ndir := filepath.Join(dir, "node"+strconv.Itoa(i+1))
		if err := os.MkdirAll(ndir, 0o755); err != nil {
			return nil, err
		}
		sipPort, err := freePort()
		if err != nil {
			return nil, err
		}
		httpPort, err := freePort()
		if err != nil {
			return nil, err
		}
		t := &target{binary: o.binary, dir: ndir, logLevel: o.logLevel,
			extra: fmt.Sprintf("cluster:\n  node: n%d\n  urls: [%s]\n  lease_ttl: 3s\n", i+1, nats.url)}
		if err := t.writeConfig(sipPort, httpPort, esl.Addr(), users, o.subs+100); err != nil {
			return nil, err
		}
		say("starting node n%d", i+1)
		if err := t.start(ctx); err != nil {
			return nil, err
		}
		nodes = append(nodes, t)
	}
	for _, t := range nodes {
		if err := t.clusterReady(30 * time.Second); err != nil {
			return res, err
		}
		if err := t.ready(ctx, 30*time.Second); err != nil {
			return res, err
		}
	}

	// The phones: an equal share on each node.
	var all []*phones
	share := make([][]*sub, len(nodes))
	per := o.subs / len(nodes)
	for i, t := range nodes {
		ps := newPhones(t.sipAddr)
		defer func() {
			for _, p := range ps.list {
				p.close()
			}
		}()
		subs, err := buildSubs(ctx, ps, o, per, func(j int) *user { return users[(i*per+j)%len(users)] })
		if err != nil {
			return res, err
		}
		ps.seal()
		rctx, stopRetransmit := context.WithCancel(ctx)
		defer stopRetransmit()
		go ps.retransmit(rctx, o.expires)
		all, share[i] = append(all, ps), subs
	}
	cpuNodes := func() float64 {
		var c float64
		for _, t := range nodes {
			if t.cmd != nil {
				c += cpuSeconds(t.cmd.Process.Pid)
			}
		}
		return c
	}
	writes := func() (n, secs, ops float64) {
		for _, t := range nodes {
			if t.cmd == nil {
				continue
			}
			m, err := t.metrics()
			if err != nil {
				continue
			}
			n += m["lamplighter_cluster_writes_total"]
			secs += m["lamplighter_cluster_engine_seconds_total"]
			ops += m["lamplighter_cluster_engine_operations_total"]
		}
		return
	}

	say("setting up %d subscriptions over %d nodes", per*len(nodes), len(nodes))
	engine0, nodes0 := cpuSeconds(nats.cmd.Process.Pid), cpuNodes()
	w0, _, _ := writes()
	results := make(chan setupResult, len(nodes))
	for i := range nodes {
		go func() { results <- setUp(ctx, all[i], share[i], o.window, o.expires, 0) }()
	}
	for range nodes {
		r := <-results
		res.Setup.Subscriptions += r.Subscriptions
		res.Setup.OK += r.OK
		res.Setup.Failed += r.Failed
		res.Setup.Missing += r.Missing
		res.Setup.Retransmissions += r.Retransmissions
		res.Setup.WithoutNotify += r.WithoutNotify
		res.Setup.FirstNotifySeconds = max(res.Setup.FirstNotifySeconds, r.FirstNotifySeconds)
		res.Setup.Seconds = max(res.Setup.Seconds, r.Seconds)
	}
	if res.Setup.Seconds > 0 {
		res.Setup.PerSecond = float64(res.Setup.OK) / res.Setup.Seconds
	}
	say("waiting for every dialog to be in the engine")
	owned := func() int {
		n := 0
		for _, t := range nodes {
			if t.cmd == nil {
				continue
			}
			if m, err := t.metrics(); err == nil {
				n += int(m["lamplighter_cluster_dialogs_owned"])
			}
		}
		return n
	}
	for deadline := time.Now().Add(60 * time.Second); owned() < res.Setup.OK && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	w1, secs, ops := writes()
	if res.Setup.OK > 0 {
		res.EngineCPUPerSetupMicros = (cpuSeconds(nats.cmd.Process.Pid) - engine0) / float64(res.Setup.OK) * 1e6
		res.NodesCPUPerSetupMicros = (cpuNodes() - nodes0) / float64(res.Setup.OK) * 1e6
		res.WritesPerSetup = (w1 - w0) / float64(res.Setup.OK)
	}
	if ops > 0 {
		res.MeanWriteMillis = secs / ops * 1000
	}

	say("refreshing every subscription")
	engine1 := cpuSeconds(nats.cmd.Process.Pid)
	for i := range nodes {
		all[i].pendingMu.Lock()
		for _, s := range share[i] {
			s.status.Store(0)
			s.attempt++ // a new transaction in the dialog (its To tag is kept)
		}
		all[i].pendingMu.Unlock()
		go func() { results <- setUp(ctx, all[i], share[i], o.window, o.expires, 0) }()
	}
	for range nodes {
		r := <-results
		res.Refresh.OK += r.OK
		res.Refresh.Seconds = max(res.Refresh.Seconds, r.Seconds)
	}
	if res.Refresh.Seconds > 0 {
		res.Refresh.PerSecond = float64(res.Refresh.OK) / res.Refresh.Seconds
	}
	// The refreshes' reservations reach the engine within a flush.
	time.Sleep(2 * time.Second)
	if res.Refresh.OK > 0 {
		res.EngineCPUPerRefreshMicros = (cpuSeconds(nats.cmd.Process.Pid) - engine1) / float64(res.Refresh.OK) * 1e6
	}

	say("failover: SIGKILL node n1, wait for a NOTIFY from another node on each of its %d subscriptions", len(share[0]))
	before := make([]int64, len(share[0]))
	for i, s := range share[0] {
		before[i] = s.notifies.Load()
	}
	res.FailoverShare = len(share[0])
	var stops []func()
	for i, t := range nodes[1:] {
		stops = append(stops, t.profileDuring(o.pprofDir, fmt.Sprintf("failover-n%d", i+2), 8*time.Second, say))
	}
	killed := time.Now()
	nodes[0].kill()
	if renewed, err := leaseRenewed(nats.url, "n1"); err == nil {
		res.LeaseLapsedSecs = renewed.Add(3 * time.Second).Sub(killed).Seconds()
	} else {
		say("cannot read n1's lease: %v", err)
	}
	var first time.Duration
	deadline := killed.Add(60 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		got := 0
		for i, s := range share[0] {
			if s.notifies.Load() > before[i] {
				got++
			}
		}
		if got > 0 && first == 0 {
			first = time.Since(killed)
		}
		res.FailoverNotified = got
		if got == len(share[0]) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	res.FailoverSeconds = time.Since(killed).Seconds()
	res.FailoverFirstSecs = first.Seconds()
	for _, stop := range stops {
		stop()
	}
	return res, nil
}

// machine names the CPU and its cores, for the report.
func machine() string {
	return fmt.Sprintf("%s, %d cores, %d MiB, %s", cpuModel(), runtime.NumCPU(), memTotalMB(), runtime.Version())
}
