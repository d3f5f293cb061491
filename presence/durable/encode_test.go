package durable

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/presence"
)

// TestSubscriptionRecordIsEncodingJSONs: the record written directly is
// byte for byte what encoding/json writes, odd strings included, so files
// written before and after read the same.
func TestSubscriptionRecordIsEncodingJSONs(t *testing.T) {
	odd := "a\"b\\c\x00\x1f<>&\u2028\u2029é\xff\xfe end\t\r\n"
	recs := []presence.SavedSubscription{
		{ID: "x", Expires: time.Date(2026, 11, 26, 10, 0, 0, 123456789, time.UTC)},
		{ID: "l", List: "reception", Entity: "sip:reception@pbx.test", Expires: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)},
		{ID: odd, CallID: odd, RemoteTag: odd, UserID: odd, List: odd, Entity: odd, Package: presence.PackageDialog,
			EventID: odd, Accept: odd, LocalURI: odd, RemoteURI: odd, Target: odd, Routes: []string{odd, "sip:p;lr"},
			Transport: "TCP", Source: "[::1]:5060", Watcher: odd, Grant: odd, UserAgent: odd, Single: true,
			Expires: time.Date(2026, 1, 2, 3, 4, 5, 0, time.FixedZone("x", 3600)), RemoteCSeq: 4294967295, CSeq: 7, Version: 9},
	}
	for _, r := range recs {
		want, err := json.Marshal(&r)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendSubscription(nil, &r); !bytes.Equal(got, want) {
			t.Errorf("got\n%s\nwant\n%s", got, want)
		}
	}
}

// FuzzSubscriptionRecord: any strings encode as encoding/json does.
func FuzzSubscriptionRecord(f *testing.F) {
	f.Add("id", "call", "sip:a@b", "ua\xff")
	f.Fuzz(func(t *testing.T, id, callID, target, ua string) {
		r := presence.SavedSubscription{ID: id, CallID: callID, Target: target, UserAgent: ua, Routes: []string{ua}}
		want, _ := json.Marshal(&r)
		if got := appendSubscription(nil, &r); !bytes.Equal(got, want) {
			t.Fatalf("got\n%q\nwant\n%q", got, want)
		}
	})
}

// TestSubscriptionRecordCoversEveryField: a record with every field set
// encodes as encoding/json does, so a field added to SavedSubscription
// and not to appendSubscription fails here (the list name once was lost
// this way, and list subscriptions with it at a restart).
func TestSubscriptionRecordCoversEveryField(t *testing.T) {
	var r presence.SavedSubscription
	v := reflect.ValueOf(&r).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("v" + strconv.Itoa(i))
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Uint32:
			f.SetUint(uint64(i))
		case reflect.Slice:
			f.Set(reflect.ValueOf([]string{"sip:r" + strconv.Itoa(i)}))
		case reflect.Struct:
			f.Set(reflect.ValueOf(time.Unix(int64(i), 0).UTC()))
		default:
			t.Fatalf("field %s: kind %v not covered by this test", v.Type().Field(i).Name, f.Kind())
		}
	}
	want, _ := json.Marshal(&r)
	if got := appendSubscription(nil, &r); !bytes.Equal(got, want) {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
