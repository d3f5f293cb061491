package presence

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
	"github.com/lamplighter/lamplighter/presence/sipmsg"
)

// Event packages (RFC 6665 §7): the server knows each only through the
// eventPackage interface, by its token, so that a new package (say,
// message-summary) is a new file and a line in makePackages, not edits
// across the server. The subscription machinery (dialogs, refresh,
// expiry, NOTIFY transactions, pacing, persistence) is the same for all.

// Package is the token of an event package, as the Event header names it.
type Package string

// The event packages the server answers.
const (
	PackagePresence Package = "presence" // application/pidf+xml (RFC 3856), or XPIDF for older phones
	PackageDialog   Package = "dialog"   // application/dialog-info+xml (RFC 4235)
)

// String returns the token.
func (p Package) String() string { return string(p) }

// UnmarshalJSON reads a token, or the number state files written before
// tokens held (0 presence, 1 dialog).
func (p *Package) UnmarshalJSON(b []byte) error {
	var tok string
	if err := json.Unmarshal(b, &tok); err == nil {
		*p = Package(tok)
		return nil
	}
	var n int
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("package: %s is neither a token nor a number", b)
	}
	switch n {
	case 0:
		*p = PackagePresence
	case 1:
		*p = PackageDialog
	default:
		return fmt.Errorf("package: unknown number %d", n)
	}
	return nil
}

// EventPackages lists the packages a server answers, for reports that
// show every package, even one nobody subscribes to.
func EventPackages() []Package {
	var out []Package
	for _, p := range makePackages().list {
		out = append(out, p.Token())
	}
	return out
}

// eventPackage is one event package: what a subscription to it may get
// and how its documents are made.
type eventPackage interface {
	// Token is the package's name in the Event header.
	Token() Package
	// MediaTypes are the types it renders, preferred first (a 406's and
	// OPTIONS' Accept).
	MediaTypes() []string
	// Negotiate picks the type for a subscription's Accept list, as the
	// subscription keeps it ("" when it sent none: the package's
	// default); ok is false when it takes none of them (406).
	Negotiate(accept string) (mediaType string, ok bool)
	// Versioned reports whether its documents carry a version that
	// grows with every NOTIFY (dialog-info).
	Versioned() bool
	// Render appends the document of st, in sub.MediaType, for sub.
	Render(dst []byte, sub *Subscription, st *bridge.State, opt body.Options) []byte
}

// What some packages add to eventPackage:

// ownOnly is a package whose subscriber may only subscribe to the user it
// authenticated as (a trusted network may subscribe to anyone).
type ownOnly interface{ OwnOnly() }

// bodyTaker is a package that takes a request in a SUBSCRIBE's body; it
// answers with a status code (200 when it did what was asked).
type bodyTaker interface {
	TakeBody(h *packageHost, sub *Subscription, contentType string, b []byte) (code int, reason string)
}

// notifyBuilder is a package told that a NOTIFY of a subscription was
// just built (called with the subscription's lock held), so that what it
// kept for that NOTIFY can go.
type notifyBuilder interface {
	Built(sub *Subscription)
}

// packageHost is what an event package may use of the server when it
// takes a request: the person states (in the bridge, and saved when they
// are a person's own word), and the log; not the server itself.
type packageHost struct {
	states States
	origin string      // Options.PersonOrigin: where a phone's own keys set a person's state
	saved  PersonStore // nil: not kept across restarts
	log    *slog.Logger
}

// changeFilter is a package that shows only part of a user's state: a
// NOTIFY goes only when that part differs (otherwise, whenever the state
// does).
type changeFilter interface {
	Differs(sub *Subscription, old, cur *bridge.State) bool
}

// packages are the event packages a server answers, by token, made once
// by New.
type packages struct {
	byToken map[Package]eventPackage
	list    []eventPackage // in the order they are offered
	// allowEvents and accept are the Allow-Events and Accept values that
	// name them all.
	allowEvents, accept string
}

// makePackages is the one place that names the packages.
func makePackages() *packages {
	ps := &packages{byToken: map[Package]eventPackage{}}
	var events, types []string
	for _, p := range []eventPackage{presencePackage{}, dialogPackage{}, asFeaturePackage{}, winfoPackage{}} {
		ps.byToken[p.Token()] = p
		ps.list = append(ps.list, p)
		events = append(events, p.Token().String())
		types = append(types, p.MediaTypes()...)
	}
	ps.allowEvents, ps.accept = strings.Join(events, ", "), strings.Join(types, ", ")
	return ps
}

// lookup returns the package of a token.
func (ps *packages) lookup(token Package) (eventPackage, bool) {
	p, ok := ps.byToken[token]
	return p, ok
}

// acceptable reports whether an Accept list (a subscription's, as kept)
// takes mediaType: by name, */* or type/*. An empty list takes nothing
// (the package's default is the caller's to apply).
func acceptable(accept, mediaType string) bool {
	major, _, _ := strings.Cut(mediaType, "/")
	for part := range sipmsg.SplitList(accept) {
		t, _, _ := strings.Cut(part, ";")
		t = strings.TrimSpace(t)
		if strings.EqualFold(t, mediaType) || t == "*/*" || (strings.HasSuffix(t, "/*") && strings.EqualFold(t[:len(t)-2], major)) {
			return true
		}
	}
	return false
}

// negotiateOne is Negotiate for a package of one media type: it, when an
// Accept list names it or says nothing.
func negotiateOne(accept, mediaType string) (string, bool) {
	if saysNothing(accept) || acceptable(accept, mediaType) {
		return mediaType, true
	}
	return "", false
}

// saysNothing reports whether an Accept list names no type at all.
func saysNothing(accept string) bool {
	for part := range sipmsg.SplitList(accept) {
		if strings.TrimSpace(part) != "" {
			return false
		}
	}
	return true
}
