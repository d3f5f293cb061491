package proxy

import (
	"encoding/json"
	"net/netip"
	"strings"
	"time"
)

// In a cluster each registration accepted through the proxy is shared
// with the other nodes (ShareFlows, ApplyFlow): a phone's flow is what
// its SUBSCRIBEs are trusted by (FlowUser), so the node that takes over
// after a failover, reached at the same address (a virtual IP), knows
// the phone without a challenge and without waiting for it to register
// again. Over UDP the phone's flow is the same through any node; over
// TCP and TLS a phone that reconnects comes from another port, and its
// next REGISTER makes the new flow known.

// FlowKind is the kind of record under which flows are shared.
const FlowKind = "proxy-flow"

// ShareFlows has share called with each registration this node accepts
// through the proxy: the flow's id, the record in JSON (nil: the
// registration was removed) and when it lapses; ApplyFlow takes the same
// on another node. Call it before Run.
func (p *Proxy) ShareFlows(share func(id string, data []byte, until time.Time)) { p.share = share }

// shareBinding hands b (removed: its expiry zero) to ShareFlows.
func (p *Proxy) shareBinding(b binding) {
	if p.share == nil {
		return
	}
	r := p.record(b)
	if r.Expires.IsZero() {
		p.share(r.ID(), nil, time.Time{})
		return
	}
	if data, err := json.Marshal(r); err == nil {
		p.share(r.ID(), data, r.Expires)
	}
}

// ApplyFlow installs a registration another node accepted (data: a
// FlowRecord in JSON), or removes the flow id's (data nil). A record of a
// PBX not proxied here, or damaged, is ignored.
func (p *Proxy) ApplyFlow(id string, data []byte) {
	var b binding
	if data == nil {
		transport, addr, ok := strings.Cut(id, ":")
		ap, err := netip.ParseAddrPort(addr)
		if !ok || err != nil {
			return
		}
		old, ok := p.binds.onFlow(flow{transport: strings.ToUpper(transport), addr: ap})
		if !ok {
			return
		}
		b = old
		b.expires = time.Time{}
	} else {
		var r FlowRecord
		if err := json.Unmarshal(data, &r); err != nil {
			p.log.Debug("a shared registration cannot be read: ignored", "flow", id, "err", err)
			return
		}
		var ok bool
		if b, ok = p.fromRecord(r); !ok {
			return
		}
	}
	if !p.binds.put(b) {
		p.log.Warn("too many registrations through the proxy: one another node accepted is not remembered",
			"user", b.user, "flow", b.flow.String(), "max", p.opt.MaxBindings)
	}
	p.observeRegistrations(b.target, b.user)
}
