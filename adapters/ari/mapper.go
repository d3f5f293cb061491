package ari

import (
	"encoding/json"
	"slices"
	"strings"
	"time"

	"github.com/CyCoreSystems/ari/v5"

	"github.com/lamplighter/lamplighter/bridge"
)

// channel is what the mapper knows of one Asterisk channel.
type channel struct {
	call      bridge.Call
	name      string       // Asterisk's channel name, PJSIP/100-0000002a
	caller    bridge.Party // who is on this channel (its caller id)
	connected bridge.Party // the connected line Asterisk last gave it
	internal  bool         // the ;2 half of a Local channel: not a device's call leg
	dialed    string
	tagsAsked bool   // the SIP tags were asked of Asterisk (see tagsWanted)
	tagsRead  bool   // and the reading is over, whatever it found
	parked    bool   // in a parking lot's holding bridge
	space     string // the parking space it waits in, once known
	// resolved: Asterisk has said who is at the other end (a connected
	// line, the bridge peer, the bridge itself), not only what was dialled.
	resolved bool
}

// settle marks whether the leg's dialog identifiers are still to come
// (bridge.Call.IDsPending): a PJSIP leg not answered yet whose Call-ID
// Asterisk has not told (its ChannelCreated carries none; the next event,
// within the millisecond, does), or a leg towards its phone lacking a tag
// whose tags have not been read yet (they are read once it rings). A leg
// created Down, before it rings, is one; so is a call that entered a
// parking lot until its space is known (its next event). So is a call a
// phone placed that was answered while only what it dialled is known of
// the other end: a pickup with Replaces answers it before the bridge
// says with whom (Asterisk gives the picker no connected line), so does
// a parked call's retrieval; the bridge follows within milliseconds. A
// call the dialplan answers itself never bridges: after a second it
// waits no more.
func (ch *channel) settle(now time.Time) {
	c := &ch.call
	sip := !ch.internal && strings.HasPrefix(c.Device, "PJSIP/") && c.State < bridge.CallConfirmed
	c.IDsPending = sip && (c.CallID == "" ||
		!ch.tagsRead && c.Direction == bridge.Incoming && (c.LocalTag == "" || c.RemoteTag == "")) ||
		ch.parked && ch.space == "" ||
		!ch.internal && !ch.resolved && ch.dialed != "" && c.State == bridge.CallConfirmed &&
			!c.Answered.IsZero() && now.Sub(c.Answered) < time.Second
}

// mapper turns ARI events into bridge events. It keeps per-channel state
// (so that each CallUpdated carries the whole leg) and the last state of
// each device (so that repeated device states, which Local channels send
// twice, become one event). It does no I/O.
type mapper struct {
	source      string
	dedicated   string // "PJSIP/<endpoint>" of Lamplighter's forwarded key presses, "" for none
	phoneTagVar string // the channel variable with the phone's tag of a leg (LL_LOCAL_TAG)
	pbxTagVar   string // and with Asterisk's own (LL_REMOTE_TAG)
	channels    map[string]*channel
	byName      map[string]string // channel name → id, for BRIDGEPEER
	devices     map[string]bridge.DeviceState
	tagsWanted  []string // channels whose SIP tags the adapter should read
	// Parking: channels that entered a parking lot and wait for the
	// slot's device state (park:701@parkedcalls INUSE) that says where,
	// oldest first; spaces whose device state said taken before any
	// channel entered a lot (Asterisk publishes the two on different
	// topics, in either order), oldest first; and which channel each
	// taken slot holds.
	parking   []string
	unclaimed []string          // park devices
	slots     map[string]string // park device → channel id
	at        time.Time         // when the event being mapped happened
}

func newMapper(source string, cfg *Config) *mapper {
	return &mapper{
		source: source, phoneTagVar: cfg.LocalTagVar, pbxTagVar: cfg.RemoteTagVar, dedicated: dedicatedDevice(cfg),
		channels: map[string]*channel{}, byName: map[string]string{}, devices: map[string]bridge.DeviceState{},
		slots: map[string]string{},
	}
}

// rawChannel holds what ari.ChannelData lacks: protocol_id (the SIP
// Call-ID of a PJSIP channel) and the dialplan application.
type rawChannel struct {
	ID         string `json:"id"`
	ProtocolID string `json:"protocol_id"`
	Dialplan   struct {
		AppName string `json:"app_name"`
	} `json:"dialplan"`
}

// rawEvent reads the protocol ids of the channels an event carries.
type rawEvent struct {
	Timestamp ari.DateTime `json:"timestamp"`
	Channel   rawChannel   `json:"channel"`
	Caller    rawChannel   `json:"caller"`
	Peer      rawChannel   `json:"peer"`
}

// deviceOf maps a channel name to its device: "PJSIP/100-0000002a" →
// "PJSIP/100", "Local/100@phones-00000001;1" → "Local/100@phones". The
// second result is false for the ;2 half of a Local channel.
func deviceOf(name string) (string, bool) {
	outward := true
	if i := strings.LastIndexByte(name, ';'); i > 0 && strings.HasPrefix(name, "Local/") {
		outward = name[i+1:] == "1"
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, '-'); i > 0 && i > strings.IndexByte(name, '/') && isHex(name[i+1:]) {
		name = name[:i]
	}
	return name, outward
}

// dedicatedDevice is the device name of the endpoint Lamplighter's
// forwarded key presses arrive on, "" when none is configured.
func dedicatedDevice(cfg *Config) string {
	if cfg.DedicatedEndpoint == "" {
		return ""
	}
	return "PJSIP/" + cfg.DedicatedEndpoint
}

func isHex(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if !(r >= '0' && r <= '9' || r >= 'a' && r <= 'f' || r >= 'A' && r <= 'F') {
			return false
		}
	}
	return true
}

// callState maps an Asterisk channel state to a call state.
func callState(s string, dir bridge.Direction, prev bridge.CallState) bridge.CallState {
	switch s {
	case "Up":
		return bridge.CallConfirmed
	case "Ringing":
		return bridge.CallEarly
	case "Ring":
		return max(prev, bridge.CallProceeding)
	case "Busy":
		return prev
	}
	return max(prev, bridge.CallTrying)
}

// isDialedLeg reports whether a channel was created by Dial() towards its
// device: Asterisk marks such channels with the "AppDial" application.
func isDialedLeg(r rawChannel) bool { return strings.HasPrefix(r.Dialplan.AppName, "AppDial") }

func party(c *ari.CallerID) bridge.Party {
	if c == nil {
		return bridge.Party{}
	}
	return bridge.Party{Number: c.Number, Name: c.Name}
}

// track creates or refreshes a channel from its data. ok is false when
// the channel is not a device's call leg.
func (m *mapper) track(c *ari.ChannelData, r rawChannel, at time.Time) (*channel, bool) {
	if c == nil || c.ID == "" {
		return nil, false
	}
	ch, known := m.channels[c.ID]
	if !known {
		device, outward := deviceOf(c.Name)
		if device == m.dedicated && m.dedicated != "" && c.Caller != nil && c.Caller.Number != "" {
			// A key press Lamplighter passed on from a busy-lamp line:
			// the phone's own device, by the identity it asserted.
			device = "PJSIP/" + c.Caller.Number
		}
		ch = &channel{internal: !outward, name: c.Name}
		if c.Name != "" {
			m.byName[c.Name] = c.ID
		}
		ch.call.ID = c.ID
		ch.call.Device = device
		ch.call.Started = at
		// A channel the PBX dials towards a phone is marked AppDial, or
		// starts Down and rings; a phone that places a call creates its
		// channel in state Ring (and a resync may find either one Up).
		switch {
		case isDialedLeg(r), c.State == "Down", c.State == "Ringing", c.State == "Rsrvd":
			ch.call.Direction = bridge.Incoming
		default:
			ch.call.Direction = bridge.Outgoing
			if c.Dialplan != nil && c.State == "Ring" {
				ch.dialed = c.Dialplan.Exten
			}
		}
		m.channels[c.ID] = ch
	}
	if c.State != "" {
		ch.call.State = callState(c.State, ch.call.Direction, ch.call.State)
		if ch.call.State == bridge.CallConfirmed && ch.call.Answered.IsZero() {
			ch.call.Answered = at
		}
	}
	if p := party(c.Caller); !p.IsZero() {
		ch.caller = p
	}
	// Every event carries the channel's connected line, but Asterisk does
	// not always update it (a pickup, a parked call, a bridge it moved
	// the channel into): it is taken when it changes, and the bridge's
	// word (BRIDGEPEER, parking, a conference) stands until it does.
	if p := party(c.Connected); p != ch.connected {
		ch.connected = p
		if !p.IsZero() {
			ch.call.Remote = p
			ch.resolved = true
		}
	}
	if ch.call.Remote.IsZero() && ch.dialed != "" {
		ch.call.Remote = bridge.Party{Number: ch.dialed}
	}
	if r.ProtocolID != "" {
		ch.call.CallID = r.ProtocolID
	}
	// A pickup INVITE with Replaces reaches Asterisk, which matches its
	// to-tag against its own tag of the leg: that is the dialog's local
	// tag for watchers (bridge.Call.LocalTag), the phone's the remote one.
	if v, ok := c.ChannelVars[m.pbxTagVar]; ok && v != "" {
		ch.call.LocalTag = v
	}
	if v, ok := c.ChannelVars[m.phoneTagVar]; ok && v != "" {
		ch.call.RemoteTag = v
	}
	// A PJSIP leg ringing at a phone has the phone's tag from its 180,
	// which a pre-dial handler runs too early to see: asked of Asterisk
	// once, so that the ringing lamp can be picked up (Replaces) with no
	// dialplan at all.
	if !ch.internal && !ch.tagsAsked && ch.call.State == bridge.CallEarly && ch.call.Direction == bridge.Incoming &&
		strings.HasPrefix(ch.call.Device, "PJSIP/") && (ch.call.LocalTag == "" || ch.call.RemoteTag == "") {
		ch.tagsAsked = true
		m.tagsWanted = append(m.tagsWanted, c.ID)
	}
	ch.settle(at)
	return ch, !ch.internal
}

// tagsRead is told that the adapter finished reading a leg's tags (what
// it found came before, as ChannelVarset events): the leg waits for no
// more identifiers.
func (m *mapper) tagsRead(channelID string) []bridge.Event {
	ch, ok := m.channels[channelID]
	if !ok || ch.internal || ch.tagsRead {
		return nil
	}
	ch.tagsRead = true
	before := ch.call
	ch.settle(m.at)
	if ch.call == before {
		return nil
	}
	return []bridge.Event{m.update(ch)}
}

// takeTagsWanted returns the channels whose tags should be read now.
func (m *mapper) takeTagsWanted() []string {
	out := m.tagsWanted
	m.tagsWanted = nil
	return out
}

// tagVars are what the adapter reads for a ringing leg, and the channel
// variables (as the dialplan would name them) it reports them as: the
// phone's own tag is Asterisk's remote tag, and Asterisk's its local one.
func (m *mapper) tagVars() [][2]string {
	return [][2]string{{"CHANNEL(pjsip,remote_tag)", m.phoneTagVar}, {"CHANNEL(pjsip,local_tag)", m.pbxTagVar}}
}

func (m *mapper) update(ch *channel) bridge.Event {
	return bridge.CallUpdated{Source: m.source, Call: ch.call}
}

// device emits a device state unless it repeats the last one.
func (m *mapper) device(name string, st bridge.DeviceState) []bridge.Event {
	st = lineState(name, st)
	if last, ok := m.devices[name]; ok && last == st {
		return nil
	}
	m.devices[name] = st
	return []bridge.Event{bridge.DeviceStateChanged{Source: m.source, Device: name, State: st}}
}

// lineState is what a device state says that its channels do not. The
// calls of a device with channels (PJSIP/100, SIP/bob, Local/100@phones:
// a technology and a resource) come one by one as channel events, with
// their parties and ids, while Asterisk reports the device's state on its
// own schedule: INUSE a moment after a channel's hang-up, RINGING a
// moment before the channel rings. Only whether such a device can be
// reached is taken from its state (in use, ringing or on hold means
// reachable), so that a lamp never shows a call that no channel stands
// for. A device without channels (Custom:, Stasis:, park:, Queue:) has
// nothing but its state, which is kept whole.
func lineState(name string, st bridge.DeviceState) bridge.DeviceState {
	if !strings.Contains(name, "/") {
		return st
	}
	switch st {
	case bridge.DeviceInUse, bridge.DeviceRinging, bridge.DeviceRingInUse, bridge.DeviceOnHold:
		return bridge.DeviceIdle
	}
	return st
}

// reachability turns an endpoint's reachability into a device state: an
// unreachable endpoint is unavailable; one that comes back is idle unless
// the PBX says more.
func (m *mapper) reachability(ep ari.EndpointData, reachable bool) []bridge.Event {
	name := ep.Technology + "/" + ep.Resource
	if !reachable {
		return m.device(name, bridge.DeviceUnavailable)
	}
	switch m.devices[name] {
	case bridge.DeviceUnavailable, bridge.DeviceUnknown, bridge.DeviceInvalid:
		return m.device(name, bridge.DeviceIdle)
	}
	return nil
}

// event maps one decoded ARI event (raw is its JSON) to bridge events.
func (m *mapper) event(ev ari.Event, raw []byte) []bridge.Event {
	var ids rawEvent
	_ = json.Unmarshal(raw, &ids) // best effort: the event itself decoded
	ts := time.Time(ids.Timestamp)
	if ts.IsZero() {
		ts = time.Now()
	}
	m.at = ts
	switch e := ev.(type) {
	case *ari.DeviceStateChanged:
		st, err := bridge.ParseDeviceState(e.DeviceState.State)
		if err != nil {
			return nil
		}
		out := m.parkingSlot(e.DeviceState.Name, st, ts)
		if slices.Contains(m.unclaimed, e.DeviceState.Name) {
			// The space is taken by a call not yet seen: its state comes
			// with that call, so that the lamp shows who waits there
			// rather than a moment of a call without a party.
			return out
		}
		return append(out, m.device(e.DeviceState.Name, st)...)
	case *ari.ChannelEnteredBridge:
		return m.enteredBridge(&e.Channel, ids.Channel, &e.Bridge, ts)
	case *ari.ChannelLeftBridge:
		return m.leftBridge(&e.Channel, ids.Channel, &e.Bridge, ts)
	case *ari.ChannelCreated:
		return m.channelEvent(&e.Channel, ids.Channel, ts)
	case *ari.ChannelStateChange:
		return m.channelEvent(&e.Channel, ids.Channel, ts)
	case *ari.ChannelConnectedLine:
		return m.channelEvent(&e.Channel, ids.Channel, ts)
	case *ari.ChannelCallerID:
		return m.channelEvent(&e.Channel, ids.Channel, ts)
	case *ari.ChannelDialplan:
		return m.channelEvent(&e.Channel, ids.Channel, ts)
	case *ari.ChannelVarset:
		// Two thirds of all events: only tracked channels matter.
		ch, known := m.channels[e.Channel.ID]
		if !known {
			return nil
		}
		before := ch.call
		m.track(&e.Channel, ids.Channel, ts)
		switch e.Variable {
		case m.pbxTagVar:
			ch.call.LocalTag = e.Value
		case m.phoneTagVar:
			ch.call.RemoteTag = e.Value
		case "BRIDGEPEER":
			m.bridgePeer(ch, e.Value)
		}
		ch.settle(m.at)
		if ch.internal || ch.call == before {
			return nil
		}
		return []bridge.Event{m.update(ch)}
	case *ari.ChannelHold:
		ch, ok := m.track(&e.Channel, ids.Channel, ts)
		if !ok {
			return nil
		}
		ch.call.Held = true
		return []bridge.Event{m.update(ch)}
	case *ari.ChannelUnhold:
		ch, ok := m.track(&e.Channel, ids.Channel, ts)
		if !ok {
			return nil
		}
		ch.call.Held = false
		return []bridge.Event{m.update(ch)}
	case *ari.Dial:
		return m.dial(e, ids, ts)
	case *ari.ChannelDestroyed:
		ch, ok := m.channels[e.Channel.ID]
		delete(m.channels, e.Channel.ID)
		if !ok {
			return nil
		}
		if m.byName[ch.name] == e.Channel.ID {
			delete(m.byName, ch.name)
		}
		out := m.unpark(e.Channel.ID)
		if ch.internal {
			return out
		}
		return append(out, bridge.CallEnded{Source: m.source, CallID: e.Channel.ID})
	case *ari.ContactStatusChange:
		switch e.ContactInfo.ContactStatus {
		case "Unreachable", "Removed":
			if e.Endpoint.State == "offline" {
				return m.reachability(e.Endpoint, false)
			}
		case "Reachable", "NonQualified", "Created":
			if e.Endpoint.State == "online" {
				return m.reachability(e.Endpoint, true)
			}
		}
	case *ari.PeerStatusChange:
		switch e.Peer.PeerStatus {
		case "Unreachable", "Unregistered", "Rejected", "Removed":
			return m.reachability(e.Endpoint, false)
		case "Reachable", "Registered":
			return m.reachability(e.Endpoint, true)
		}
	case *ari.EndpointStateChange:
		switch e.Endpoint.State {
		case "offline":
			return m.reachability(e.Endpoint, false)
		case "online":
			return m.reachability(e.Endpoint, true)
		}
	}
	return nil
}

func (m *mapper) channelEvent(c *ari.ChannelData, r rawChannel, at time.Time) []bridge.Event {
	ch, known := m.channels[c.ID]
	var before bridge.Call
	if known {
		before = ch.call
	}
	ch, ok := m.track(c, r, at)
	if !ok || (known && ch.call == before) {
		return nil
	}
	return []bridge.Event{m.update(ch)}
}

// bridgePeer takes the channel a channel is bridged with (BRIDGEPEER, set
// as it enters a two-party bridge) as its remote party: the one who is
// really on the call, which the connected line does not always say (the
// picker of a call, the one who retrieves a parked call). A conference
// (several peers) and a peer that is no device's (a ConfBridge
// announcer) say nothing.
func (m *mapper) bridgePeer(ch *channel, peerName string) {
	if ch.parked || peerName == "" || strings.Contains(peerName, ",") {
		return
	}
	peer, ok := m.channels[m.byName[peerName]]
	if !ok || peer.caller.IsZero() {
		return
	}
	ch.call.Remote = peer.caller
	ch.resolved = true
}

// enteredBridge notes what a bridge says of who a channel is with: in a
// parking lot nobody (the slot is told by the lot's device state, see
// parkingSlot), in a ConfBridge the conference.
func (m *mapper) enteredBridge(c *ari.ChannelData, r rawChannel, b *ari.BridgeData, at time.Time) []bridge.Event {
	ch, ok := m.track(c, r, at)
	if !ok {
		return nil
	}
	switch {
	case b.Class == "parking":
		ch.parked, ch.space, ch.resolved = true, "", true
		ch.call.Remote = bridge.Party{Name: "Parked"}
		ch.settle(m.at)
		if len(m.unclaimed) > 0 { // the space said taken first
			slot := m.unclaimed[0]
			m.unclaimed = m.unclaimed[1:]
			out := m.occupy(slot, c.ID, at)
			if ch.internal {
				out = append(out, m.update(ch))
			}
			return append(out, m.device(slot, bridge.DeviceInUse)...)
		}
		m.parking = append(m.parking, c.ID)
	case b.Creator == "ConfBridge" && b.Name != "":
		ch.call.Remote = bridge.Party{Number: b.Name, Name: "Conference " + b.Name}
		ch.resolved = true
		ch.settle(at)
	default:
		return nil
	}
	return []bridge.Event{m.update(ch)}
}

// leftBridge notes a channel leaving a parking lot: retrieved, timed out
// or hung up. Its next party comes from BRIDGEPEER or its connected line.
func (m *mapper) leftBridge(c *ari.ChannelData, r rawChannel, b *ari.BridgeData, at time.Time) []bridge.Event {
	ch, ok := m.channels[c.ID]
	if !ok || b.Class != "parking" || !ch.parked {
		return nil
	}
	ch.parked, ch.space = false, ""
	ch.settle(m.at)
	return append(m.unpark(c.ID), m.update(ch))
}

// unpark forgets a channel's place in a parking lot: the slot's lamp,
// which showed it, goes out.
func (m *mapper) unpark(id string) []bridge.Event {
	m.parking = slices.DeleteFunc(m.parking, func(p string) bool { return p == id })
	var out []bridge.Event
	for slot, held := range m.slots {
		if held == id {
			delete(m.slots, slot)
			out = append(out, bridge.CallEnded{Source: m.source, CallID: slotCallID(slot)})
		}
	}
	return out
}

// parkingSlot follows a parking space's device state (park:701@parkedcalls):
// taken, it holds the channel that entered a parking lot before it, or
// the next to enter one (ARI sends no ParkedCall event, and the lot's
// bridge does not say the space), which then shows "Parked (701)" instead of the phone that
// parked it, and the space's own lamp shows the parked caller as a call
// (with its Call-ID), so that a key on the space names who waits there.
func (m *mapper) parkingSlot(name string, st bridge.DeviceState, at time.Time) []bridge.Event {
	if !strings.HasPrefix(name, "park:") {
		return nil
	}
	switch st {
	case bridge.DeviceInUse, bridge.DeviceBusy, bridge.DeviceOnHold:
		if _, taken := m.slots[name]; taken || slices.Contains(m.unclaimed, name) {
			return nil
		}
		if len(m.parking) == 0 { // its channel has not entered the lot yet
			m.unclaimed = append(m.unclaimed, name)
			return nil
		}
		id := m.parking[0]
		m.parking = m.parking[1:]
		return m.occupy(name, id, at)
	case bridge.DeviceIdle, bridge.DeviceUnavailable, bridge.DeviceUnknown, bridge.DeviceInvalid:
		m.unclaimed = slices.DeleteFunc(m.unclaimed, func(u string) bool { return u == name })
		if _, taken := m.slots[name]; taken {
			delete(m.slots, name)
			return []bridge.Event{bridge.CallEnded{Source: m.source, CallID: slotCallID(name)}}
		}
	}
	return nil
}

// occupy puts the parked channel id in the parking space name (its park:
// device): the parked caller's lamp names the space, and the space's own
// lamp shows the caller as a call.
func (m *mapper) occupy(name, id string, at time.Time) []bridge.Event {
	ch, ok := m.channels[id]
	if !ok {
		return nil
	}
	space, _, _ := strings.Cut(strings.TrimPrefix(name, "park:"), "@")
	m.slots[name] = id
	ch.space = space
	ch.call.Remote = bridge.Party{Number: space, Name: "Parked"}
	ch.settle(m.at)
	slot := bridge.Call{ID: slotCallID(name), Device: name, Direction: bridge.Incoming, State: bridge.CallConfirmed,
		Remote: ch.caller, CallID: ch.call.CallID, Started: at, Answered: at}
	var out []bridge.Event
	if !ch.internal {
		out = append(out, m.update(ch))
	}
	return append(out, bridge.CallUpdated{Source: m.source, Call: slot})
}

// slotCallID is the call id of the call a parking space's lamp shows.
func slotCallID(device string) string { return "slot-" + device }

// dial uses Dial events: the peer is a leg towards a device (incoming),
// the caller the device that dials; a RINGING status means the caller
// hears ringback (early).
func (m *mapper) dial(e *ari.Dial, ids rawEvent, at time.Time) []bridge.Event {
	var out []bridge.Event
	if e.Peer.ID != "" {
		peer, known := m.channels[e.Peer.ID]
		var before bridge.Call
		if known {
			before = peer.call
		}
		if p, ok := m.track(&e.Peer, ids.Peer, at); ok {
			p.call.Direction = bridge.Incoming
			if !known || p.call != before {
				out = append(out, m.update(p))
			}
		}
	}
	if e.Caller.ID != "" {
		caller, known := m.channels[e.Caller.ID]
		var before bridge.Call
		if known {
			before = caller.call
		}
		if c, ok := m.track(&e.Caller, ids.Caller, at); ok {
			c.call.Direction = bridge.Outgoing
			if e.Dialstatus == "RINGING" && c.call.State < bridge.CallEarly {
				c.call.State = bridge.CallEarly
			}
			if c.call.Remote.IsZero() && e.Peer.ID != "" {
				c.call.Remote = party(e.Peer.Caller)
			}
			if !known || c.call != before {
				out = append(out, m.update(c))
			}
		}
	}
	return out
}

// snapshot builds the state after a (re)connect from the REST answers:
// the live channels, the endpoints' reachability and the device states.
// Device states from /deviceStates win over endpoint reachability.
func (m *mapper) snapshot(chans []channelInfo, endpoints []ari.EndpointData, states map[string]string) bridge.Snapshot {
	m.channels = map[string]*channel{}
	m.byName = map[string]string{}
	m.parking, m.unclaimed, m.slots = nil, nil, map[string]string{}
	m.devices = map[string]bridge.DeviceState{}
	snap := bridge.Snapshot{Source: m.source, Devices: map[string]bridge.DeviceState{}}
	for _, ep := range endpoints {
		name := ep.Technology + "/" + ep.Resource
		switch ep.State {
		case "online":
			snap.Devices[name] = bridge.DeviceIdle
		case "offline":
			snap.Devices[name] = bridge.DeviceUnavailable
		}
	}
	for name, s := range states {
		if st, err := bridge.ParseDeviceState(s); err == nil && st != bridge.DeviceInvalid {
			snap.Devices[name] = lineState(name, st)
		}
	}
	for name, st := range snap.Devices {
		m.devices[name] = st
	}
	now := time.Now()
	for i := range chans {
		c := &chans[i]
		started := now
		if c.Data.Creationtime != nil {
			started = time.Unix(c.Data.Creationtime.Seconds, int64(c.Data.Creationtime.Nanos))
		}
		ch, ok := m.track(&c.Data, c.Raw, started)
		if !ok {
			continue
		}
		if ch.call.State == bridge.CallConfirmed {
			ch.call.Answered = time.Time{} // unknown: do not pretend
			ch.settle(now)
		}
		snap.Calls = append(snap.Calls, ch.call)
	}
	return snap
}

// channelInfo is a channel from GET /channels with what the library's
// type does not read.
type channelInfo struct {
	Data ari.ChannelData
	Raw  rawChannel
}
