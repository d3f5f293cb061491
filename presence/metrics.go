package presence

import (
	"time"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Metrics receives the server's counts. cmd/lamplighter implements it with
// Prometheus; tests and embedders may pass nil.
type Metrics interface {
	// Response counts a response sent, by request method and status
	// code.
	Response(method string, code int)
	// AuthFailure counts wrong credentials, by method.
	AuthFailure(method string)
	// NotifySent counts a NOTIFY answered with 2xx.
	NotifySent(pkg Package, transport string)
	// NotifyFailed counts a NOTIFY that failed: "timeout", "481",
	// "rejected" (another final error) or "transport".
	NotifyFailed(reason string)
	// NotifyLatency observes the time from a state change to its NOTIFY
	// leaving.
	NotifyLatency(d time.Duration)
	// ConnectionRefused counts a SIP stream connection refused or closed
	// by a limit: "max_connections", "max_per_address", "tls_handshake",
	// "message_timeout", "idle_timeout", or "accept_error" (an accept
	// that failed and was retried).
	ConnectionRefused(reason string)
	// RequestDropped counts a request dropped unanswered: "rate_limit".
	RequestDropped(reason string)
	// PickupWaitExpired counts a ringing NOTIFY sent without the dialog
	// identifiers it waited for (Options.PickupWait ran out).
	PickupWaitExpired()
}

type nopMetrics struct{}

func (nopMetrics) Response(string, int)        {}
func (nopMetrics) AuthFailure(string)          {}
func (nopMetrics) NotifySent(Package, string)  {}
func (nopMetrics) NotifyFailed(string)         {}
func (nopMetrics) NotifyLatency(time.Duration) {}
func (nopMetrics) ConnectionRefused(string)    {}
func (nopMetrics) RequestDropped(string)       {}
func (nopMetrics) PickupWaitExpired()          {}

// methodLabel is a method as the metrics label it goes under: a method SIP
// defines, or "other", so that requests with made-up methods cannot grow
// the set of series without end.
func methodLabel(m string) string {
	if k := sipmsg.KnownMethod(m); k != "" {
		return k
	}
	return "other"
}
