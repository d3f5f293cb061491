package ari

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/CyCoreSystems/ari/v5"
	"golang.org/x/net/websocket"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/bridge"
)

// Adapter follows one Asterisk. It owns its websocket read loop (the
// library's would pass nil for unknown event types, drop events past a
// 100-event buffer, block forever in Connect and reconnect silently) and
// uses the library's types and DecodeEvent, with its own REST client that
// has timeouts.
type Adapter struct {
	conn    adapters.Connection
	cfg     Config
	devices func() []string // the devices users have on this PBX
	log     *slog.Logger
	base    *url.URL
	client  *http.Client
	tlsConf *tls.Config
	// pingEvery is how often Asterisk must answer REST to count as alive.
	pingEvery time.Duration

	adapters.Tracker

	// The dnd mirror: the device state each mirror device should have,
	// and which of them Asterisk has not been told yet.
	mirrorMu    sync.Mutex
	mirror      map[string]string
	mirrorDirty map[string]bool
	mirrorWake  chan struct{}

	// The devices whose state the session has read (at its resync or
	// since), and the signal that the directory gave more.
	knownMu sync.Mutex
	known   map[string]bool
	added   chan struct{}

	// auths are the endpoints' auth object names as the last Discover
	// read them (by device), for SIPPasswords.
	authsMu sync.Mutex
	auths   map[string]string
}

// New returns an adapter for the Asterisk at conn.Address
// (http://host:8088 or https://…). devices lists the device names the
// directory gives this PBX; it is read at every resync, so a reload that
// adds a device is followed.
func New(conn adapters.Connection, cfg Config, devices func() []string, log *slog.Logger) (*Adapter, error) {
	cfg.Defaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	base, err := url.Parse(strings.TrimRight(conn.Address, "/"))
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, fmt.Errorf("ari address %q: want http(s)://host:port", conn.Address)
	}
	tlsConf := &tls.Config{InsecureSkipVerify: cfg.InsecureTLS, MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ari ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("ari ca_file %s: no certificates", cfg.CAFile)
		}
		tlsConf.RootCAs = pool
	}
	return &Adapter{
		conn: conn, cfg: cfg, devices: devices, base: base, tlsConf: tlsConf,
		log:       log.With("pbx", conn.Name, "kind", "ari"),
		pingEvery: 15 * time.Second,
		mirror:    map[string]string{}, mirrorDirty: map[string]bool{}, mirrorWake: make(chan struct{}, 1),
		added: make(chan struct{}, 1),
		client: &http.Client{
			Timeout:   cfg.RequestTimeout,
			Transport: &http.Transport{TLSClientConfig: tlsConf, MaxIdleConnsPerHost: 4},
		},
	}, nil
}

// Name implements adapters.Adapter.
func (a *Adapter) Name() string { return a.conn.Name }

// Run implements adapters.Adapter: connect, resync, follow events; on any
// failure wait (capped exponential backoff with jitter) and start over.
// An Asterisk that is down is retried for as long as ctx lasts.
func (a *Adapter) Run(ctx context.Context, sink bridge.Sink) error {
	adapters.Backoff{Min: a.cfg.ReconnectMin, Max: a.cfg.ReconnectMax, DownAfter: a.cfg.DownAfter,
		Sink: sink, Source: a.conn.Name}.Reconnect(ctx, &a.Tracker, a.log,
		func(ctx context.Context) error { return a.session(ctx, sink) })
	return nil
}

// session is one connection: websocket first (so that no event is lost),
// then the REST resync delivered as a snapshot, then every queued and
// later event in order. It returns why it ended.
func (a *Adapter) session(ctx context.Context, sink bridge.Sink) error {
	ws, err := a.dial(ctx)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var closeOnce sync.Once
	closeWS := func() { closeOnce.Do(func() { ws.Close() }) }
	defer closeWS()
	go func() { <-ctx.Done(); closeWS() }()

	q := adapters.NewQueue[[]byte]()
	readErr := make(chan error, 1)
	go func() { readErr <- a.readLoop(ws, q) }()
	a.Connected()
	a.log.Info("connected to asterisk", "url", a.base.Redacted())

	m := newMapper(a.conn.Name, &a.cfg)
	snap, err := a.resync(ctx, m)
	if err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	a.Synchronise(sink, snap)
	a.log.Info("synchronised with asterisk", "channels", len(snap.Calls), "devices", len(snap.Devices))

	// Liveness runs beside the event loop, so that a slow ping never
	// holds up the lamps; so does the dnd mirror, which writes everything
	// again after a connect (Asterisk may have restarted).
	dead := make(chan error, 2)
	go func() { dead <- a.watch(ctx) }()
	if a.cfg.DNDDevice != "" {
		a.markAllMirrorsDirty()
		go func() { dead <- a.writeMirrors(ctx) }()
	}
	for {
		for {
			frame, ok := q.Pop()
			if !ok {
				break
			}
			a.apply(m, frame, sink)
			for _, id := range m.takeTagsWanted() {
				go a.readTags(ctx, m.tagVars(), id, q)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-readErr:
			for { // what arrived before the end still counts
				frame, ok := q.Pop()
				if !ok {
					break
				}
				a.apply(m, frame, sink)
			}
			return err
		case <-q.Wake():
		case <-a.added:
			go a.learnDevices(ctx, q)
		case err := <-dead:
			if ctx.Err() == nil {
				return fmt.Errorf("asterisk stopped answering: %w", err)
			}
		}
	}
}

// apply decodes one frame and hands its events to the sink. Frames that
// do not decode (unknown event types included) are skipped and counted.
func (a *Adapter) apply(m *mapper, frame []byte, sink bridge.Sink) {
	if id, ok := bytes.CutPrefix(frame, tagsDone); ok {
		for _, e := range m.tagsRead(string(id)) {
			sink.Apply(e)
		}
		return
	}
	a.Event()
	ev, err := ari.DecodeEvent(frame)
	if err != nil || ev == nil {
		n := a.Skip()
		if n <= 10 || n%1000 == 0 {
			a.log.Debug("skipped an event Lamplighter cannot decode", "err", err, "skipped", n)
		}
		return
	}
	for _, e := range m.event(ev, frame) {
		sink.Apply(e)
	}
}

// tagsDone starts the frame readTags queues after a leg's tags: not ARI,
// so that the mapper learns in order that no more are coming.
var tagsDone = []byte("\x00lamplighter-tags-read:")

// readTags reads a ringing leg's SIP tags from Asterisk and queues them
// as the ChannelVarset events the dialplan would have sent, so that the
// mapper takes them in order with everything else. A tag Asterisk does
// not have (yet), or a channel gone, leaves the leg as it was.
func (a *Adapter) readTags(ctx context.Context, vars [][2]string, channelID string, q *adapters.Queue[[]byte]) {
	for _, v := range vars {
		var res struct {
			Value string `json:"value"`
		}
		path := "/channels/" + url.PathEscape(channelID) + "/variable?variable=" + url.QueryEscape(v[0])
		if err := a.get(ctx, path, &res); err != nil || res.Value == "" {
			if err != nil && !errors.Is(err, errNotFound) && ctx.Err() == nil {
				a.log.Debug("cannot read a ringing leg's SIP tag", "channel", channelID, "variable", v[0], "err", err)
			}
			continue
		}
		frame, err := json.Marshal(map[string]any{"type": "ChannelVarset", "variable": v[1], "value": res.Value,
			"channel": map[string]string{"id": channelID}, "timestamp": time.Now().Format("2006-01-02T15:04:05.000-0700")})
		if err == nil {
			q.Push(frame)
		}
	}
	q.Push(append(slices.Clip(tagsDone), channelID...))
}

var _ adapters.DeviceLearner = (*Adapter)(nil)

// DevicesAdded implements adapters.DeviceLearner.
func (a *Adapter) DevicesAdded() {
	select {
	case a.added <- struct{}{}:
	default:
	}
}

// learnDevices reads the state of the devices the directory gave since
// the session read them, and queues it as Asterisk's own
// DeviceStateChanged events: in order with the events around them.
// (Endpoint states and channels are read for every endpoint at the
// resync already; only device states are read per device.)
func (a *Adapter) learnDevices(ctx context.Context, q *adapters.Queue[[]byte]) {
	a.knownMu.Lock()
	var fresh []string
	for _, d := range a.devices() {
		if !a.known[d] {
			a.known[d] = true
			fresh = append(fresh, d)
		}
	}
	a.knownMu.Unlock()
	for _, name := range fresh {
		var ds ari.DeviceStateData
		if err := a.get(ctx, "/deviceStates/"+url.PathEscape(name), &ds); err != nil {
			if !errors.Is(err, errNotFound) && ctx.Err() == nil {
				a.log.Debug("cannot read a new device's state", "device", name, "err", err)
			}
			continue
		}
		frame, err := json.Marshal(map[string]any{"type": "DeviceStateChanged",
			"device_state": map[string]string{"name": name, "state": ds.State},
			"timestamp":    time.Now().Format("2006-01-02T15:04:05.000-0700")})
		if err == nil {
			q.Push(frame)
		}
	}
	if len(fresh) > 0 {
		a.log.Info("devices added to the directory followed", "devices", len(fresh))
	}
}

// readLoop reads websocket frames into q until the connection ends. It
// never waits for processing.
func (a *Adapter) readLoop(ws *websocket.Conn, q *adapters.Queue[[]byte]) error {
	for {
		var frame []byte
		if err := websocket.Message.Receive(ws, &frame); err != nil {
			return fmt.Errorf("websocket: %w", err)
		}
		q.Push(frame)
	}
}

func (a *Adapter) authHeader() string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(a.conn.Username+":"+a.conn.Password))
}

// dial opens the events websocket with subscribeAll, within the request
// timeout.
func (a *Adapter) dial(ctx context.Context) (*websocket.Conn, error) {
	u := *a.base
	u.Scheme = map[string]string{"http": "ws", "https": "wss"}[a.base.Scheme]
	u.Path = strings.TrimRight(u.Path, "/") + "/ari/events"
	u.RawQuery = url.Values{"app": {a.cfg.App}, "subscribeAll": {"true"}}.Encode()
	conf, err := websocket.NewConfig(u.String(), a.base.String())
	if err != nil {
		return nil, err
	}
	conf.Header.Set("Authorization", a.authHeader())
	conf.TlsConfig = a.tlsConf
	conf.Dialer = &net.Dialer{Timeout: a.cfg.RequestTimeout}
	dctx, cancel := context.WithTimeout(ctx, a.cfg.RequestTimeout)
	defer cancel()
	ws, err := conf.DialContext(dctx)
	if err != nil {
		return nil, fmt.Errorf("cannot open the events websocket: %w", err)
	}
	return ws, nil
}

// get does a REST GET and decodes the JSON answer into v (nil: discard
// it). A 404 returns errNotFound.
func (a *Adapter) get(ctx context.Context, path string, v any) error {
	return a.call(ctx, http.MethodGet, path, v)
}

// put does a REST PUT with no body.
func (a *Adapter) put(ctx context.Context, path string) error {
	return a.call(ctx, http.MethodPut, path, nil)
}

// call does one REST request within the client's timeout.
func (a *Adapter) call(ctx context.Context, method, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, method, a.base.String()+"/ari"+path, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", a.authHeader())
	res, err := a.client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	switch {
	case res.StatusCode == http.StatusNotFound:
		io.Copy(io.Discard, res.Body)
		return errNotFound
	case res.StatusCode/100 != 2:
		io.Copy(io.Discard, res.Body)
		return fmt.Errorf("%s %s: %s", method, path, res.Status)
	case v == nil:
		io.Copy(io.Discard, res.Body)
		return nil
	}
	return json.NewDecoder(io.LimitReader(res.Body, 64<<20)).Decode(v)
}

var errNotFound = errors.New("not found")

// resync reads the current channels, endpoints and device states.
func (a *Adapter) resync(ctx context.Context, m *mapper) (bridge.Snapshot, error) {
	var raws []json.RawMessage
	if err := a.get(ctx, "/channels", &raws); err != nil {
		return bridge.Snapshot{}, err
	}
	chans := make([]channelInfo, 0, len(raws))
	for _, r := range raws {
		var ci channelInfo
		if json.Unmarshal(r, &ci.Data) != nil || json.Unmarshal(r, &ci.Raw) != nil {
			a.Skip()
			continue
		}
		chans = append(chans, ci)
	}
	var endpoints []ari.EndpointData
	if err := a.get(ctx, "/endpoints", &endpoints); err != nil {
		return bridge.Snapshot{}, err
	}
	states := map[string]string{}
	devices := a.devices()
	a.knownMu.Lock()
	a.known = make(map[string]bool, len(devices))
	for _, d := range devices {
		a.known[d] = true
	}
	a.knownMu.Unlock()
	for _, name := range devices {
		var ds ari.DeviceStateData
		switch err := a.get(ctx, "/deviceStates/"+url.PathEscape(name), &ds); {
		case errors.Is(err, errNotFound):
			continue // a device Asterisk does not know (yet)
		case err != nil:
			return bridge.Snapshot{}, err
		}
		states[name] = ds.State
	}
	return m.snapshot(chans, endpoints, states), nil
}

// MirrorPerson implements adapters.PersonMirror: it records the state the
// user's dnd device should have; the writer tells Asterisk. It never
// blocks.
func (a *Adapter) MirrorPerson(u bridge.User, p bridge.PersonState) {
	dev := a.cfg.dndDevice(u)
	if dev == "" {
		return
	}
	want := "NOT_INUSE"
	if p.DND() {
		want = "BUSY"
	}
	a.mirrorMu.Lock()
	if a.mirror[dev] != want {
		a.mirror[dev] = want
		a.mirrorDirty[dev] = true
	}
	a.mirrorMu.Unlock()
	select {
	case a.mirrorWake <- struct{}{}:
	default:
	}
}

func (a *Adapter) markAllMirrorsDirty() {
	a.mirrorMu.Lock()
	for dev := range a.mirror {
		a.mirrorDirty[dev] = true
	}
	a.mirrorMu.Unlock()
	select {
	case a.mirrorWake <- struct{}{}:
	default:
	}
}

// writeMirrors tells Asterisk every pending dnd device state until ctx
// ends or Asterisk fails to take one (then the session reconnects and
// everything is written again).
func (a *Adapter) writeMirrors(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-a.mirrorWake:
		}
		for {
			a.mirrorMu.Lock()
			var dev, state string
			for d := range a.mirrorDirty {
				dev, state = d, a.mirror[d]
				delete(a.mirrorDirty, d)
				break
			}
			a.mirrorMu.Unlock()
			if dev == "" {
				break
			}
			if err := a.put(ctx, "/deviceStates/"+url.PathEscape(dev)+"?deviceState="+state); err != nil {
				a.mirrorMu.Lock()
				a.mirrorDirty[dev] = true
				a.mirrorMu.Unlock()
				return fmt.Errorf("dnd mirror %s: %w", dev, err)
			}
		}
	}
}

// watch pings Asterisk every pingEvery until a ping fails or ctx ends.
func (a *Adapter) watch(ctx context.Context) error {
	t := time.NewTicker(a.pingEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			if err := a.ping(ctx); err != nil {
				return err
			}
		}
	}
}

// ping checks that Asterisk answers REST.
func (a *Adapter) ping(ctx context.Context) error {
	err := a.get(ctx, "/asterisk/ping", nil)
	if errors.Is(err, errNotFound) { // Asterisk before 16.2 has no ping
		err = a.get(ctx, "/asterisk/info?only=status", nil)
	}
	return err
}
