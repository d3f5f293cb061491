package configerr

import "testing"

func TestErrorNamesTheKey(t *testing.T) {
	if got := (Error{Key: "lease_ttl", Msg: "must be at least 1s"}).Error(); got != "lease_ttl: must be at least 1s" {
		t.Errorf("with a key: %q", got)
	}
	if got := (Error{Msg: "needs urls"}).Error(); got != "needs urls" {
		t.Errorf("without one: %q", got)
	}
}
