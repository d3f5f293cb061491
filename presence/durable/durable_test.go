package durable

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence"
)

func open(t *testing.T, dir string) *DB {
	t.Helper()
	db, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return db
}

func TestSaveAndLoad(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC)
	db := open(t, dir)
	sub := presence.SavedSubscription{ID: "tag1", CallID: "c1@phone", RemoteTag: "rt", UserID: "debbie",
		Entity: "sip:100@pbx", Package: presence.PackageDialog, Accept: "application/dialog-info+xml",
		LocalURI: "sip:100@pbx", RemoteURI: "sip:200@pbx", Target: "sip:200@10.0.0.2:5060",
		Routes: []string{"sip:proxy;lr"}, Transport: "TCP", Source: "10.0.0.2:40000",
		Expires: now.Add(time.Hour), RemoteCSeq: 7, CSeq: 70, Version: 66}
	gone := sub
	gone.ID, gone.Expires = "tag2", now.Add(-time.Minute)
	pub := presence.Publication{ETag: "e1", UserID: "debbie", Expires: now.Add(time.Hour),
		Person: bridge.PersonState{Activities: []bridge.Activity{"meeting"}, Note: "Board",
			Extra: [][]byte{[]byte(`<x:mood xmlns:x="urn:x">happy</x:mood>`)}}}
	bind := presence.Binding{UserID: "bob", Contact: "sip:bob@10.0.0.3", CallID: "r", CSeq: 2, Expires: now.Add(time.Hour)}
	if err := db.Save(presence.Batch{Subscriptions: []presence.SavedSubscription{sub, gone},
		Publications: []presence.Publication{pub}, Bindings: map[string][]presence.Binding{"bob": {bind}}}); err != nil {
		t.Fatal(err)
	}
	if err := db.SavePerson("debbie", "api", bridge.PersonState{Activities: []bridge.Activity{"dnd"}, Note: "Focus"}); err != nil {
		t.Fatal(err)
	}
	if err := db.SavePerson("bob", "api", bridge.PersonState{Note: "lapsed", Expires: now.Add(-time.Second)}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	db = open(t, dir)
	defer db.Close()
	saved, err := db.Load(now)
	if err != nil {
		t.Fatal(err)
	}
	if len(saved.Subscriptions) != 1 {
		t.Fatalf("subscriptions %+v, want tag1 only (tag2 expired)", saved.Subscriptions)
	}
	got := saved.Subscriptions[0]
	if got.CSeq != 70 || got.Version != 66 || got.Target != sub.Target || got.Routes[0] != "sip:proxy;lr" ||
		got.Transport != "TCP" || got.Accept != sub.Accept || !got.Expires.Equal(sub.Expires) {
		t.Errorf("subscription came back as %+v", got)
	}
	if len(saved.Publications) != 1 || saved.Publications[0].Person.Note != "Board" ||
		len(saved.Publications[0].Person.Extra) != 1 {
		t.Errorf("publications %+v (foreign elements must survive)", saved.Publications)
	}
	if len(saved.Bindings) != 1 || saved.Bindings[0].Contact != bind.Contact {
		t.Errorf("bindings %+v", saved.Bindings)
	}
	persons, err := db.Persons(now)
	if err != nil || len(persons) != 1 || persons[0].UserID != "debbie" || !persons[0].State.Has("dnd") {
		t.Errorf("persons %+v %v", persons, err)
	}
	// The expired subscription was deleted by the load, not only skipped.
	if err := db.Save(presence.Batch{Unsubscribed: []string{"tag1"}, Unpublished: []string{"e1"},
		Bindings: map[string][]presence.Binding{"bob": nil}}); err != nil {
		t.Fatal(err)
	}
	if saved, _ := db.Load(now.Add(-time.Hour)); len(saved.Subscriptions)+len(saved.Publications)+len(saved.Bindings) != 0 {
		t.Errorf("left after deleting everything: %+v", saved)
	}
}

func TestSecondOpenIsRefused(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	defer db.Close()
	if _, err := Open(dir, nil); err == nil || !strings.Contains(err.Error(), "in use by another Lamplighter") {
		t.Errorf("second open: %v", err)
	}
}

func TestUnreadableFileIsMovedAside(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	if err := os.WriteFile(path, []byte(strings.Repeat("not a bolt file ", 1024)), 0o600); err != nil {
		t.Fatal(err)
	}
	db := open(t, dir)
	defer db.Close()
	if saved, err := db.Load(time.Now()); err != nil || len(saved.Subscriptions) != 0 {
		t.Errorf("fresh store: %+v %v", saved, err)
	}
	aside, _ := filepath.Glob(path + ".broken-*")
	if len(aside) != 1 {
		t.Errorf("the unreadable file was not kept aside: %v", aside)
	}
}

func TestUnreadableRecordIsDropped(t *testing.T) {
	dir := t.TempDir()
	db := open(t, dir)
	defer db.Close()
	now := time.Now()
	good := presence.SavedSubscription{ID: "ok", UserID: "a", Expires: now.Add(time.Hour)}
	if err := db.Save(presence.Batch{Subscriptions: []presence.SavedSubscription{good}}); err != nil {
		t.Fatal(err)
	}
	if err := db.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketSubscriptions).Put([]byte("bad"), []byte("{")) }); err != nil {
		t.Fatal(err)
	}
	saved, err := db.Load(now)
	if err != nil || len(saved.Subscriptions) != 1 || saved.Subscriptions[0].ID != "ok" {
		t.Errorf("%+v %v", saved, err)
	}
}
