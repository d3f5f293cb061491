package esl

import (
	"encoding/json"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
)

// event is one FreeSWITCH event's headers (event-plain, URL-encoded values).
type event textproto.MIMEHeader

// get returns a header's value, URL-decoded.
func (e event) get(name string) string {
	v := textproto.MIMEHeader(e).Get(name)
	if u, err := url.PathUnescape(v); err == nil {
		return u
	}
	return v
}

func (e event) seq() uint64 {
	n, _ := strconv.ParseUint(e.get("Event-Sequence"), 10, 64)
	return n
}

// micros reads a FreeSWITCH microsecond timestamp header.
func (e event) micros(name string) time.Time {
	n, err := strconv.ParseInt(e.get(name), 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}
	}
	return time.UnixMicro(n)
}

// leg is what the mapper knows of one FreeSWITCH channel.
type leg struct {
	seq  uint64 // Event-Sequence of the newest event applied
	call bridge.Call
}

// seen is the newest event applied for a key, and when.
type seen struct {
	seq uint64
	at  time.Time
}

// registration is one registered contact of a device.
type registration struct {
	device  string
	expires time.Time
}

// regGrace is how long past its expiry a registration that FreeSWITCH
// never reported expired still counts: FreeSWITCH's own sofia::expire is
// the real news, this is the safety net for one lost in a gap.
const regGrace = 2 * time.Minute

// tombstoneTTL is how long a hung-up channel's UUID is remembered, so that
// a late event for it cannot bring it back.
const tombstoneTTL = 10 * time.Minute

// mapper turns FreeSWITCH events into bridge events. It trusts no arrival
// order: per channel, an event applies only if its Event-Sequence is newer
// than the last one applied, and a hung-up channel keeps a tombstone. It is
// not safe for concurrent use.
type mapper struct {
	source  string
	devices map[string]bool // configured device names on this PBX
	now     func() time.Time

	legs   map[string]*leg               // by Unique-ID
	tombs  map[string]time.Time          // Unique-ID → when it hung up
	regs   map[string]registration       // by registration Call-ID
	regSeq map[string]seen               // newest registration event per Call-ID (kept a while after it goes)
	state  map[string]bridge.DeviceState // last reported per device
}

func newMapper(source string, devices []string) *mapper {
	m := &mapper{source: source, now: time.Now, tombs: map[string]time.Time{}, regSeq: map[string]seen{}}
	m.setDevices(devices)
	m.reset()
	return m
}

func (m *mapper) reset() {
	m.legs = map[string]*leg{}
	m.regs = map[string]registration{}
	m.state = map[string]bridge.DeviceState{}
}

// setDevices replaces the set of configured device names.
func (m *mapper) setDevices(devices []string) {
	m.devices = make(map[string]bool, len(devices))
	for _, d := range devices {
		m.devices[d] = true
	}
}

// pick returns the first candidate that is a configured device.
func (m *mapper) pick(candidates ...string) string {
	for _, c := range candidates {
		if c != "" && m.devices[c] {
			return c
		}
	}
	return ""
}

// channelDevice finds the configured device a channel belongs to: its
// presence id (user@domain), the presence id's user part, or the sofia
// profile and user it is named after (sofia/internal/1000).
func (m *mapper) channelDevice(presenceID, channelName string) string {
	user, _, _ := strings.Cut(presenceID, "@")
	var sofia string
	if strings.HasPrefix(channelName, "sofia/") {
		sofia, _, _ = strings.Cut(channelName, "@")
	}
	return m.pick(presenceID, user, sofia)
}

// event maps one event. Events the mapper has no use for give nothing.
func (m *mapper) event(e event) []bridge.Event {
	switch e.get("Event-Name") {
	case "CHANNEL_CREATE", "CHANNEL_CALLSTATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_PROGRESS",
		"CHANNEL_PROGRESS_MEDIA", "CHANNEL_HOLD", "CHANNEL_UNHOLD", "CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE",
		"CHANNEL_DESTROY":
		return m.channel(e)
	case "CUSTOM":
		switch e.get("Event-Subclass") {
		case "sofia::register":
			return m.register(e)
		case "sofia::unregister", "sofia::expire":
			return m.unregister(e)
		}
	}
	return nil
}

// channel applies a channel event: every one carries the channel's whole
// state, so the newest wins and older ones only add what they know (the
// SIP Call-ID and tags come on a few event types only).
func (m *mapper) channel(e event) []bridge.Event {
	id := e.get("Unique-ID")
	if id == "" {
		return nil
	}
	if _, dead := m.tombs[id]; dead {
		return nil
	}
	seq := e.seq()
	name := e.get("Event-Name")
	hangup := name == "CHANNEL_HANGUP" || name == "CHANNEL_HANGUP_COMPLETE" || name == "CHANNEL_DESTROY" ||
		e.get("Channel-Call-State") == "HANGUP" || e.get("Answer-State") == "hangup"
	l := m.legs[id]
	if hangup {
		m.bury(id)
		if l == nil {
			return nil
		}
		return []bridge.Event{bridge.CallEnded{Source: m.source, CallID: id}}
	}
	if l == nil {
		presence := e.get("Channel-Presence-ID")
		if presence == "" {
			presence = e.get("variable_presence_id")
		}
		dev := m.channelDevice(presence, e.get("Channel-Name"))
		if dev == "" {
			return nil
		}
		l = &leg{call: bridge.Call{ID: id, Device: dev}}
		m.legs[id] = l
	}
	before := l.call
	m.addSIP(&l.call, e)
	if seq > l.seq || l.seq == 0 {
		l.seq = seq
		m.fill(&l.call, e)
	}
	// A sofia leg towards its phone learns its Call-ID and tags from the
	// phone's 180 or 183 (CHANNEL_PROGRESS, _MEDIA), moments after
	// FreeSWITCH says it rings: until then they are pending; so is the
	// Call-ID of any sofia leg not answered yet that has not shown it.
	c := &l.call
	sofia := strings.HasPrefix(e.get("Channel-Name"), "sofia/") && c.State < bridge.CallConfirmed
	c.IDsPending = sofia && (c.CallID == "" ||
		c.Direction == bridge.Incoming && (c.LocalTag == "" || c.RemoteTag == ""))
	if l.call == before {
		return nil
	}
	return []bridge.Event{bridge.CallUpdated{Source: m.source, Call: l.call}}
}

// bury forgets a channel and keeps its tombstone; old tombstones go.
func (m *mapper) bury(id string) {
	delete(m.legs, id)
	now := m.now()
	m.tombs[id] = now
	if len(m.tombs)%256 == 0 {
		for k, t := range m.tombs {
			if now.Sub(t) > tombstoneTTL {
				delete(m.tombs, k)
			}
		}
	}
}

// fill sets the state part of a call from the newest event.
func (m *mapper) fill(c *bridge.Call, e event) {
	// Call-Direction is FreeSWITCH's: "inbound" is a leg the phone
	// started, so the phone is calling out.
	if e.get("Call-Direction") == "inbound" {
		c.Direction = bridge.Outgoing
	} else {
		c.Direction = bridge.Incoming
	}
	c.State, c.Held = callState(c.Direction, e.get("Channel-Call-State"), e.get("Answer-State"))
	c.Remote = remoteParty(c.Direction, e.get)
	if t := e.micros("Caller-Channel-Created-Time"); !t.IsZero() {
		c.Started = t
	} else if c.Started.IsZero() {
		c.Started = e.micros("Event-Date-Timestamp")
	}
	if t := e.micros("Caller-Channel-Answered-Time"); !t.IsZero() {
		c.Answered = t
	}
}

// addSIP keeps the SIP Call-ID and tags of a sofia leg, seen from the
// phone: on a leg the phone started (inbound) its tag is the From tag; on
// a leg FreeSWITCH sends to the phone (outbound) its tag is the To tag.
func (m *mapper) addSIP(c *bridge.Call, e event) {
	if id := e.get("variable_sip_call_id"); id != "" {
		c.CallID = id
	}
	from, to := e.get("variable_sip_from_tag"), e.get("variable_sip_to_tag")
	if e.get("Call-Direction") == "inbound" {
		from, to = to, from
	}
	// Now from is the remote tag and to the local one, as the phone sees it.
	if to != "" {
		c.LocalTag = to
	}
	if from != "" {
		c.RemoteTag = from
	}
}

// callState maps Channel-Call-State and Answer-State for a leg whose phone
// is calling (Outgoing) or being called (Incoming).
func callState(dir bridge.Direction, callState, answer string) (bridge.CallState, bool) {
	switch callState {
	case "ACTIVE", "UNHELD":
		return bridge.CallConfirmed, false
	case "HELD":
		return bridge.CallConfirmed, true
	}
	if answer == "answered" {
		return bridge.CallConfirmed, false
	}
	switch callState {
	case "EARLY":
		return bridge.CallEarly, false
	case "RINGING", "RING_WAIT":
		if dir == bridge.Incoming {
			return bridge.CallEarly, false // the phone alerts
		}
		return bridge.CallProceeding, false // the phone's call is being routed
	}
	if answer == "early" {
		return bridge.CallEarly, false
	}
	return bridge.CallTrying, false
}

// remoteParty is the other end as the phone sees it: for a call to the
// phone, the caller; for the phone's own call, whom it dialled (the
// callee name unless it is FreeSWITCH's "Outbound Call" placeholder).
func remoteParty(dir bridge.Direction, get func(string) string) bridge.Party {
	if dir == bridge.Incoming {
		return bridge.Party{Number: get("Caller-Caller-ID-Number"), Name: cleanName(get("Caller-Caller-ID-Name"), get("Caller-Caller-ID-Number"))}
	}
	number := get("Caller-Destination-Number")
	if number == "" {
		number = get("Caller-Callee-ID-Number")
	}
	return bridge.Party{Number: number, Name: cleanName(get("Caller-Callee-ID-Name"), number)}
}

// cleanName drops names that say nothing: FreeSWITCH's placeholders and
// a name that is just the number.
func cleanName(name, number string) string {
	switch name {
	case "Outbound Call", "Loopback", "unknown", "Unknown", number:
		return ""
	}
	return name
}

// regDevice finds the configured device a registration belongs to.
func (m *mapper) regDevice(user, realm, profile string) string {
	var sofia string
	if profile != "" {
		sofia = "sofia/" + profile + "/" + user
	}
	return m.pick(user+"@"+realm, user, sofia)
}

// regKey reads what identifies a registration event: its device and the
// REGISTER's Call-ID.
func (m *mapper) regKey(e event) (dev, callID string) {
	user := e.get("username")
	if user == "" {
		user = e.get("from-user")
	}
	realm := e.get("realm")
	if realm == "" {
		realm = e.get("from-host")
	}
	return m.regDevice(user, realm, e.get("profile-name")), e.get("call-id")
}

// fresh tells whether a registration event is newer than the last one
// applied for its Call-ID, and records it: a late register must not bring
// back a contact that has since unregistered.
func (m *mapper) fresh(callID string, seq uint64) bool {
	if last, ok := m.regSeq[callID]; ok && seq != 0 && seq <= last.seq {
		return false
	}
	now := m.now()
	m.regSeq[callID] = seen{seq: seq, at: now}
	if len(m.regSeq)%256 == 0 {
		for k, v := range m.regSeq {
			if _, live := m.regs[k]; !live && now.Sub(v.at) > tombstoneTTL {
				delete(m.regSeq, k)
			}
		}
	}
	return true
}

func (m *mapper) register(e event) []bridge.Event {
	dev, key := m.regKey(e)
	if dev == "" || key == "" || !m.fresh(key, e.seq()) {
		return nil
	}
	exp, _ := strconv.Atoi(e.get("expires"))
	if exp <= 0 {
		exp = 3600
	}
	m.regs[key] = registration{device: dev, expires: m.now().Add(time.Duration(exp)*time.Second + regGrace)}
	return m.report(dev)
}

// unregister drops one contact (by the REGISTER's Call-ID); the device is
// unavailable once it has none left.
func (m *mapper) unregister(e event) []bridge.Event {
	_, key := m.regKey(e)
	if key == "" || !m.fresh(key, e.seq()) {
		return nil
	}
	r, ok := m.regs[key]
	if !ok {
		return nil
	}
	delete(m.regs, key)
	return m.report(r.device)
}

// expire drops registrations whose time ran out without a word from
// FreeSWITCH (its own sofia::expire may be lost in a gap).
func (m *mapper) expire() []bridge.Event {
	now := m.now()
	var devs []string
	for k, r := range m.regs {
		if now.After(r.expires) {
			delete(m.regs, k)
			devs = append(devs, r.device)
		}
	}
	var out []bridge.Event
	for _, d := range devs {
		out = append(out, m.report(d)...)
	}
	return out
}

// reachable tells whether a device has a live registration.
func (m *mapper) reachable(dev string) bool {
	for _, r := range m.regs {
		if r.device == dev {
			return true
		}
	}
	return false
}

// report emits the device's reachability if it changed.
func (m *mapper) report(dev string) []bridge.Event {
	st := bridge.DeviceUnavailable
	if m.reachable(dev) {
		st = bridge.DeviceIdle
	}
	if old, ok := m.state[dev]; ok && old == st {
		return nil
	}
	m.state[dev] = st
	return []bridge.Event{bridge.DeviceStateChanged{Source: m.source, Device: dev, State: st}}
}

// channelRow is a row of `show channels as json`.
type channelRow struct {
	UUID       string `json:"uuid"`
	Direction  string `json:"direction"`
	Created    string `json:"created_epoch"`
	Name       string `json:"name"`
	CIDName    string `json:"cid_name"`
	CIDNum     string `json:"cid_num"`
	Dest       string `json:"dest"`
	PresenceID string `json:"presence_id"`
	CallState  string `json:"callstate"`
	CalleeName string `json:"callee_name"`
	CalleeNum  string `json:"callee_num"`
}

// registrationRow is a row of `show registrations as json`.
type registrationRow struct {
	User    string `json:"reg_user"`
	Realm   string `json:"realm"`
	Token   string `json:"token"` // the REGISTER's Call-ID
	URL     string `json:"url"`   // sofia/<profile>/sip:…
	Expires string `json:"expires"`
}

// showRows decodes the body of a `show … as json` reply. FreeSWITCH
// answers {"row_count":0} with no rows when there are none.
func showRows[T any](body []byte) ([]T, error) {
	var v struct {
		Rows []T `json:"rows"`
	}
	if err := json.Unmarshal(body, &v); err != nil {
		return nil, err
	}
	return v.Rows, nil
}

// snapshot builds the full state from `show channels` and `show
// registrations` and makes it the mapper's state. Configured devices
// without a registration are unavailable.
func (m *mapper) snapshot(chans []channelRow, regs []registrationRow, configured []string) bridge.Snapshot {
	m.reset()
	m.setDevices(configured)
	now := m.now()
	snap := bridge.Snapshot{Source: m.source, Devices: map[string]bridge.DeviceState{}}
	for _, r := range regs {
		profile := ""
		if rest, ok := strings.CutPrefix(r.URL, "sofia/"); ok {
			profile, _, _ = strings.Cut(rest, "/")
		}
		dev := m.regDevice(r.User, r.Realm, profile)
		if dev == "" || r.Token == "" {
			continue
		}
		// FreeSWITCH lists it, so it is live now, whatever the two
		// clocks say; its expiry counts from now at the earliest.
		exp := now.Add(time.Hour)
		if n, err := strconv.ParseInt(r.Expires, 10, 64); err == nil && n > 0 {
			exp = now.Add(max(time.Until(time.Unix(n, 0)), 0) + regGrace)
		}
		m.regs[r.Token] = registration{device: dev, expires: exp}
	}
	for _, d := range configured {
		st := bridge.DeviceUnavailable
		if m.reachable(d) {
			st = bridge.DeviceIdle
		}
		m.state[d] = st
		snap.Devices[d] = st
	}
	for _, r := range chans {
		dev := m.channelDevice(r.PresenceID, r.Name)
		if dev == "" || r.UUID == "" {
			continue
		}
		if _, dead := m.tombs[r.UUID]; dead {
			continue
		}
		h := map[string]string{
			"Caller-Caller-ID-Number":   r.CIDNum,
			"Caller-Caller-ID-Name":     r.CIDName,
			"Caller-Destination-Number": r.Dest,
			"Caller-Callee-ID-Number":   r.CalleeNum,
			"Caller-Callee-ID-Name":     r.CalleeName,
		}
		c := bridge.Call{ID: r.UUID, Device: dev, Direction: bridge.Incoming}
		if r.Direction == "inbound" {
			c.Direction = bridge.Outgoing
		}
		c.State, c.Held = callState(c.Direction, r.CallState, "")
		c.Remote = remoteParty(c.Direction, func(k string) string { return h[k] })
		if n, err := strconv.ParseInt(r.Created, 10, 64); err == nil && n > 0 {
			c.Started = time.Unix(n, 0)
		}
		if r.CallState == "HANGUP" {
			continue
		}
		m.legs[r.UUID] = &leg{call: c}
		snap.Calls = append(snap.Calls, c)
	}
	return snap
}
