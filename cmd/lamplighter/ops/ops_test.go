package ops

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
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
	req := httptest.NewRequest(http.MethodGet, path, nil)
	req.Host = "localhost"
	h.ServeHTTP(rec, req)
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

// TestHostHeaderIsChecked: the listener answers its own address,
// localhost (on loopback), this machine's name and the configured names;
// any other Host (a DNS-rebinding page's) gets 421.
func TestHostHeaderIsChecked(t *testing.T) {
	s := New()
	s.Attach(Sources{})
	s.SetHosts([]string{"lamp.example.com"})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx, ln, slog.New(slog.DiscardHandler))
	addr := ln.Addr().String()
	_, port, _ := net.SplitHostPort(addr)
	host, _ := os.Hostname()
	for h, want := range map[string]int{
		addr: 200, "localhost:" + port: 200, "LAMP.example.com": 200, "lamp.example.com.:" + port: 200, host: 200,
		"127.0.0.2:" + port: 200, // another loopback address reaches the same listener
		"evil.example.com":  421, "10.9.9.9:" + port: 421, "lamp.example.com.evil.example": 421,
	} {
		req, _ := http.NewRequest("GET", "http://"+addr+"/healthz", nil)
		req.Host = h
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != want {
			t.Errorf("Host %q: %d, want %d", h, res.StatusCode, want)
		}
	}
}

func TestReadinessFollowsAProxiedPBXsSIPSide(t *testing.T) {
	ast := &pbx{name: "asterisk", st: adapters.Status{Connected: true, Synchronised: true}}
	ready := make(chan struct{})
	close(ready)
	var mu sync.Mutex
	health := map[string]bool{}
	s := New()
	s.Attach(Sources{SIPReady: ready, Adapters: []Adapter{{Adapter: ast, Kind: "ari"}},
		Proxied: func() map[string]bool {
			mu.Lock()
			defer mu.Unlock()
			return maps.Clone(health)
		}})
	if code, body := get(t, s, "/readyz"); code != http.StatusOK {
		t.Fatalf("readyz before the first OPTIONS: %d %s", code, body)
	}
	mu.Lock()
	health["asterisk"] = false
	mu.Unlock()
	code, body := get(t, s, "/readyz")
	var rd readiness
	json.Unmarshal([]byte(body), &rd)
	if code != http.StatusServiceUnavailable || rd.Ready || rd.Proxied["asterisk"] {
		t.Fatalf("readyz with the proxied PBX not answering OPTIONS: %d %s", code, body)
	}
	mu.Lock()
	health["asterisk"] = true
	mu.Unlock()
	if code, body := get(t, s, "/readyz"); code != http.StatusOK || !strings.Contains(body, `"proxied_pbx_answers":{"asterisk":true}`) {
		t.Fatalf("readyz with the proxied PBX answering: %d %s", code, body)
	}
	s.Metrics.Forwarded("INVITE")
	s.Metrics.Answered("INVITE", 486)
	_, metrics := get(t, s, "/metrics")
	for _, want := range []string{`lamplighter_proxy_forwarded_total{method="INVITE"} 1`,
		`lamplighter_proxy_responses_total{code="486",method="INVITE"} 1`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}
