package body

import "strconv"

// Watcher information (RFC 3858), for a person's own soft client: who
// watches them, and in what state.

// TypeWatcherInfo is the media type of watcher information documents.
const TypeWatcherInfo = "application/watcherinfo+xml"

// Watcher is one subscription to a person.
type Watcher struct {
	ID     string // the subscription's id
	URI    string // who subscribed (the SUBSCRIBE's From)
	Status string // pending, active, waiting or terminated
	Event  string // what made it so: subscribe, approved, timeout, rejected, ...
}

// WatcherList is the watchers of one package.
type WatcherList struct {
	Package  string
	Watchers []Watcher
}

// WatcherInfo appends a full watcherinfo document for resource.
func WatcherInfo(dst []byte, version uint32, resource string, lists []WatcherList) []byte {
	dst = append(dst, `<?xml version="1.0" encoding="UTF-8"?>`+"\n"+`<watcherinfo xmlns="urn:ietf:params:xml:ns:watcherinfo" version="`...)
	dst = strconv.AppendUint(dst, uint64(version), 10)
	dst = append(dst, `" state="full">`+"\n"...)
	for _, l := range lists {
		dst = append(dst, `  <watcher-list resource="`...)
		dst = esc(dst, resource)
		dst = append(dst, `" package="`...)
		dst = esc(dst, l.Package)
		dst = append(dst, `">`+"\n"...)
		for _, w := range l.Watchers {
			dst = append(dst, `    <watcher id="`...)
			dst = esc(dst, w.ID)
			dst = append(dst, `" event="`...)
			dst = esc(dst, w.Event)
			dst = append(dst, `" status="`...)
			dst = esc(dst, w.Status)
			dst = append(dst, `">`...)
			dst = esc(dst, w.URI)
			dst = append(dst, "</watcher>\n"...)
		}
		dst = append(dst, "  </watcher-list>\n"...)
	}
	return append(dst, "</watcherinfo>\n"...)
}
