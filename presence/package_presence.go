package presence

import (
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
)

// presencePackage is Event: presence (RFC 3856): PIDF with RPID and the
// phonestate extension, or XPIDF for older Polycom and Cisco phones whose
// Accept names it and not PIDF.
type presencePackage struct{}

func (presencePackage) Token() Package { return PackagePresence }

func (presencePackage) MediaTypes() []string { return []string{body.TypePIDF, body.TypeXPIDF} }

func (presencePackage) Negotiate(accept string) (string, bool) {
	switch {
	case saysNothing(accept), acceptable(accept, body.TypePIDF):
		return body.TypePIDF, true
	case acceptable(accept, body.TypeXPIDF):
		return body.TypeXPIDF, true
	}
	return "", false
}

func (presencePackage) Versioned() bool { return false }

func (p presencePackage) Render(dst []byte, sub *Subscription, st *bridge.State, opt body.Options) []byte {
	return p.RenderMember(dst, sub.Entity, sub.MediaType, st, opt)
}

// RenderMember makes presencePackage listable.
func (presencePackage) RenderMember(dst []byte, entity, mediaType string, st *bridge.State, opt body.Options) []byte {
	if mediaType == body.TypeXPIDF {
		return body.XPIDF(dst, entity, st)
	}
	return body.PIDF(dst, entity, st, opt)
}
