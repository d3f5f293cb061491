package proxy

import (
	"testing"

	"github.com/emiago/sipgo/sip"
)

func TestReplacesIsPutTheWayThePBXMatchesIt(t *testing.T) {
	p := &Proxy{opt: Options{Dialogs: func(callID string) (string, string, bool) {
		if callID == "ringing@pbx" {
			return "pbx-tag", "phone-tag", true
		}
		return "", "", false
	}}}
	p.opt.defaults()
	p.log = p.opt.Logger
	for _, c := range []struct{ name, in, want string }{
		{"as dialog-info gives it", "ringing@pbx;to-tag=pbx-tag;from-tag=phone-tag", "ringing@pbx;to-tag=pbx-tag;from-tag=phone-tag"},
		{"swapped (a phone reading it from the other side)", "ringing@pbx;from-tag=pbx-tag;to-tag=phone-tag;early-only",
			"ringing@pbx;to-tag=pbx-tag;from-tag=phone-tag;early-only"},
		{"a Call-ID alone (Snom)", "ringing@pbx", "ringing@pbx;to-tag=pbx-tag;from-tag=phone-tag"},
		{"another dialog's tags", "ringing@pbx;to-tag=x;from-tag=y", "ringing@pbx;to-tag=x;from-tag=y"},
		{"a call Lamplighter does not show (an attended transfer)", "other@pbx;to-tag=phone-tag;from-tag=pbx-tag",
			"other@pbx;to-tag=phone-tag;from-tag=pbx-tag"},
	} {
		req := sip.NewRequest(sip.INVITE, sip.Uri{Scheme: "sip", User: "101", Host: "pbx.test"})
		req.AppendHeader(sip.NewHeader("Replaces", c.in))
		p.orientReplaces(req)
		if got := req.GetHeader("Replaces").Value(); got != c.want {
			t.Errorf("%s: %q became %q, want %q", c.name, c.in, got, c.want)
		}
	}
}
