package esl

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/percipia/eslgo/command"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
)

// subscribed are the events Lamplighter asks for. lamplighter::sync is
// the mark a resync fires to learn where the event stream stands.
var subscribed = []string{
	"CHANNEL_CREATE", "CHANNEL_CALLSTATE", "CHANNEL_ANSWER",
	// Who a leg is really with: the bridge and its updates follow a ring
	// group's answer, an intercept, a transfer and a parked call's
	// retrieval, which the caller and callee fields do not.
	"CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE", "CALL_UPDATE",
	// A callee's leg learns its SIP Call-ID and tags from the 180 or 183,
	// which FreeSWITCH reports only as progress: without these, a ringing
	// phone's dialog has nothing to pick up with (Replaces) until answer.
	"CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA",
	"CHANNEL_HOLD", "CHANNEL_UNHOLD", "CHANNEL_HANGUP_COMPLETE", "HEARTBEAT",
	// Feature keys' states (FusionPBX's dnd+, flow+, agent+ and
	// voicemail+): the rest of PRESENCE_IN repeats channel and
	// registration events, and is dropped at once.
	"PRESENCE_IN",
	// Last: every name after CUSTOM is a subclass.
	"CUSTOM", "sofia::register", "sofia::unregister", "sofia::expire", "valet_parking::info", syncSubclass,
}

const syncSubclass = "lamplighter::sync"

// Adapter follows one FreeSWITCH over an inbound event socket. It owns
// the connection and its read loop and uses eslgo for the commands only:
// eslgo v1.5.2's Conn hands each event to its own goroutine (order lost),
// gives a reply that came after its command's deadline to the next
// command, stops reading without a word on a truncated frame or an
// unknown content type, and reads its channel map unlocked while Close
// deletes from it (a data race that can crash the process). Here frames
// are read in order into an unbounded queue; commands are serialised and a
// timeout ends the connection; anything unframeable ends it too; a silent
// FreeSWITCH is found by the heartbeat and ping checks. Events are still
// applied by Event-Sequence per channel, since FreeSWITCH's own dispatch
// threads can reorder them.
type Adapter struct {
	conn    adapters.Connection
	cfg     Config
	devices func() []string
	log     *slog.Logger
	added   chan struct{} // the directory gave the users more devices here

	adapters.Tracker
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
	return &Adapter{conn: conn, cfg: cfg, devices: devices, log: log.With("pbx", conn.Name, "kind", "esl"),
		added: make(chan struct{}, 1)}, nil
}

// Name implements adapters.Adapter.
func (a *Adapter) Name() string { return a.conn.Name }

// Run implements adapters.Adapter.
func (a *Adapter) Run(ctx context.Context, sink bridge.Sink) error {
	adapters.Backoff{Min: a.cfg.ReconnectMin, Max: a.cfg.ReconnectMax, DownAfter: a.cfg.DownAfter,
		Sink: sink, Source: a.conn.Name}.Reconnect(ctx, &a.Tracker, a.log,
		func(ctx context.Context) error { return a.session(ctx, sink) })
	return nil
}

// probe asks for each feature key's state as FreeSWITCH does when a
// phone subscribes to one: a PRESENCE_PROBE to proto+user@domain, which
// FusionPBX's scripts answer with a PRESENCE_IN. It runs beside the
// session's loop (one command per key: thousands after a connect), and
// stops at the first failure: a connection that refuses commands is
// ended by the loop's own checks.
func (a *Adapter) probe(ctx context.Context, l *link, features []string) {
	for _, dev := range features {
		proto, _, _ := strings.Cut(dev, "+")
		_, domain, _ := strings.Cut(dev, "@")
		ev := &command.SendEvent{Name: "PRESENCE_PROBE", Headers: textproto.MIMEHeader{
			"proto": {proto}, "login": {"lamplighter"}, "from": {"lamplighter@" + domain}, "to": {dev},
			"event_type": {"presence"}, "alt_event_type": {"dialog"}, "proto-specific-event-name": {"dialog"},
			"expires": {"3600"},
		}}
		res, err := l.send(ctx, ev)
		if err == nil && !res.ok() {
			err = fmt.Errorf("refused: %s", res.reply())
		}
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("cannot ask for the feature keys' states", "err", err, "keys", len(features))
			}
			return
		}
	}
}

// link is one live event-socket connection. Commands are serialised:
// one is outstanding at a time and its reply is the next command/reply or
// api/response frame; a command that times out ends the connection, so a
// late reply can never be taken for the next command's.
type link struct {
	conn    net.Conn
	timeout time.Duration
	mu      sync.Mutex
	replies chan *rawFrame
}

// rawFrame is one frame: its headers and body.
type rawFrame struct {
	header textproto.MIMEHeader
	body   []byte
}

func (f *rawFrame) reply() string {
	if v := f.header.Get("Reply-Text"); v != "" {
		return v
	}
	return strings.TrimSpace(string(f.body))
}

func (f *rawFrame) ok() bool { return strings.HasPrefix(f.reply(), "+OK") }

// maxFrame bounds a frame's body: show channels on a busy switch is large,
// but not this large.
const maxFrame = 64 << 20

// readFrame reads one frame: headers, a blank line, Content-Length bytes.
func readFrame(r *bufio.Reader) (*rawFrame, error) {
	h, err := textproto.NewReader(r).ReadMIMEHeader()
	if err != nil {
		if len(h) == 0 {
			return nil, err
		}
		return nil, fmt.Errorf("bad frame header: %w", err)
	}
	f := &rawFrame{header: h}
	if cl := h.Get("Content-Length"); cl != "" {
		n, err := strconv.Atoi(cl)
		if err != nil || n < 0 || n > maxFrame {
			return nil, fmt.Errorf("bad Content-Length %q", cl)
		}
		f.body = make([]byte, n)
		if _, err := io.ReadFull(r, f.body); err != nil {
			return nil, fmt.Errorf("truncated frame: %w", err)
		}
	}
	return f, nil
}

// send runs one command (built by eslgo's command types) within the
// timeout. Any failure is final for the connection.
func (l *link) send(ctx context.Context, cmd command.Command) (*rawFrame, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	name := strings.Fields(cmd.BuildMessage())[0]
	l.conn.SetWriteDeadline(time.Now().Add(l.timeout))
	if _, err := io.WriteString(l.conn, cmd.BuildMessage()+"\n\n"); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	t := time.NewTimer(l.timeout)
	defer t.Stop()
	select {
	case f, ok := <-l.replies:
		if !ok {
			return nil, fmt.Errorf("%s: connection closed", name)
		}
		return f, nil
	case <-t.C:
		return nil, fmt.Errorf("%s: no reply within %s", name, l.timeout)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// api runs an api command and returns its body; -ERR replies are errors.
func (l *link) api(ctx context.Context, cmd, args string) ([]byte, error) {
	f, err := l.send(ctx, command.API{Command: cmd, Arguments: args})
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(string(f.body), "-ERR") {
		return nil, fmt.Errorf("api %s: %s", cmd, strings.TrimSpace(string(f.body)))
	}
	return f.body, nil
}

// readSIPIDs reads the SIP Call-ID and tags of the sofia legs of
// configured devices in a snapshot (`uuid_dump`, one command each):
// `show channels` has none, and without them a call that was ringing
// when Lamplighter (re)connected could not be picked up, and its lamp
// would show a call without ids, until the leg's next event. A leg gone
// meanwhile is skipped; only a broken connection is an error.
func (a *Adapter) readSIPIDs(ctx context.Context, l *link, m *mapper, chans []channelRow) error {
	for i := range chans {
		r := &chans[i]
		if !strings.HasPrefix(r.Name, "sofia/") || r.UUID == "" || m.channelDevice(r.PresenceID, r.Name) == "" {
			continue
		}
		f, err := l.send(ctx, command.API{Command: "uuid_dump", Arguments: r.UUID + " json"})
		if err != nil {
			return err // final for the connection, as any failed command
		}
		var vars map[string]any // a variable with several values is an array
		if json.Unmarshal(f.body, &vars) != nil {
			continue // -ERR: the leg is gone
		}
		r.sip = textproto.MIMEHeader{}
		for _, k := range []string{"variable_sip_call_id", "variable_sip_from_tag", "variable_sip_to_tag", "Call-Direction"} {
			if v, ok := vars[k].(string); ok && v != "" {
				r.sip.Set(k, v)
			}
		}
	}
	return nil
}

// readLoop reads frames until the connection fails: events into q,
// replies to the waiting command. Anything it cannot frame, a content
// type it does not know, a reply nobody waits for and FreeSWITCH's
// disconnect notice end the connection (and so lead to a resync).
func (l *link) readLoop(r *bufio.Reader, q *adapters.Queue[event]) error {
	defer close(l.replies)
	// One reader over each event's body in turn: a new one per event was
	// 4 KiB of garbage for every PBX event.
	var body bytes.Reader
	bodyReader := bufio.NewReader(&body)
	for {
		f, err := readFrame(r)
		if err != nil {
			return err
		}
		switch ct := f.header.Get("Content-Type"); ct {
		case "text/event-plain":
			body.Reset(f.body)
			bodyReader.Reset(&body)
			h, err := textproto.NewReader(bodyReader).ReadMIMEHeader()
			if err != nil && len(h) == 0 {
				return fmt.Errorf("undecodable event: %w", err)
			}
			q.Push(event(h))
		case "command/reply", "api/response":
			select {
			case l.replies <- f:
			default:
				return errors.New("a reply nobody asked for")
			}
		case "auth/request":
			return errors.New("freeswitch asked to log in again")
		case "text/disconnect-notice":
			return errors.New("freeswitch closed the connection")
		default:
			return fmt.Errorf("unknown content type %q", ct)
		}
	}
}

// dial connects and logs in (auth/request, auth, +OK) within the command
// timeout.
func (a *Adapter) dial(ctx context.Context) (net.Conn, *bufio.Reader, error) {
	d := net.Dialer{Timeout: a.cfg.CommandTimeout}
	c, err := d.DialContext(ctx, "tcp", a.conn.Address)
	if err != nil {
		return nil, nil, err
	}
	c.SetDeadline(time.Now().Add(a.cfg.CommandTimeout))
	r := bufio.NewReader(c)
	fail := func(err error) (net.Conn, *bufio.Reader, error) {
		c.Close()
		return nil, nil, fmt.Errorf("cannot log in to the event socket: %w", err)
	}
	f, err := readFrame(r)
	if err != nil {
		return fail(err)
	}
	if ct := f.header.Get("Content-Type"); ct != "auth/request" {
		return fail(fmt.Errorf("expected auth/request, got %q", ct))
	}
	if _, err := io.WriteString(c, command.Auth{Password: a.conn.Password}.BuildMessage()+"\n\n"); err != nil {
		return fail(err)
	}
	if f, err = readFrame(r); err != nil {
		return fail(err)
	}
	if !f.ok() {
		return fail(fmt.Errorf("%s (wrong password?)", f.reply()))
	}
	c.SetDeadline(time.Time{})
	return c, r, nil
}

// session is one connection: log in, subscribe, fire a sync mark, read
// the state, deliver it as a snapshot, then apply every newer event.
func (a *Adapter) session(ctx context.Context, sink bridge.Sink) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	conn, r, err := a.dial(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	go func() { <-ctx.Done(); conn.Close() }()
	l := &link{conn: conn, timeout: a.cfg.CommandTimeout, replies: make(chan *rawFrame, 1)}
	q := adapters.NewQueue[event]()
	readErr := make(chan error, 1)
	go func() { readErr <- l.readLoop(r, q) }()
	a.Connected()
	a.log.Info("connected to freeswitch", "address", a.conn.Address)

	res, err := l.send(ctx, command.Event{Format: "plain", Listen: subscribed})
	if err != nil {
		return err
	}
	if !res.ok() {
		return fmt.Errorf("event subscription refused: %s", res.reply())
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
	} else if !res.ok() {
		return fmt.Errorf("sendevent refused: %s", res.reply())
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
		case err := <-readErr:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	m := newMapper(a.conn.Name, a.devices())
	if err := a.readSIPIDs(ctx, l, m, chans); err != nil {
		return err
	}
	a.Synchronise(sink, m.snapshot(chans, regs, a.devices()))
	a.log.Info("synchronised with freeswitch", "channels", len(chans), "registrations", len(regs))
	go a.probe(ctx, l, m.features())
	lastHeard := time.Now()
	for _, e := range early {
		a.apply(m, e, sink, markSeq)
	}

	dead := make(chan error, 1)
	go func() { dead <- a.ping(ctx, l) }()
	learned := make(chan learning, 1)
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
		case err := <-readErr:
			for { // what arrived before the end still counts
				e, ok := q.Pop()
				if !ok {
					break
				}
				a.apply(m, e, sink, markSeq)
			}
			return err
		case err := <-dead:
			return err
		case <-q.Wake():
		case <-a.added:
			// The new devices' registrations are read beside the loop
			// (ten thousand rows take a while), the events go on.
			if fresh := m.beginLearn(a.devices()); len(fresh) > 0 {
				go a.readRegistrations(ctx, l, fresh, learned)
			}
		case r := <-learned:
			if r.err != nil {
				return r.err
			}
			a.learnt(ctx, l, m, sink, r)
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

var _ adapters.DeviceLearner = (*Adapter)(nil)

// DevicesAdded implements adapters.DeviceLearner.
func (a *Adapter) DevicesAdded() {
	select {
	case a.added <- struct{}{}:
	default:
	}
}

// learning is what readRegistrations read for devices being learnt.
type learning struct {
	fresh []string
	regs  []registrationRow
	err   error
}

// readRegistrations reads `show registrations` for the devices being
// learnt and hands the rows to the session's loop.
func (a *Adapter) readRegistrations(ctx context.Context, l *link, fresh []string, out chan<- learning) {
	r := learning{fresh: fresh}
	body, err := l.api(ctx, "show", "registrations as json")
	if err == nil {
		r.regs, err = showRows[registrationRow](body)
	}
	r.err = err
	select {
	case out <- r:
	case <-ctx.Done():
	}
}

// learnt applies what was read for new devices, and probes the new
// feature keys. Called from the session's loop, between two events.
func (a *Adapter) learnt(ctx context.Context, l *link, m *mapper, sink bridge.Sink, r learning) {
	for _, e := range m.finishLearn(r.fresh, r.regs) {
		sink.Apply(e)
	}
	var features []string
	for _, d := range r.fresh {
		if isFeature(d) {
			features = append(features, d)
		}
	}
	a.log.Info("devices added to the directory followed", "devices", len(r.fresh))
	go a.probe(ctx, l, features)
}

// apply maps one event into the sink, counting it. Events from before
// the sync mark are already in the snapshot.
func (a *Adapter) apply(m *mapper, e event, sink bridge.Sink, markSeq uint64) {
	a.Event()
	if e.get("Event-Name") == "" {
		a.Skip() // eslgo could not parse it
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
