package presence

import (
	"context"
	"net/netip"
	"testing"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// runCheck is a Forwarder that only asks, the moment it is run, whether
// sipgo's transport layer already has the server's UDP listener.
type runCheck struct{ got chan error }

func (runCheck) Forwards(*sipmsg.Request) bool                   { return false }
func (runCheck) FlowUser(*sipmsg.Request) (string, string, bool) { return "", "", false }
func (runCheck) Serve(*sip.Request, sip.ServerTransaction)       {}
func (runCheck) Cancel(*sipmsg.Request) CancelResult             { return CancelUnknown }
func (runCheck) Response(*sip.Response) bool                     { return false }
func (runCheck) HoldsFlow(string, netip.AddrPort) bool           { return false }
func (r runCheck) Run(ctx context.Context, s ForwarderHost) error {
	addr := s.Addrs()[0].String()
	c, err := s.UserAgent().TransportLayer().GetConnection("udp", addr)
	if err == nil && c != nil {
		c.TryClose()
	}
	r.got <- err
	<-ctx.Done()
	return nil
}

func TestAForwarderRunsOnceSipgoHasTheListeners(t *testing.T) {
	// A sipgo client sending before sipgo's ServeUDP took the listener
	// binds the listener's address itself and fails ("address already in
	// use"): the proxy's first health OPTIONS did, marking a PBX down for
	// a second at every start. Each run here is a fresh server.
	for range 20 {
		f := runCheck{got: make(chan error, 1)}
		newEnv(t, func(o *Options) { o.Forwarder = f })
		if err := <-f.got; err != nil {
			t.Fatalf("the forwarder started before sipgo served the UDP listener: %v", err)
		}
	}
}
