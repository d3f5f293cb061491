package durable

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/presence"
)

// sameRecord compares two records, their expiry by instant and zone.
func sameRecord(a, b presence.SavedSubscription) bool {
	za, oa := a.Expires.Zone()
	zb, ob := b.Expires.Zone()
	if !a.Expires.Equal(b.Expires) || za != zb || oa != ob {
		return false
	}
	a.Expires, b.Expires = time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}

// TestParseSubscriptionReadsWhatIsWritten: every record Lamplighter
// writes is read back whole by the direct reader, odd strings included.
func TestParseSubscriptionReadsWhatIsWritten(t *testing.T) {
	odd := "a\"b\\c\x00\x1f<>&\u2028\u2029é end\t\r\n/"
	recs := []presence.SavedSubscription{
		{ID: "x", Expires: time.Date(2026, 11, 26, 10, 0, 0, 123456789, time.UTC)},
		{ID: "l", List: "reception", Entity: "sip:reception@pbx.test", Routes: []string{}, Expires: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)},
		{ID: odd, CallID: odd, RemoteTag: odd, UserID: odd, List: odd, Entity: odd, Package: presence.PackageDialog,
			EventID: odd, Accept: odd, LocalURI: odd, RemoteURI: odd, Target: odd, Routes: []string{odd, "sip:p;lr"},
			Transport: "TCP", Source: "[::1]:5060", Watcher: odd, Grant: odd, UserAgent: odd, Single: true,
			Expires: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("", 3600)), RemoteCSeq: 4294967295, CSeq: 7, Version: 9},
	}
	for _, want := range recs {
		b := AppendSubscription(nil, &want)
		var got presence.SavedSubscription
		if !parseSubscription(b, &got) {
			t.Fatalf("the direct reader leaves its own record to encoding/json:\n%s", b)
		}
		if len(want.Routes) == 0 {
			want.Routes = nil // not written when empty (omitempty)
		}
		if !sameRecord(got, want) {
			t.Errorf("read back\n%+v\nwant\n%+v", got, want)
		}
	}
}

// FuzzParseSubscription: whatever the direct reader takes, encoding/json
// takes too, with the same result; what it leaves, ParseSubscription
// hands to encoding/json.
func FuzzParseSubscription(f *testing.F) {
	r := presence.SavedSubscription{ID: "a", CallID: "c", Routes: []string{"sip:x;lr"}, Single: true,
		Expires: time.Date(2026, 11, 26, 10, 0, 0, 5, time.UTC), CSeq: 3}
	f.Add(AppendSubscription(nil, &r))
	f.Add([]byte(`{"id":"\u0041\n","routes":[],"cseq":0,"expires":"2026-11-26T10:00:00+01:00"}`))
	f.Add([]byte(` { "ID" : "x" , "single" : null } `))
	f.Add([]byte(`{"version":01,"user":"\ud83d\ude00"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast presence.SavedSubscription
		if !parseSubscription(b, &fast) {
			return
		}
		var slow presence.SavedSubscription
		if err := json.Unmarshal(b, &slow); err != nil {
			t.Fatalf("the direct reader took what encoding/json refuses (%v): %q", err, b)
		}
		if !sameRecord(fast, slow) {
			t.Fatalf("%q:\ndirect   %+v\njson     %+v", b, fast, slow)
		}
	})
}
