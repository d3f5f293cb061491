package presence

import (
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// BenchmarkBuildNotify builds the in-dialog NOTIFY of a dialog
// subscription (headers, route, dialog-info body) and serialises it as it
// goes on the wire.
func BenchmarkBuildNotify(b *testing.B) {
	env := newEnv(b, trusted)
	var target, local, remote sip.Uri
	sip.ParseUri("sip:watcher@127.0.0.1:5099", &target)
	sip.ParseUri("sip:100@pbx.example.com", &local)
	sip.ParseUri("sip:200@pbx.example.com", &remote)
	sub := &Subscription{ID: "t0", CallID: "c@w", RemoteTag: "rt", UserID: "debbie", Entity: "sip:100@pbx.example.com",
		Package: PackageDialog, LocalURI: local, RemoteURI: remote, Transport: "UDP", Source: "127.0.0.1:5099",
		LocalHost: "127.0.0.1", LocalPort: 5060, target: target, expires: time.Now().Add(time.Hour)}
	env.bridge.Apply(answered("200"))
	st, _ := env.bridge.State("debbie")
	b.ReportAllocs()
	var n int
	for b.Loop() {
		sub.mu.Lock()
		sub.cseq++
		req := env.srv.buildNotify(sub, st, sub.cseq, "", 3600)
		sub.mu.Unlock()
		n = len(req.String())
	}
	b.SetBytes(int64(n))
}
