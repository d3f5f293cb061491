package presence

import (
	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
)

// winfoPackage is Event: presence.winfo (RFC 3857, 3858): a person's own
// soft client learns who watches them (their presence and busy lamp
// subscriptions), so that it can show "watched by". Lamplighter has no
// authorization step, so watchers are active, then terminated (with why)
// in the one document after they end. The list is kept on the
// subscription by the server (winfo.go): documents change with watchers,
// never with the person's own state.
type winfoPackage struct{}

// PackageWatcherInfo is the token of watcher information for presence.
const PackageWatcherInfo Package = "presence.winfo"

func (winfoPackage) Token() Package { return PackageWatcherInfo }

func (winfoPackage) MediaTypes() []string { return []string{body.TypeWatcherInfo} }

func (winfoPackage) Negotiate(accept string) (string, bool) {
	return negotiateOne(accept, body.TypeWatcherInfo)
}

func (winfoPackage) Versioned() bool { return true }

func (winfoPackage) Render(dst []byte, sub *Subscription, _ *bridge.State, opt body.Options) []byte {
	return body.WatcherInfo(dst, opt.Version, sub.Entity, shownWatchers(sub))
}

// OwnOnly: who watches a person is the person's own business.
func (winfoPackage) OwnOnly() {}

// Differs: the person's own state is not news here; the server sends a
// NOTIFY when watchers change.
func (winfoPackage) Differs(*Subscription, *bridge.State, *bridge.State) bool { return false }

// WatchesWatchers marks a package whose documents list the subscribers
// of its user (winfo.go keeps the lists on each of its subscriptions).
func (winfoPackage) WatchesWatchers() {}

// winfoLists is what a watcher-info subscription keeps of its own: the
// lists of watchers its next NOTIFY shows.
type winfoLists struct{ lists []body.WatcherList }

// shownWatchers is what a watcher-info subscription shows. Called with
// sub.mu held.
func shownWatchers(sub *Subscription) []body.WatcherList {
	if w, ok := sub.packageState().(*winfoLists); ok {
		return w.lists
	}
	return nil
}

// showWatchers sets what a watcher-info subscription shows. Called with
// sub.mu held.
func showWatchers(sub *Subscription, lists []body.WatcherList) {
	sub.setPackageState(&winfoLists{lists: lists})
}
