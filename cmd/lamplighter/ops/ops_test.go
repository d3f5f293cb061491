package ops

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence"
)

// pbx is an adapter whose status the test sets.
type pbx struct {
	name string
	mu   sync.Mutex
	st   adapters.Status
}

func (p *pbx) Name() string                                    { return p.name }
func (p *pbx) Run(ctx context.Context, sink bridge.Sink) error { <-ctx.Done(); return nil }
func (p *pbx) Status() adapters.Status                         { p.mu.Lock(); defer p.mu.Unlock(); return p.st }
func (p *pbx) set(st adapters.Status)                          { p.mu.Lock(); p.st = st; p.mu.Unlock() }

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestReadinessAndMetricsFollowAPBX(t *testing.T) {
	ast := &pbx{name: "asterisk"}
	ready := make(chan struct{})
	s := New()
	s.Attach(Sources{SIPReady: ready, Adapters: []Adapter{{Adapter: ast, Kind: "ari"}},
		Subscriptions: func() map[presence.SubscriptionKind]int {
			return map[presence.SubscriptionKind]int{{Package: presence.PackagePresence, Transport: "UDP"}: 2,
				{Package: presence.PackageDialog, Transport: "UDP"}: 1, {Package: presence.PackageDialog, Transport: "TCP"}: 2}
		}})

	// Listeners not bound yet, PBX down.
	if code, _ := get(t, s, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz before the listeners: %d", code)
	}
	close(ready)
	code, body := get(t, s, "/readyz")
	var rd readiness
	json.Unmarshal([]byte(body), &rd)
	if code != http.StatusServiceUnavailable || rd.Ready || !rd.SIP || rd.PBX["asterisk"].Connected {
		t.Errorf("readyz with the PBX down: %d %s", code, body)
	}
	_, metrics := get(t, s, "/metrics")
	for _, want := range []string{`lamplighter_pbx_connected{kind="ari",pbx="asterisk"} 0`,
		`lamplighter_subscriptions{package="dialog",transport="tcp"} 2`, `lamplighter_subscriptions{package="dialog",transport="udp"} 1`,
		`lamplighter_subscriptions{package="presence",transport="udp"} 2`, `lamplighter_subscriptions{package="presence",transport="tls"} 0`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// The PBX comes up and is synchronised; it skipped two events.
	ast.set(adapters.Status{Connected: true, Synchronised: true, Reconnects: 1, Events: 40, Skipped: 2})
	if code, body := get(t, s, "/readyz"); code != http.StatusOK {
		t.Errorf("readyz with the PBX up: %d %s", code, body)
	}
	_, metrics = get(t, s, "/metrics")
	for _, want := range []string{`lamplighter_pbx_connected{kind="ari",pbx="asterisk"} 1`,
		`lamplighter_pbx_synchronised{kind="ari",pbx="asterisk"} 1`,
		`lamplighter_pbx_events_skipped_total{kind="ari",pbx="asterisk"} 2`,
		`lamplighter_pbx_reconnects_total{kind="ari",pbx="asterisk"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// Down again: not ready.
	ast.set(adapters.Status{Reconnects: 2, LastError: "connection refused"})
	if code, _ := get(t, s, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("readyz after the PBX went down: %d", code)
	}
}

func TestSIPCountsReachMetrics(t *testing.T) {
	s := New()
	s.Attach(Sources{SIPReady: make(chan struct{})})
	var m presence.Metrics = s.Metrics
	m.NotifySent(presence.PackageDialog, "udp")
	m.NotifyFailed("timeout")
	m.AuthFailure("SUBSCRIBE")
	m.Response("SUBSCRIBE", 401)
	m.Response("PUBLISH", 200)
	_, metrics := get(t, s, "/metrics")
	for _, want := range []string{`lamplighter_notify_sent_total{package="dialog",transport="udp"} 1`,
		`lamplighter_notify_failed_total{reason="timeout"} 1`, `lamplighter_sip_auth_failures_total{method="SUBSCRIBE"} 1`,
		`lamplighter_sip_responses_total{code="401",method="SUBSCRIBE"} 1`, `lamplighter_sip_responses_total{code="200",method="PUBLISH"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestHealthz(t *testing.T) {
	alive := true
	s := New()
	s.Attach(Sources{Alive: func() bool { return alive }})
	if code, _ := get(t, s, "/healthz"); code != http.StatusOK {
		t.Errorf("healthz: %d", code)
	}
	alive = false
	if code, _ := get(t, s, "/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("healthz with a wedged core: %d", code)
	}
}
