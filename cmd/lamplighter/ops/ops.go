// Package ops is Lamplighter's operations endpoint: /healthz (the process
// and its core answer), /readyz (listeners up, every PBX connected and
// synchronised) and Prometheus /metrics. Its Metrics type is what the SIP
// server counts into.
package ops

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/calendar"
	"github.com/lamplighter/lamplighter/cluster"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/version"
	"github.com/lamplighter/lamplighter/netlimit"
	"github.com/lamplighter/lamplighter/presence"
)

// Sources is what the endpoint reads: the SIP server and the adapters.
type Sources struct {
	// SIPReady is closed once every SIP listener is bound.
	SIPReady <-chan struct{}
	// SIPServing says whether every SIP listener still serves (nil:
	// bound is enough).
	SIPServing func() bool
	// Subscriptions counts the active subscriptions per package and
	// transport.
	Subscriptions func() map[presence.SubscriptionKind]int
	// Unsaved counts changes not yet written to the state file.
	Unsaved func() int
	// Adapters are the PBX adapters, with their kind.
	Adapters []Adapter
	// Alive answers whether the core still answers (the bridge lock is
	// not wedged).
	Alive func() bool
	// Proxied says, per PBX in proxy mode, whether it answered its last
	// SIP OPTIONS (a PBX not yet asked is missing); nil without proxy
	// mode.
	Proxied func() map[string]bool
	// ProxyRegistrations counts, per PBX in proxy mode, the phones
	// registered through Lamplighter; nil without proxy mode.
	ProxyRegistrations func() map[string]int
	// Cluster is the node's view of the cluster, and its counts; nil
	// when it runs alone.
	Cluster      func() cluster.Status
	ClusterStats *cluster.Stats
	// Calendars are the people's calendars and the reads counted; nil
	// when none is configured.
	Calendars     func() []calendar.UserStatus
	CalendarReads func() calendar.Reads
}

// Adapter is one PBX adapter and its kind (ari, esl, sim).
type Adapter struct {
	adapters.Adapter
	Kind string
}

// Server serves the operations endpoints.
type Server struct {
	src     Sources
	reg     *prometheus.Registry
	Metrics *Metrics
	mux     *http.ServeMux
	hosts   atomic.Pointer[[]string] // names besides the listener's own address
	self    []string                 // this machine's names
}

// New builds the endpoint and its metrics registry (its own, not the
// global one). Its Metrics can be handed to the SIP server at once;
// Attach tells it what to read before Run.
func New() *Server {
	reg := prometheus.NewRegistry()
	s := &Server{reg: reg, Metrics: newMetrics(reg), mux: http.NewServeMux()}
	if h, err := os.Hostname(); err == nil && h != "" {
		short, _, _ := strings.Cut(h, ".")
		s.self = []string{h, short}
	}
	s.SetHosts(nil)
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "lamplighter_build_info",
		Help: "Always 1: the version, commit and Go version this Lamplighter was built as."}, []string{"version", "commit", "goversion"})
	v := version.Get()
	build.WithLabelValues(v.Version, v.Commit, v.Go).Set(1)
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&stateCollector{s: s}, build)
	s.mux.HandleFunc("GET /healthz", s.healthz)
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return s
}

// Attach sets what the endpoints read. Call it before Run.
func (s *Server) Attach(src Sources) { s.src = src }

// Handle adds another handler to the endpoint's mux (the API, the page).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// SetHosts sets the host names the listener answers to besides its own
// address, "localhost" (on loopback) and this machine's name: the names
// in the config's http.hosts (a reload may change them).
func (s *Server) SetHosts(hosts []string) {
	h := append([]string(nil), hosts...)
	s.hosts.Store(&h)
}

// ServeHTTP implements http.Handler. A request whose Host is neither an
// address this listener serves nor one of its names is refused (421):
// that is how a DNS-rebinding page would reach the switchboard or the API
// through a visitor's browser.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !s.hostAllowed(r) {
		http.Error(w, "unknown host name: add it to http.hosts in the config", http.StatusMisdirectedRequest)
		return
	}
	s.mux.ServeHTTP(w, r)
}

// hostAllowed checks r's Host header against where r arrived.
func (s *Server) hostAllowed(r *http.Request) bool {
	host := r.Host
	if host == "" {
		return true // HTTP/1.0 without Host: no browser sends that
	}
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	var local netip.Addr
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		if ap, err := netip.ParseAddrPort(la.String()); err == nil {
			local = ap.Addr().Unmap()
		}
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		return !local.IsValid() || ip == local || (ip.IsLoopback() && local.IsLoopback())
	}
	if strings.EqualFold(host, "localhost") {
		return !local.IsValid() || local.IsLoopback()
	}
	for _, list := range [][]string{s.self, *s.hosts.Load()} {
		for _, name := range list {
			if strings.EqualFold(host, name) {
				return true
			}
		}
	}
	return false
}

// maxHTTPConnections and maxHTTPPerAddress bound the HTTP listener's open
// connections (the switchboard's event streams have their own, lower,
// caps).
const (
	maxHTTPConnections = 2048
	maxHTTPPerAddress  = 64
)

// Run serves on ln until ctx ends, then shuts down within two seconds.
func (s *Server) Run(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	// Bounds for what a client can hold: a few seconds for a request's
	// head, half a minute for an idle keep-alive, small headers, and at
	// most maxHTTPConnections at once, maxHTTPPerAddress from one address
	// (past either a connection is closed at once).
	srv := &http.Server{Handler: s, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second,
		MaxHeaderBytes: 16 << 10, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	ln = netlimit.New(ln, maxHTTPConnections, maxHTTPPerAddress)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	if s.src.Alive != nil && !s.src.Alive() {
		http.Error(w, "the core does not answer\n", http.StatusServiceUnavailable)
		return
	}
	w.Write([]byte("ok\n"))
}

// readiness is the body of /readyz.
type readiness struct {
	Ready bool                       `json:"ready"`
	SIP   bool                       `json:"sip_listening"`
	PBX   map[string]adapters.Status `json:"pbx"`
	// Proxied is, per PBX in proxy mode, whether its SIP side answers
	// OPTIONS: phones' calls and registrations go there.
	Proxied map[string]bool `json:"proxied_pbx_answers,omitempty"`
	// Cluster is the node's view of the cluster. A degraded cluster (the
	// engine away) does not make the node unready: it serves from
	// memory, and a load balancer should keep sending phones to it.
	Cluster *clusterReadiness `json:"cluster,omitempty"`
}

type clusterReadiness struct {
	cluster.Status
	Degraded bool `json:"degraded"`
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	rd := readiness{Ready: true, PBX: map[string]adapters.Status{}}
	select {
	case <-s.src.SIPReady:
		rd.SIP = s.src.SIPServing == nil || s.src.SIPServing()
		rd.Ready = rd.SIP
	default:
		rd.Ready = false
	}
	for _, a := range s.src.Adapters {
		st := a.Status()
		rd.PBX[a.Name()] = st
		if !st.Connected || !st.Synchronised {
			rd.Ready = false
		}
	}
	if s.src.Cluster != nil {
		st := s.src.Cluster()
		rd.Cluster = &clusterReadiness{Status: st, Degraded: st.Degraded()}
	}
	if s.src.Proxied != nil {
		rd.Proxied = s.src.Proxied()
		for _, up := range rd.Proxied {
			rd.Ready = rd.Ready && up
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if !rd.Ready {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	json.NewEncoder(w).Encode(rd)
}

// Metrics implements presence.Metrics with Prometheus counters.
type Metrics struct {
	responses    *prometheus.CounterVec
	authFailures *prometheus.CounterVec
	notifySent   *prometheus.CounterVec
	notifyFailed *prometheus.CounterVec
	latency      prometheus.Histogram
	refused      *prometheus.CounterVec
	dropped      *prometheus.CounterVec
	forwarded    *prometheus.CounterVec
	answered     *prometheus.CounterVec
	pickupWait   prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lamplighter_sip_responses_total",
			Help: "SIP responses sent, by request method and status code."}, []string{"method", "code"}),
		authFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lamplighter_sip_auth_failures_total",
			Help: "Requests with wrong credentials, by method."}, []string{"method"}),
		notifySent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lamplighter_notify_sent_total",
			Help: "NOTIFYs answered with 2xx, by event package and transport."}, []string{"package", "transport"}),
		notifyFailed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lamplighter_notify_failed_total",
			Help: "NOTIFYs that failed, by reason (timeout, 481, rejected, transport)."}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "lamplighter_notify_latency_seconds",
			Help:    "Time from a state change to its NOTIFY leaving.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1}}),
	}
	m.refused = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lamplighter_sip_connections_refused_total",
		Help: "SIP stream connections refused or closed by a limit, by reason."}, []string{"reason"})
	m.dropped = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lamplighter_sip_requests_dropped_total",
		Help: "SIP requests dropped unanswered, by reason (rate_limit: over policy.requests_per_address)."}, []string{"reason"})
	m.forwarded = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lamplighter_proxy_forwarded_total",
		Help: "Requests forwarded in proxy mode, by method."}, []string{"method"})
	m.answered = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lamplighter_proxy_responses_total",
		Help: "Responses to forwarded requests sent back (relayed or the proxy's own), by method and status code."}, []string{"method", "code"})
	m.pickupWait = prometheus.NewCounter(prometheus.CounterOpts{Name: "lamplighter_pickup_wait_expired_total",
		Help: "Ringing NOTIFYs sent without the dialog identifiers they waited for (the PBX adapter did not deliver them within the wait)."})
	reg.MustRegister(m.responses, m.authFailures, m.notifySent, m.notifyFailed, m.latency, m.refused, m.dropped,
		m.forwarded, m.answered, m.pickupWait)
	return m
}

var _ presence.Metrics = (*Metrics)(nil)

// Response implements presence.Metrics.
func (m *Metrics) Response(method string, code int) {
	m.responses.WithLabelValues(method, codeLabel(code)).Inc()
}

// AuthFailure implements presence.Metrics.
func (m *Metrics) AuthFailure(method string) { m.authFailures.WithLabelValues(method).Inc() }

// NotifySent implements presence.Metrics.
func (m *Metrics) NotifySent(pkg presence.Package, transport string) {
	m.notifySent.WithLabelValues(pkg.String(), transport).Inc()
}

// NotifyFailed implements presence.Metrics.
func (m *Metrics) NotifyFailed(reason string) { m.notifyFailed.WithLabelValues(reason).Inc() }

// NotifyLatency implements presence.Metrics.
func (m *Metrics) NotifyLatency(d time.Duration) { m.latency.Observe(d.Seconds()) }

// RequestDropped implements presence.Metrics.
func (m *Metrics) RequestDropped(reason string) { m.dropped.WithLabelValues(reason).Inc() }

// PickupWaitExpired implements presence.Metrics.
func (m *Metrics) PickupWaitExpired() { m.pickupWait.Inc() }

// ConnectionRefused implements presence.Metrics.
func (m *Metrics) ConnectionRefused(reason string) { m.refused.WithLabelValues(reason).Inc() }

func codeLabel(code int) string {
	if code >= 100 && code < 700 {
		return strconv.Itoa(code)
	}
	return "other"
}

// stateCollector reads the adapters' status and the subscription counts
// at scrape time.
type stateCollector struct{ s *Server }

var (
	descConnected = prometheus.NewDesc("lamplighter_pbx_connected", "1 while the PBX connection is up.", []string{"pbx", "kind"}, nil)
	descSynced    = prometheus.NewDesc("lamplighter_pbx_synchronised", "1 once the PBX's state was read since the last connect.", []string{"pbx", "kind"}, nil)
	descEvents    = prometheus.NewDesc("lamplighter_pbx_events_total", "Events received from the PBX.", []string{"pbx", "kind"}, nil)
	descSkipped   = prometheus.NewDesc("lamplighter_pbx_events_skipped_total", "PBX events that could not be used (undecodable, unknown type).", []string{"pbx", "kind"}, nil)
	descResyncs   = prometheus.NewDesc("lamplighter_pbx_reconnects_total", "Connections lost and made again (each followed by a resync).", []string{"pbx", "kind"}, nil)
	descProxyRegs = prometheus.NewDesc("lamplighter_proxy_registrations", "Phone registrations the PBX accepted through Lamplighter (proxy mode), per PBX.", []string{"pbx"}, nil)
	descUnsaved   = prometheus.NewDesc("lamplighter_state_unsaved_changes", "Subscription, publication and registration changes not yet written to the state file (written every second).", nil, nil)
	descSubs      = prometheus.NewDesc("lamplighter_subscriptions", "Active SIP subscriptions, by event package and transport.", []string{"package", "transport"}, nil)
	descListSubs  = prometheus.NewDesc("lamplighter_list_subscriptions", "Active SIP subscriptions to BLF lists (RFC 4662), by event package and transport; also counted in lamplighter_subscriptions.", []string{"package", "transport"}, nil)

	descCalendars        = prometheus.NewDesc("lamplighter_calendars", "People's calendars by the state of their last read: ok, failing (the last good read is kept), unread.", []string{"state"}, nil)
	descCalendarShowing  = prometheus.NewDesc("lamplighter_calendar_showing", "People whose calendar says now that they are busy (a meeting) or out of office.", []string{"show"}, nil)
	descCalendarReads    = prometheus.NewDesc("lamplighter_calendar_reads_total", "Calendar reads: changed (read whole), unchanged (304 Not Modified), failed.", []string{"result"}, nil)
	descCalendarOldest   = prometheus.NewDesc("lamplighter_calendar_oldest_read_age_seconds", "Age of the oldest last good read among the calendars that were read (a server that fails for long shows here).", nil, nil)
	descClusterConnected = prometheus.NewDesc("lamplighter_cluster_connected", "1 while the node is connected to the cluster engine (NATS).", nil, nil)
	descClusterLeased    = prometheus.NewDesc("lamplighter_cluster_leased", "1 while the node's lease is fresh (the other nodes count it alive).", nil, nil)
	descClusterMembers   = prometheus.NewDesc("lamplighter_cluster_members", "Nodes whose lease is fresh, as this node last read them.", nil, nil)
	descClusterPending   = prometheus.NewDesc("lamplighter_cluster_pending_writes", "Person states waiting to be written to the engine.", nil, nil)
	descClusterWrites    = prometheus.NewDesc("lamplighter_cluster_writes_total", "Person states written to the engine.", nil, nil)
	descClusterErrors    = prometheus.NewDesc("lamplighter_cluster_engine_errors_total", "Engine operations that failed (they are retried).", nil, nil)
	descClusterApplied   = prometheus.NewDesc("lamplighter_cluster_applied_total", "Person states from other nodes applied on this one.", nil, nil)
	descClusterRenewals  = prometheus.NewDesc("lamplighter_cluster_lease_renewals_total", "Lease renewals the engine took.", nil, nil)
	descClusterLeaseFail = prometheus.NewDesc("lamplighter_cluster_lease_failures_total", "Lease renewals that failed.", nil, nil)
	descClusterLatency   = prometheus.NewDesc("lamplighter_cluster_engine_seconds_total", "Time spent waiting for the engine's writes; divide by lamplighter_cluster_engine_operations_total for the mean.", nil, nil)
	descClusterOwned     = prometheus.NewDesc("lamplighter_cluster_dialogs_owned", "Subscription dialogs this node owns (NOTIFYs), as the engine says.", nil, nil)
	descClusterClaims    = prometheus.NewDesc("lamplighter_cluster_claims_total", "Subscription dialogs this node took over from other nodes (a dead node's, or a refresh that reached it).", nil, nil)
	descClusterOps       = prometheus.NewDesc("lamplighter_cluster_engine_operations_total", "Engine writes answered (person states and lease renewals).", nil, nil)
)

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descCalendars, descCalendarShowing, descCalendarReads, descCalendarOldest, descProxyRegs, descConnected, descSynced, descEvents, descSkipped, descResyncs, descSubs, descListSubs, descUnsaved,
		descClusterConnected, descClusterLeased, descClusterMembers, descClusterPending, descClusterWrites, descClusterErrors,
		descClusterApplied, descClusterRenewals, descClusterLeaseFail, descClusterLatency, descClusterOps, descClusterOwned, descClusterClaims} {
		ch <- d
	}
}

// collectCalendars counts the calendars without naming anyone (the
// metrics are the same for every tenant).
func collectCalendars(ch chan<- prometheus.Metric, cals []calendar.UserStatus, reads calendar.Reads) {
	states := map[string]int{"ok": 0, "failing": 0, "unread": 0}
	showing := map[calendar.Show]int{calendar.ShowBusy: 0, calendar.ShowOutOfOffice: 0}
	var oldest time.Time
	for _, c := range cals {
		switch {
		case c.Error != "":
			states["failing"]++
		case c.LastFetch.IsZero():
			states["unread"]++
		default:
			states["ok"]++
		}
		if _, ok := showing[c.Now.Show]; ok {
			showing[c.Now.Show]++
		}
		if !c.LastFetch.IsZero() && (oldest.IsZero() || c.LastFetch.Before(oldest)) {
			oldest = c.LastFetch
		}
	}
	for st, n := range states {
		ch <- prometheus.MustNewConstMetric(descCalendars, prometheus.GaugeValue, float64(n), st)
	}
	for sh, n := range showing {
		ch <- prometheus.MustNewConstMetric(descCalendarShowing, prometheus.GaugeValue, float64(n), sh.String())
	}
	ch <- prometheus.MustNewConstMetric(descCalendarReads, prometheus.CounterValue, float64(reads.Changed), "changed")
	ch <- prometheus.MustNewConstMetric(descCalendarReads, prometheus.CounterValue, float64(reads.Unchanged), "unchanged")
	ch <- prometheus.MustNewConstMetric(descCalendarReads, prometheus.CounterValue, float64(reads.Failed), "failed")
	age := 0.0
	if !oldest.IsZero() {
		age = time.Since(oldest).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(descCalendarOldest, prometheus.GaugeValue, age)
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	b := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	src := c.s.src
	if src.Calendars != nil {
		collectCalendars(ch, src.Calendars(), src.CalendarReads())
	}
	for _, a := range src.Adapters {
		st := a.Status()
		ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, b(st.Connected), a.Name(), a.Kind)
		ch <- prometheus.MustNewConstMetric(descSynced, prometheus.GaugeValue, b(st.Synchronised), a.Name(), a.Kind)
		ch <- prometheus.MustNewConstMetric(descEvents, prometheus.CounterValue, float64(st.Events), a.Name(), a.Kind)
		ch <- prometheus.MustNewConstMetric(descSkipped, prometheus.CounterValue, float64(st.Skipped), a.Name(), a.Kind)
		ch <- prometheus.MustNewConstMetric(descResyncs, prometheus.CounterValue, float64(st.Reconnects), a.Name(), a.Kind)
	}
	if src.Cluster != nil {
		st := src.Cluster()
		ch <- prometheus.MustNewConstMetric(descClusterConnected, prometheus.GaugeValue, b(st.Connected))
		ch <- prometheus.MustNewConstMetric(descClusterLeased, prometheus.GaugeValue, b(st.Leased))
		ch <- prometheus.MustNewConstMetric(descClusterMembers, prometheus.GaugeValue, float64(len(st.Members)))
		ch <- prometheus.MustNewConstMetric(descClusterPending, prometheus.GaugeValue, float64(st.Pending))
		ch <- prometheus.MustNewConstMetric(descClusterOwned, prometheus.GaugeValue, float64(st.Dialogs))
	}
	if cs := src.ClusterStats; cs != nil {
		for d, v := range map[*prometheus.Desc]int64{descClusterWrites: cs.Writes.Load(), descClusterErrors: cs.WriteErrors.Load(),
			descClusterApplied: cs.Applied.Load(), descClusterRenewals: cs.LeaseRenewals.Load(),
			descClusterLeaseFail: cs.LeaseFailures.Load(), descClusterOps: cs.EngineOps.Load(), descClusterClaims: cs.Claims.Load()} {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v))
		}
		ch <- prometheus.MustNewConstMetric(descClusterLatency, prometheus.CounterValue, time.Duration(cs.EngineNanos.Load()).Seconds())
	}
	if src.ProxyRegistrations != nil {
		for pbx, n := range src.ProxyRegistrations() {
			ch <- prometheus.MustNewConstMetric(descProxyRegs, prometheus.GaugeValue, float64(n), pbx)
		}
	}
	if src.Unsaved != nil {
		ch <- prometheus.MustNewConstMetric(descUnsaved, prometheus.GaugeValue, float64(src.Unsaved()))
	}
	if src.Subscriptions != nil {
		by := src.Subscriptions()
		// Every package and transport is reported, zero included, so
		// that a series does not vanish when its last subscriber goes.
		for _, pkg := range presence.EventPackages() {
			for _, tr := range []string{"UDP", "TCP", "TLS"} {
				one := by[presence.SubscriptionKind{Package: pkg, Transport: tr}]
				lists := by[presence.SubscriptionKind{Package: pkg, Transport: tr, List: true}]
				ch <- prometheus.MustNewConstMetric(descSubs, prometheus.GaugeValue, float64(one+lists), pkg.String(), strings.ToLower(tr))
				ch <- prometheus.MustNewConstMetric(descListSubs, prometheus.GaugeValue, float64(lists), pkg.String(), strings.ToLower(tr))
			}
		}
	}
}

// Forwarded implements proxy.Metrics.
func (m *Metrics) Forwarded(method string) { m.forwarded.WithLabelValues(method).Inc() }

// Answered implements proxy.Metrics.
func (m *Metrics) Answered(method string, code int) {
	m.answered.WithLabelValues(method, strconv.Itoa(code)).Inc()
}
