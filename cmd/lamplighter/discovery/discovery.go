// Package discovery reads the PBXs' own directories (their extensions,
// names and devices) and keeps what they held: at every (re)connect of a
// PBX, at every reload and every interval, with what was read kept in the
// state directory so that a restart starts from the directory it had
// (restored subscriptions find their users before the PBX answers). A
// read that fails, or a PBX that suddenly lists no one, changes nothing:
// the users read before stay until a read says otherwise.
package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
)

// FileName is the file in the state directory that keeps what was read.
const FileName = "discovered.json"

// fileVersion is the version of the file's format.
const fileVersion = 1

// ReadTimeout bounds one read of a PBX's directory.
const ReadTimeout = time.Minute

// Source is one PBX whose directory is read.
type Source struct {
	Name       string
	Discoverer adapters.Discoverer
	// Status is the PBX connection's status: a new connection (another
	// Since) is read at once.
	Status func() adapters.Status
	// Interval is how often the directory is read besides.
	Interval time.Duration
	// Passwords: the phones' SIP logins are read too (the Discoverer
	// must be an adapters.PasswordReader), and kept in memory only.
	Passwords bool
}

// Status is what the last reads of one PBX's directory gave.
type Status struct {
	PBX   string    `json:"pbx"`
	Users int       `json:"users"`          // users the directory held at the last good read
	Read  time.Time `json:"read,omitzero"`  // the last good read
	Tried time.Time `json:"tried,omitzero"` // the last read, good or not
	Next  time.Time `json:"next,omitzero"`  // the next read by the clock (a reconnect or reload reads sooner)
	Error string    `json:"error,omitempty"`
}

// Found is what each PBX's directory held when last read, by PBX name.
type Found = map[string][]adapters.DiscoveredUser

// LeftOut is a discovered user (or a list member) left out of the
// directory, and why: shown by the API and -check-config, logged once.
type LeftOut struct {
	PBX       string `json:"pbx,omitempty"`
	Extension string `json:"extension,omitempty"`
	Device    string `json:"device,omitempty"`
	Reason    string `json:"reason"`
}

// Keeper holds what was read and reads again.
type Keeper struct {
	file string
	log  *slog.Logger

	mu      sync.Mutex
	found   Found
	secrets map[string]map[string]adapters.SIPSecret // by PBX, then device; never written down
	logins  map[string]map[string]string             // the usernames of those, kept in the file
	status  map[string]*Status
	kicks   []chan struct{}
}

// file is the state file's content.
type file struct {
	Version int                 `json:"version"`
	PBXs    map[string]fileFind `json:"pbxs"`
}

type fileFind struct {
	Read  time.Time                 `json:"read"`
	Users []adapters.DiscoveredUser `json:"users"`
	// Logins are the SIP usernames (no password) of the phones whose
	// logins were read, by device: after a restart, until they are read
	// again, the subscriptions they made are kept waiting, not ended.
	Logins map[string]string `json:"logins,omitempty"`
}

// Open returns a Keeper whose file lives in stateDir, with what that file
// holds. A file that cannot be read is kept aside (FILE.broken-TIME) and
// logged, and the keeper starts empty: the PBXs are read again.
func Open(stateDir string, log *slog.Logger) *Keeper {
	k := &Keeper{file: filepath.Join(stateDir, FileName), log: log, found: Found{}, status: map[string]*Status{},
		secrets: map[string]map[string]adapters.SIPSecret{}, logins: map[string]map[string]string{}}
	data, err := os.ReadFile(k.file)
	if errors.Is(err, fs.ErrNotExist) {
		return k
	}
	var f file
	if err == nil {
		err = json.Unmarshal(data, &f)
		if err == nil && f.Version != fileVersion {
			err = fmt.Errorf("format version %d, this Lamplighter reads %d", f.Version, fileVersion)
		}
	}
	if err != nil {
		aside := fmt.Sprintf("%s.broken-%s", k.file, time.Now().UTC().Format("20060102T150405.000000000"))
		log.Warn("the discovered directory cannot be read: kept aside, the PBXs are read again", "file", k.file, "err", err, "kept_as", aside)
		_ = os.Rename(k.file, aside)
		return k
	}
	for name, ff := range f.PBXs {
		k.found[name] = ff.Users
		if ff.Logins != nil {
			k.logins[name] = ff.Logins
		}
		k.status[name] = &Status{PBX: name, Users: len(ff.Users), Read: ff.Read}
	}
	return k
}

// Found returns what every PBX's directory held at its last good read.
func (k *Keeper) Found() Found {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(Found, len(k.found))
	for name, users := range k.found {
		out[name] = users // never changed in place: replaced whole
	}
	return out
}

// Secrets returns the SIP logins read, by PBX and device, and whether
// each PBX's were read since the start (until then its phones' logins
// are not known).
func (k *Keeper) Secrets() map[string]map[string]adapters.SIPSecret {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]map[string]adapters.SIPSecret, len(k.secrets))
	for pbx, m := range k.secrets {
		out[pbx] = m // replaced whole, never changed in place
	}
	return out
}

// PendingLogins returns, for each PBX whose logins are not read yet since
// the start, the usernames the state file kept, by device.
func (k *Keeper) PendingLogins() map[string]map[string]string {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := map[string]map[string]string{}
	for pbx, m := range k.logins {
		if _, read := k.secrets[pbx]; !read {
			out[pbx] = m
		}
	}
	return out
}

// Status returns each PBX's reads, by name.
func (k *Keeper) Status() []Status {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]Status, 0, len(k.status))
	for _, st := range k.status {
		out = append(out, *st)
	}
	slices.SortFunc(out, func(a, b Status) int {
		if a.PBX < b.PBX {
			return -1
		}
		if a.PBX > b.PBX {
			return 1
		}
		return 0
	})
	return out
}

// Refresh reads every PBX's directory again now (a reload).
func (k *Keeper) Refresh() {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, c := range k.kicks {
		select {
		case c <- struct{}{}:
		default: // a read is due already
		}
	}
}

// Run reads each source's directory at every new connection, every
// interval and every Refresh, and calls changed after a read that changed
// what a PBX holds (changed reads Found: calls may overlap, and each sees
// every read before it), until ctx ends.
func (k *Keeper) Run(ctx context.Context, sources []Source, changed func()) {
	var wg sync.WaitGroup
	for _, src := range sources {
		kick := make(chan struct{}, 1)
		k.mu.Lock()
		k.kicks = append(k.kicks, kick)
		if k.status[src.Name] == nil {
			k.status[src.Name] = &Status{PBX: src.Name}
		}
		k.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.follow(ctx, src, kick, changed)
		}()
	}
	wg.Wait()
}

// Back-off after a failed read: from retryMin doubling to the interval.
const retryMin = 5 * time.Second

// follow reads one source's directory whenever it is due.
func (k *Keeper) follow(ctx context.Context, src Source, kick <-chan struct{}, changed func()) {
	var seen time.Time // the connection last read (its Since)
	poll := time.NewTicker(time.Second)
	defer poll.Stop()
	timer := time.NewTimer(jitter(src.Interval))
	defer timer.Stop()
	retry := retryMin
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-kick:
		case <-poll.C:
			// A connection (or reconnection) the directory was not read
			// on: the PBX may have restarted with other users.
			if st := src.Status(); !st.Connected || st.Since.Equal(seen) {
				continue
			}
		}
		if st := src.Status(); st.Connected {
			seen = st.Since
		}
		next := jitter(src.Interval)
		if err := k.read(ctx, src, changed); err != nil {
			if ctx.Err() != nil {
				return
			}
			next = min(retry, src.Interval)
			retry = min(2*retry, src.Interval)
		} else {
			retry = retryMin
		}
		k.mu.Lock()
		k.status[src.Name].Next = time.Now().Add(next)
		k.mu.Unlock()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// jitter spreads reads over a tenth of the interval either way, so that
// nodes of a cluster and PBXs configured alike do not read at once.
func jitter(d time.Duration) time.Duration {
	spread := int64(d / 10)
	if spread <= 0 {
		return d
	}
	return d - time.Duration(spread) + time.Duration(rand.Int64N(2*spread))
}

// read reads one directory once, keeps it and reports a change.
func (k *Keeper) read(ctx context.Context, src Source, changed func()) error {
	rctx, cancel := context.WithTimeout(ctx, ReadTimeout)
	defer cancel()
	users, err := src.Discoverer.Discover(rctx)
	var secrets map[string]adapters.SIPSecret
	if err == nil && src.Passwords {
		pr, ok := src.Discoverer.(adapters.PasswordReader)
		if !ok {
			err = errors.New("this kind of PBX cannot give its phones' passwords")
		} else if secrets, err = pr.SIPPasswords(rctx, users); err != nil {
			err = fmt.Errorf("passwords: %w", err)
		}
	}
	now := time.Now()
	k.mu.Lock()
	st := k.status[src.Name]
	st.Tried = now
	prev := k.found[src.Name]
	if err == nil && len(users) == 0 && len(prev) > 0 {
		// A PBX that lost its configuration for a moment (a reload
		// half done, a database not up yet) would otherwise end every
		// watcher's subscription.
		err = fmt.Errorf("the PBX lists no users: the %d read before are kept", len(prev))
	}
	if err != nil {
		if st.Error != err.Error() && ctx.Err() == nil {
			k.log.Warn("cannot read the PBX's directory", "pbx", src.Name, "err", err, "users_kept", len(prev))
		}
		st.Error = err.Error()
		k.mu.Unlock()
		return err
	}
	if st.Error != "" {
		k.log.Info("the PBX's directory is read again", "pbx", src.Name, "users", len(users))
	}
	st.Error, st.Read, st.Users = "", now, len(users)
	same := reflect.DeepEqual(prev, users)
	if !same {
		k.found[src.Name] = users
	}
	if src.Passwords {
		old, had := k.secrets[src.Name]
		if !had || !maps.Equal(old, secrets) {
			k.secrets[src.Name] = secrets
			logins := make(map[string]string, len(secrets))
			for dev, sec := range secrets {
				logins[dev] = sec.Username
			}
			k.logins[src.Name] = logins
			same = false
		}
	}
	var saveErr error
	if !same {
		saveErr = k.saveLocked() // a read that changed nothing leaves the file as it is
	}
	k.mu.Unlock()
	if saveErr != nil {
		k.log.Warn("cannot keep the discovered directory in the state directory", "file", k.file, "err", saveErr)
	}
	if !same {
		changed()
	}
	return nil
}

// saveLocked writes what was read to the file, whole or not at all.
func (k *Keeper) saveLocked() error {
	f := file{Version: fileVersion, PBXs: map[string]fileFind{}}
	for name, users := range k.found {
		f.PBXs[name] = fileFind{Read: k.status[name].Read, Users: users, Logins: k.logins[name]}
	}
	data, err := json.Marshal(f)
	if err != nil {
		return err
	}
	tmp := k.file + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, k.file)
}
