package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/lamplighter/lamplighter/presence"
	"github.com/lamplighter/lamplighter/presence/durable"
)

// TestDamagedStateFileStartsEmpty damages a real state file in each of the
// ways a disk, a crash or an administrator can, and starts the real binary
// on it: it must start and serve, say in its log that the file was kept
// aside and why, and the file must be there under its new name.
func TestDamagedStateFileStartsEmpty(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	sample := sampleStateFile(t)
	const page = 4096
	cases := map[string]func([]byte) []byte{
		"cut to 16 KiB":  func(b []byte) []byte { return b[:16<<10] },
		"cut mid-page":   func(b []byte) []byte { return b[:3*page+1234] },
		"cut to nothing": func(b []byte) []byte { return b[:0] },
		"noise over both meta pages": func(b []byte) []byte {
			for i := range 2 * page {
				b[i] = byte(i*7 + 3)
			}
			return b
		},
		"noise over the root's pages": func(b []byte) []byte {
			for i := 2 * page; i < 6*page; i++ {
				b[i] = byte(i * 13)
			}
			return b
		},
	}
	for name, damage := range cases {
		t.Run(name, func(t *testing.T) {
			config, state, _ := stateConfig(t)
			path := filepath.Join(state, durable.FileName)
			if err := os.WriteFile(path, damage(append([]byte(nil), sample...)), 0o600); err != nil {
				t.Fatal(err)
			}
			p := start(t, bin, config)
			waitFor(t, p.out, "state file damaged", 5*time.Second)
			aside, _ := filepath.Glob(path + ".broken-*")
			if len(aside) != 1 {
				t.Fatalf("damaged file not kept aside: %v", aside)
			}
			if !strings.Contains(p.out.String(), aside[0]) {
				t.Errorf("the log does not name %s", aside[0])
			}
			p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.end:
			case <-time.After(30 * time.Second):
				// Stuck: its goroutines say where (Go prints them on
				// SIGQUIT), instead of the test run's own timeout.
				p.cmd.Process.Signal(syscall.SIGQUIT)
				<-p.end
				t.Fatalf("no exit within 30 s of SIGTERM; its goroutines:\n%s", p.out.String())
			}
			if p.err != nil {
				t.Errorf("exit: %v", p.err)
			}
		})
	}
	t.Run("bad freelist", func(t *testing.T) {
		// A freelist naming live pages: nothing is lost, nothing aside.
		config, state, _ := stateConfig(t)
		data := append([]byte(nil), sample...)
		fl, hw := metaOf(data)
		fp := data[fl*page:]
		n := min(hw-2, (page-16)/8)
		binary.LittleEndian.PutUint16(fp[8:], 0x10)
		binary.LittleEndian.PutUint16(fp[10:], uint16(n))
		for i := range n {
			binary.LittleEndian.PutUint64(fp[16+8*i:], uint64(i+2))
		}
		os.WriteFile(filepath.Join(state, durable.FileName), data, 0o600)
		p := start(t, bin, config)
		waitFor(t, p.out, "restored saved state", 5*time.Second)
		if strings.Contains(p.out.String(), "damaged") {
			t.Errorf("a bad freelist was taken for damage")
		}
	})
}

// TestUnreadableStateFileRefusesToStart: a healthy state file that the
// service user may not read is never moved aside: Lamplighter says why
// (once) and exits non-zero.
func TestUnreadableStateFileRefusesToStart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildBinary(t)
	config, state, dir := stateConfig(t)
	path := filepath.Join(state, durable.FileName)
	if err := os.WriteFile(path, sampleStateFile(t), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-config", config)
	if os.Getuid() == 0 {
		// Root reads anything: run as nobody, who may reach the files
		// but not read the state file.
		for _, d := range []string{filepath.Dir(bin), filepath.Dir(filepath.Dir(bin)), dir, filepath.Dir(dir), state} {
			os.Chmod(d, 0o777)
		}
		os.Chmod(config, 0o644)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	} else {
		os.Chmod(path, 0)
	}
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("started on a state file it cannot read:\n%s", out)
	}
	if !strings.Contains(string(out), "permission denied") || strings.Count(string(out), path) != 1 {
		t.Errorf("want the OS error naming the file once (%v):\n%s", err, out)
	}
	t.Logf("%s", out)
	if aside, _ := filepath.Glob(path + ".broken-*"); len(aside) != 0 {
		t.Errorf("an unreadable file was moved aside: %v", aside)
	}
	if _, err := os.Stat(path); err != nil {
		t.Errorf("the state file is gone: %v", err)
	}
}

// stateConfig writes a config on free ports with its own state directory.
func stateConfig(t *testing.T) (config, state, dir string) {
	t.Helper()
	dir = t.TempDir()
	state = filepath.Join(dir, "state")
	os.MkdirAll(state, 0o700)
	config = filepath.Join(dir, "lamplighter.yaml")
	os.WriteFile(config, []byte(fmt.Sprintf(`
sip:
  domain: state.test
  listen: [{transport: udp, address: "127.0.0.1:%d"}]
  trusted_networks: [127.0.0.0/8]
http: {listen: "127.0.0.1:%d"}
state_dir: %s
users:
  - {id: debbie, name: Debbie Harry, extensions: ["100"]}
`, freePort(t), freePort(t), state)), 0o644)
	return config, state, dir
}

// sampleStateFile is a real store holding a thousand subscriptions.
func sampleStateFile(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	db, err := durable.Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var b presence.Batch
	for i := range 1000 {
		b.Subscriptions = append(b.Subscriptions, presence.SavedSubscription{ID: "t" + strconv.Itoa(i),
			CallID: strconv.Itoa(i) + "@w", UserID: "debbie", Target: "sip:w@127.0.0.1:9", Transport: "UDP",
			Source: "127.0.0.1:9", Expires: time.Now().Add(time.Hour)})
	}
	if err := db.Save(b); err != nil {
		t.Fatal(err)
	}
	db.Close()
	data, err := os.ReadFile(filepath.Join(dir, durable.FileName))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// metaOf reads bbolt's newer meta page: the freelist page and the
// high-water mark.
func metaOf(data []byte) (freelist, pages int) {
	const page = 4096
	meta := func(i int) (uint64, uint64, uint64) {
		m := data[i*page+16:]
		return binary.LittleEndian.Uint64(m[32:]), binary.LittleEndian.Uint64(m[40:]), binary.LittleEndian.Uint64(m[48:])
	}
	fl, hw, tx0 := meta(0)
	if fl1, hw1, tx1 := meta(1); tx1 > tx0 {
		fl, hw = fl1, hw1
	}
	return int(fl), int(hw)
}

// TestNewerStateFileRefusesToStart: a state file of a newer Lamplighter
// (a downgrade) stops the start with exit status 78 (the unit does not
// restart on it) and a message that says what to do; the file is left
// as it was.
func TestNewerStateFileRefusesToStart(t *testing.T) {
	config, state, _ := stateConfig(t)
	path := filepath.Join(state, durable.FileName)
	if err := os.WriteFile(path, sampleStateFile(t), 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("meta")).Put([]byte("schema"), []byte("3")) })
	db.Close()
	before, _ := os.ReadFile(path)
	out := &syncBuffer{}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if code := run(ctx, []string{"-config", config}, out, out); code != exitNewerState {
		t.Errorf("exit status %d, want %d", code, exitNewerState)
	}
	if !strings.Contains(out.String(), "written by a newer Lamplighter (state format 3") || !strings.Contains(out.String(), "move the file aside") {
		t.Errorf("the message:\n%s", out.String())
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
		t.Error("the state file was changed")
	}
	if !strings.Contains(mustRead(t, "../../systemd/lamplighter.service"), fmt.Sprintf("RestartPreventExitStatus=%d", exitNewerState)) {
		t.Error("the unit restarts on the exit status of a newer state file")
	}
}
