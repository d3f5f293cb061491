package presence

import (
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
)

// dialogPackage is Event: dialog (RFC 4235), what desk phones' busy-lamp
// keys subscribe to: dialog-info documents whose version grows with every
// NOTIFY.
type dialogPackage struct{}

func (dialogPackage) Token() Package { return PackageDialog }

func (dialogPackage) MediaTypes() []string { return []string{body.TypeDialogInfo} }

func (dialogPackage) Negotiate(accept string) (string, bool) {
	return negotiateOne(accept, body.TypeDialogInfo)
}

func (dialogPackage) Versioned() bool { return true }

func (p dialogPackage) Render(dst []byte, sub *Subscription, st *bridge.State, opt body.Options) []byte {
	return p.RenderMember(dst, sub.Entity, sub.MediaType, st, opt)
}

// RenderMember makes dialogPackage listable.
func (dialogPackage) RenderMember(dst []byte, entity, _ string, st *bridge.State, opt body.Options) []byte {
	return body.DialogInfo(dst, entity, st, opt)
}
