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
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
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
	schemaVersion       = []byte(strconv.Itoa(currentSchema))
)

// currentSchema is the state file format this Lamplighter writes; it
// reads it and every earlier one.
const currentSchema = 1

// NewerError says the state file was written by a newer Lamplighter, in
// a format this one cannot read: Open refuses it, and leaves it as it
// is, rather than start without what it holds (a downgrade).
type NewerError struct {
	Path   string
	Schema int
}

func (e *NewerError) Error() string {
	return fmt.Sprintf("state file %s was written by a newer Lamplighter (state format %d; this one reads format %d and earlier): "+
		"run the newer version again, or move the file aside to start without its subscriptions, publications and registrations",
		e.Path, e.Schema, currentSchema)
}

// DB is the open store. It implements presence.Store.
type DB struct {
	db   *bolt.DB
	lock *os.File // holds the state directory's lock while open
	log  *slog.Logger
	// parsed are the subscriptions Open read (and parsed, to check
	// them), by ID, for a Load before any Save; nil after either. Read
	// and cleared in bbolt's write transactions, which run one at a
	// time.
	parsed map[string]presence.SavedSubscription
}

// LockName is the lock file beside the store: one Lamplighter per state
// directory.
const LockName = "lamplighter.lock"

// buckets are the store's top-level buckets, all of them copied at start.
var buckets = [][]byte{bucketSubscriptions, bucketPublications, bucketBindings, bucketPersons, bucketMeta}

// initialMmapSize is how much of the state file is mapped from the
// start: about 200,000 subscriptions' worth.
const initialMmapSize = 128 << 20

// Open opens (or creates) the store in dir. Another Lamplighter holding
// the directory is an error after a second.
//
// The file is read once, with faults on its memory map turned into errors,
// and written anew from what it held: bbolt trusts its file (a file cut
// short faults in the map, a damaged page or freelist panics, sometimes in
// a goroutine of its own, or corrupts later writes), so a damaged file is
// never written into or left for a later read. A file that is damaged is
// kept aside as lamplighter.db.broken-TIME and logged, and the store
// starts empty. A file that cannot be read at all (permissions, an I/O
// error) is an error: nothing is moved, and Lamplighter does not start.
func Open(dir string, log *slog.Logger) (*DB, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	d := &DB{lock: lock, log: log}
	path := filepath.Join(dir, FileName)
	if err := d.renew(path); err != nil {
		lock.Close()
		return nil, err
	}
	// Mapped large from the start: bbolt maps the file anew each time it
	// outgrows the mapping, and must first copy every node a write has
	// open out of the old one (a mass set-up spent a tenth of its saving
	// doing that). It is address space, not memory.
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, InitialMmapSize: initialMmapSize})
	if errors.Is(err, bolterrors.ErrTimeout) {
		lock.Close()
		return nil, fmt.Errorf("%s is in use by another Lamplighter", path)
	}
	if err != nil {
		lock.Close()
		return nil, err
	}
	d.db = db
	return d, nil
}

// lockDir takes the state directory's lock file, waiting a second for
// another holder to let go.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, LockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(time.Second); ; {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return f, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("%s is in use by another Lamplighter", dir)
			}
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// renew replaces the file at path by a fresh one holding what it held:
// read with faults guarded, written by bbolt into a new file, renamed over
// the old one. A damaged old file is kept aside instead; so is one whose
// structure is not what this Lamplighter writes (a bucket renamed or
// missing, another schema version, records it cannot read), after what
// can be read of it was taken: nothing is ever lost without a copy and a
// log line.
func (d *DB) renew(path string) error {
	records, subs, anomalies, err := readFile(path)
	d.parsed = subs
	var damage *damageError
	switch {
	case err == nil && len(anomalies) > 0:
		// What could be read is kept, the file aside.
		if err := d.keepAside(path, strings.Join(anomalies, "; ")); err != nil {
			return err
		}
	case errors.As(err, &damage):
		if err := d.keepAside(path, damage.err.Error()+": starting with no saved subscriptions"); err != nil {
			return err
		}
		records, d.parsed = nil, nil
	case err != nil:
		return err
	}
	fresh := path + ".new"
	if err := os.Remove(fresh); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	db, err := bolt.Open(fresh, 0o600, nil)
	if err != nil {
		return err
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range buckets {
			b, err := tx.CreateBucketIfNotExists(name)
			if err != nil {
				return err
			}
			b.FillPercent = 0.9 // written in key order: pack the pages
			for _, kv := range records[string(name)] {
				if err := b.Put(kv[0], kv[1]); err != nil {
					return err
				}
			}
		}
		return tx.Bucket(bucketMeta).Put(keySchema, schemaVersion)
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(fresh)
		return fmt.Errorf("write %s: %w", fresh, err)
	}
	if err := os.Rename(fresh, path); err != nil {
		return err
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		_ = dir.Sync()
		dir.Close()
	}
	return nil
}

// keepAside renames a damaged state file to path.broken-TIME and logs
// why.
func (d *DB) keepAside(path, why string) error {
	aside := fmt.Sprintf("%s.broken-%s", path, time.Now().UTC().Format("20060102T150405.000Z"))
	if err := os.Rename(path, aside); err != nil {
		return fmt.Errorf("state file %s is damaged (%s) and cannot be moved aside: %w", path, why, err)
	}
	d.log.Error("state file damaged: kept aside", "file", path, "moved_to", aside, "why", why)
	return nil
}

// damageError says that the state file is not a sound store: it is kept
// aside, unlike an error reading it at all.
type damageError struct{ err error }

func (e *damageError) Error() string { return "damaged state file: " + e.err.Error() }

// readFile reads every record of the store at path, by bucket, in key
// order, with the subscriptions parsed, and what is wrong with its
// structure (anomalies): records no
// store of ours could hold (damaged sizes) or that cannot be read as
// what their bucket holds, a bucket of another name (whose records are
// kept in the bucket they read as, if any), a bucket or the schema
// version missing, another schema version. A missing file holds
// nothing. Errors of the file system come back as they are; anything
// wrong with the contents as a whole is a *damageError.
func readFile(path string) (records map[string][][2][]byte, subs map[string]presence.SavedSubscription, anomalies []string, err error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil, nil
	}
	if err != nil {
		return nil, nil, nil, err // permissions and the like: never moved aside
	}
	// Read it through once: an I/O error shows here, as itself, and not as
	// a fault in bbolt's map.
	_, err = io.Copy(io.Discard, f)
	f.Close()
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	size := fileSize(path)
	err = guard(func() error {
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if errors.Is(err, bolterrors.ErrTimeout) {
			return fmt.Errorf("%s is in use by another Lamplighter", path)
		}
		if err != nil {
			return &damageError{err}
		}
		defer db.Close()
		records = map[string][][2][]byte{}
		return db.View(func(tx *bolt.Tx) error {
			if need := tx.Size(); size < need {
				return &damageError{fmt.Errorf("the file is %d bytes long but its pages reach %d: it was cut short", size, need)}
			}
			seen := map[string]bool{}
			var strays []string // buckets of another name
			err := tx.ForEach(func(name []byte, b *bolt.Bucket) error {
				recs, tooLarge, err := readBucket(b, name)
				if err != nil {
					return err
				}
				if tooLarge > 0 {
					anomalies = append(anomalies, fmt.Sprintf("bucket %s: %d records too large to be ours, dropped", name, tooLarge))
				}
				if slices.ContainsFunc(buckets, func(k []byte) bool { return bytes.Equal(k, name) }) {
					seen[string(name)] = true
					records[string(name)] = append(records[string(name)], recs...)
					return nil
				}
				strays = append(strays, string(name))
				if into := recordsOf(recs); into != "" {
					anomalies = append(anomalies, fmt.Sprintf("bucket %q is none of ours: its %d records read as %s and are kept", name, len(recs), into))
					records[into] = append(records[into], recs...)
				} else {
					anomalies = append(anomalies, fmt.Sprintf("bucket %q is none of ours: its %d records are not ours, dropped", name, len(recs)))
				}
				return nil
			})
			if err != nil {
				return err
			}
			var schema []byte
			if m := tx.Bucket(bucketMeta); m != nil {
				schema = m.Get(keySchema)
			}
			if n, err := strconv.Atoi(string(schema)); err == nil && n > currentSchema {
				return &NewerError{Path: path, Schema: n}
			}
			switch {
			case len(seen) == 0 && len(strays) == 0:
				return nil // an empty file: nothing to say
			case schema == nil:
				anomalies = append(anomalies, "no schema version")
			case !bytes.Equal(schema, schemaVersion):
				anomalies = append(anomalies, fmt.Sprintf("schema version %q, this Lamplighter writes %s", schema, schemaVersion))
			}
			for _, name := range buckets {
				if !seen[string(name)] {
					anomalies = append(anomalies, fmt.Sprintf("bucket %s missing", name))
				}
			}
			subs = map[string]presence.SavedSubscription{}
			for name, recs := range records {
				// One order, one record per key: a stray bucket's records
				// were added after those of the bucket they read as.
				slices.SortStableFunc(recs, func(a, b [2][]byte) int { return bytes.Compare(a[0], b[0]) })
				recs = slices.CompactFunc(recs, func(a, b [2][]byte) bool { return bytes.Equal(a[0], b[0]) })
				kept := slices.DeleteFunc(slices.Clone(recs), func(kv [2][]byte) bool {
					if name != string(bucketSubscriptions) {
						return !readable(name, kv[0], kv[1])
					}
					r, err := ParseSubscription(kv[1])
					if err != nil || r.ID != string(kv[0]) {
						return true
					}
					subs[r.ID] = r // for the first Load, which would parse them again
					return false
				})
				if n := len(recs) - len(kept); n > 0 {
					anomalies = append(anomalies, fmt.Sprintf("bucket %s: %d records cannot be read (another version?), dropped", name, n))
				}
				records[name] = kept
			}
			return nil
		})
	})
	return records, subs, anomalies, err
}

// readBucket reads one bucket's records in key order, counting those no
// store could hold (damaged sizes); keys out of order are damage.
func readBucket(b *bolt.Bucket, name []byte) (recs [][2][]byte, tooLarge int, err error) {
	var prev []byte
	c := b.Cursor()
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if v == nil {
			continue // a nested bucket: not ours
		}
		if prev != nil && bytes.Compare(k, prev) <= 0 {
			return nil, 0, &damageError{fmt.Errorf("bucket %s: keys out of order", name)}
		}
		if len(k) > bolt.MaxKeySize || len(v) > bolt.MaxValueSize {
			tooLarge++
			continue
		}
		prev = bytes.Clone(k)
		recs = append(recs, [2][]byte{prev, bytes.Clone(v)})
	}
	return recs, tooLarge, nil
}

// readable reports whether a record reads as what its bucket holds.
func readable(bucket string, k, v []byte) bool {
	switch bucket {
	case string(bucketSubscriptions):
		r, err := ParseSubscription(v)
		return err == nil && r.ID == string(k)
	case string(bucketPublications):
		var p publication
		return json.Unmarshal(v, &p) == nil && p.ETag != "" && p.UserID != ""
	case string(bucketBindings):
		var bs []presence.Binding
		return json.Unmarshal(v, &bs) == nil && len(bs) > 0 && bs[0].UserID != ""
	case string(bucketPersons):
		var p person
		return bytes.IndexByte(k, 0) > 0 && json.Unmarshal(v, &p) == nil
	}
	return true // meta
}

// recordsOf is the bucket a stray bucket's records all read as, "" for
// none (a bucket whose name was damaged still holds its records).
func recordsOf(recs [][2][]byte) string {
	if len(recs) == 0 {
		return ""
	}
	for _, name := range [][]byte{bucketSubscriptions, bucketPublications, bucketBindings, bucketPersons} {
		all := true
		for _, kv := range recs {
			if !readable(string(name), kv[0], kv[1]) {
				all = false
				break
			}
		}
		if all {
			return string(name)
		}
	}
	return ""
}

func fileSize(path string) int64 {
	if fi, err := os.Stat(path); err == nil {
		return fi.Size()
	}
	return 0
}

// guard runs f with faults on mapped memory turned into panics (a file cut
// short under bbolt's map is SIGBUS otherwise) and any panic into a
// *damageError.
func guard(f func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = &damageError{fmt.Errorf("%v", r)}
		}
	}()
	return f()
}

// Path returns the store's file.
func (d *DB) Path() string { return d.db.Path() }

// Close closes the store and lets go of the state directory.
func (d *DB) Close() error {
	err := d.db.Close()
	d.lock.Close()
	return err
}

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
	return guard(func() error {
		return d.db.Update(func(tx *bolt.Tx) error {
			d.parsed = nil // what Open read is no longer what the file holds
			subs := tx.Bucket(bucketSubscriptions)
			// Ids grow with time (presence.idSequence), so new records
			// are appended: pages split full, not half full.
			subs.FillPercent = 0.9
			// In key order, which is how bbolt fills pages best; the
			// records share one buffer that only grows (bbolt needs each
			// value unchanged until the commit).
			order := make([]*presence.SavedSubscription, len(b.Subscriptions))
			for i := range b.Subscriptions {
				order[i] = &b.Subscriptions[i]
			}
			slices.SortFunc(order, func(x, y *presence.SavedSubscription) int { return strings.Compare(x.ID, y.ID) })
			// About what a phone's record takes, so that the buffer
			// seldom grows (each growth copies what it holds).
			buf := make([]byte, 0, 448*len(order))
			for _, r := range order {
				start := len(buf)
				buf = appendSubscription(buf, r)
				if err := subs.Put([]byte(r.ID), buf[start:len(buf):len(buf)]); err != nil {
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
	err := guard(func() error {
		return d.db.Update(func(tx *bolt.Tx) error {
			var stale [][]byte
			subs := tx.Bucket(bucketSubscriptions)
			parsed := d.parsed
			d.parsed = nil
			err := subs.ForEach(func(k, v []byte) error {
				r, ok := parsed[string(k)]
				var err error
				if !ok {
					r, err = ParseSubscription(v)
				}
				if err != nil || r.ID != string(k) {
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
	return guard(func() error {
		return d.db.Update(func(tx *bolt.Tx) error {
			data, err := json.Marshal(fromPerson(p))
			if err != nil {
				return err
			}
			return tx.Bucket(bucketPersons).Put(personKey(userID, origin), data)
		})
	})
}

// DeletePerson forgets a user's person state under an origin.
func (d *DB) DeletePerson(userID, origin string) error {
	return guard(func() error {
		return d.db.Update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketPersons).Delete(personKey(userID, origin))
		})
	})
}

// Persons returns the stored person states that have not expired by now.
func (d *DB) Persons(now time.Time) ([]Person, error) {
	var out []Person
	err := guard(func() error {
		return d.db.View(func(tx *bolt.Tx) error {
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
	})
	return out, err
}

var _ presence.Store = (*DB)(nil)
