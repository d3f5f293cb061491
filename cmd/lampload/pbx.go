package main

import (
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lamplighter/lamplighter/adapters/esl/esltest"
)

// user is one person in the generated directory, with one FreeSWITCH
// device named by the extension.
type user struct {
	id, ext  string
	domain   string // the presence id's and the SUBSCRIBE's domain
	tenant   bool   // the domain is a tenant's: SUBSCRIBEs name it, not the server's address
	watchers int    // subscriptions to this user

	mu   sync.Mutex
	step int    // where the user's call cycle stands: 0 idle, 1 ringing, 2 in a call
	call string // Unique-ID of the current call
	out  *change
}

// host is the user's domain ("lampload" unless a tenant's).
func (u *user) host() string {
	if u.domain == "" {
		return "lampload"
	}
	return u.domain
}

// change is a state change sent to Lamplighter that watchers have yet to
// be told of.
type change struct {
	want string // the phonestate the NOTIFYs must carry
	sent time.Time
	seen int
	done chan struct{}
}

// pbx drives state changes through the FreeSWITCH event socket double.
type pbx struct {
	esl   *esltest.Server
	calls atomic.Uint64
}

// registrations is `show registrations as json` with every user's device
// registered for a day, so that users start idle rather than offline.
func registrations(users []*user) []byte {
	b := fmt.Appendf(nil, `{"row_count":%d,"rows":[`, len(users))
	exp := time.Now().Add(24 * time.Hour).Unix()
	for i, u := range users {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, `{"reg_user":"%s","realm":"%s","token":"tok%s","url":"sofia/internal/sip:%s@127.0.0.1:5090",`+
			`"expires":"%d","network_ip":"127.0.0.1","network_port":"5090","network_proto":"udp","hostname":"lampload","metadata":""}`,
			u.ext, u.host(), u.id, u.ext, exp)
	}
	return append(b, "]}"...)
}

// directory is `list_users` for the users (and extra, added as a change
// of the directory).
func directory(users []*user, extra *user) []byte {
	b := []byte("userid|context|domain|group|contact|callgroup|effective_caller_id_name|effective_caller_id_number\n")
	if extra != nil {
		users = append(users[:len(users):len(users)], extra)
	}
	for _, u := range users {
		b = fmt.Appendf(b, "%s|default|%s|default|error/user_not_registered|load|Load %s|%s\n", u.ext, u.host(), u.ext, u.ext)
	}
	return append(b, "\n+OK\n"...)
}

// advance sends the next event of u's call cycle (an incoming call rings,
// is answered, hangs up) and notes it as u's outstanding change. Called
// with u.mu held.
func (p *pbx) advance(u *user) error {
	now := time.Now()
	var headers []string
	var want string
	switch u.step {
	case 0:
		n := p.calls.Add(1)
		u.call = fmt.Sprintf("6c1a%04x-10ad-4000-8000-%012d", n&0xffff, n)
		headers, want = p.channel("CHANNEL_CALLSTATE", u, "RINGING", "ringing", now), "ringing"
	case 1:
		headers, want = p.channel("CHANNEL_ANSWER", u, "ACTIVE", "answered", now), "busy"
	default:
		headers, want = p.channel("CHANNEL_HANGUP_COMPLETE", u, "HANGUP", "hangup", now), "idle"
	}
	u.out = &change{want: want, sent: now, done: make(chan struct{})}
	if err := p.esl.Send(headers...); err != nil {
		u.out = nil
		return err
	}
	u.step = (u.step + 1) % 3
	return nil
}

// channel builds a channel event for a call from 2000 to u's phone, with
// the headers FreeSWITCH 1.10 puts on every channel event (about 2 KB).
func (p *pbx) channel(name string, u *user, callState, answerState string, now time.Time) []string {
	us := strconv.FormatInt(now.UnixMicro(), 10)
	answered := "0"
	if answerState == "answered" {
		answered = us
	}
	channel := "sofia/internal/" + u.ext + "@127.0.0.1:5090"
	return []string{
		"Event-Name", name,
		"Core-UUID", "a16f314b-e4d1-4912-9fbf-ce7c43b7032f",
		"FreeSWITCH-Hostname", "lampload",
		"FreeSWITCH-Switchname", "lampload",
		"FreeSWITCH-IPv4", "127.0.0.1",
		"FreeSWITCH-IPv6", "::1",
		"Event-Date-Local", now.Format("2006-01-02 15:04:05"),
		"Event-Date-GMT", now.UTC().Format(time.RFC1123),
		"Event-Date-Timestamp", us,
		"Event-Calling-File", "switch_channel.c",
		"Event-Calling-Function", "switch_channel_perform_set_callstate",
		"Event-Calling-Line-Number", "301",
		"Channel-State", "CS_EXECUTE",
		"Channel-Call-State", callState,
		"Channel-State-Number", "4",
		"Channel-Name", channel,
		"Unique-ID", u.call,
		"Call-Direction", "outbound",
		"Presence-Call-Direction", "outbound",
		"Channel-HIT-Dialplan", "false",
		"Channel-Presence-ID", u.ext + "@" + u.host(),
		"Channel-Call-UUID", u.call,
		"Answer-State", answerState,
		"Caller-Direction", "outbound",
		"Caller-Logical-Direction", "outbound",
		"Caller-Username", "2000",
		"Caller-Dialplan", "XML",
		"Caller-Caller-ID-Name", "Load Caller",
		"Caller-Caller-ID-Number", "2000",
		"Caller-Orig-Caller-ID-Name", "Load Caller",
		"Caller-Orig-Caller-ID-Number", "2000",
		"Caller-Callee-ID-Name", "Outbound Call",
		"Caller-Callee-ID-Number", u.ext,
		"Caller-Network-Addr", "127.0.0.1",
		"Caller-ANI", "2000",
		"Caller-Destination-Number", u.ext,
		"Caller-Unique-ID", u.call,
		"Caller-Source", "mod_sofia",
		"Caller-Context", "default",
		"Caller-Channel-Name", channel,
		"Caller-Profile-Index", "1",
		"Caller-Profile-Created-Time", us,
		"Caller-Channel-Created-Time", us,
		"Caller-Channel-Answered-Time", answered,
		"Caller-Channel-Progress-Time", "0",
		"Caller-Channel-Progress-Media-Time", "0",
		"Caller-Channel-Hangup-Time", "0",
		"Caller-Channel-Transfer-Time", "0",
		"Caller-Channel-Resurrect-Time", "0",
		"Caller-Channel-Bridged-Time", "0",
		"Caller-Channel-Last-Hold", "0",
		"Caller-Channel-Hold-Accum", "0",
		"Caller-Screen-Bit", "true",
		"Caller-Privacy-Hide-Name", "false",
		"Caller-Privacy-Hide-Number", "false",
		"variable_direction", "outbound",
		"variable_uuid", u.call,
		"variable_session_id", strconv.FormatUint(p.calls.Load(), 10),
		"variable_sip_profile_name", "internal",
		"variable_presence_id", u.ext + "@" + u.host(),
		"variable_sip_call_id", u.call + "@lampload",
		"variable_sip_to_tag", "ft" + u.call[:8],
		"variable_sip_from_tag", "tt" + u.call[:8],
	}
}
