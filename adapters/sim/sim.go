// Package sim is a simulated PBX: its phones place calls to each other and
// receive calls from outside, ring, are answered or not, put calls on hold
// and hang up, and now and then drop off the network and come back. It
// produces the same bridge events as a real adapter (a snapshot on start,
// then incremental call and device events), so the whole of Lamplighter
// can be seen working with no PBX at all (lamplighter -demo).
package sim

import (
	"container/heap"
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
)

// Config is the `sim:` section of a PBX of kind sim.
type Config struct {
	// CallsPerMinute is the mean rate of new calls (Poisson arrivals).
	CallsPerMinute float64 `yaml:"calls_per_minute"`
	// RingTime and TalkTime are the longest a call rings and talks; each
	// call draws a time up to them.
	RingTime time.Duration `yaml:"ring_time"`
	TalkTime time.Duration `yaml:"talk_time"`
	// AnswerRate is the share of calls answered (0..1); HoldRate the share
	// of answered calls put on hold for a while; ExternalRate the share of
	// calls from outside numbers rather than between the phones.
	AnswerRate   float64 `yaml:"answer_rate"`
	HoldRate     float64 `yaml:"hold_rate"`
	ExternalRate float64 `yaml:"external_rate"`
	// OutageRate is how many times per hour one phone drops off the
	// network for a minute.
	OutageRate float64 `yaml:"outages_per_hour"`
	// Seed makes the run repeatable; 0 picks one at random.
	Seed uint64 `yaml:"seed"`
	// Directory is the simulated PBX's own list of extensions, as a real
	// PBX's endpoints or directory users: a phone (device SIM/<extension>)
	// each, which the PBX's `discover` reads.
	Directory []Extension `yaml:"directory"`
}

// Extension is one entry of the simulated PBX's directory.
type Extension struct {
	Extension string   `yaml:"extension"`
	Name      string   `yaml:"name"`
	Groups    []string `yaml:"groups"`
}

// Device is the device of a directory entry.
func (e Extension) Device() string { return "SIM/" + e.Extension }

// Defaults fills unset fields with lively demo values.
func (c *Config) Defaults() {
	if c.CallsPerMinute == 0 {
		c.CallsPerMinute = 12
	}
	if c.RingTime == 0 {
		c.RingTime = 8 * time.Second
	}
	if c.TalkTime == 0 {
		c.TalkTime = 30 * time.Second
	}
	if c.AnswerRate == 0 {
		c.AnswerRate = 0.8
	}
	if c.HoldRate == 0 {
		c.HoldRate = 0.3
	}
	if c.ExternalRate == 0 {
		c.ExternalRate = 0.3
	}
	if c.OutageRate == 0 {
		c.OutageRate = 2
	}
}

// Validate checks the section.
func (c *Config) Validate() []adapters.ConfigError {
	var errs []adapters.ConfigError
	if c.CallsPerMinute < 0 || c.CallsPerMinute > 60000 {
		errs = append(errs, adapters.ConfigError{Key: "calls_per_minute", Msg: "must be between 0 and 60000"})
	}
	for key, v := range map[string]float64{"answer_rate": c.AnswerRate, "hold_rate": c.HoldRate, "external_rate": c.ExternalRate} {
		if v < 0 || v > 1 {
			errs = append(errs, adapters.ConfigError{Key: key, Msg: "must be between 0 and 1"})
		}
	}
	if c.RingTime < 0 || c.TalkTime < 0 {
		errs = append(errs, adapters.ConfigError{Key: "ring_time", Msg: "durations must not be negative"})
	}
	if c.OutageRate < 0 {
		errs = append(errs, adapters.ConfigError{Key: "outages_per_hour", Msg: "must not be negative"})
	}
	seen := map[string]bool{}
	for _, e := range c.Directory {
		switch {
		case e.Extension == "" || strings.ContainsAny(e.Extension, " @:;<>\"?"):
			errs = append(errs, adapters.ConfigError{Key: "directory", Msg: fmt.Sprintf("bad extension %q", e.Extension)})
		case seen[e.Extension]:
			errs = append(errs, adapters.ConfigError{Key: "directory", Msg: fmt.Sprintf("extension %q listed twice", e.Extension)})
		}
		seen[e.Extension] = true
	}
	return errs
}

// Phone is one simulated device with the extension it dials as.
type Phone struct {
	Device    string // device name, e.g. "SIM/100"
	Extension string // its number, e.g. "100"
	Name      string // caller name shown to others
}

// Sim is the simulation itself, driven by Step. It is not safe for
// concurrent use; Adapter runs it on one goroutine.
type Sim struct {
	name   string
	cfg    Config
	phones []Phone
	rng    *rand.Rand
	queue  actionQueue
	busy   map[string]bool // device → in a call
	down   map[string]bool // device → unreachable
	seq    uint64
	events []bridge.Event
}

// NewSim returns a simulation of the given phones for the PBX source name.
func NewSim(name string, cfg Config, phones []Phone) *Sim {
	cfg.Defaults()
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	return &Sim{
		name: name, cfg: cfg, phones: phones,
		rng:  rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		busy: map[string]bool{}, down: map[string]bool{},
	}
}

// Start returns the initial snapshot (every phone idle) and schedules the
// first call and outage.
func (s *Sim) Start(now time.Time) bridge.Snapshot {
	snap := bridge.Snapshot{Source: s.name, Devices: map[string]bridge.DeviceState{}}
	for _, p := range s.phones {
		snap.Devices[p.Device] = bridge.DeviceIdle
	}
	s.scheduleCall(now)
	s.scheduleOutage(now)
	return snap
}

// Step runs every action due at or before now and returns the events they
// produced, and when the next action is due.
func (s *Sim) Step(now time.Time) ([]bridge.Event, time.Time) {
	s.events = nil
	for s.queue.Len() > 0 && !s.queue[0].at.After(now) {
		a := heap.Pop(&s.queue).(*action)
		a.run(a.at)
	}
	next := time.Time{}
	if s.queue.Len() > 0 {
		next = s.queue[0].at
	}
	return s.events, next
}

func (s *Sim) at(t time.Time, f func(time.Time)) { heap.Push(&s.queue, &action{at: t, run: f}) }

func (s *Sim) emit(e bridge.Event) { s.events = append(s.events, e) }

// expDelay draws an exponential inter-arrival time for a rate per minute.
func (s *Sim) expDelay(perMinute float64) time.Duration {
	if perMinute <= 0 {
		return math.MaxInt64 / 4
	}
	return time.Duration(s.rng.ExpFloat64() / perMinute * float64(time.Minute))
}

// upTo draws a duration between a quarter of max and max.
func (s *Sim) upTo(max time.Duration) time.Duration {
	return max/4 + time.Duration(s.rng.Float64()*float64(max*3/4))
}

func (s *Sim) scheduleCall(now time.Time) {
	if s.cfg.CallsPerMinute <= 0 {
		return
	}
	s.at(now.Add(s.expDelay(s.cfg.CallsPerMinute)), func(t time.Time) {
		s.startCall(t)
		s.scheduleCall(t)
	})
}

func (s *Sim) scheduleOutage(now time.Time) {
	if s.cfg.OutageRate <= 0 || len(s.phones) == 0 {
		return
	}
	s.at(now.Add(s.expDelay(s.cfg.OutageRate/60)), func(t time.Time) {
		p := s.phones[s.rng.IntN(len(s.phones))]
		if !s.busy[p.Device] && !s.down[p.Device] {
			s.down[p.Device] = true
			s.emit(bridge.DeviceStateChanged{Source: s.name, Device: p.Device, State: bridge.DeviceUnavailable})
			s.at(t.Add(time.Minute), func(time.Time) {
				delete(s.down, p.Device)
				s.emit(bridge.DeviceStateChanged{Source: s.name, Device: p.Device, State: bridge.DeviceIdle})
			})
		}
		s.scheduleOutage(t)
	})
}

// free returns a phone that is reachable and not in a call, and does not
// belong to the extension notExt (nobody calls their own other phone).
func (s *Sim) free(notExt string) (Phone, bool) {
	var cands []Phone
	for _, p := range s.phones {
		if (notExt == "" || p.Extension != notExt) && !s.busy[p.Device] && !s.down[p.Device] {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		return Phone{}, false
	}
	return cands[s.rng.IntN(len(cands))], true
}

var outsideCallers = []bridge.Party{
	{Number: "+4930901820", Name: "Berlin Office"},
	{Number: "+14155550123", Name: "Acme Corp"},
	{Number: "+442079460000", Name: "Dr. O'Brien & Partners"},
	{Number: "+61290000000"},
	{Number: "anonymous", Name: "Anonymous"},
}

// leg is one simulated call leg.
type leg struct {
	call bridge.Call
}

func (s *Sim) update(l *leg) { s.emit(bridge.CallUpdated{Source: s.name, Call: l.call}) }

func (s *Sim) startCall(now time.Time) {
	callee, ok := s.free("")
	if !ok {
		return
	}
	s.seq++
	n := s.seq
	var caller *leg
	remote := outsideCallers[s.rng.IntN(len(outsideCallers))]
	if s.rng.Float64() >= s.cfg.ExternalRate {
		if from, ok := s.free(callee.Extension); ok {
			caller = &leg{call: bridge.Call{
				ID: fmt.Sprintf("sim-%d-a", n), Device: from.Device, Direction: bridge.Outgoing,
				State: bridge.CallProceeding, Remote: bridge.Party{Number: callee.Extension, Name: callee.Name},
				CallID: fmt.Sprintf("sim%d-a@lamplighter.invalid", n), LocalTag: s.tag(), RemoteTag: s.tag(), Started: now,
			}}
			remote = bridge.Party{Number: from.Extension, Name: from.Name}
			s.busy[from.Device] = true
			s.update(caller)
		}
	}
	callee2 := &leg{call: bridge.Call{
		ID: fmt.Sprintf("sim-%d-b", n), Device: callee.Device, Direction: bridge.Incoming,
		State: bridge.CallEarly, Remote: remote,
		CallID: fmt.Sprintf("sim%d-b@lamplighter.invalid", n), LocalTag: s.tag(), RemoteTag: s.tag(), Started: now,
	}}
	s.busy[callee.Device] = true
	s.update(callee2)
	if caller != nil {
		caller.call.State = bridge.CallEarly
		s.update(caller)
	}
	legs := []*leg{callee2}
	if caller != nil {
		legs = append(legs, caller)
	}
	ring := s.upTo(s.cfg.RingTime)
	if s.rng.Float64() >= s.cfg.AnswerRate {
		s.at(now.Add(ring), func(time.Time) { s.hangup(legs) })
		return
	}
	s.at(now.Add(ring), func(t time.Time) {
		for _, l := range legs {
			l.call.State, l.call.Answered = bridge.CallConfirmed, t
			s.update(l)
		}
		talk := s.upTo(s.cfg.TalkTime)
		if s.rng.Float64() < s.cfg.HoldRate {
			holder := legs[s.rng.IntN(len(legs))]
			s.at(t.Add(talk/3), func(time.Time) { holder.call.Held = true; s.update(holder) })
			s.at(t.Add(2*talk/3), func(time.Time) { holder.call.Held = false; s.update(holder) })
		}
		s.at(t.Add(talk), func(time.Time) { s.hangup(legs) })
	})
}

func (s *Sim) hangup(legs []*leg) {
	for _, l := range legs {
		delete(s.busy, l.call.Device)
		s.emit(bridge.CallEnded{Source: s.name, CallID: l.call.ID})
	}
}

func (s *Sim) tag() string { return fmt.Sprintf("%08x", s.rng.Uint32()) }

// action is a scheduled step of the simulation.
type action struct {
	at  time.Time
	run func(time.Time)
	idx int
}

type actionQueue []*action

func (q actionQueue) Len() int           { return len(q) }
func (q actionQueue) Less(i, j int) bool { return q[i].at.Before(q[j].at) }
func (q actionQueue) Swap(i, j int)      { q[i], q[j] = q[j], q[i] }
func (q *actionQueue) Push(x any)        { *q = append(*q, x.(*action)) }
func (q *actionQueue) Pop() any {
	old := *q
	a := old[len(old)-1]
	*q = old[:len(old)-1]
	return a
}

// Adapter runs a Sim in real time as an adapters.Adapter.
type Adapter struct {
	name   string
	cfg    Config
	phones []Phone
	log    *slog.Logger

	mu     sync.Mutex
	status adapters.Status
	events atomic.Uint64
}

// New returns the demo PBX adapter for the given phones and those of its
// own directory (cfg.Directory).
func New(conn adapters.Connection, cfg Config, phones []Phone, log *slog.Logger) *Adapter {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	phones = slices.Clone(phones)
	for _, e := range cfg.Directory {
		if !slices.ContainsFunc(phones, func(p Phone) bool { return p.Device == e.Device() }) {
			phones = append(phones, Phone{Device: e.Device(), Extension: e.Extension, Name: e.Name})
		}
	}
	return &Adapter{name: conn.Name, cfg: cfg, phones: phones, log: log.With("pbx", conn.Name, "kind", "sim")}
}

var _ adapters.Discoverer = (*Adapter)(nil)

// Discover implements adapters.Discoverer: the simulated PBX's directory.
func (a *Adapter) Discover(context.Context) ([]adapters.DiscoveredUser, error) {
	out := make([]adapters.DiscoveredUser, 0, len(a.cfg.Directory))
	for _, e := range a.cfg.Directory {
		out = append(out, adapters.DiscoveredUser{PBX: a.name, Extension: e.Extension, Name: e.Name,
			Device: e.Device(), Groups: slices.Clone(e.Groups)})
	}
	return out, nil
}

// Name implements adapters.Adapter.
func (a *Adapter) Name() string { return a.name }

// Status implements adapters.Adapter.
func (a *Adapter) Status() adapters.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.status
	st.Events = a.events.Load()
	return st
}

// Run implements adapters.Adapter: it delivers the snapshot, then the
// simulation's events as they fall due, until ctx ends.
func (a *Adapter) Run(ctx context.Context, sink bridge.Sink) error {
	s := NewSim(a.name, a.cfg, a.phones)
	now := time.Now()
	sink.Apply(s.Start(now))
	a.mu.Lock()
	a.status = adapters.Status{Connected: true, Synchronised: true, Since: now}
	a.mu.Unlock()
	a.log.Info("demo PBX running", "phones", len(a.phones), "calls_per_minute", s.cfg.CallsPerMinute)
	defer func() {
		a.mu.Lock()
		a.status.Connected, a.status.Synchronised = false, false
		a.mu.Unlock()
	}()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		evs, next := s.Step(time.Now())
		for _, e := range evs {
			sink.Apply(e)
		}
		a.events.Add(uint64(len(evs)))
		if next.IsZero() {
			next = time.Now().Add(time.Minute)
		}
		timer.Reset(time.Until(next))
	}
}
