package main

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/lamplighter/lamplighter/adapters/sipcalls"
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/config"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/version"
	"github.com/lamplighter/lamplighter/presence"
	"github.com/lamplighter/lamplighter/presence/proxy"
)

// userAgent is how Lamplighter names itself to phones (SIP User-Agent,
// Server) and to calendar servers: sip.user_agent, else
// "Lamplighter/<version>".
func userAgent(cfg *config.Config) string { return cmp.Or(cfg.SIP.UserAgent, version.UserAgent()) }

// presenceOptions turns the config's sip and policy sections and the
// users' credentials into the SIP server's options.
// tenantRealms are the tenants' realms where the YAML sets one.
func tenantRealms(cfg *config.Config) map[string]string {
	out := map[string]string{}
	for _, t := range cfg.Tenants {
		if t.Realm != "" {
			out[strings.ToLower(t.Domain)] = t.Realm
		}
	}
	return out
}

func presenceOptions(cfg *config.Config) (presence.Options, error) {
	opt := presence.Options{
		Realm:                     cfg.SIP.Realm,
		TenantRealms:              tenantRealms(cfg),
		DigestAlgorithms:          cfg.SIP.DigestAlgorithms,
		UserAgent:                 userAgent(cfg),
		MinExpires:                cfg.Policy.MinExpires,
		MaxExpires:                cfg.Policy.MaxExpires,
		DefaultExpires:            cfg.Policy.DefaultExpires,
		MaxSubscriptionsPerSource: cfg.Policy.MaxSubscriptionsPerSource,
		MaxBodyBytes:              cfg.Policy.MaxBodyBytes,
		Coalesce:                  cfg.Policy.Coalesce,
		MaxPublicationsPerUser:    cfg.Policy.MaxPublicationsPerUser,
		MaxBindingsPerUser:        cfg.Policy.MaxRegistrationsPerUser,
		RequestsPerAddress:        cfg.Policy.RequestsPerAddress,
		RequestBurst:              cfg.Policy.RequestBurst,
		MaxPendingRequests:        cfg.Policy.MaxPendingRequests,
		MaxPendingNotifies:        cfg.Policy.MaxPendingNotifies,
		RetryAfter:                cfg.Policy.RetryAfter,
		MaxUDPNotify:              cfg.Policy.MaxUDPNotify,
		Streams: presence.StreamLimits{
			MaxConnections:   cfg.Policy.MaxConnections,
			MaxPerAddress:    cfg.Policy.MaxConnectionsPerAddress,
			MessageTimeout:   cfg.Policy.MessageTimeout,
			HandshakeTimeout: cfg.Policy.MessageTimeout,
			IdleTimeout:      cfg.Policy.IdleTimeout,
		},
	}
	for _, l := range cfg.SIP.Listen {
		pl := presence.Listener{Transport: l.Transport, Address: l.Address}
		if l.Transport == "tls" {
			cert, err := tls.LoadX509KeyPair(l.CertFile, l.KeyFile)
			if err != nil {
				return opt, fmt.Errorf("sip tls %s: %w", l.Address, err)
			}
			pl.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
		opt.Listen = append(opt.Listen, pl)
	}
	for _, n := range cfg.SIP.TrustedNetworks {
		p, err := config.ParseNetwork(n)
		if err != nil {
			return opt, err
		}
		opt.Trusted = append(opt.Trusted, p)
	}
	creds, err := credentials(cfg)
	if err != nil {
		return opt, err
	}
	opt.Credentials = creds
	opt.SingleDialog = singleDialogPolicy(cfg)
	if opt.ClientTLS, err = clientTLS(cfg); err != nil {
		return opt, err
	}
	return opt, nil
}

// clientTLS is how Lamplighter checks a PBX it reaches over TLS in proxy
// mode: the system's roots and every proxy section's ca_file.
func clientTLS(cfg *config.Config) (*tls.Config, error) {
	var pool *x509.CertPool
	for _, pb := range cfg.PBX {
		if pb.Proxy == nil || pb.Proxy.CAFile == "" {
			continue
		}
		if pool == nil {
			var err error
			if pool, err = x509.SystemCertPool(); err != nil {
				pool = x509.NewCertPool()
			}
		}
		b, err := os.ReadFile(pb.Proxy.CAFile)
		if err != nil {
			return nil, fmt.Errorf("pbx %q ca_file: %w", pb.Name, err)
		}
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("pbx %q ca_file %s holds no PEM certificate", pb.Name, pb.Proxy.CAFile)
		}
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// credentials resolves every user's SIP password; users without one can
// only be reached from trusted networks.
func credentials(cfg *config.Config) ([]presence.Credential, error) {
	var out []presence.Credential
	for i := range cfg.Users {
		u := &cfg.Users[i]
		pw, err := cfg.UserPassword(u, nil)
		if err != nil {
			return nil, fmt.Errorf("user %q: %w", u.ID, err)
		}
		if pw != "" {
			out = append(out, presence.Credential{Username: u.SIP.Username, UserID: u.ID, Password: pw, Tenant: strings.ToLower(u.Tenant)})
		}
	}
	return out, nil
}

// singleDialogPolicy decides per subscriber: the watcher's own user
// setting first, then the global switch and User-Agent prefixes.
func singleDialogPolicy(cfg *config.Config) func(userAgent, watcher string) bool {
	perUser := map[string]bool{}
	for _, u := range cfg.Users {
		if u.SingleDialog != nil {
			perUser[u.ID] = *u.SingleDialog
		}
	}
	all := cfg.Policy.SingleDialog.All
	prefixes := cfg.Policy.SingleDialog.UserAgents
	return func(userAgent, watcher string) bool {
		if v, ok := perUser[watcher]; ok && watcher != "" {
			return v
		}
		if all {
			return true
		}
		for _, p := range prefixes {
			if strings.HasPrefix(userAgent, p) {
				return true
			}
		}
		return false
	}
}

// newProxy makes the proxy for the PBXs in proxy mode (nil, nil when
// none is). A phone's requests go to the PBX of the user its extension or
// alias names; an unknown user's to the one proxied PBX, when there is
// only one.
//
// Each PBX of kind sip gets its adapter here: it learns its lamps from
// the proxy (calls), and its readiness from the proxy's OPTIONS.
func newProxy(cfg *config.Config, b *bridge.Bridge, m proxy.Metrics, log *slog.Logger) (*proxy.Proxy, map[string]*sipcalls.Adapter, error) {
	var targets []proxy.Target
	proxied := map[string]bool{}
	calls := map[string]*sipcalls.Adapter{}
	var px *proxy.Proxy
	for _, pb := range cfg.PBX {
		if pb.Proxy == nil {
			continue
		}
		host, port, err := pb.Proxy.HostPort()
		if err != nil {
			return nil, nil, fmt.Errorf("pbx %q proxy address: %w", pb.Name, err)
		}
		if pb.Kind == config.KindSIP {
			name := pb.Name
			calls[name] = sipcalls.New(name, func() (bool, bool) {
				up, known := px.Health()[name]
				return up, known
			})
		}
		targets = append(targets, proxy.Target{Name: pb.Name, Host: host, Port: port, Transport: pb.Proxy.Transport,
			Dedicated: pb.Proxy.Phones == config.PhonesDedicated, Redirect: pb.Proxy.DedicatedCalls == config.CallsRedirect, Kind: pb.Kind})
		proxied[pb.Name] = true
	}
	if len(targets) == 0 {
		return nil, nil, nil
	}
	only := ""
	if len(targets) == 1 {
		only = targets[0].Name
	}
	targetFor := func(user, domain string) string {
		u, ok := b.Directory().Resolve(domain, user)
		if !ok {
			return only
		}
		for _, d := range u.Devices {
			if proxied[d.Source] {
				return d.Source
			}
		}
		return ""
	}
	key, replaced, err := proxy.LoadTokenKey(cfg.StateDir)
	if err != nil {
		return nil, nil, err
	}
	if replaced {
		log.Warn("the proxy's token key was damaged and is replaced: the PBX reaches phones by contact until they register again",
			"file", proxy.TokenKeyFile)
	}
	opt := proxy.Options{
		Targets: targets, TargetFor: targetFor, TokenKey: key, StateDir: cfg.StateDir,
		Dialogs: func(callID string) (string, string, bool) {
			c, ok := b.CallBySIPID(callID)
			return c.LocalTag, c.RemoteTag, ok
		},
		RequireDigest:   cfg.Policy.ProxyRequireDigest,
		MaxTransactions: cfg.Policy.MaxForwarding,
		Logger:          log, Metrics: m,
	}
	if len(calls) > 0 {
		opt.Calls = callObservers(calls)
	}
	px, err = proxy.New(opt)
	return px, calls, err
}

// callObservers passes the proxy's observations to every sip adapter
// (each keeps those of its own PBX).
type callObservers map[string]*sipcalls.Adapter

func (o callObservers) ObserveCall(e proxy.CallEvent) {
	for _, a := range o {
		a.ObserveCall(e)
	}
}

func (o callObservers) ObserveRegistrations(target, user string, n int) {
	if a := o[target]; a != nil {
		a.ObserveRegistrations(target, user, n)
	}
}
