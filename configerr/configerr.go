// Package configerr is the error a component reports about its own
// section of the config (an adapter's, the cluster's): the key within
// that section and what is wrong, so that the config loader can name the
// file and line. A leaf that the adapters, the cluster and the loader
// all import, so that none of them points at another for it.
package configerr

// Error is a problem in a component's own config section. Key is the
// key within that section ("" for the section as a whole).
type Error struct {
	Key string
	Msg string
}

func (e Error) Error() string {
	if e.Key == "" {
		return e.Msg
	}
	return e.Key + ": " + e.Msg
}
