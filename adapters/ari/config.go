// Package ari is the Asterisk adapter: it follows an Asterisk 18–22 over
// the Asterisk REST Interface (an events websocket with subscribeAll, and
// REST for a resync after every connect) and turns channels, dials, holds,
// device states and endpoint reachability into bridge events. See
// README.md in this folder for what to configure on the Asterisk side.
package ari

import (
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
)

// Config is the `ari:` section of a PBX of kind ari.
type Config struct {
	// App is the ARI application name Lamplighter registers (default
	// "lamplighter"). It must not be used by anything else.
	App string `yaml:"app"`
	// InsecureTLS skips certificate checks for https/wss (lab use only).
	InsecureTLS bool `yaml:"insecure_tls"`
	// CAFile is a PEM bundle to trust for https/wss.
	CAFile string `yaml:"ca_file"`
	// RequestTimeout bounds every REST request (default 5s).
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// ReconnectMin and ReconnectMax bound the backoff between connection
	// attempts (defaults 500ms and 1s: lamps are right again within about
	// a second of Asterisk answering, however long it was away); each wait
	// has jitter.
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	ReconnectMax time.Duration `yaml:"reconnect_max"`
	// DownAfter is how long Asterisk may stay unreachable before the
	// devices users have on it show unavailable and its calls end, instead
	// of the calls it had when it went away (default 30s; a negative value
	// never does).
	DownAfter time.Duration `yaml:"down_after"`
	// LocalTagVar and RemoteTagVar name the channel variables that carry
	// a PJSIP leg's SIP tags as the phone sees them (defaults
	// LL_LOCAL_TAG: the phone's tag; LL_REMOTE_TAG: Asterisk's); see
	// README.md for the dialplan and ari.conf lines that set them.
	LocalTagVar  string `yaml:"local_tag_var"`
	RemoteTagVar string `yaml:"remote_tag_var"`
	// DedicatedEndpoint names the PJSIP endpoint that Asterisk identifies
	// Lamplighter's forwarded key presses as, where phones have a busy-lamp
	// line registered to Lamplighter (proxy phones: dedicated): a channel
	// of that endpoint stands for the device of its caller's number
	// (PJSIP/<number>, from the P-Asserted-Identity Lamplighter adds), so
	// that the phone whose key was pressed shows the call. Empty: none.
	DedicatedEndpoint string `yaml:"dedicated_endpoint"`
	// DNDDevice, when set, mirrors each user's do-not-disturb into an
	// ARI-controlled device state (BUSY while dnd, NOT_INUSE otherwise) so
	// that the PBX's own hints and dialplan can use it, e.g.
	// "Stasis:DND_{extension}". {user} is the user's id, {extension} the
	// first extension. Off when empty.
	DNDDevice string `yaml:"dnd_device"`
	// AMI, when set, is where the dialplan's hints are read from for the
	// PBX's discover (ARI cannot list them): the Asterisk Manager
	// Interface, as a user that may only run reporting actions.
	AMI *AMI `yaml:"ami"`
}

// AMI is the `ami:` part of the section: an AMI listener and a user of it.
type AMI struct {
	Address      string `yaml:"address"` // host:port (Asterisk's default port is 5038)
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`
	PasswordFile string `yaml:"password_file"`
	PasswordEnv  string `yaml:"password_env"`
	// Secret is the password as read from wherever the section says
	// (the config fills it in).
	Secret string `yaml:"-"`
}

// dndDevice is the mirror device name for user u, "" when mirroring is
// off.
func (c *Config) dndDevice(u bridge.User) string {
	if c.DNDDevice == "" {
		return ""
	}
	ext := u.ID
	if len(u.Extensions) > 0 {
		ext = u.Extensions[0]
	}
	return strings.NewReplacer("{user}", u.ID, "{extension}", ext).Replace(c.DNDDevice)
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	if c.App == "" {
		c.App = "lamplighter"
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = 5 * time.Second
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = 500 * time.Millisecond
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = time.Second
	}
	if c.DownAfter == 0 {
		c.DownAfter = 30 * time.Second
	}
	if c.LocalTagVar == "" {
		c.LocalTagVar = "LL_LOCAL_TAG"
	}
	if c.RemoteTagVar == "" {
		c.RemoteTagVar = "LL_REMOTE_TAG"
	}
}

// Validate checks the section.
func (c *Config) Validate() []adapters.ConfigError {
	var errs []adapters.ConfigError
	for _, r := range c.App {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			errs = append(errs, adapters.ConfigError{Key: "app", Msg: "use letters, digits, '-', '_' and '.' only"})
			break
		}
	}
	if c.RequestTimeout < 0 || c.ReconnectMin < 0 || c.ReconnectMax < 0 {
		errs = append(errs, adapters.ConfigError{Key: "request_timeout", Msg: "durations must not be negative"})
	}
	if d := c.DNDDevice; d != "" {
		switch {
		case !strings.HasPrefix(d, "Stasis:"):
			errs = append(errs, adapters.ConfigError{Key: "dnd_device", Msg: `must start with "Stasis:" (ARI can only set Stasis: devices)`})
		case !strings.Contains(d, "{user}") && !strings.Contains(d, "{extension}"):
			errs = append(errs, adapters.ConfigError{Key: "dnd_device", Msg: "must contain {user} or {extension}, one device per user"})
		}
	}
	if strings.ContainsAny(c.DedicatedEndpoint, "/ ") {
		errs = append(errs, adapters.ConfigError{Key: "dedicated_endpoint", Msg: "is a PJSIP endpoint's name, without PJSIP/"})
	}
	if a := c.AMI; a != nil {
		if host, port, err := net.SplitHostPort(a.Address); err != nil || host == "" || port == "" {
			errs = append(errs, adapters.ConfigError{Key: "ami", Msg: fmt.Sprintf("address %q: want host:port", a.Address)})
		}
		if a.Username == "" {
			errs = append(errs, adapters.ConfigError{Key: "ami", Msg: "needs a username"})
		}
		n := 0
		for _, s := range []string{a.Password, a.PasswordFile, a.PasswordEnv} {
			if s != "" {
				n++
			}
		}
		if n != 1 {
			errs = append(errs, adapters.ConfigError{Key: "ami", Msg: "give one of password, password_file and password_env"})
		}
	}
	if c.ReconnectMax > 0 && c.ReconnectMin > c.ReconnectMax {
		errs = append(errs, adapters.ConfigError{Key: "reconnect_min", Msg: "is above reconnect_max"})
	}
	return errs
}
