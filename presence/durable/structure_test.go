package durable

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// A state file whose structure is not what this Lamplighter writes is
// kept aside and logged like a damaged one, and what can be read of it
// is kept: never a silent loss.

// openStructured writes data as the store of a new directory, opens it
// with a log, and returns how many subscriptions came back, whether the
// file was kept aside, and the log.
func openStructured(t *testing.T, data []byte) (restored int, aside bool, log string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	db, err := Open(dir, slog.New(slog.NewTextHandler(&buf, nil)))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	defer db.Close()
	saved, err := db.Load(time.Now())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	matches, _ := filepath.Glob(path + ".broken-*")
	if len(matches) == 1 {
		if kept, _ := os.ReadFile(matches[0]); !bytes.Equal(kept, data) {
			t.Error("the file kept aside is not the file as it was")
		}
	}
	return len(saved.Subscriptions), len(matches) == 1, buf.String()
}

// edited is the sample store changed by f in a bbolt transaction.
func edited(t *testing.T, f func(tx *bolt.Tx) error) []byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "edit.db")
	if err := os.WriteFile(path, sampleStore(t), 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(f); err != nil {
		t.Fatal(err)
	}
	db.Close()
	b, _ := os.ReadFile(path)
	return b
}

func TestARenamedBucketKeepsItsRecords(t *testing.T) {
	// One changed byte in the name of the subscriptions bucket (the
	// audit's case: every subscription was lost without a word).
	// (The name is on the root's page and on a free copy of it.)
	data := sampleStore(t)
	if !bytes.Contains(data, bucketSubscriptions) {
		t.Fatal("the bucket's name is not in the file")
	}
	data = bytes.ReplaceAll(data, bucketSubscriptions, []byte("subscriptionz"))
	restored, aside, log := openStructured(t, data)
	if restored != 1200 || !aside || !strings.Contains(log, `bucket \"subscriptionz\" is none of ours: its 1200 records read as subscriptions and are kept`) {
		t.Errorf("restored %d of 1200, kept aside %v, log:\n%s", restored, aside, log)
	}
}

// A file of a newer format (a downgrade) is refused and left as it
// is: Lamplighter does not start rather than start without it.
func TestANewerSchemaRefusesToStart(t *testing.T) {
	data := edited(t, func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte("2")) })
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := Open(dir, nil)
	if err == nil {
		db.Close()
		t.Fatal("a state file of a newer format was opened")
	}
	var newer *NewerError
	if !errors.As(err, &newer) || newer.Schema != 2 || !strings.Contains(err.Error(), "written by a newer Lamplighter (state format 2; this one reads format 1") {
		t.Errorf("error: %v", err)
	}
	if kept, _ := os.ReadFile(path); !bytes.Equal(kept, data) {
		t.Error("the newer file was changed")
	}
	if m, _ := filepath.Glob(path + ".*"); len(m) != 0 {
		t.Errorf("files beside it: %v", m)
	}
}

// A schema that is no version at all (a damaged byte) is damage: what
// can be read is kept, the file aside.
func TestAGarbledSchemaIsKeptAside(t *testing.T) {
	data := edited(t, func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keySchema, []byte("1\x07")) })
	restored, aside, log := openStructured(t, data)
	if restored != 1200 || !aside || !strings.Contains(log, `schema version`) {
		t.Errorf("restored %d of 1200, kept aside %v, log:\n%s", restored, aside, log)
	}
}

func TestRecordsOfAnotherVersionAreKeptAside(t *testing.T) {
	data := edited(t, func(tx *bolt.Tx) error {
		subs := tx.Bucket(bucketSubscriptions)
		if err := subs.Put([]byte("tag-5"), []byte(`{"v":2,"dialog":{"id":"tag-5"}}`)); err != nil {
			return err
		}
		return subs.Put([]byte("tag-6"), []byte("\x00\x01binary"))
	})
	restored, aside, log := openStructured(t, data)
	if restored != 1198 || !aside || !strings.Contains(log, "bucket subscriptions: 2 records cannot be read (another version?), dropped") {
		t.Errorf("restored %d of 1198, kept aside %v, log:\n%s", restored, aside, log)
	}
}

func TestAMissingOrForeignBucketIsKeptAside(t *testing.T) {
	data := edited(t, func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(bucketPublications); err != nil {
			return err
		}
		b, err := tx.CreateBucket([]byte("foreign"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("not a record of ours"))
	})
	restored, aside, log := openStructured(t, data)
	for _, want := range []string{"bucket publications missing", `bucket \"foreign\" is none of ours: its 1 records are not ours, dropped`} {
		if !strings.Contains(log, want) {
			t.Errorf("the log does not say %q:\n%s", want, log)
		}
	}
	if restored != 1200 || !aside {
		t.Errorf("restored %d of 1200, kept aside %v", restored, aside)
	}
}

func TestASoundFileIsNotKeptAside(t *testing.T) {
	restored, aside, log := openStructured(t, sampleStore(t))
	if restored != 1200 || aside || log != "" {
		t.Errorf("a sound file: restored %d, kept aside %v, log:\n%s", restored, aside, log)
	}
}
