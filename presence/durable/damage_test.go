package durable

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/lamplighter/lamplighter/presence"
)

// sampleStore writes a store of a few hundred KiB (many leaf and branch
// pages) and returns its bytes.
func sampleStore(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	db := open(t, dir)
	var batch presence.Batch
	for i := range 1200 {
		batch.Subscriptions = append(batch.Subscriptions, presence.SavedSubscription{
			ID: "tag-" + strconv.Itoa(i), CallID: fmt.Sprintf("%08d@phone", i), UserID: "u" + strconv.Itoa(i%50),
			Target: "sip:w@10.0.0.9:5060", Transport: "UDP", Source: "10.0.0.9:5060",
			Expires: time.Now().Add(time.Hour), CSeq: uint32(i), Version: uint32(i)})
	}
	if err := db.Save(batch); err != nil {
		t.Fatal(err)
	}
	db.Close()
	b, err := os.ReadFile(filepath.Join(dir, FileName))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// openDamaged writes data as the store of a new directory and opens it:
// it must neither crash nor fail, the store must be usable, and it
// reports whether the file was kept aside and how many subscriptions
// came back.
func openDamaged(t *testing.T, data []byte) (aside bool, restored int) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := Open(dir, nil)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	saved, err := db.Load(time.Now())
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if _, err := db.Persons(time.Now()); err != nil {
		t.Fatalf("persons: %v", err)
	}
	// Usable afterwards: a write and a read back after reopening.
	if err := db.Save(presence.Batch{Subscriptions: []presence.SavedSubscription{{ID: "after", UserID: "u", Expires: time.Now().Add(time.Hour)}}}); err != nil {
		t.Fatalf("save after damage: %v", err)
	}
	db.Close()
	db, err = Open(dir, nil)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	again, err := db.Load(time.Now())
	db.Close()
	if err != nil || len(again.Subscriptions) != len(saved.Subscriptions)+1 {
		t.Fatalf("reopened store has %d subscriptions (%v), want %d", len(again.Subscriptions), err, len(saved.Subscriptions)+1)
	}
	matches, _ := filepath.Glob(path + ".broken-*")
	return len(matches) == 1, len(saved.Subscriptions)
}

// TestTruncatedFileIsKeptAside: a file cut at any length (16 KiB faulted
// in bbolt's map) starts an empty store and keeps the file aside.
func TestTruncatedFileIsKeptAside(t *testing.T) {
	full := sampleStore(t)
	_, used := freelistPage(full)
	for _, n := range []int{0, 1, 100, 4095, 4096, 8192, 8193, 12288, 16 << 10, 20000, used * 4096 / 2, used*4096 - 4096, used*4096 - 1} {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			aside, restored := openDamaged(t, full[:n])
			if !aside {
				t.Errorf("cut to %d bytes: not kept aside (%d subscriptions restored)", n, restored)
			}
		})
	}
}

// TestDamagedPagesNeverCrash: random bytes over each page in turn, and
// single flipped bytes anywhere: the store opens, keeps what it can read
// or starts empty, and stays usable.
func TestDamagedPagesNeverCrash(t *testing.T) {
	full := sampleStore(t)
	rng := rand.New(rand.NewPCG(1, 2))
	const page = 4096
	_, used := freelistPage(full)
	for p := 0; p < used; p++ {
		t.Run(fmt.Sprintf("page%d", p), func(t *testing.T) {
			t.Parallel()
			data := append([]byte(nil), full...)
			noise := rand.New(rand.NewPCG(uint64(p), 7))
			for i := p * page; i < min((p+1)*page, len(data)); i++ {
				data[i] = byte(noise.Uint32())
			}
			openDamaged(t, data)
		})
	}
	for i := range 150 {
		at, bit := rng.IntN(used*page), rng.IntN(8)
		t.Run(fmt.Sprintf("flip%d", i), func(t *testing.T) {
			t.Parallel()
			data := append([]byte(nil), full...)
			data[at] ^= byte(1 << bit)
			openDamaged(t, data)
		})
	}
}

// TestBadFreelistIsNeverUsed: a freelist that claims the live pages are
// free (bbolt would hand them out again and overwrite data) does not
// matter: the file is written anew from its records.
func TestBadFreelistIsNeverUsed(t *testing.T) {
	full := sampleStore(t)
	data := append([]byte(nil), full...)
	const page = 4096
	fl0, hw := freelistPage(data)
	if fl0*page >= len(data) {
		t.Fatalf("freelist page %d beyond the file", fl0)
	}
	// Page header: id, flags (0x10 freelist), count, overflow; then ids.
	fp := data[fl0*page:]
	binary.LittleEndian.PutUint16(fp[8:], 0x10)
	n := min(hw-2, (page-16)/8)
	binary.LittleEndian.PutUint16(fp[10:], uint16(n))
	for i := range n {
		binary.LittleEndian.PutUint64(fp[16+8*i:], uint64(i+2))
	}
	aside, restored := openDamaged(t, data)
	if aside || restored != 1200 {
		t.Errorf("bad freelist: aside %v, %d of 1200 subscriptions restored", aside, restored)
	}
}

// TestUnopenableFileIsNotMovedAside: a store the process may not read is
// an error with the OS's reason, and the file stays where it is.
func TestUnopenableFileIsNotMovedAside(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, FileName)
	// A directory where the file should be reads as EISDIR for root too.
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir, nil)
	if err == nil {
		t.Fatal("opened a store that cannot be read")
	}
	if matches, _ := filepath.Glob(path + ".broken-*"); len(matches) != 0 {
		t.Errorf("moved aside: %v", matches)
	}
	t.Logf("error: %v", err)
}

// freelistPage reads bbolt's meta pages (4 KiB pages): the freelist page
// and the high-water mark of the newer one.
func freelistPage(data []byte) (freelist, pages int) {
	const page = 4096
	meta := func(i int) (freelist, pgid, txid uint64) {
		m := data[i*page+16:]
		return binary.LittleEndian.Uint64(m[32:]), binary.LittleEndian.Uint64(m[40:]), binary.LittleEndian.Uint64(m[48:])
	}
	fl, hw, tx0 := meta(0)
	if fl1, hw1, tx1 := meta(1); tx1 > tx0 {
		fl, hw = fl1, hw1
	}
	return int(fl), int(hw)
}
