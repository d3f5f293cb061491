// Package esl is the FreeSWITCH adapter: it follows a FreeSWITCH 1.10 over
// the inbound event socket (ESL), turning channel and registration events
// into bridge events, and reads `show channels` and `show registrations`
// for a resync after every connect. See README.md in this folder for what
// to configure on the FreeSWITCH side.
package esl

import (
	"time"

	"github.com/lamplighter/lamplighter/adapters"
)

// Config is the `esl:` section of a PBX of kind esl.
type Config struct {
	// CommandTimeout bounds every command and the login (default 5s). A
	// command that times out ends the connection: its late reply would
	// otherwise be taken for the next command's.
	CommandTimeout time.Duration `yaml:"command_timeout"`
	// HeartbeatTimeout is how long FreeSWITCH may stay silent before the
	// connection counts as dead (default 60s; FreeSWITCH sends HEARTBEAT
	// every 20s unless event-heartbeat-interval says otherwise).
	HeartbeatTimeout time.Duration `yaml:"heartbeat_timeout"`
	// PingInterval is how often a cheap command checks that FreeSWITCH
	// still answers (default 15s).
	PingInterval time.Duration `yaml:"ping_interval"`
	// ReconnectMin and ReconnectMax bound the backoff between connection
	// attempts (defaults 500ms and 1s: lamps are right again within about
	// a second of FreeSWITCH answering, however long it was away); each
	// wait has jitter.
	ReconnectMin time.Duration `yaml:"reconnect_min"`
	ReconnectMax time.Duration `yaml:"reconnect_max"`
	// DownAfter is how long FreeSWITCH may stay unreachable before the
	// devices users have on it show unavailable and its calls end, instead
	// of the calls it had when it went away (default 30s; a negative value
	// never does).
	DownAfter time.Duration `yaml:"down_after"`
}

// Defaults fills unset fields.
func (c *Config) Defaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	set(&c.CommandTimeout, 5*time.Second)
	set(&c.HeartbeatTimeout, 60*time.Second)
	set(&c.PingInterval, 15*time.Second)
	set(&c.ReconnectMin, 500*time.Millisecond)
	set(&c.ReconnectMax, time.Second)
	set(&c.DownAfter, 30*time.Second)
}

// Validate checks the section.
func (c *Config) Validate() []adapters.ConfigError {
	var errs []adapters.ConfigError
	for key, d := range map[string]time.Duration{
		"command_timeout": c.CommandTimeout, "heartbeat_timeout": c.HeartbeatTimeout,
		"ping_interval": c.PingInterval, "reconnect_min": c.ReconnectMin, "reconnect_max": c.ReconnectMax,
	} {
		if d < 0 {
			errs = append(errs, adapters.ConfigError{Key: key, Msg: "must not be negative"})
		}
	}
	if c.ReconnectMax > 0 && c.ReconnectMin > c.ReconnectMax {
		errs = append(errs, adapters.ConfigError{Key: "reconnect_min", Msg: "is above reconnect_max"})
	}
	return errs
}
