package esl

import (
	"encoding/json"
	"net/textproto"
	"net/url"
	"slices"
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

// leg is what the mapper knows of one FreeSWITCH channel of a
// configured device.
type leg struct {
	seq    uint64 // Event-Sequence of the newest event applied
	call   bridge.Call
	said   bridge.Party // the remote party as the leg's own headers name it
	parked string       // the valet parking space it waits in
	// The party of the channel it was last bridged with, and what its
	// headers said then: kept after the bridge ends until the headers
	// say something new (a transfer's new destination), so that the
	// moment between the other side's hang-up and its own does not name
	// the number first dialled.
	was, saidThen bridge.Party
	bridged       bool // it has been bridged at least once
}

// party is what the mapper knows of any channel, a configured device's
// or not: who is on it, and the channel it is bridged with. FreeSWITCH's
// caller and callee fields do not follow a pickup, an intercept, a ring
// group's answer or a parked call's retrieval (they keep the number
// dialled, a feature code, or a phone's contact user), but the bridge
// does: a leg's remote party is whoever is on the channel it is bridged
// with.
type party struct {
	self bridge.Party
	peer string // Unique-ID of the bridged channel
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

	legs    map[string]*leg               // by Unique-ID
	parties map[string]*party             // by Unique-ID, every live channel
	valets  map[string]valetSpace         // parked channel's Unique-ID → its space
	tombs   map[string]time.Time          // Unique-ID → when it hung up
	regs    map[string]registration       // by registration Call-ID
	regSeq  map[string]seen               // newest registration event per Call-ID (kept a while after it goes)
	state   map[string]bridge.DeviceState // last reported per device
	// learnFrom is when the devices being learnt became configured
	// (beginLearn).
	learnFrom time.Time
	at        time.Time // when the event being applied happened
}

func newMapper(source string, devices []string) *mapper {
	m := &mapper{source: source, now: time.Now, tombs: map[string]time.Time{}, regSeq: map[string]seen{}}
	m.setDevices(devices)
	m.reset()
	return m
}

// valetSpace is a valet parking space a channel waits in, and the call
// its lamp shows ("" device when no configured device stands for it).
type valetSpace struct {
	space, device, callID string
}

func (m *mapper) reset() {
	m.legs = map[string]*leg{}
	m.parties = map[string]*party{}
	m.valets = map[string]valetSpace{}
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
//
// A call FreeSWITCH took without digest (its inbound ACL trusts the
// sender: Lamplighter passing on a busy-lamp line's key press) has no
// presence id; its channel is named after its From, user@host, which is
// then taken as the presence id.
func (m *mapper) channelDevice(presenceID, channelName string) string {
	var sofia string
	if rest, ok := strings.CutPrefix(channelName, "sofia/"); ok {
		sofia, _, _ = strings.Cut(channelName, "@")
		if presenceID == "" {
			if _, from, ok := strings.Cut(rest, "/"); ok && strings.Contains(from, "@") && !strings.Contains(from, ":") {
				presenceID = from
			}
		}
	}
	user, _, _ := strings.Cut(presenceID, "@")
	return m.pick(presenceID, user, sofia)
}

// event maps one event. Events the mapper has no use for give nothing.
func (m *mapper) event(e event) []bridge.Event {
	if m.at = e.micros("Event-Date-Timestamp"); m.at.IsZero() {
		m.at = m.now()
	}
	switch e.get("Event-Name") {
	case "CHANNEL_CREATE", "CHANNEL_CALLSTATE", "CHANNEL_ANSWER", "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE",
		"CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_HOLD", "CHANNEL_UNHOLD", "CALL_UPDATE",
		"CHANNEL_HANGUP", "CHANNEL_HANGUP_COMPLETE", "CHANNEL_DESTROY":
		return m.channel(e)
	case "PRESENCE_IN":
		return m.feature(e)
	case "CUSTOM":
		switch e.get("Event-Subclass") {
		case "valet_parking::info":
			return m.valet(e)
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
		out := m.bury(id)
		if l == nil {
			return out
		}
		return append(out, bridge.CallEnded{Source: m.source, CallID: id})
	}
	var out []bridge.Event
	p := m.parties[id]
	if p == nil {
		p = &party{}
		m.parties[id] = p
	}
	if p.self.IsZero() {
		p.self = selfParty(e)
	}
	newest := seq > l.seqOr0() || l.seqOr0() == 0
	if newest {
		// Who the channel is bridged with: a new leg knows the channel
		// that called it, a bridge and a call update name the other
		// side, an unbridge ends it; a bridge is told on one side only,
		// so the other side learns it here too.
		switch other := e.get("Other-Leg-Unique-ID"); {
		case name == "CHANNEL_UNBRIDGE":
			if q := m.parties[p.peer]; q != nil && q.peer == id {
				q.peer = ""
				out = append(out, m.refresh(p.peer)...)
			}
			p.peer = ""
		case strings.HasPrefix(e.get("Caller-Destination-Number"), interceptPrefix) && p.peer == "":
			// FreeSWITCH takes an INVITE with Replaces for a ringing
			// leg as an intercept of the call that leg belongs to.
			p.peer = strings.TrimPrefix(e.get("Caller-Destination-Number"), interceptPrefix)
		case other != "" && other != id && (name == "CHANNEL_BRIDGE" || name == "CALL_UPDATE" ||
			p.peer == "" && e.get("Call-Direction") != "inbound"):
			// A phone's own new leg names another only when it replaces
			// it (above); a leg FreeSWITCH places names its originator.
			if p.peer != other {
				p.peer = other
			}
			if q := m.parties[other]; q != nil && name == "CHANNEL_BRIDGE" && q.peer != id {
				q.peer = id
				out = append(out, m.refresh(other)...)
			}
		}
	}
	if l == nil {
		presence := e.get("Channel-Presence-ID")
		if presence == "" {
			presence = e.get("variable_presence_id")
		}
		dev := m.channelDevice(presence, e.get("Channel-Name"))
		if dev == "" {
			return out
		}
		l = &leg{call: bridge.Call{ID: id, Device: dev}}
		m.legs[id] = l
	}
	before := l.call
	m.addSIP(&l.call, e)
	if newest {
		l.seq = seq
		m.fill(l, e)
	}
	l.call.Remote = m.remoteOf(id, l)
	// A sofia leg towards its phone learns its Call-ID and tags from the
	// phone's 180 or 183 (CHANNEL_PROGRESS, _MEDIA), moments after
	// FreeSWITCH says it rings: until then they are pending; so is the
	// Call-ID of any sofia leg not answered yet that has not shown it.
	c := &l.call
	sofia := strings.HasPrefix(e.get("Channel-Name"), "sofia/") && c.State < bridge.CallConfirmed
	c.IDsPending = sofia && (c.CallID == "" ||
		c.Direction == bridge.Incoming && (c.LocalTag == "" || c.RemoteTag == "")) ||
		m.awaitsPeer(id, l)
	if l.call == before {
		return out
	}
	return append(out, bridge.CallUpdated{Source: m.source, Call: l.call})
}

// interceptPrefix starts the destination FreeSWITCH gives a leg whose
// INVITE carries Replaces for a ringing leg: "answer,intercept:<uuid>"
// of the call to take.
const interceptPrefix = "answer,intercept:"

// seqOr0 is the newest Event-Sequence applied to a leg, 0 for none (a
// channel of no configured device).
func (l *leg) seqOr0() uint64 {
	if l == nil {
		return 0
	}
	return l.seq
}

// selfParty is who is on a channel, from its first event: the user of its
// presence id (the directory's user), else, for a call into FreeSWITCH,
// its caller id, and for a call out, whom it dials.
func selfParty(e event) bridge.Party {
	user, _, _ := strings.Cut(e.get("Channel-Presence-ID"), "@")
	if e.get("Call-Direction") == "inbound" {
		number := e.get("Caller-Caller-ID-Number")
		if user == "" {
			user = number
		}
		name := ""
		if number == user {
			name = cleanName(e.get("Caller-Caller-ID-Name"), number)
		}
		return bridge.Party{Number: user, Name: name}
	}
	if user == "" {
		user = e.get("Caller-Destination-Number")
	}
	return bridge.Party{Number: user}
}

// remoteOf is a leg's remote party: the space it is parked in; else
// whoever is on the channel it is bridged with, unless that is the party
// its own headers name (they may add a name); else its headers' word.
func (m *mapper) remoteOf(id string, l *leg) bridge.Party {
	if l.parked != "" {
		return bridge.Party{Number: l.parked, Name: "Parked"}
	}
	if p := m.parties[id]; p != nil && p.peer != "" {
		if q := m.parties[p.peer]; q != nil && q.self.Number != "" {
			r := q.self
			if r.Number == l.said.Number {
				r = l.said // the same party, perhaps with a name
			}
			l.was, l.saidThen, l.bridged = r, l.said, true
			return r
		}
	}
	if !l.was.IsZero() && l.said == l.saidThen {
		return l.was
	}
	return l.said
}

// awaitsPeer reports whether a leg the phone placed was just answered
// and is not bridged yet: a ring group's member, an intercept or a valet
// space answered it, and the bridge that says who is about to follow
// (within milliseconds). Until then its remote party would be only the
// number dialled, so its ids count as pending (bridge.Call.IDsPending):
// its watchers' NOTIFY waits for the bridge, briefly. A call FreeSWITCH
// answers itself (voicemail, an IVR) never bridges: after a second it
// waits no more.
func (m *mapper) awaitsPeer(id string, l *leg) bool {
	c := &l.call
	if c.Direction != bridge.Outgoing || c.State != bridge.CallConfirmed || l.bridged || l.parked != "" {
		return false
	}
	if p := m.parties[id]; p != nil && p.peer != "" {
		return false
	}
	return !c.Answered.IsZero() && m.at.Sub(c.Answered) < time.Second
}

// refresh recomputes a leg's remote party after its bridge changed.
func (m *mapper) refresh(id string) []bridge.Event {
	l := m.legs[id]
	if l == nil {
		return nil
	}
	before := l.call
	l.call.Remote = m.remoteOf(id, l)
	if l.call.IDsPending && !m.awaitsPeer(id, l) && l.call.State == bridge.CallConfirmed {
		l.call.IDsPending = false
	}
	if l.call != before {
		return []bridge.Event{bridge.CallUpdated{Source: m.source, Call: l.call}}
	}
	return nil
}

// valet follows mod_valet_parking: a call that waits in a space names the
// space ("Parked", 6001) instead of the phone that parked it, and a
// configured device for the space (park+6001@domain, as the presence id
// FusionPBX's keys watch, or park+6001) shows the parked caller as a call,
// until the call is taken (bridge) or leaves (exit, hang-up).
func (m *mapper) valet(e event) []bridge.Event {
	id, space := e.get("Unique-ID"), e.get("Valet-Extension")
	if id == "" || space == "" {
		return nil
	}
	if _, dead := m.tombs[id]; dead {
		return nil
	}
	switch e.get("Action") {
	case "hold":
		var out []bridge.Event
		out = append(out, m.unvalet(id)...)
		_, domain, _ := strings.Cut(e.get("Channel-Presence-ID"), "@")
		v := valetSpace{space: space, device: m.pick("park+"+space+"@"+domain, "park+"+space), callID: "valet-" + space}
		m.valets[id] = v
		if l := m.legs[id]; l != nil {
			l.parked = space
			l.call.Remote = m.remoteOf(id, l)
			out = append(out, bridge.CallUpdated{Source: m.source, Call: l.call})
		}
		if v.device != "" {
			now := e.micros("Event-Date-Timestamp")
			if now.IsZero() {
				now = m.now()
			}
			c := bridge.Call{ID: v.callID, Device: v.device, Direction: bridge.Incoming, State: bridge.CallConfirmed,
				Started: now, Answered: now, CallID: e.get("variable_sip_call_id")}
			if p := m.parties[id]; p != nil {
				c.Remote = p.self
			}
			if l := m.legs[id]; l != nil && c.CallID == "" {
				c.CallID = l.call.CallID
			}
			out = append(out, bridge.CallUpdated{Source: m.source, Call: c})
		}
		return out
	case "bridge", "exit":
		out := m.unvalet(id)
		// Taken: the space says by whom before the bridge does.
		if to := e.get("Bridge-To-UUID"); to != "" && to != id {
			if p := m.parties[id]; p != nil {
				p.peer = to
			}
			if q := m.parties[to]; q != nil {
				q.peer = id
				out = append(out, m.refresh(to)...)
			}
		}
		if l := m.legs[id]; l != nil && l.parked != "" {
			l.parked = ""
			l.call.Remote = m.remoteOf(id, l)
			out = append(out, bridge.CallUpdated{Source: m.source, Call: l.call})
		}
		return out
	}
	return nil
}

// unvalet ends the space lamp's call of a channel that leaves its space.
func (m *mapper) unvalet(id string) []bridge.Event {
	v, ok := m.valets[id]
	if !ok {
		return nil
	}
	delete(m.valets, id)
	if v.device == "" {
		return nil
	}
	return []bridge.Event{bridge.CallEnded{Source: m.source, CallID: v.callID}}
}

// bury forgets a channel and keeps its tombstone; old tombstones go. A
// space it was parked in goes out.
func (m *mapper) bury(id string) []bridge.Event {
	out := m.unvalet(id)
	delete(m.legs, id)
	delete(m.parties, id)
	now := m.now()
	m.tombs[id] = now
	if len(m.tombs)%256 == 0 {
		for k, t := range m.tombs {
			if now.Sub(t) > tombstoneTTL {
				delete(m.tombs, k)
			}
		}
	}
	return out
}

// fill sets the state part of a call from the newest event.
func (m *mapper) fill(l *leg, e event) {
	c := &l.call
	// Call-Direction is FreeSWITCH's: "inbound" is a leg the phone
	// started, so the phone is calling out.
	if e.get("Call-Direction") == "inbound" {
		c.Direction = bridge.Outgoing
	} else {
		c.Direction = bridge.Incoming
	}
	c.State, c.Held = callState(c.Direction, e.get("Channel-Call-State"), e.get("Answer-State"))
	l.said = remoteParty(c.Direction, e.get)
	if t := e.micros("Caller-Channel-Created-Time"); !t.IsZero() {
		c.Started = t
	} else if c.Started.IsZero() {
		c.Started = e.micros("Event-Date-Timestamp")
	}
	if t := e.micros("Caller-Channel-Answered-Time"); !t.IsZero() {
		c.Answered = t
	}
}

// addSIP keeps the SIP Call-ID and tags of a sofia leg. A pickup INVITE
// with Replaces reaches FreeSWITCH, the UA that answers it, so the
// dialog's local tag for watchers (bridge.Call.LocalTag) is FreeSWITCH's
// own tag of the leg and the remote tag the phone's: on a leg
// FreeSWITCH sends to the phone (outbound) FreeSWITCH's tag is the From
// tag; on a leg the phone started (inbound) it is the To tag.
func (m *mapper) addSIP(c *bridge.Call, e event) {
	if id := e.get("variable_sip_call_id"); id != "" {
		c.CallID = id
	}
	from, to := e.get("variable_sip_from_tag"), e.get("variable_sip_to_tag")
	if e.get("Call-Direction") == "inbound" {
		from, to = to, from
	}
	// Now from is FreeSWITCH's tag and to the phone's.
	if from != "" {
		c.LocalTag = from
	}
	if to != "" {
		c.RemoteTag = to
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
	if number == "" || strings.HasPrefix(number, interceptPrefix) {
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

// isSpace reports whether a device is a valet parking space
// (park+6001@domain), which no phone registers: it is always there, idle
// while empty.
func isSpace(dev string) bool { return strings.HasPrefix(dev, "park+") }

// featurePrefixes are the presence ids with a protocol prefix that
// FusionPBX's feature keys watch and its scripts announce as PRESENCE_IN
// (park+ spaces follow mod_valet_parking's own events instead).
var featurePrefixes = []string{"flow+", "dnd+", "agent+", "voicemail+"}

// isFeature reports whether a device is a feature key's presence id
// (dnd+1000@domain or dnd+1000).
func isFeature(dev string) bool {
	for _, p := range featurePrefixes {
		if strings.HasPrefix(dev, p) {
			return true
		}
	}
	return false
}

// feature applies a PRESENCE_IN for a feature key (FusionPBX's
// do-not-disturb, call flow, call-center agent and voicemail keys): the
// state FreeSWITCH would show the key, by answer-state, becomes the
// device's state. Every other PRESENCE_IN repeats a channel or
// registration event, and gives nothing.
func (m *mapper) feature(e event) []bridge.Event {
	// FusionPBX's lamp helper (resources/functions/blf.lua) names the key
	// by its protocol and the plain presence id (proto dnd, from
	// 1000@domain); other scripts put the prefix in the id itself.
	from := e.get("from")
	if !isFeature(from) {
		if p := e.get("proto") + "+"; from != "" && slices.Contains(featurePrefixes, p) {
			from = p + from
		} else {
			return nil
		}
	}
	user, _, _ := strings.Cut(from, "@")
	dev := m.pick(from, user)
	if dev == "" {
		return nil
	}
	var st bridge.DeviceState
	switch strings.ToLower(e.get("answer-state")) {
	case "confirmed":
		st = bridge.DeviceInUse
	case "early":
		st = bridge.DeviceRinging
	case "terminated", "":
		st = bridge.DeviceIdle
	default:
		return nil
	}
	if old, ok := m.state[dev]; ok && old == st {
		return nil
	}
	m.state[dev] = st
	return []bridge.Event{bridge.DeviceStateChanged{Source: m.source, Device: dev, State: st}}
}

// features returns the configured feature devices, whose state a probe
// asks FusionPBX's scripts for after a connect.
func (m *mapper) features() []string {
	var out []string
	for d := range m.devices {
		if isFeature(d) {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return out
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
	if isFeature(dev) {
		return nil // no registration: its state is its PRESENCE_IN's
	}
	st := bridge.DeviceUnavailable
	if m.reachable(dev) || isSpace(dev) {
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
	// sip holds what the adapter read of the leg besides (uuid_dump):
	// its SIP Call-ID and tags, and Call-Direction.
	sip textproto.MIMEHeader
}

// listed takes a registration `show registrations` lists, for a
// configured device (one of only, when only is not nil).
func (m *mapper) listed(r registrationRow, now time.Time, only map[string]bool) {
	profile := ""
	if rest, ok := strings.CutPrefix(r.URL, "sofia/"); ok {
		profile, _, _ = strings.Cut(rest, "/")
	}
	dev := m.regDevice(r.User, r.Realm, profile)
	if dev == "" || r.Token == "" || only != nil && !only[dev] {
		return
	}
	// FreeSWITCH lists it, so it is live now, whatever the two clocks
	// say; its expiry counts from now at the earliest.
	exp := now.Add(time.Hour)
	if n, err := strconv.ParseInt(r.Expires, 10, 64); err == nil && n > 0 {
		exp = now.Add(max(time.Until(time.Unix(n, 0)), 0) + regGrace)
	}
	m.regs[r.Token] = registration{device: dev, expires: exp}
}

// beginLearn configures the devices the directory gave since the
// snapshot (all is the whole list now) and returns them; their
// registrations, read apart, come to finishLearn. Events for them count
// from now on.
func (m *mapper) beginLearn(all []string) []string {
	var fresh []string
	for _, d := range all {
		if !m.devices[d] {
			fresh = append(fresh, d)
		}
	}
	if len(fresh) > 0 {
		m.setDevices(all)
		m.learnFrom = m.now()
	}
	return fresh
}

// finishLearn takes what `show registrations` listed for the fresh
// devices (but no registration an event has spoken of since beginLearn:
// the event is newer) and gives their states. A call already up on one
// shows from its next event.
func (m *mapper) finishLearn(fresh []string, regs []registrationRow) []bridge.Event {
	isFresh := make(map[string]bool, len(fresh))
	for _, d := range fresh {
		isFresh[d] = true
	}
	now := m.now()
	for _, r := range regs {
		if s, ok := m.regSeq[r.Token]; ok && !s.at.Before(m.learnFrom) {
			continue
		}
		m.listed(r, now, isFresh)
	}
	var out []bridge.Event
	for _, d := range fresh {
		if isFeature(d) {
			if _, ok := m.state[d]; !ok {
				m.state[d] = bridge.DeviceIdle // until a probe's answer
				out = append(out, bridge.DeviceStateChanged{Source: m.source, Device: d, State: bridge.DeviceIdle})
			}
			continue
		}
		out = append(out, m.report(d)...)
	}
	return out
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
		m.listed(r, now, nil)
	}
	for _, d := range configured {
		st := bridge.DeviceUnavailable
		if m.reachable(d) || isSpace(d) || isFeature(d) {
			// A feature key is off until a probe's answer says otherwise.
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
		if r.sip != nil {
			m.addSIP(&c, event(r.sip))
		}
		m.legs[r.UUID] = &leg{call: c, said: c.Remote}
		snap.Calls = append(snap.Calls, c)
	}
	return snap
}
