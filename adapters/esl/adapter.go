package esl

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/percipia/eslgo"
	"github.com/percipia/eslgo/command"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
)

// subscribed are the events Lamplighter asks for. PRESENCE_IN is left
// out: in the recordings each one repeats a channel event or a
// registration that is subscribed anyway. lamplighter::sync is the mark
// a resync fires to learn where the event stream stands.
var subscribed = []string{
	"CHANNEL_CREATE", "CHANNEL_CALLSTATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE",
	"CHANNEL_HOLD", "CHANNEL_UNHOLD", "CHANNEL_HANGUP_COMPLETE", "HEARTBEAT",
	"CUSTOM", "sofia::register", "sofia::unregister", "sofia::expire", syncSubclass,
}

const syncSubclass = "lamplighter::sync"

// Adapter follows one FreeSWITCH over an inbound event socket, using
// eslgo's connection for framing and login but none of its ordering:
// eslgo hands each event to its own goroutine, so events are queued as
// they come and applied by Event-Sequence per channel; a command that
// times out ends the connection (its late reply would go to the next
// command); a silent or wedged connection (eslgo stops reading, without a
// word, on a truncated frame or an unknown content type) is found by the
// heartbeat and ping checks and replaced.
type Adapter struct {
	conn    adapters.Connection
	cfg     Config
	devices func() []string
	log     *slog.Logger

	mu      sync.Mutex
	status  adapters.Status
	events  atomic.Uint64
	skipped atomic.Uint64
}

// New returns an adapter for the FreeSWITCH at conn.Address (host:port of
// its event socket, usually 8021). devices lists the device names users
// have on this PBX; it is read at every resync, so reloads are followed.
func New(conn adapters.Connection, cfg Config, devices func() []string, log *slog.Logger) (*Adapter, error) {
	cfg.Defaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if conn.Address == "" || strings.Contains(conn.Address, "://") || !strings.Contains(conn.Address, ":") {
		return nil, fmt.Errorf("esl address %q: want host:port", conn.Address)
	}
	return &Adapter{conn: conn, cfg: cfg, devices: devices, log: log.With("pbx", conn.Name, "kind", "esl")}, nil
}

// Name implements adapters.Adapter.
func (a *Adapter) Name() string { return a.conn.Name }

// Status implements adapters.Adapter.
func (a *Adapter) Status() adapters.Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	st := a.status
	st.Events, st.Skipped = a.events.Load(), a.skipped.Load()
	return st
}

func (a *Adapter) setStatus(f func(*adapters.Status)) {
	a.mu.Lock()
	defer a.mu.Unlock()
	f(&a.status)
}

// Run implements adapters.Adapter.
func (a *Adapter) Run(ctx context.Context, sink bridge.Sink) error {
	adapters.Backoff{Min: a.cfg.ReconnectMin, Max: a.cfg.ReconnectMax}.Reconnect(ctx, a.log,
		func(ctx context.Context) error { return a.session(ctx, sink) },
		func(err error, wait time.Duration) {
			a.setStatus(func(s *adapters.Status) {
				s.Connected, s.Synchronised, s.Since = false, false, time.Now()
				s.LastError = err.Error()
				s.Reconnects++
			})
			a.log.Warn("freeswitch connection lost; retrying", "err", err, "in", wait.Round(time.Millisecond))
		})
	return nil
}

// link is one live connection: eslgo's Conn with commands serialised.
type link struct {
	conn    *eslgo.Conn
	timeout time.Duration
	mu      sync.Mutex
}

// send runs one command within the timeout. Any failure is final for the
// connection.
func (l *link) send(ctx context.Context, cmd command.Command) (*eslgo.RawResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	res, err := l.conn.SendCommand(ctx, cmd)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", strings.Fields(cmd.BuildMessage())[0], err)
	}
	return res, nil
}

// api runs an api command and returns its body; -ERR replies are errors.
func (l *link) api(ctx context.Context, cmd, args string) ([]byte, error) {
	res, err := l.send(ctx, command.API{Command: cmd, Arguments: args})
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(string(res.Body), "-ERR") {
		return nil, fmt.Errorf("api %s: %s", cmd, strings.TrimSpace(string(res.Body)))
	}
	return res.Body, nil
}

// dial connects and logs in within the command timeout. eslgo's Dial has
// no timeout of its own, so it runs aside and is abandoned (and closed
// when it returns) if it takes too long.
func (a *Adapter) dial(ctx context.Context, closed func()) (*eslgo.Conn, error) {
	opts := eslgo.InboundOptions{
		Options:      eslgo.Options{Context: ctx, Logger: eslLogger{a.log}, ExitTimeout: time.Second},
		Network:      "tcp",
		Password:     a.conn.Password,
		AuthTimeout:  a.cfg.CommandTimeout,
		OnDisconnect: closed,
	}
	type result struct {
		c   *eslgo.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := opts.Dial(a.conn.Address)
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("cannot log in to the event socket: %w", r.err)
		}
		return r.c, nil
	case <-time.After(a.cfg.CommandTimeout + time.Second):
		go func() {
			if r := <-done; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, errors.New("the event socket did not answer in time")
	case <-ctx.Done():
		go func() {
			if r := <-done; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
}

// session is one connection: log in, subscribe, fire a sync mark, read
// the state, deliver it as a snapshot, then apply every newer event.
func (a *Adapter) session(ctx context.Context, sink bridge.Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lost := make(chan struct{})
	var lostOnce sync.Once
	conn, err := a.dial(ctx, func() { lostOnce.Do(func() { close(lost) }) })
	if err != nil {
		return err
	}
	defer conn.Close()
	l := &link{conn: conn, timeout: a.cfg.CommandTimeout}
	q := adapters.NewQueue[event]()
	conn.RegisterEventListener(eslgo.EventListenAll, func(ev *eslgo.Event) { q.Push(event(ev.Headers)) })
	a.setStatus(func(s *adapters.Status) { s.Connected, s.Since, s.LastError = true, time.Now(), "" })
	a.log.Info("connected to freeswitch", "address", a.conn.Address)

	res, err := l.send(ctx, command.Event{Format: "plain", Listen: subscribed})
	if err != nil {
		return err
	}
	if !res.IsOk() {
		return fmt.Errorf("event subscription refused: %s", res.GetReply())
	}

	// The sync mark: every event after it is newer than the state read
	// below, every event before it older. Its Event-Sequence splits them.
	token := newToken()
	mark := &command.SendEvent{Name: "CUSTOM", Headers: textproto.MIMEHeader{
		"Event-Subclass":   {syncSubclass},
		"Lamplighter-Sync": {token},
	}}
	if res, err = l.send(ctx, mark); err != nil {
		return err
	} else if !res.IsOk() {
		return fmt.Errorf("sendevent refused: %s", res.GetReply())
	}
	chanBody, err := l.api(ctx, "show", "channels as json")
	if err != nil {
		return err
	}
	regBody, err := l.api(ctx, "show", "registrations as json")
	if err != nil {
		return err
	}
	chans, err := showRows[channelRow](chanBody)
	if err != nil {
		return fmt.Errorf("show channels: %w", err)
	}
	regs, err := showRows[registrationRow](regBody)
	if err != nil {
		return fmt.Errorf("show registrations: %w", err)
	}

	// Wait for the mark, keeping what comes meanwhile.
	var early []event
	var markSeq uint64
	deadline := time.After(a.cfg.CommandTimeout)
	for markSeq == 0 {
		for {
			e, ok := q.Pop()
			if !ok {
				break
			}
			if e.get("Event-Subclass") == syncSubclass && e.get("Lamplighter-Sync") == token {
				markSeq = e.seq()
				continue
			}
			early = append(early, e)
		}
		if markSeq != 0 {
			break
		}
		select {
		case <-q.Wake():
		case <-deadline:
			return errors.New("the sync mark never came back: is CUSTOM lamplighter::sync filtered?")
		case <-lost:
			return errors.New("freeswitch closed the connection")
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	m := newMapper(a.conn.Name, nil)
	sink.Apply(m.snapshot(chans, regs, a.devices()))
	a.setStatus(func(s *adapters.Status) { s.Synchronised = true })
	a.log.Info("synchronised with freeswitch", "channels", len(chans), "registrations", len(regs))
	lastHeard := time.Now()
	for _, e := range early {
		a.apply(m, e, sink, markSeq)
	}

	dead := make(chan error, 1)
	go func() { dead <- a.ping(ctx, l) }()
	check := time.NewTicker(min(a.cfg.HeartbeatTimeout/4, time.Second))
	defer check.Stop()
	for {
		for {
			e, ok := q.Pop()
			if !ok {
				break
			}
			lastHeard = time.Now()
			a.apply(m, e, sink, markSeq)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-lost:
			return errors.New("freeswitch closed the connection")
		case err := <-dead:
			return err
		case <-q.Wake():
		case <-check.C:
			if silent := time.Since(lastHeard); silent > a.cfg.HeartbeatTimeout {
				return fmt.Errorf("no event or heartbeat for %s", silent.Round(time.Millisecond))
			}
			for _, e := range m.expire() {
				sink.Apply(e)
			}
		}
	}
}

// apply maps one event into the sink, counting it. Events from before
// the sync mark are already in the snapshot.
func (a *Adapter) apply(m *mapper, e event, sink bridge.Sink, markSeq uint64) {
	a.events.Add(1)
	if e.get("Event-Name") == "" {
		a.skipped.Add(1) // eslgo could not parse it
		return
	}
	if s := e.seq(); s != 0 && s < markSeq {
		return
	}
	for _, out := range m.event(e) {
		sink.Apply(out)
	}
}

// ping checks every PingInterval that FreeSWITCH answers a command.
func (a *Adapter) ping(ctx context.Context, l *link) error {
	t := time.NewTicker(a.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if _, err := l.api(ctx, "status", ""); err != nil {
				return fmt.Errorf("freeswitch stopped answering: %w", err)
			}
		}
	}
}

func newToken() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// eslLogger sends eslgo's own messages to slog at debug level: the
// adapter reports what matters itself.
type eslLogger struct{ log *slog.Logger }

func (l eslLogger) Debug(f string, args ...any) {
	l.log.Debug("eslgo: " + strings.TrimSpace(fmt.Sprintf(f, args...)))
}
func (l eslLogger) Info(f string, args ...any) {
	l.log.Debug("eslgo: " + strings.TrimSpace(fmt.Sprintf(f, args...)))
}
func (l eslLogger) Warn(f string, args ...any) {
	l.log.Debug("eslgo: " + strings.TrimSpace(fmt.Sprintf(f, args...)))
}
func (l eslLogger) Error(f string, args ...any) {
	l.log.Debug("eslgo: " + strings.TrimSpace(fmt.Sprintf(f, args...)))
}
