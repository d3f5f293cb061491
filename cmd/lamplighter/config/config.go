// Package config reads and checks Lamplighter's YAML configuration. It is
// strict: an unknown key, a duplicate extension, a device claimed twice, a
// user on an unknown PBX, a missing secret file or a bad address is an
// error that names the file and line, so that `lamplighter -check-config`
// can list every problem at once, like `nginx -t`.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/lamplighter/lamplighter/adapters/ari"
	"github.com/lamplighter/lamplighter/adapters/esl"
	"github.com/lamplighter/lamplighter/adapters/sim"
	"github.com/lamplighter/lamplighter/cluster"
	"github.com/lamplighter/lamplighter/presence"
	"github.com/lamplighter/lamplighter/presence/proxy"
)

// Config is the whole configuration file.
type Config struct {
	SIP      SIP    `yaml:"sip"`
	Policy   Policy `yaml:"policy"`
	HTTP     HTTP   `yaml:"http"`
	StateDir string `yaml:"state_dir"`
	Log      Log    `yaml:"log"`
	PBX      []PBX  `yaml:"pbx"`
	Users    []User `yaml:"users"`
	// Lists are BLF lists (RFC 4662): one URI a phone subscribes to for
	// many people's lamps.
	Lists []List `yaml:"lists"`
	// Tenants are domains with people of their own (several companies on
	// one PBX): see Tenant.
	Tenants []Tenant `yaml:"tenants"`
	// Cluster, when present, makes this node one of several sharing
	// state through NATS JetStream (cluster/README.md).
	Cluster *cluster.Config `yaml:"cluster"`
	// Calendar reads people's calendars into their person state
	// (calendar/README.md).
	Calendar *Calendars `yaml:"calendar"`

	// File is the path the config was read from.
	File string `yaml:"-"`
}

// SIP is the `sip:` section: where the presence server listens and in
// which domain.
type SIP struct {
	// Domain is the SIP domain presentities live in (sip:100@Domain).
	Domain string `yaml:"domain"`
	// Realm is the digest realm; it defaults to Domain.
	Realm  string     `yaml:"realm"`
	Listen []Listener `yaml:"listen"`
	// TrustedNetworks are CIDRs whose requests skip authentication.
	TrustedNetworks []string `yaml:"trusted_networks"`
	// UserAgent is sent in requests (User-Agent) and responses (Server);
	// default "Lamplighter/<version>".
	UserAgent string `yaml:"user_agent"`
	// DigestAlgorithms are the digest challenges offered, in order: MD5
	// and/or SHA-256. Default [MD5]: many phones give up on a SHA-256
	// challenge instead of skipping it.
	DigestAlgorithms []string `yaml:"digest_algorithms"`
}

// Listener is one SIP transport and address.
type Listener struct {
	Transport string `yaml:"transport"` // udp, tcp or tls
	Address   string `yaml:"address"`   // host:port, [::]:5060
	CertFile  string `yaml:"cert_file"` // tls only
	KeyFile   string `yaml:"key_file"`  // tls only
}

// Policy holds the knobs of the presence server.
type Policy struct {
	MinExpires     int `yaml:"min_expires"`     // seconds; shorter SUBSCRIBE/PUBLISH get 423
	MaxExpires     int `yaml:"max_expires"`     // seconds; longer ones are shortened
	DefaultExpires int `yaml:"default_expires"` // seconds, when the request has none
	// MaxSubscriptionsPerSource bounds subscriptions from one IP address.
	MaxSubscriptionsPerSource int `yaml:"max_subscriptions_per_source"`
	// MaxBodyBytes bounds PUBLISH bodies.
	MaxBodyBytes int `yaml:"max_body_bytes"`
	// MaxPublicationsPerUser bounds the PUBLISHed states (one per soft
	// client) a person holds.
	MaxPublicationsPerUser int `yaml:"max_publications_per_user"`
	// MaxRegistrationsPerUser bounds a user's registered contacts, like
	// Asterisk's max_contacts.
	MaxRegistrationsPerUser int `yaml:"max_registrations_per_user"`
	// MaxConnections and MaxConnectionsPerAddress bound SIP connections
	// over TCP and TLS.
	MaxConnections           int `yaml:"max_connections"`
	MaxConnectionsPerAddress int `yaml:"max_connections_per_address"`
	// MessageTimeout is how long a SIP message over TCP or TLS may take
	// to arrive whole (and a TLS handshake to finish).
	MessageTimeout time.Duration `yaml:"message_timeout"`
	// IdleTimeout closes a TCP or TLS connection that sent nothing for
	// this long and holds no subscription.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// RequestsPerAddress and RequestBurst limit the SIP requests over UDP
	// from one untrusted address, like Kamailio's pike (0: no limit).
	RequestsPerAddress float64 `yaml:"requests_per_address"`
	RequestBurst       int     `yaml:"request_burst"`
	// MaxPendingRequests and MaxPendingNotifies are the overload bounds:
	// requests over UDP waiting for a worker, NOTIFYs waiting to be sent
	// or answered. Past them new requests (new SUBSCRIBEs) get 503 with
	// a Retry-After of 1 to RetryAfter seconds.
	MaxPendingRequests int `yaml:"max_pending_requests"`
	MaxPendingNotifies int `yaml:"max_pending_notifies"`
	RetryAfter         int `yaml:"retry_after"`
	// ProxyRequireDigest, in proxy mode, makes SUBSCRIBE and PUBLISH need
	// a password even on the flow a phone registered with the PBX on.
	ProxyRequireDigest bool `yaml:"proxy_require_digest"`
	// MaxForwarding bounds the requests being forwarded at once in proxy
	// mode; past it phones get 503.
	MaxForwarding int `yaml:"max_forwarding"`
	// MaxUDPNotify is the largest NOTIFY sent over UDP (default 65000,
	// the most a datagram carries); larger ones go over TCP where the
	// phone listens, else compact or, for a list, in several NOTIFYs.
	MaxUDPNotify int `yaml:"max_udp_notify"`
	// Coalesce is how long bursts of non-urgent changes for one user are
	// gathered into one NOTIFY. A change to ringing is never delayed.
	Coalesce time.Duration `yaml:"coalesce"`
	// SingleDialog renders one dialog per dialog-info document for the
	// phones that need it.
	SingleDialog SingleDialog `yaml:"single_dialog"`
}

// SingleDialog chooses the watchers that get one dialog per document.
type SingleDialog struct {
	All bool `yaml:"all"`
	// UserAgents are prefixes of User-Agent headers ("Cisco/SPA").
	UserAgents []string `yaml:"user_agents"`
}

// HTTP is the `http:` section: metrics, health, the API and the page.
type HTTP struct {
	Listen string `yaml:"listen"`
	// Title is the switchboard page's heading (default "Switchboard").
	Title string `yaml:"title"`
	// Hosts are the names the listener answers to (besides its own
	// address, localhost and this machine's name); a request for any
	// other name is refused, against DNS rebinding.
	Hosts []string `yaml:"hosts"`
	// MaxStreams and MaxStreamsPerAddress bound the switchboard's open
	// event streams (defaults 1000 and 10; behind a reverse proxy every
	// viewer has the proxy's address: raise the second).
	MaxStreams           int    `yaml:"max_streams"`
	MaxStreamsPerAddress int    `yaml:"max_streams_per_address"`
	Token                string `yaml:"token"`
	TokenFile            string `yaml:"token_file"`
	TokenEnv             string `yaml:"token_env"`
	// Pprof serves Go's profiler under /debug/pprof/ (default off): for
	// profiling under load, on a loopback or otherwise private listener.
	Pprof bool `yaml:"pprof"`
}

// Log is the `log:` section.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// PBX is one PBX connection.
type PBX struct {
	Name         string `yaml:"name"`
	Kind         string `yaml:"kind"`    // ari, esl, sim or sip
	Address      string `yaml:"address"` // ari: http(s)://host:8088; esl: host:8021
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
	// ARI is the section of a PBX of kind ari (adapters/ari/README.md).
	ARI *ari.Config `yaml:"ari"`
	// ESL is the section of a PBX of kind esl (adapters/esl/README.md).
	ESL *esl.Config `yaml:"esl"`
	// Sim is the section of a PBX of kind sim.
	Sim *sim.Config `yaml:"sim"`
	// Discover, when present and not false, reads the PBX's own directory
	// for users (discover.go).
	Discover *Discover `yaml:"discover"`
	// Proxy, when present, puts the PBX in proxy mode: its users' phones
	// use Lamplighter as outbound proxy, and every request but presence
	// goes on to the PBX (presence/proxy/README.md).
	Proxy *PBXProxy `yaml:"proxy"`
}

// HostPort splits Address into host and port, with the transport's
// default port when it has none.
func (px *PBXProxy) HostPort() (string, int, error) {
	def := 5060
	if strings.EqualFold(px.Transport, "tls") {
		def = 5061
	}
	host, portStr, err := net.SplitHostPort(px.Address)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			return strings.Trim(px.Address, "[]"), def, nil
		}
		return "", 0, err
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return "", 0, fmt.Errorf("bad port %q", portStr)
	}
	if host == "" {
		return "", 0, fmt.Errorf("no host")
	}
	return host, port, nil
}

// PBXProxy is a PBX's `proxy:` section: where its SIP side listens.
type PBXProxy struct {
	// Address is the PBX's SIP address, host:port (port 5060, or 5061
	// for tls, when left out).
	Address string `yaml:"address"`
	// Transport is udp (default), tcp or tls.
	Transport string `yaml:"transport"`
	// Phones says how the PBX's phones reach Lamplighter: "outbound"
	// (default: their one line has Lamplighter as outbound proxy) or
	// "dedicated" (a second, busy-lamp line registered to Lamplighter,
	// whose calls Lamplighter authenticates and passes on).
	Phones string `yaml:"phones"`
	// DedicatedCalls, for dedicated lines, is what a call from the
	// busy-lamp line gets: "forward" (default: sent on to the PBX with
	// P-Asserted-Identity) or "redirect" (302 to the PBX).
	DedicatedCalls string `yaml:"dedicated_calls"`
	// CAFile, for transport tls, is a PEM file of the certificate
	// authorities that may sign the PBX's certificate, besides the
	// system's.
	CAFile string `yaml:"ca_file"`
}

// Values of PBXProxy.Phones and DedicatedCalls.
const (
	PhonesOutbound  = "outbound"
	PhonesDedicated = "dedicated"
	CallsForward    = "forward"
	CallsRedirect   = "redirect"
)

// Tenant is one domain with people of its own: its presentities are
// sip:ext@Domain, its extensions and SIP usernames may be another's too,
// and no one of another tenant sees them. FreeSWITCH's domains are
// tenants of their own when its directory is discovered; on Asterisk a
// discovered endpoint is the tenant's by its context or name.
type Tenant struct {
	Domain string `yaml:"domain"`
	// Realm is the tenant's digest realm (default Domain).
	Realm string `yaml:"realm"`
	// Contexts and EndpointPrefix make a discovered Asterisk endpoint the
	// tenant's: its dialplan context is one of Contexts, or its name
	// starts with EndpointPrefix (stripped from the extension).
	Contexts       []string `yaml:"contexts"`
	EndpointPrefix string   `yaml:"endpoint_prefix"`
	// Sees lets this tenant's watchers watch the people of the tenants
	// named besides their own (the sip domain names the default
	// domain's people; "*" every tenant): a head office watching its
	// branches. They authenticate as username@their-domain.
	Sees []string `yaml:"sees"`
	// Token is the tenant's API token: it reads and sets only the
	// tenant's people.
	Token     string `yaml:"token"`
	TokenFile string `yaml:"token_file"`
	TokenEnv  string `yaml:"token_env"`
}

// TenantToken returns a tenant's API token ("" when none is set).
func (c *Config) TenantToken(t *Tenant, env Env) (string, error) {
	return resolveSecret(t.Token, t.TokenFile, t.TokenEnv, env)
}

// User is one person.
type User struct {
	ID string `yaml:"id"`
	// Tenant is the tenant's domain the user belongs to (default: the
	// sip domain, no tenant).
	Tenant     string   `yaml:"tenant"`
	Name       string   `yaml:"name"`
	Extensions []string `yaml:"extensions"`
	Aliases    []string `yaml:"aliases"`
	Devices    []Device `yaml:"devices"`
	Groups     []string `yaml:"groups"`
	SIP        UserSIP  `yaml:"sip"`
	// SingleDialog, when set, overrides the policy for this user's own
	// phones when they watch others.
	SingleDialog *bool `yaml:"single_dialog"`
	// Resource marks a lamp that is no person (a feature key, a parking
	// space): it is not on the switchboard.
	Resource bool `yaml:"resource"`
	// Calendar is the user's own calendar (or, with off, none).
	Calendar *UserCalendar `yaml:"calendar"`
}

// List is one BLF list (RFC 4662): phones subscribe to sip:Name@domain
// with Supported: eventlist and get every member's state in one
// subscription.
type List struct {
	Name    string   `yaml:"name"`
	Tenant  string   `yaml:"tenant"` // the tenant's domain whose people it lists (default none)
	Display string   `yaml:"display"`
	Members []string `yaml:"members"` // user ids, extensions or aliases
	Group   string   `yaml:"group"`   // every user of the group, after Members
}

// Device is one device of a user on one PBX.
type Device struct {
	PBX    string `yaml:"pbx"`
	Device string `yaml:"device"`
}

// UserSIP holds a user's SIP credentials for SUBSCRIBE, PUBLISH and
// REGISTER.
type UserSIP struct {
	Username     string `yaml:"username"` // defaults to the user id
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
}

// Kinds of PBX connection.
const (
	KindARI = "ari"
	KindESL = "esl"
	KindSim = "sim"
	// KindSIP is a PBX reached only through its SIP side, in proxy mode:
	// its lamps come from the calls Lamplighter carries (adapters/sipcalls).
	KindSIP = "sip"
)

// Error is one problem, with where it is.
type Error struct {
	File string
	Line int
	Msg  string
}

func (e Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("%s:%d: %s", e.File, e.Line, e.Msg)
	}
	return fmt.Sprintf("%s: %s", e.File, e.Msg)
}

// Errors is every problem found in a file, in line order.
type Errors []Error

func (es Errors) Error() string {
	var b strings.Builder
	for i, e := range es {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Env looks up environment variables; os.LookupEnv in production.
type Env func(string) (string, bool)

// Load reads and checks the file at path.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		// The error names the file already; say it once.
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, Errors{{File: path, Msg: "cannot " + pe.Op + ": " + pe.Err.Error()}}
		}
		return nil, Errors{{File: path, Msg: err.Error()}}
	}
	return Parse(path, data, os.LookupEnv)
}

var lineMsg = regexp.MustCompile(`^line (\d+): (.*)$`)
var fieldNotFound = regexp.MustCompile(`^field (\S+) not found in type (\w+)\.(\w+)$`)

// Parse reads and checks a config file's content; file names it in errors.
func Parse(file string, data []byte, env Env) (*Config, error) {
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, Errors{yamlError(file, err)}
	}
	cfg := &Config{File: file}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var errs Errors
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		var te *yaml.TypeError
		if !errors.As(err, &te) {
			return nil, Errors{yamlError(file, err)}
		}
		for _, m := range te.Errors {
			e := Error{File: file, Msg: m}
			if sub := lineMsg.FindStringSubmatch(m); sub != nil {
				e.Line, _ = strconv.Atoi(sub[1])
				e.Msg = sub[2]
				if f := fieldNotFound.FindStringSubmatch(e.Msg); f != nil {
					e.Msg = fmt.Sprintf("unknown key %q in %s", f[1], sectionName(f[2], f[3]))
				}
			}
			errs = append(errs, e)
		}
	}
	cfg.File = file
	v := &validator{file: file, root: &root, env: env}
	if len(root.Content) > 0 {
		v.root = root.Content[0]
	}
	cfg.defaults()
	v.check(cfg)
	errs = append(errs, v.errs...)
	if len(errs) > 0 {
		sortErrors(errs)
		return nil, errs
	}
	return cfg, nil
}

func sectionName(pkg, typeName string) string {
	if pkg != "config" && typeName == "Config" {
		return pkg + " section" // an adapter's or the cluster's own Config
	}
	switch typeName {
	case "Config":
		return "the top level"
	case "PBX":
		return "a pbx entry"
	case "User":
		return "a user"
	case "UserSIP":
		return "a user's sip section"
	case "Listener":
		return "a sip listener"
	case "List":
		return "a list"
	case "Calendars":
		return "the calendar section"
	case "CalendarSource":
		return "a calendar source"
	case "UserCalendar":
		return "a user's calendar"
	case "CalendarNotes":
		return "the calendar notes"
	}
	return strings.ToLower(typeName) + " section"
}

func yamlError(file string, err error) Error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	e := Error{File: file, Msg: msg}
	if sub := lineMsg.FindStringSubmatch(msg); sub != nil {
		e.Line, _ = strconv.Atoi(sub[1])
		e.Msg = sub[2]
	}
	return e
}

func sortErrors(es Errors) {
	// Stable insertion sort by line: lists are short.
	for i := 1; i < len(es); i++ {
		for j := i; j > 0 && es[j].Line < es[j-1].Line; j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
}

// defaults fills in what the administrator may leave out.
func (c *Config) defaults() {
	if c.SIP.Domain == "" {
		c.SIP.Domain = "localhost"
	}
	if c.SIP.Realm == "" {
		c.SIP.Realm = c.SIP.Domain
	}
	if len(c.SIP.Listen) == 0 {
		c.SIP.Listen = []Listener{{Transport: "udp", Address: "0.0.0.0:5060"}, {Transport: "tcp", Address: "0.0.0.0:5060"}}
	}
	if len(c.SIP.DigestAlgorithms) == 0 {
		c.SIP.DigestAlgorithms = []string{"MD5"}
	}
	p := &c.Policy
	if p.MinExpires == 0 {
		p.MinExpires = presence.DefaultMinExpires
	}
	if p.MaxExpires == 0 {
		p.MaxExpires = presence.DefaultMaxExpires
	}
	if p.DefaultExpires == 0 {
		p.DefaultExpires = min(presence.DefaultExpires, p.MaxExpires)
	}
	if p.MaxSubscriptionsPerSource == 0 {
		p.MaxSubscriptionsPerSource = presence.DefaultMaxSubscriptionsPerSource
	}
	if p.MaxBodyBytes == 0 {
		p.MaxBodyBytes = presence.DefaultMaxBodyBytes
	}
	if p.Coalesce == 0 {
		p.Coalesce = presence.DefaultCoalesce
	}
	setInt := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	setInt(&p.MaxPublicationsPerUser, presence.DefaultMaxPublicationsPerUser)
	setInt(&p.MaxRegistrationsPerUser, presence.DefaultMaxBindingsPerUser)
	setInt(&p.MaxConnections, presence.DefaultMaxConnections)
	setInt(&p.MaxConnectionsPerAddress, presence.DefaultMaxPerAddress)
	setInt(&p.MaxPendingRequests, presence.DefaultMaxPendingRequests)
	setInt(&p.MaxPendingNotifies, presence.DefaultMaxPendingNotifies)
	setInt(&p.RetryAfter, presence.DefaultRetryAfter)
	setInt(&p.MaxForwarding, proxy.DefaultMaxTransactions)
	if p.MessageTimeout == 0 {
		p.MessageTimeout = presence.DefaultMessageTimeout
	}
	if p.IdleTimeout == 0 {
		p.IdleTimeout = presence.DefaultIdleTimeout
	}
	if c.HTTP.Listen == "" {
		c.HTTP.Listen = "127.0.0.1:8080"
	}
	setInt(&c.HTTP.MaxStreams, 1000)
	setInt(&c.HTTP.MaxStreamsPerAddress, 10)
	if c.StateDir == "" {
		if d := os.Getenv("STATE_DIRECTORY"); d != "" { // set by systemd's StateDirectory=
			c.StateDir = d
		} else {
			c.StateDir = "/var/lib/lamplighter"
		}
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "text"
	}
	for i := range c.Users {
		if c.Users[i].SIP.Username == "" {
			c.Users[i].SIP.Username = c.Users[i].ID
		}
	}
	if c.Cluster != nil {
		c.Cluster.Defaults()
	}
	for i := range c.PBX {
		if c.PBX[i].Kind == KindSim && c.PBX[i].Sim == nil {
			c.PBX[i].Sim = &sim.Config{}
		}
		if c.PBX[i].Kind == KindARI && c.PBX[i].ARI == nil {
			c.PBX[i].ARI = &ari.Config{}
		}
		if c.PBX[i].Kind == KindESL && c.PBX[i].ESL == nil {
			c.PBX[i].ESL = &esl.Config{}
		}
	}
}

// PBXPassword returns a PBX connection's password from wherever the
// config says it is.
func (c *Config) PBXPassword(p *PBX, env Env) (string, error) {
	return resolveSecret(p.Password, p.PasswordFile, p.PasswordEnv, env)
}

// ARISection returns a PBX's ari section with the AMI password (when it
// has an ami part) read from wherever the config says it is.
func (c *Config) ARISection(p *PBX, env Env) (ari.Config, error) {
	out := *p.ARI
	if out.AMI != nil {
		ami := *out.AMI
		secret, err := resolveSecret(ami.Password, ami.PasswordFile, ami.PasswordEnv, env)
		if err != nil {
			return out, fmt.Errorf("ari.ami: %w", err)
		}
		ami.Secret = secret
		out.AMI = &ami
	}
	return out, nil
}

// UserPassword returns a user's SIP password ("" when none is set).
func (c *Config) UserPassword(u *User, env Env) (string, error) {
	return resolveSecret(u.SIP.Password, u.SIP.PasswordFile, u.SIP.PasswordEnv, env)
}

// HTTPToken returns the API token ("" when none is set).
func (c *Config) HTTPToken(env Env) (string, error) {
	return resolveSecret(c.HTTP.Token, c.HTTP.TokenFile, c.HTTP.TokenEnv, env)
}

// resolveSecret reads a secret given inline, in a file (trailing newline
// removed) or in an environment variable.
func resolveSecret(inline, file, envName string, env Env) (string, error) {
	if env == nil {
		env = os.LookupEnv
	}
	switch {
	case file != "":
		b, err := os.ReadFile(ExpandPath(file, env))
		if err != nil {
			return "", fmt.Errorf("secret file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case envName != "":
		v, ok := env(envName)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", envName)
		}
		return v, nil
	}
	return inline, nil
}

// ExpandPath replaces ${VAR} and $VAR in a file path from the environment,
// so that a secret can live in systemd's $CREDENTIALS_DIRECTORY.
func ExpandPath(path string, env Env) string {
	return os.Expand(path, func(k string) string {
		v, _ := env(k)
		return v
	})
}
