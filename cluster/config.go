package cluster

import (
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/lamplighter/lamplighter/configerr"
)

// Config is the `cluster:` section. Without it Lamplighter runs alone on
// its bbolt state file; with it, nodes share state through NATS
// JetStream.
type Config struct {
	// Node names this node among the others (default: the host name);
	// every node needs its own.
	Node string `yaml:"node"`
	// URLs are the NATS servers, nats://host:4222 (tls:// for TLS).
	URLs []string `yaml:"urls"`
	// Username and Password, or CredsFile (a NATS .creds file: JWT and
	// nkey), or Token authenticate to NATS; all optional.
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	CredsFile    string `yaml:"creds_file"`
	// TLS towards NATS: a CA file for its certificate, and a client
	// certificate and key when NATS asks for one.
	CAFile   string `yaml:"ca_file"`
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
	// Replicas of each JetStream bucket: 3 on a three-server NATS
	// cluster (default 1).
	Replicas int `yaml:"replicas"`
	// LeaseTTL is how long a node that stops renewing its lease is still
	// held alive (default 10s); it renews every third of it. It must
	// outlast the engine's election of a new leader for the leases
	// bucket when a NATS server dies, or every node's lease lapses with
	// it (5-10 s measured on nats-server 2.9.10; cluster/README.md).
	// Lower, a crashed node's dialogs move sooner.
	LeaseTTL time.Duration `yaml:"lease_ttl"`
	// Address is the host phones reach every node at (a virtual IP or a
	// name with DNS SRV records), when there is one: the Contact of 200s
	// and NOTIFYs names it instead of the node's own address, so that a
	// phone's refreshes follow whichever node holds it.
	Address string `yaml:"address"`
	// BucketPrefix starts the names of the JetStream buckets (default
	// "lamplighter"), so that two installations can share NATS.
	BucketPrefix string `yaml:"bucket_prefix"`
}

// Defaults fills in what the administrator may leave out.
func (c *Config) Defaults() {
	if c.Node == "" {
		c.Node, _ = os.Hostname()
	}
	if c.Replicas == 0 {
		c.Replicas = 1
	}
	if c.LeaseTTL == 0 {
		c.LeaseTTL = 10 * time.Second
	}
	if c.BucketPrefix == "" {
		c.BucketPrefix = "lamplighter"
	}
}

// Validate checks the section (after Defaults).
func (c *Config) Validate() []configerr.Error {
	var errs []configerr.Error
	bad := func(key, format string, args ...any) {
		errs = append(errs, configerr.Error{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	if c.Node == "" || strings.ContainsAny(c.Node, " .*>/\\\"") {
		bad("node", "node name %q must be set and may not contain spaces or any of .*>/\\\"", c.Node)
	}
	if len(c.URLs) == 0 {
		bad("urls", "name at least one NATS server (nats://host:4222)")
	}
	for _, u := range c.URLs {
		p, err := url.Parse(u)
		if err != nil || p.Host == "" || (p.Scheme != "nats" && p.Scheme != "tls") {
			bad("urls", "%q is not nats://host:port or tls://host:port", u)
		}
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		bad("replicas", "replicas must be between 1 and 5 (JetStream's limit)")
	}
	if c.LeaseTTL < time.Second {
		bad("lease_ttl", "lease_ttl must be at least 1s")
	}
	if c.Password != "" && c.PasswordFile != "" {
		bad("password", "give password or password_file, not both")
	}
	if (c.Password != "" || c.PasswordFile != "") && c.Username == "" {
		bad("username", "a password needs a username")
	}
	if c.CredsFile != "" && c.Username != "" {
		bad("creds_file", "give creds_file or username, not both")
	}
	if (c.CertFile == "") != (c.KeyFile == "") {
		bad("cert_file", "cert_file and key_file go together")
	}
	for key, f := range map[string]string{"password_file": c.PasswordFile, "creds_file": c.CredsFile,
		"ca_file": c.CAFile, "cert_file": c.CertFile, "key_file": c.KeyFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			bad(key, "cannot read %s", f)
		}
	}
	if _, err := netip.ParseAddr(strings.Trim(c.Address, "[]")); err != nil && strings.ContainsAny(c.Address, " @:;<>/\"[]") {
		bad("address", "address %q must be a host name or an IP address (no port)", c.Address)
	}
	if strings.ContainsAny(c.BucketPrefix, " .*>/\\") {
		bad("bucket_prefix", "bucket_prefix %q may hold only letters, digits, - and _", c.BucketPrefix)
	}
	return errs
}
