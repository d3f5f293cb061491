// Package durable keeps what Lamplighter must not forget across a restart
// in one bbolt file under the state directory: the SIP subscription
// dialogs, PUBLISHed states and registrations of the presence server, and
// the person states set through the HTTP API.
//
// bbolt commits copy-on-write with an fsync, so a crash loses at most the
// batch being written and never leaves a half-written file; a second
// Lamplighter on the same state directory is refused by its file lock.
package durable

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/lamplighter/lamplighter/bridge"
	"github.com/lamplighter/lamplighter/presence"
)

// FileName is the store's file in the state directory.
const FileName = "lamplighter.db"

var (
	bucketSubscriptions = []byte("subscriptions")
	bucketPublications  = []byte("publications")
	bucketBindings      = []byte("bindings")
	bucketPersons       = []byte("persons")
	bucketMeta          = []byte("meta")
	keySchema           = []byte("schema")
	schemaVersion       = []byte("1")
)

// DB is the open store. It implements presence.Store.
type DB struct {
	db  *bolt.DB
	log *slog.Logger
}

// Open opens (or creates) the store in dir. Another process holding it is
// an error after a second. A file that is not a readable store is moved
// aside (so that the service still starts, with nothing restored) and
// logged.
func Open(dir string, log *slog.Logger) (*DB, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if errors.Is(err, bolterrors.ErrTimeout) {
		return nil, fmt.Errorf("%s is in use by another Lamplighter", path)
	}
	if err != nil {
		aside := fmt.Sprintf("%s.broken-%s", path, time.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
		log.Error("state file unreadable: moved aside, starting with no saved subscriptions",
			"file", path, "moved_to", aside, "err", err)
		if db, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second}); err != nil {
			return nil, fmt.Errorf("open %s: %w", path, err)
		}
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketSubscriptions, bucketPublications, bucketBindings, bucketPersons, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put(keySchema, schemaVersion)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return &DB{db: db, log: log}, nil
}

// Path returns the store's file.
func (d *DB) Path() string { return d.db.Path() }

// Close closes the store.
func (d *DB) Close() error { return d.db.Close() }

// publication is a presence.Publication as stored: the person state with
// the foreign elements that bridge.PersonState leaves out of its JSON.
type publication struct {
	ETag    string    `json:"etag"`
	UserID  string    `json:"user"`
	Expires time.Time `json:"expires"`
	Person  person    `json:"person"`
}

// person is a bridge.PersonState as stored.
type person struct {
	Activities []bridge.Activity `json:"activities,omitempty"`
	Note       string            `json:"note,omitempty"`
	Closed     bool              `json:"closed,omitempty"`
	Expires    time.Time         `json:"expires,omitzero"`
	Updated    time.Time         `json:"updated,omitzero"`
	Extra      [][]byte          `json:"extra,omitempty"`
}

func fromPerson(p bridge.PersonState) person {
	return person{Activities: p.Activities, Note: p.Note, Closed: p.Closed, Expires: p.Expires, Updated: p.Updated, Extra: p.Extra}
}

func (p person) state() bridge.PersonState {
	return bridge.PersonState{Activities: p.Activities, Note: p.Note, Closed: p.Closed, Expires: p.Expires, Updated: p.Updated, Extra: p.Extra}
}

// Save writes one batch of the presence server's changes in one
// transaction.
func (d *DB) Save(b presence.Batch) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		subs := tx.Bucket(bucketSubscriptions)
		for i := range b.Subscriptions {
			if err := putJSON(subs, b.Subscriptions[i].ID, &b.Subscriptions[i]); err != nil {
				return err
			}
		}
		for _, id := range b.Unsubscribed {
			if err := subs.Delete([]byte(id)); err != nil {
				return err
			}
		}
		pubs := tx.Bucket(bucketPublications)
		for _, p := range b.Publications {
			rec := publication{ETag: p.ETag, UserID: p.UserID, Expires: p.Expires, Person: fromPerson(p.Person)}
			if err := putJSON(pubs, p.ETag, &rec); err != nil {
				return err
			}
		}
		for _, tag := range b.Unpublished {
			if err := pubs.Delete([]byte(tag)); err != nil {
				return err
			}
		}
		binds := tx.Bucket(bucketBindings)
		for user, bs := range b.Bindings {
			var err error
			if len(bs) == 0 {
				err = binds.Delete([]byte(user))
			} else {
				err = putJSON(binds, user, bs)
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}

func putJSON(b *bolt.Bucket, key string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}

// Load returns what the presence server saved, leaving out (and deleting)
// what has expired by now. A record that cannot be read is logged and
// dropped; it does not stop the rest.
func (d *DB) Load(now time.Time) (*presence.Saved, error) {
	saved := &presence.Saved{}
	err := d.db.Update(func(tx *bolt.Tx) error {
		var stale [][]byte
		subs := tx.Bucket(bucketSubscriptions)
		err := subs.ForEach(func(k, v []byte) error {
			var r presence.SavedSubscription
			if err := json.Unmarshal(v, &r); err != nil || r.ID != string(k) {
				d.log.Warn("unreadable saved subscription dropped", "key", string(k), "err", err)
				stale = append(stale, bytes.Clone(k))
				return nil
			}
			if !r.Expires.After(now) {
				stale = append(stale, bytes.Clone(k))
				return nil
			}
			saved.Subscriptions = append(saved.Subscriptions, r)
			return nil
		})
		if err != nil {
			return err
		}
		if err := deleteKeys(subs, stale); err != nil {
			return err
		}
		stale = nil
		pubs := tx.Bucket(bucketPublications)
		err = pubs.ForEach(func(k, v []byte) error {
			var r publication
			if err := json.Unmarshal(v, &r); err != nil || !r.Expires.After(now) {
				stale = append(stale, bytes.Clone(k))
				return nil
			}
			saved.Publications = append(saved.Publications, presence.Publication{
				ETag: r.ETag, UserID: r.UserID, Expires: r.Expires, Person: r.Person.state()})
			return nil
		})
		if err != nil {
			return err
		}
		if err := deleteKeys(pubs, stale); err != nil {
			return err
		}
		stale = nil
		binds := tx.Bucket(bucketBindings)
		err = binds.ForEach(func(k, v []byte) error {
			var bs []presence.Binding
			if err := json.Unmarshal(v, &bs); err != nil {
				stale = append(stale, bytes.Clone(k))
				return nil
			}
			live := 0
			for _, b := range bs {
				if b.Expires.After(now) {
					saved.Bindings = append(saved.Bindings, b)
					live++
				}
			}
			if live == 0 {
				stale = append(stale, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		return deleteKeys(binds, stale)
	})
	return saved, err
}

func deleteKeys(b *bolt.Bucket, keys [][]byte) error {
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// Person is a person state set through the API, as stored.
type Person struct {
	UserID string
	Origin string
	State  bridge.PersonState
}

func personKey(userID, origin string) []byte { return []byte(origin + "\x00" + userID) }

// SavePerson stores a user's person state under an origin (the API sets
// "api"); it is written at once: these are rare and must not be lost.
func (d *DB) SavePerson(userID, origin string, p bridge.PersonState) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		data, err := json.Marshal(fromPerson(p))
		if err != nil {
			return err
		}
		return tx.Bucket(bucketPersons).Put(personKey(userID, origin), data)
	})
}

// DeletePerson forgets a user's person state under an origin.
func (d *DB) DeletePerson(userID, origin string) error {
	return d.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPersons).Delete(personKey(userID, origin))
	})
}

// Persons returns the stored person states that have not expired by now.
func (d *DB) Persons(now time.Time) ([]Person, error) {
	var out []Person
	err := d.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketPersons).ForEach(func(k, v []byte) error {
			origin, user, ok := strings.Cut(string(k), "\x00")
			var p person
			if !ok || json.Unmarshal(v, &p) != nil {
				d.log.Warn("unreadable saved person state dropped", "key", string(k))
				return nil
			}
			if !p.Expires.IsZero() && !p.Expires.After(now) {
				return nil
			}
			out = append(out, Person{UserID: user, Origin: origin, State: p.state()})
			return nil
		})
	})
	return out, err
}

var _ presence.Store = (*DB)(nil)
