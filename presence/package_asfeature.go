package presence

import (
	"slices"
	"strings"
	"time"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence/body"
)

// asFeaturePackage is Event: as-feature-event, BroadSoft's device feature
// key synchronisation: a phone subscribes to its own user; pressing its
// DND key sends a SUBSCRIBE in that dialog with SetDoNotDisturb, which
// sets or clears the person's dnd here (every watcher's lamp, the
// switchboard and the PBX mirror follow); dnd set anywhere else reaches
// the phone's key as a DoNotDisturbEvent. Lamplighter is not the PBX and
// forwards no calls: SetForwarding is answered with a ForwardingEvent
// that says the forwarding is off.
type asFeaturePackage struct{}

// PackageAsFeature is the token of feature key synchronisation.
const PackageAsFeature Package = "as-feature-event"

func (asFeaturePackage) Token() Package { return PackageAsFeature }

func (asFeaturePackage) MediaTypes() []string { return []string{body.TypeAsFeature} }

func (asFeaturePackage) Negotiate(accept string) (string, bool) {
	return negotiateOne(accept, body.TypeAsFeature)
}

func (asFeaturePackage) Versioned() bool { return false }

// featureKeys is what an as-feature-event subscription keeps of its own:
// the forwarding type its phone asked for, answered in the next NOTIFY.
type featureKeys struct{ reply string }

// featureReply is the forwarding type to answer in sub's next NOTIFY
// ("": none). Called with sub.mu held.
func featureReply(sub *Subscription) string {
	if f, ok := sub.packageState().(*featureKeys); ok {
		return f.reply
	}
	return ""
}

// Render tells the key's state: the forwarding the phone just asked for
// (off), else dnd.
func (asFeaturePackage) Render(dst []byte, sub *Subscription, st *bridge.State, _ body.Options) []byte {
	device := entityUser(sub.Entity)
	if t := featureReply(sub); t != "" {
		return body.ForwardingEvent(dst, device, t, false, "")
	}
	return body.DoNotDisturbEvent(dst, device, st.Person.DND())
}

// OwnOnly: a phone syncs its own user's keys, nobody else's.
func (asFeaturePackage) OwnOnly() {}

// Differs: only dnd shows on the key, so calls coming and going send the
// phone nothing.
func (asFeaturePackage) Differs(sub *Subscription, old, cur *bridge.State) bool {
	return old == nil || cur == nil || old.Person.DND() != cur.Person.DND() || featureReply(sub) != ""
}

// Built: the NOTIFY just built answered the forwarding asked for.
func (asFeaturePackage) Built(sub *Subscription) {
	if f, ok := sub.packageState().(*featureKeys); ok {
		f.reply = ""
	}
}

// TakeBody carries out SetDoNotDisturb and notes SetForwarding, to be
// answered in the NOTIFY that follows.
func (asFeaturePackage) TakeBody(h *packageHost, sub *Subscription, contentType string, b []byte) (int, string) {
	if mt, _, _ := strings.Cut(contentType, ";"); !strings.EqualFold(strings.TrimSpace(mt), body.TypeAsFeature) {
		return 415, "Unsupported Media Type"
	}
	r, err := body.ParseFeatureRequest(b)
	if err != nil {
		return 400, "Bad Request"
	}
	switch {
	case r.DND:
		if err := setDND(h, sub.UserID, r.DNDOn); err != nil {
			return 500, "Server Internal Error"
		}
		h.log.Info("dnd set from a phone's key", "user", sub.UserID, "dnd", r.DNDOn, "source", sub.Source)
	case r.Forwarding:
		sub.mu.Lock()
		sub.setPackageState(&featureKeys{reply: r.ForwardingType})
		sub.mu.Unlock()
		h.log.Info("a phone asked for call forwarding, which the PBX does, not Lamplighter: told it is off",
			"user", sub.UserID, "type", r.ForwardingType, "to", r.ForwardTo)
	}
	return 200, "OK"
}

// setDND sets or clears dnd in the person state of the host's origin
// (Options.PersonOrigin), keeping what else it says (a note, other
// activities), and saves it.
func setDND(h *packageHost, userID string, on bool) error {
	origin := h.origin
	p, _ := h.states.Person(userID, origin)
	if on && p.DND() {
		return nil // already so
	}
	p.Activities = slices.DeleteFunc(slices.Clone(p.Activities), func(a bridge.Activity) bool { return a == bridge.ActivityDND })
	if on {
		p.Activities = append([]bridge.Activity{bridge.ActivityDND}, p.Activities...)
	}
	p.Updated = time.Now()
	if p.IsZero() {
		h.states.ClearPerson(userID, origin)
		if h.saved != nil {
			return h.saved.DeletePerson(userID, origin)
		}
		return nil
	}
	if err := h.states.SetPerson(userID, origin, p); err != nil {
		return err
	}
	if h.saved != nil {
		return h.saved.SavePerson(userID, origin, p)
	}
	return nil
}

// entityUser is the user part of a presentity URI (the key's device).
func entityUser(uri string) string {
	_, rest, _ := strings.Cut(uri, ":")
	user, _, found := strings.Cut(rest, "@")
	if !found {
		return ""
	}
	return user
}
