package main

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// result is everything one run measured; it is also the JSON output.
type result struct {
	Machine     machineInfo   `json:"machine"`
	Run         runInfo       `json:"run"`
	Phones      int           `json:"phones"`
	RawUDP      rawUDPResult  `json:"raw_udp"`
	Setup       setupResult   `json:"setup"`
	Memory      memoryResult  `json:"memory"`
	Latency     latencyResult `json:"latency"`
	FanoutSetup setupResult   `json:"fanout_setup"`
	FanoutOne   fanoutResult  `json:"fanout_one_change"`
	FanoutMany  burstResult   `json:"fanout_every_user"`
	Server      serverResult  `json:"server"`
	Phone       phoneResult   `json:"phones_saw"`
	Restart     restartResult `json:"restart"`
	Floods      []floodResult `json:"floods,omitempty"`
	// Discovery is the directory read from the PBX (-tenants).
	Discovery discoveryResult `json:"discovery,omitzero"`
}

// discoveryResult is what reading the PBX's directory cost: the time to
// the first directory in force, and the latency while it is read again.
type discoveryResult struct {
	Tenants     int           `json:"tenants"`
	Users       int           `json:"users"`
	LoadSeconds float64       `json:"load_seconds"` // from the start to every user in force
	Refreshing  refreshResult `json:"refreshing,omitzero"`
}

// refreshResult is the latency phase again with the directory changing.
type refreshResult struct {
	Refreshes    int           `json:"refreshes"`
	VisibleP50Ms float64       `json:"visible_p50_ms"` // from the reload to the change in the API
	VisibleMaxMs float64       `json:"visible_max_ms"`
	Latency      latencyResult `json:"latency"`
	Error        string        `json:"error,omitempty"`
}

type machineInfo struct {
	CPU      string `json:"cpu"`
	Cores    int    `json:"cores"`
	MemoryMB int64  `json:"memory_mb"`
	Go       string `json:"go"`
	Date     string `json:"date"`
}

type runInfo struct {
	Subscriptions int     `json:"subscriptions"`
	Users         int     `json:"users"`
	PerPhone      int     `json:"subscriptions_per_phone"`
	TCPShare      float64 `json:"tcp_share"`
	DialogShare   float64 `json:"dialog_share"`
	Rate          float64 `json:"events_per_second"`
	Duration      string  `json:"duration"`
	Fanout        int     `json:"fanout_watchers"`
}

type rawUDPResult struct {
	Datagrams int64   `json:"datagrams"`
	Received  int64   `json:"received"`
	PerSecond float64 `json:"per_second"`
	Error     string  `json:"error,omitempty"`
}

type setupResult struct {
	Subscriptions      int     `json:"subscriptions"`
	OK                 int     `json:"ok"`
	Failed             int     `json:"failed"`
	Missing            int     `json:"missing"`
	Seconds            float64 `json:"seconds"`
	PerSecond          float64 `json:"per_second"`
	FirstNotifySeconds float64 `json:"first_notify_seconds"`
	WithoutNotify      int     `json:"without_first_notify"`
	Retransmissions    int64   `json:"retransmissions"`
	// OfferedPerSecond is the pace SUBSCRIBEs were sent at in a storm
	// (-storm); 0 when at most -window were in flight.
	OfferedPerSecond float64 `json:"offered_per_second,omitempty"`
	// Shed counts 503s with Retry-After (each retried when told);
	// Notifies and NotifyRetransmissions the NOTIFYs received during the
	// set-up and those received again.
	Shed                  int64 `json:"shed"`
	Notifies              int64 `json:"notifies"`
	NotifyRetransmissions int64 `json:"notify_retransmissions"`
	// ServerCPUMicros and PhonesCPUMicros are the CPU time (user and
	// system) Lamplighter and the load tool's phones spent per accepted
	// subscription, from the first SUBSCRIBE to the last first NOTIFY:
	// with both on one machine, the set-up rate is bounded by the cores
	// over their sum.
	ServerCPUMicros float64 `json:"server_cpu_us_per_setup,omitempty"`
	PhonesCPUMicros float64 `json:"phones_cpu_us_per_setup,omitempty"`
	Error           string  `json:"error,omitempty"`
}

// memoryResult is Lamplighter's memory before any subscription, right
// after the set-up (SUBSCRIBE transactions still lingering) and once they
// have ended, with the cost per subscription of each.
type memoryResult struct {
	Before          memory  `json:"before"`
	Loaded          memory  `json:"after_setup"`
	Held            memory  `json:"held"`
	Subscriptions   int     `json:"subscriptions_held"`
	HeapPerSub      float64 `json:"heap_bytes_per_subscription"`
	RSSPerSub       float64 `json:"rss_bytes_per_subscription"`
	SetupHeapPerSub float64 `json:"heap_bytes_per_subscription_after_setup"`
	SetupRSSPerSub  float64 `json:"rss_bytes_per_subscription_after_setup"`
	// The file-backed share of the RSS figures: the state file's pages.
	RSSFilePerSub      float64 `json:"rss_file_bytes_per_subscription"`
	SetupRSSFilePerSub float64 `json:"rss_file_bytes_per_subscription_after_setup"`
	Restored           memory  `json:"after_restart"`
	RestoredHeapPerSub float64 `json:"heap_bytes_per_subscription_after_restart"`
	RestoredRSSPerSub  float64 `json:"rss_bytes_per_subscription_after_restart"`
}

// restored works out the costs in the restarted process, which holds n
// subscriptions restored from its state file.
func (m *memoryResult) restored(n int) {
	if n > 0 {
		m.RestoredHeapPerSub = float64(m.Restored.HeapLive-m.Before.HeapLive) / float64(n)
		m.RestoredRSSPerSub = float64(m.Restored.RSS-m.Before.RSS) / float64(n)
	}
}

// perSubscription works out the costs: held of all subscriptions, set up
// of those of the first set-up.
func (m *memoryResult) perSubscription(held, setUp int) {
	m.Subscriptions = held
	if held > 0 {
		m.HeapPerSub = float64(m.Held.HeapLive-m.Before.HeapLive) / float64(held)
		m.RSSPerSub = float64(m.Held.RSS-m.Before.RSS) / float64(held)
		m.RSSFilePerSub = float64(m.Held.RSSFile-m.Before.RSSFile) / float64(held)
	}
	if setUp > 0 {
		m.SetupHeapPerSub = float64(m.Loaded.HeapLive-m.Before.HeapLive) / float64(setUp)
		m.SetupRSSPerSub = float64(m.Loaded.RSS-m.Before.RSS) / float64(setUp)
		m.SetupRSSFilePerSub = float64(m.Loaded.RSSFile-m.Before.RSSFile) / float64(setUp)
	}
}

type latencyResult struct {
	Events          int     `json:"events"`
	EventsPerSecond float64 `json:"events_per_second"`
	Skipped         int     `json:"skipped"`
	Reconnecting    int     `json:"not_sent_reconnecting,omitempty"` // events due while Lamplighter was reconnecting
	Notifies        int     `json:"notifies_expected"`
	Received        int     `json:"notifies_received"`
	Missing         int     `json:"notifies_missing"`
	P50Ms           float64 `json:"p50_ms"`
	P90Ms           float64 `json:"p90_ms"`
	P99Ms           float64 `json:"p99_ms"`
	MaxMs           float64 `json:"max_ms"`
	Error           string  `json:"error,omitempty"`
}

func (r *latencyResult) fill(l []time.Duration) {
	r.P50Ms, r.P90Ms, r.P99Ms = percentile(l, 0.5), percentile(l, 0.9), percentile(l, 0.99)
	r.MaxMs = percentile(l, 1)
}

type fanoutResult struct {
	Watchers         int       `json:"watchers"`
	Rounds           []float64 `json:"rounds_ms"`
	Received         int       `json:"notifies_received"`
	Missing          int       `json:"notifies_missing"`
	MedianMs         float64   `json:"median_ms"`
	MaxMs            float64   `json:"max_ms"`
	PerSecond        float64   `json:"notifies_per_second"`
	FractionOfRawUDP float64   `json:"fraction_of_raw_udp"`
	Error            string    `json:"error,omitempty"`
}

type burstResult struct {
	Changes          int     `json:"changes"`
	Notifies         int     `json:"notifies_expected"`
	Received         int     `json:"notifies_received"`
	Missing          int     `json:"notifies_missing"`
	Seconds          float64 `json:"seconds"`
	PerSecond        float64 `json:"notifies_per_second"`
	P99Ms            float64 `json:"p99_ms"`
	FractionOfRawUDP float64 `json:"fraction_of_raw_udp"`
	Error            string  `json:"error,omitempty"`
}

type serverResult struct {
	NotifySent        int64 `json:"notify_sent"`
	NotifyFailed      int64 `json:"notify_failed"`
	NotifyTimeouts    int64 `json:"notify_timeouts"`
	SubscriptionsHeld int64 `json:"subscriptions_held"`
}

type phoneResult struct {
	Notifies                 int64 `json:"notifies"`
	DuplicateNotifies        int64 `json:"duplicate_notifies"`
	SubscribeRetransmissions int64 `json:"subscribe_retransmissions"`
	Terminated               int64 `json:"terminated"`
	Malformed                int64 `json:"malformed"`
}

type restartResult struct {
	Subscriptions int     `json:"subscriptions"`
	Renotified    int     `json:"renotified"`
	StopSeconds   float64 `json:"stop_seconds"`
	Seconds       float64 `json:"seconds_from_start"`
	SecondsPer10k float64 `json:"seconds_per_10k"`
	Error         string  `json:"error,omitempty"`
}

func newResult(o options) *result {
	return &result{
		Machine: machineInfo{CPU: cpuModel(), Cores: runtime.NumCPU(), MemoryMB: memTotalMB(), Go: runtime.Version(),
			Date: time.Now().UTC().Format("2006-01-02")},
		Run: runInfo{Subscriptions: o.subs, Users: o.users, PerPhone: o.perPhone, TCPShare: o.tcpShare,
			DialogShare: o.dialogShare, Rate: o.rate, Duration: o.duration.String(), Fanout: o.fanout},
	}
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "model name"); ok {
			return strings.TrimSpace(strings.TrimLeft(v, "\t :"))
		}
	}
	return runtime.GOARCH
}

func memTotalMB() int64 {
	b, _ := os.ReadFile("/proc/meminfo")
	var kb int64
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			fmt.Sscan(strings.TrimSpace(v), &kb)
		}
	}
	return kb / 1024
}

// percentile returns the q-quantile of l in milliseconds (nearest rank).
func percentile(l []time.Duration, q float64) float64 {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.5) - 1
	i = min(max(i, 0), len(s)-1)
	return ms(s[i])
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// print writes the results as a table.
func (r *result) print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(name, value string) { fmt.Fprintf(tw, "%s\t%s\n", name, value) }
	fmt.Fprintf(tw, "Lamplighter under load: %d subscriptions of %d users from %d phones (%.0f%% TCP, %.0f%% dialog)\n",
		r.Run.Subscriptions, r.Run.Users, r.Phones, 100*r.Run.TCPShare, 100*r.Run.DialogShare)
	fmt.Fprintf(tw, "machine: %s, %d cores, %d MiB, %s\n\n", r.Machine.CPU, r.Machine.Cores, r.Machine.MemoryMB, r.Machine.Go)
	row("raw UDP, 1 kB datagrams, one sender", fmt.Sprintf("%.0f/s", r.RawUDP.PerSecond))
	row("subscription set-up", fmt.Sprintf("%.0f/s (%d ok, %d failed, %d missing, %d retransmitted; all first NOTIFYs by %.2f s)",
		r.Setup.PerSecond, r.Setup.OK, r.Setup.Failed, r.Setup.Missing, r.Setup.Retransmissions, r.Setup.FirstNotifySeconds))
	if r.Setup.ServerCPUMicros > 0 {
		row("  CPU per set-up", fmt.Sprintf("Lamplighter %.1f µs, phones %.1f µs (%d cores: at most %.0f/s for both on this machine)",
			r.Setup.ServerCPUMicros, r.Setup.PhonesCPUMicros, r.Machine.Cores,
			float64(r.Machine.Cores)*1e6/(r.Setup.ServerCPUMicros+r.Setup.PhonesCPUMicros)))
	}
	if r.Setup.OfferedPerSecond > 0 {
		share := 0.0
		if r.Setup.Notifies > 0 {
			share = 100 * float64(r.Setup.NotifyRetransmissions) / float64(r.Setup.Notifies)
		}
		row("  storm", fmt.Sprintf("offered at %.0f/s: all answered by %.2f s; %d shed (503, retried after Retry-After); NOTIFYs received again %d of %d (%.2f%%)",
			r.Setup.OfferedPerSecond, r.Setup.Seconds, r.Setup.Shed, r.Setup.NotifyRetransmissions, r.Setup.Notifies, share))
	} else if r.Setup.Shed > 0 {
		row("  shed", fmt.Sprintf("%d answered 503 with Retry-After, retried when told", r.Setup.Shed))
	}
	m := r.Memory
	row("memory per held subscription", fmt.Sprintf("%.0f B heap, %.0f B RSS of which %.0f B state-file pages (%d held; heap %s → %s, RSS %s → %s)",
		m.HeapPerSub, m.RSSPerSub, m.RSSFilePerSub, m.Subscriptions, mib(m.Before.HeapLive), mib(m.Held.HeapLive), mib(m.Before.RSS), mib(m.Held.RSS)))
	row("  right after set-up", fmt.Sprintf("%.0f B heap, %.0f B RSS of which %.0f B state-file pages (SUBSCRIBE transactions still kept for Timer J)",
		m.SetupHeapPerSub, m.SetupRSSPerSub, m.SetupRSSFilePerSub))
	row("  where the held RSS is", fmt.Sprintf("heap %s live in %s of spans, %s of free heap pages not yet returned",
		mib(m.Held.HeapLive), mib(m.Held.HeapSpans), mib(m.Held.HeapFreeKept)))
	if m.Restored.RSS > 0 {
		row("  after a restart", fmt.Sprintf("%.0f B heap, %.0f B RSS (the same subscriptions restored from the state file)",
			m.RestoredHeapPerSub, m.RestoredRSSPerSub))
	}
	l := r.Latency
	row("event→NOTIFY latency", fmt.Sprintf("p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms", l.P50Ms, l.P90Ms, l.P99Ms, l.MaxMs))
	row("  events", fmt.Sprintf("%d at %.0f/s (%d skipped), NOTIFYs %d of %d (%d missing)",
		l.Events, l.EventsPerSecond, l.Skipped, l.Received, l.Notifies, l.Missing))
	if dr := r.Discovery; dr.Users > 0 {
		row("directory from the PBX", fmt.Sprintf("%d users in %d tenants in force %.2f s after the start", dr.Users, dr.Tenants, dr.LoadSeconds))
		if rr := dr.Refreshing; rr.Refreshes > 0 || rr.Error != "" {
			l := rr.Latency
			row("  latency while read again", fmt.Sprintf("p50 %.2f ms, p90 %.2f ms, p99 %.2f ms, max %.2f ms (%d events, %d due while reconnecting, %d NOTIFYs missing)",
				l.P50Ms, l.P90Ms, l.P99Ms, l.MaxMs, l.Events, l.Reconnecting, l.Missing))
			row("  a change in force", fmt.Sprintf("%d reads; p50 %.0f ms, max %.0f ms after the reload %s", rr.Refreshes, rr.VisibleP50Ms, rr.VisibleMaxMs, rr.Error))
		}
	}
	for _, f := range r.Floods {
		row("flood "+f.Mode, fmt.Sprintf("%d SUBSCRIBEs in %.1f s from one address, %d challenged; RSS %s → %s (%+.1f MiB)",
			f.Sent, f.Seconds, f.Challenged, mib(f.Before.RSS), mib(f.After.RSS), float64(f.RSSGrowth)/(1<<20)))
		row("  event→NOTIFY meanwhile", fmt.Sprintf("p50 %.2f ms, p99 %.2f ms, max %.2f ms (%d of %d NOTIFYs)",
			f.Latency.P50Ms, f.Latency.P99Ms, f.Latency.MaxMs, f.Latency.Received, f.Latency.Notifies))
	}
	if f := r.FanoutOne; f.Watchers > 0 {
		row("fan-out, one change", fmt.Sprintf("%d watchers: median %.1f ms, max %.1f ms to the last NOTIFY; %.0f NOTIFY/s = %.2f of raw UDP (%d missing)",
			f.Watchers, f.MedianMs, f.MaxMs, f.PerSecond, f.FractionOfRawUDP, f.Missing))
		row("  set-up of those watchers", fmt.Sprintf("%.0f/s", r.FanoutSetup.PerSecond))
	}
	if b := r.FanoutMany; b.Changes > 0 {
		row("fan-out, every user changes", fmt.Sprintf("%d changes, %d NOTIFYs in %.3f s: %.0f NOTIFY/s = %.2f of raw UDP; p99 %.1f ms (%d missing)",
			b.Changes, b.Received, b.Seconds, b.PerSecond, b.FractionOfRawUDP, b.P99Ms, b.Missing))
	}
	row("NOTIFY failures (server)", fmt.Sprintf("%d failed (%d timeouts) of %d answered", r.Server.NotifyFailed, r.Server.NotifyTimeouts, r.Server.NotifySent))
	row("retransmissions", fmt.Sprintf("%d NOTIFYs received twice, %d SUBSCRIBEs sent again", r.Phone.DuplicateNotifies, r.Phone.SubscribeRetransmissions))
	if rs := r.Restart; rs.Subscriptions > 0 {
		row("restart re-NOTIFY", fmt.Sprintf("%d of %d in %.2f s from start (%.2f s per 10k; stop took %.2f s)",
			rs.Renotified, rs.Subscriptions, rs.Seconds, rs.SecondsPer10k, rs.StopSeconds))
	}
	errs := []string{r.RawUDP.Error, r.Setup.Error, l.Error, r.FanoutSetup.Error, r.FanoutOne.Error, r.FanoutMany.Error, r.Restart.Error}
	for _, f := range r.Floods {
		errs = append(errs, f.Error)
	}
	for _, e := range errs {
		if e != "" {
			row("error", e)
		}
	}
	tw.Flush()
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
