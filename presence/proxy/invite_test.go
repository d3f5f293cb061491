package proxy

import (
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

func TestAckForAFailureHasTheTopViaAlone(t *testing.T) {
	e := newEnv(t)
	e.waitHealth(true)
	phone := listenPeer(t, "127.0.0.1:0")
	register(t, e, phone, "100")
	phone.sendTo(e.udp, phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101",
		callID: "ack-1", body: "v=0\r\n"}.String())
	inv := e.pbx.request(sip.INVITE)
	e.pbx.sendTo(inv.Source(), responseTo(inv, 486, "Busy Here", "callee"))
	ack := e.pbx.request(sip.ACK)
	// RFC 3261 §17.1.1.3: one Via, the INVITE's top one (ours), and the
	// tag of the response's To; nothing of the phone's.
	vias := ack.GetHeaders("Via")
	if len(vias) != 1 || vias[0].Value() != inv.Via().Value() {
		t.Errorf("the ACK's Vias: %v, want only %s", vias, inv.Via().Value())
	}
	if ack.Contact() != nil {
		t.Errorf("the ACK has a Contact: %s", ack.Contact().Value())
	}
	if tag, _ := ack.To().Params.Get("tag"); tag != "callee" || ack.CSeq().SeqNo != inv.CSeq().SeqNo {
		t.Errorf("the ACK: %s", ack)
	}
	res := phone.response(sip.INVITE, 200)
	if res.StatusCode != 486 {
		t.Errorf("the phone got %d", res.StatusCode)
	}
	// The phone ACKs its 486 (to Lamplighter, hop by hop).
	tag, _ := res.To().Params.Get("tag")
	phone.sendTo(e.udp, phoneRequest{method: "ACK", uri: "sip:101@pbx.test", from: phone.addr(), user: "100", toUser: "101",
		callID: "ack-1", branch: res.Via().Params.GetOr("branch", ""), toTag: tag}.String())
	// The PBX sends its 486 again (its ACK was lost): ACKed again, not
	// passed on twice.
	e.pbx.sendTo(inv.Source(), responseTo(inv, 486, "Busy Here", "callee"))
	e.pbx.request(sip.ACK)
	phone.quiet(300*time.Millisecond, "the phone's INVITE was answered once")
}

// A call forwarded by a process that is gone (Lamplighter restarted
// while it rang): the callee's answer and the caller's CANCEL match no
// transaction of the new process, and go on statelessly, with the
// branch the INVITE had.
func TestStrayResponsesAndCancelsAfterARestart(t *testing.T) {
	key := make([]byte, 32)
	for i := range key {
		key[i] = byte(i)
	}
	state := t.TempDir() // the registrations through the proxy are kept here
	withKey := func(o *Options, _ *presenceOptions) { o.TokenKey, o.StateDir = key, state }
	first := newEnv(t, withKey)
	first.waitHealth(true)
	caller := listenPeer(t, "127.0.0.1:0")
	register(t, first, caller, "100")
	invite := phoneRequest{method: "INVITE", uri: "sip:101@pbx.test", from: caller.addr(), user: "100", toUser: "101",
		callID: "restart-1", branch: "z9hG4bKcaller1", body: "v=0\r\n"}
	caller.sendTo(first.udp, invite.String())
	inv := first.pbx.request(sip.INVITE)
	caller.response(sip.INVITE, 100)

	// The same listener's address, a new process (same token key): its
	// PBX peer is the same socket.
	second := newEnvAt(t, first, withKey)
	second.waitHealth(true)

	// The PBX rings; its 180 reaches the caller through the new process.
	second.pbx.sendTo(inv.Source(), responseTo(inv, 180, "Ringing", "pbx"))
	if res := caller.response(sip.INVITE, 180); res.StatusCode != 180 {
		t.Fatalf("the caller got %d, want the 180", res.StatusCode)
	}
	// The caller gives up: its CANCEL goes on to the PBX with the
	// INVITE's branch, so that the PBX finds the INVITE.
	cancel := invite
	cancel.method = "CANCEL"
	cancel.body = ""
	caller.sendTo(second.udp, cancel.String())
	got := second.pbx.request(sip.CANCEL)
	if got.Via().Value() != inv.Via().Value() {
		t.Errorf("the CANCEL's Via %s, want the INVITE's %s", got.Via().Value(), inv.Via().Value())
	}
	second.pbx.sendTo(got.Source(), responseTo(got, 200, "OK", "pbx"))
	second.pbx.sendTo(inv.Source(), responseTo(inv, 487, "Request Terminated", "pbx"))
	// Both answers reach the caller, in whatever order they come.
	got200, got487 := false, false
	deadline := time.After(5 * time.Second)
	for !got200 || !got487 {
		select {
		case m := <-caller.in:
			if r, ok := m.(*sip.Response); ok {
				got200 = got200 || r.CSeq().MethodName == sip.CANCEL && r.StatusCode == 200
				got487 = got487 || r.CSeq().MethodName == sip.INVITE && r.StatusCode == 487
			}
		case <-deadline:
			t.Fatalf("the caller got the CANCEL's 200: %v, the INVITE's 487: %v", got200, got487)
		}
	}
	// The caller's ACK for the 487 matches no transaction either: it goes
	// on with the INVITE's branch, so that the PBX's INVITE transaction
	// ends instead of sending its 487 again and again (on the real
	// FreeSWITCH those retransmissions then met the next restart's
	// closed port, and the ICMP error failed a ringing call with 503).
	ack := invite
	ack.method, ack.body, ack.toTag = "ACK", "", "pbx"
	caller.sendTo(second.udp, ack.String())
	if got := second.pbx.request(sip.ACK); got.Via().Value() != inv.Via().Value() {
		t.Errorf("the ACK's Via %s, want the INVITE's %s", got.Via().Value(), inv.Via().Value())
	}
	// A response whose next hop is nobody the proxy knows is dropped.
	stranger := listenPeer(t, "127.0.0.1:0")
	forged := strings.Replace(responseTo(inv, 200, "OK", "x"), caller.addr(), stranger.addr(), -1)
	forged = strings.Replace(forged, "rport="+strings.Split(caller.addr(), ":")[1], "rport="+strings.Split(stranger.addr(), ":")[1], 1)
	second.pbx.sendTo(inv.Source(), forged)
	stranger.quiet(300*time.Millisecond, "a stray for an address nobody registered goes nowhere")
}
