package config

import (
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence"
)

// validator checks a decoded config and names the line of each problem by
// walking the YAML node tree along the same path.
type validator struct {
	file string
	root *yaml.Node
	env  Env
	errs Errors
}

// at reports a problem at the node found by path (keys and indices); when
// the path goes further than the file does, the deepest node found names
// the line.
func (v *validator) at(path []any, format string, args ...any) {
	v.errs = append(v.errs, Error{File: v.file, Line: lineOf(v.root, path), Msg: fmt.Sprintf(format, args...)})
}

func lineOf(n *yaml.Node, path []any) int {
	if n == nil {
		return 0
	}
	line := n.Line
	for _, p := range path {
		var next *yaml.Node
		switch k := p.(type) {
		case string:
			if n.Kind == yaml.MappingNode {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if n.Content[i].Value == k {
						next = n.Content[i+1]
						line = n.Content[i].Line
						break
					}
				}
			}
		case int:
			if n.Kind == yaml.SequenceNode && k < len(n.Content) {
				next = n.Content[k]
				line = next.Line
			}
		}
		if next == nil {
			return line
		}
		n = next
	}
	return line
}

func p(parts ...any) []any { return parts }

func (v *validator) check(c *Config) {
	v.checkSIP(c)
	v.checkPolicy(c)
	if err := checkListenAddr(c.HTTP.Listen); err != nil {
		v.at(p("http", "listen"), "bad address %q: %v", c.HTTP.Listen, err)
	}
	v.checkSecret(p("http"), "token", c.HTTP.TokenFile, c.HTTP.TokenEnv)
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		v.at(p("log", "level"), "log level %q is not one of debug, info, warn, error", c.Log.Level)
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		v.at(p("log", "format"), "log format %q is not text or json", c.Log.Format)
	}
	pbxs := v.checkPBXs(c)
	v.checkTenants(c)
	v.checkUsers(c, pbxs)
	v.checkLists(c)
	v.checkCalendars(c)
	if c.Cluster != nil {
		for _, e := range c.Cluster.Validate() {
			v.at(p("cluster", e.Key), "%s", e.Error())
		}
	}
}

// checkLists checks the BLF lists: a free name that can be a URI's user
// part, and members and groups that exist.
func (v *validator) checkLists(c *Config) {
	ids := map[string]bool{}
	names := map[string]string{} // extension/alias (lower case) → user id
	groups := map[string]bool{}
	for _, u := range c.Users {
		ids[u.ID] = true
		for _, n := range append(append([]string{}, u.Extensions...), u.Aliases...) {
			names[bridge.Qualify(n, strings.ToLower(u.Tenant))] = u.ID
		}
		for _, g := range u.Groups {
			groups[g] = true
		}
	}
	discovering := c.discovering()
	seen := map[string]int{}
	for i, l := range c.Lists {
		path := p("lists", i)
		key := bridge.Qualify(l.Name, strings.ToLower(l.Tenant))
		switch {
		case l.Tenant != "" && c.Tenant(l.Tenant) == nil:
			v.at(append(path, "tenant"), "list %q is in %q, which is not under tenants", l.Name, l.Tenant)
		case l.Name == "":
			v.at(path, "list has no name")
		case strings.ContainsAny(l.Name, " @:;<>\"?"):
			v.at(append(path, "name"), "list name %q cannot be the user part of a SIP URI", l.Name)
		case names[key] != "":
			v.at(append(path, "name"), "list name %q is already an extension or alias of user %q", l.Name, names[key])
		case seen[key] != 0:
			v.at(append(path, "name"), "list %q is already defined at line %d", l.Name, seen[key])
		}
		seen[key] = lineOf(v.root, append(path, "name"))
		if len(l.Members) == 0 && l.Group == "" {
			v.at(path, "list %q needs members or a group", l.Name)
		}
		if l.Group != "" && !groups[l.Group] && !discovering {
			v.at(append(path, "group"), "no user is in group %q", l.Group)
		}
		members := map[string]int{}
		for j, m := range l.Members {
			id := m
			if !ids[m] {
				id = names[bridge.Qualify(m, strings.ToLower(l.Tenant))]
			}
			if id == "" && discovering {
				continue // maybe the PBX's: checked as the directory is built
			}
			if id == "" {
				v.at(append(path, "members", j), "no user has id, extension or alias %q", m)
				continue
			}
			if prev, dup := members[id]; dup {
				v.at(append(path, "members", j), "%q is user %q, already a member at line %d", m, id, prev)
				continue
			}
			members[id] = lineOf(v.root, append(path, "members", j))
		}
	}
}

// checkTenants checks the tenants: a domain of their own each, other than
// the sip domain, and readable token secrets.
func (v *validator) checkTenants(c *Config) {
	seen := map[string]int{}
	for i, t := range c.Tenants {
		path := p("tenants", i)
		d := strings.ToLower(t.Domain)
		switch {
		case t.Domain == "":
			v.at(path, "a tenant needs a domain")
		case strings.ContainsAny(t.Domain, " @:;<>/\"?"):
			v.at(append(path, "domain"), "bad domain %q", t.Domain)
		case d == strings.ToLower(c.SIP.Domain):
			v.at(append(path, "domain"), "%q is the sip domain, whose people are no tenant's", t.Domain)
		case seen[d] != 0:
			v.at(append(path, "domain"), "tenant %q is already defined at line %d", t.Domain, seen[d])
		}
		seen[d] = lineOf(v.root, append(path, "domain"))
		n := 0
		for _, s := range []string{t.Token, t.TokenFile, t.TokenEnv} {
			if s != "" {
				n++
			}
		}
		if n > 1 {
			v.at(path, "give only one of token, token_file and token_env")
		}
		v.checkSecret(path, "token", t.TokenFile, t.TokenEnv)
		for j, other := range t.Sees {
			if other != "*" && !strings.EqualFold(other, c.SIP.Domain) && c.Tenant(other) == nil {
				v.at(append(path, "sees", j), "%q is neither a tenant, the sip domain nor *", other)
			}
		}
	}
}

func (v *validator) checkSIP(c *Config) {
	if strings.ContainsAny(c.SIP.Domain, " @:;<>") {
		v.at(p("sip", "domain"), "bad domain %q", c.SIP.Domain)
	}
	seen := map[string]int{}
	for i, l := range c.SIP.Listen {
		path := p("sip", "listen", i)
		switch l.Transport {
		case "udp", "tcp":
			if l.CertFile != "" || l.KeyFile != "" {
				v.at(append(path, "cert_file"), "cert_file and key_file are for tls listeners only")
			}
		case "tls":
			if l.CertFile == "" || l.KeyFile == "" {
				v.at(path, "a tls listener needs cert_file and key_file")
			}
			for key, f := range map[string]string{"cert_file": l.CertFile, "key_file": l.KeyFile} {
				if f != "" {
					if _, err := os.Stat(f); err != nil {
						v.at(append(path, key), "cannot read %s: %v", key, unwrapPath(err))
					}
				}
			}
		default:
			v.at(append(path, "transport"), "transport %q is not udp, tcp or tls", l.Transport)
		}
		if err := checkListenAddr(l.Address); err != nil {
			v.at(append(path, "address"), "bad address %q: %v", l.Address, err)
		}
		key := l.Transport + " " + l.Address
		if prev, dup := seen[key]; dup {
			v.at(path, "listener %s %s is already defined at line %d", l.Transport, l.Address, prev)
		}
		seen[key] = lineOf(v.root, path)
	}
	for i, a := range c.SIP.DigestAlgorithms {
		if a != "MD5" && a != "SHA-256" {
			v.at(p("sip", "digest_algorithms", i), "digest algorithm %q is not MD5 or SHA-256", a)
		}
	}
	for i, n := range c.SIP.TrustedNetworks {
		if _, err := ParseNetwork(n); err != nil {
			v.at(p("sip", "trusted_networks", i), "%v", err)
		}
	}
}

func (v *validator) checkPolicy(c *Config) {
	pol := &c.Policy
	if pol.MinExpires < 1 {
		v.at(p("policy", "min_expires"), "min_expires must be at least 1 second")
	}
	if pol.MaxExpires < pol.MinExpires {
		v.at(p("policy", "max_expires"), "max_expires (%d) is below min_expires (%d)", pol.MaxExpires, pol.MinExpires)
	}
	if pol.DefaultExpires < pol.MinExpires || pol.DefaultExpires > pol.MaxExpires {
		v.at(p("policy", "default_expires"), "default_expires (%d) is not between min_expires and max_expires", pol.DefaultExpires)
	}
	if pol.MaxSubscriptionsPerSource < 1 {
		v.at(p("policy", "max_subscriptions_per_source"), "must be at least 1")
	}
	if pol.MaxBodyBytes < 512 {
		v.at(p("policy", "max_body_bytes"), "must be at least 512")
	}
	if pol.MaxUDPNotify != 0 && (pol.MaxUDPNotify < 1300 || pol.MaxUDPNotify > presence.MaxDatagram) {
		v.at(p("policy", "max_udp_notify"), "must be between 1300 and %d bytes", presence.MaxDatagram)
	}
	if pol.Coalesce < 0 {
		v.at(p("policy", "coalesce"), "must not be negative")
	}
	for key, n := range map[string]int{"max_publications_per_user": pol.MaxPublicationsPerUser,
		"max_registrations_per_user": pol.MaxRegistrationsPerUser, "max_connections": pol.MaxConnections,
		"max_connections_per_address": pol.MaxConnectionsPerAddress, "max_pending_requests": pol.MaxPendingRequests,
		"max_pending_notifies": pol.MaxPendingNotifies, "retry_after": pol.RetryAfter,
		"max_forwarding": pol.MaxForwarding} {
		if n < 1 {
			v.at(p("policy", key), "must be at least 1")
		}
	}
	if pol.MaxConnectionsPerAddress > pol.MaxConnections {
		v.at(p("policy", "max_connections_per_address"), "is above max_connections (%d)", pol.MaxConnections)
	}
	if pol.RequestsPerAddress < 0 || pol.RequestBurst < 0 {
		v.at(p("policy", "requests_per_address"), "requests_per_address and request_burst must not be negative")
	}
	if c.HTTP.MaxStreams < 1 || c.HTTP.MaxStreamsPerAddress < 1 {
		v.at(p("http", "max_streams"), "max_streams and max_streams_per_address must be at least 1")
	}
	for key, d := range map[string]time.Duration{"message_timeout": pol.MessageTimeout, "idle_timeout": pol.IdleTimeout} {
		if d < time.Second {
			v.at(p("policy", key), "must be at least 1s")
		}
	}
}

func (v *validator) checkPBXs(c *Config) map[string]bool {
	names := map[string]bool{}
	for i := range c.PBX {
		pb := &c.PBX[i]
		path := p("pbx", i)
		if pb.Name == "" {
			v.at(path, "pbx entry has no name")
		} else if names[pb.Name] {
			v.at(append(path, "name"), "pbx name %q is used twice", pb.Name)
		}
		names[pb.Name] = true
		switch pb.Kind {
		case KindARI:
			u, err := url.Parse(pb.Address)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				v.at(append(path, "address"), "bad address %q: an ari pbx needs http://host:port or https://host:port", pb.Address)
			} else if err := checkHostPort(withDefaultPort(u)); err != nil {
				v.at(append(path, "address"), "bad address %q: %v", pb.Address, err)
			}
			if pb.ARI != nil {
				for _, e := range pb.ARI.Validate() {
					v.at(append(path, "ari", e.Key), "%s", e.Error())
				}
				if a := pb.ARI.AMI; a != nil {
					v.checkSecret(append(path, "ari", "ami"), "password", a.PasswordFile, a.PasswordEnv)
				}
			}
		case KindESL:
			if err := checkHostPort(pb.Address); err != nil {
				v.at(append(path, "address"), "bad address %q: an esl pbx needs host:port (%v)", pb.Address, err)
			}
			if pb.ESL != nil {
				for _, e := range pb.ESL.Validate() {
					v.at(append(path, "esl", e.Key), "%s", e.Error())
				}
			}
		case KindSim:
			if pb.Sim != nil {
				for _, e := range pb.Sim.Validate() {
					v.at(append(path, "sim", e.Key), "%s", e.Error())
				}
			}
		case KindSIP:
			if pb.Proxy == nil {
				v.at(path, "pbx %q of kind sip needs a proxy section: its SIP address", pb.Name)
			}
			if pb.Address != "" {
				v.at(append(path, "address"), "a pbx of kind sip has no event address: its SIP side is proxy.address")
			}
		case "":
			v.at(path, "pbx %q has no kind (ari, esl, sim or sip)", pb.Name)
		default:
			v.at(append(path, "kind"), "kind %q is not ari, esl, sim or sip", pb.Kind)
		}
		if pb.Kind != KindSim && pb.Sim != nil {
			v.at(append(path, "sim"), "a sim section on a pbx of kind %q", pb.Kind)
		}
		if pb.Kind != KindARI && pb.ARI != nil {
			v.at(append(path, "ari"), "an ari section on a pbx of kind %q", pb.Kind)
		}
		if pb.Kind != KindESL && pb.ESL != nil {
			v.at(append(path, "esl"), "an esl section on a pbx of kind %q", pb.Kind)
		}
		if pb.Kind == KindARI || pb.Kind == KindESL {
			n := 0
			for _, s := range []string{pb.Password, pb.PasswordFile, pb.PasswordEnv} {
				if s != "" {
					n++
				}
			}
			if n == 0 {
				v.at(path, "pbx %q has no password, password_file or password_env", pb.Name)
			}
			if n > 1 {
				v.at(path, "pbx %q: give only one of password, password_file and password_env", pb.Name)
			}
			if pb.Kind == KindARI && pb.Username == "" {
				v.at(path, "pbx %q: an ari pbx needs a username", pb.Name)
			}
		}
		v.checkSecret(path, "password", pb.PasswordFile, pb.PasswordEnv)
		v.checkDiscover(path, pb)
		if pb.Proxy != nil {
			v.checkProxy(append(path, "proxy"), pb.Proxy)
			if pb.Kind == KindSIP && pb.Proxy.Phones == PhonesDedicated {
				v.at(append(path, "proxy", "phones"), "a pbx of kind sip sees calls only on phones that use Lamplighter as outbound proxy: phones: outbound")
			}
		}
	}
	return names
}

// checkProxy checks a PBX's proxy section.
func (v *validator) checkProxy(path []any, px *PBXProxy) {
	tr := strings.ToLower(px.Transport)
	switch tr {
	case "", "udp", "tcp", "tls":
	default:
		v.at(append(path, "transport"), "transport %q is not udp, tcp or tls", px.Transport)
	}
	switch px.Phones {
	case "", PhonesOutbound, PhonesDedicated:
	default:
		v.at(append(path, "phones"), "phones %q is not outbound or dedicated", px.Phones)
	}
	switch {
	case px.DedicatedCalls != "" && px.Phones != PhonesDedicated:
		v.at(append(path, "dedicated_calls"), "dedicated_calls is for phones: dedicated")
	case px.DedicatedCalls != "" && px.DedicatedCalls != CallsForward && px.DedicatedCalls != CallsRedirect:
		v.at(append(path, "dedicated_calls"), "dedicated_calls %q is not forward or redirect", px.DedicatedCalls)
	}
	if px.CAFile != "" {
		if tr != "tls" {
			v.at(append(path, "ca_file"), "ca_file is for transport: tls")
		} else if b, err := os.ReadFile(px.CAFile); err != nil {
			v.at(append(path, "ca_file"), "cannot read ca_file: %v", unwrapPath(err))
		} else if !x509.NewCertPool().AppendCertsFromPEM(b) {
			v.at(append(path, "ca_file"), "ca_file %s holds no PEM certificate", px.CAFile)
		}
	}
	if px.Address == "" {
		v.at(path, "a proxy section needs the PBX's SIP address (host:port)")
		return
	}
	if _, _, err := px.HostPort(); err != nil {
		v.at(append(path, "address"), "bad address %q: %v", px.Address, err)
	}
}

func (v *validator) checkUsers(c *Config, pbxs map[string]bool) {
	ids := map[string]int{}
	names := map[string]string{} // extension/alias (lower case) → user id
	devices := map[Device]string{}
	sipNames := map[string]string{}
	for i := range c.Users {
		u := &c.Users[i]
		path := p("users", i)
		if u.ID == "" {
			v.at(path, "user has no id")
		} else if strings.ContainsAny(u.ID, " /:@<>\"") {
			v.at(append(path, "id"), "user id %q may not contain spaces or any of /:@<>\"", u.ID)
		} else if prev, dup := ids[u.ID]; dup {
			v.at(append(path, "id"), "user id %q is already used at line %d", u.ID, prev)
		}
		ids[u.ID] = lineOf(v.root, append(path, "id"))
		if len(u.Extensions) == 0 && len(u.Aliases) == 0 {
			v.at(path, "user %q has no extension or alias to be watched by", u.ID)
		}
		for _, field := range []string{"extensions", "aliases"} {
			list := u.Extensions
			if field == "aliases" {
				list = u.Aliases
			}
			for j, n := range list {
				key := bridge.Qualify(n, strings.ToLower(u.Tenant))
				switch {
				case n == "":
					v.at(append(path, field, j), "empty %s entry", strings.TrimSuffix(field, "s"))
				case strings.ContainsAny(n, " @:;<>\"?"):
					v.at(append(path, field, j), "%q cannot be the user part of a SIP URI", n)
				case names[key] != "":
					v.at(append(path, field, j), "%q is already used by user %q", n, names[key])
				default:
					names[key] = u.ID
				}
			}
		}
		for j, d := range u.Devices {
			dp := append(path, "devices", j)
			if d.PBX == "" || d.Device == "" {
				v.at(dp, "a device needs pbx and device")
				continue
			}
			if !pbxs[d.PBX] {
				v.at(append(dp, "pbx"), "user %q refers to unknown pbx %q", u.ID, d.PBX)
			}
			if owner, dup := devices[d]; dup {
				v.at(append(dp, "device"), "device %s on %s is already claimed by user %q", d.Device, d.PBX, owner)
			} else {
				devices[d] = u.ID
			}
		}
		if u.Tenant != "" && c.Tenant(u.Tenant) == nil {
			v.at(append(path, "tenant"), "user %q is in %q, which is not under tenants", u.ID, u.Tenant)
		}
		sipName := strings.ToLower(u.Tenant) + "\x00" + u.SIP.Username
		if owner, dup := sipNames[sipName]; dup && u.SIP.Username != "" {
			v.at(append(path, "sip", "username"), "sip username %q is already used by user %q", u.SIP.Username, owner)
		} else {
			sipNames[sipName] = u.ID
		}
		n := 0
		for _, s := range []string{u.SIP.Password, u.SIP.PasswordFile, u.SIP.PasswordEnv} {
			if s != "" {
				n++
			}
		}
		if n > 1 {
			v.at(append(path, "sip"), "give only one of password, password_file and password_env")
		}
		v.checkSecret(append(path, "sip"), "password", u.SIP.PasswordFile, u.SIP.PasswordEnv)
	}
}

// checkSecret checks that a secret file is readable and an environment
// variable is set.
func (v *validator) checkSecret(path []any, what, file, envName string) {
	if file != "" {
		var unset []string
		os.Expand(file, func(k string) string {
			if _, ok := v.env(k); !ok {
				unset = append(unset, "$"+k)
			}
			return ""
		})
		if len(unset) > 0 {
			v.at(append(path, what+"_file"), "cannot read %s file %s: %s not set", what, file, strings.Join(unset, ", "))
			return
		}
		f, err := os.Open(ExpandPath(file, v.env))
		if err != nil {
			v.at(append(path, what+"_file"), "cannot read %s file: %v", what, unwrapPath(err))
		} else {
			f.Close()
		}
	}
	if envName != "" {
		if _, ok := v.env(envName); !ok {
			v.at(append(path, what+"_env"), "environment variable %s is not set", envName)
		}
	}
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

// checkListenAddr is checkHostPort for addresses to listen on, where port
// 0 asks the kernel for a free port.
func checkListenAddr(s string) error {
	if host, port, err := net.SplitHostPort(s); err == nil && port == "0" {
		return checkHostPort(net.JoinHostPort(host, "1"))
	}
	return checkHostPort(s)
}

// checkHostPort accepts host:port with a port from 1 to 65535 and a host
// that is empty, an IP address or a plausible name.
func checkHostPort(s string) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return fmt.Errorf("want host:port")
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q is not 1-65535", port)
	}
	if host == "" {
		return nil
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	for _, r := range host {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return fmt.Errorf("host %q is not an address or name", host)
		}
	}
	return nil
}

func withDefaultPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	if u.Scheme == "https" {
		return net.JoinHostPort(u.Hostname(), "443")
	}
	return net.JoinHostPort(u.Hostname(), "80")
}

// ParseNetwork reads a trusted network: a CIDR or a single address. An
// IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) is the IPv4 network it
// maps, since requests are matched by their IPv4 address; one shorter
// than /96 would take in more than IPv4 and is refused.
func ParseNetwork(n string) (netip.Prefix, error) {
	pfx, err := netip.ParsePrefix(n)
	if err != nil {
		a, err2 := netip.ParseAddr(n)
		if err2 != nil || a.Zone() != "" {
			return netip.Prefix{}, fmt.Errorf("bad network %q: want a CIDR like 10.0.0.0/8 or an address", n)
		}
		pfx = netip.PrefixFrom(a, a.BitLen())
	}
	if a := pfx.Addr(); a.Is4In6() {
		if pfx.Bits() < 96 {
			return netip.Prefix{}, fmt.Errorf("network %q covers more than IPv4-mapped addresses: write the IPv4 network (like 10.0.0.0/8)", n)
		}
		pfx = netip.PrefixFrom(a.Unmap(), pfx.Bits()-96)
	}
	return pfx.Masked(), nil
}
