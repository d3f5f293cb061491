package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// target is the Lamplighter under test: a child process on loopback with
// a generated configuration.
type target struct {
	binary   string
	dir      string // config, state and log
	logLevel string
	extra    string // appended to the configuration (a cluster section)
	sipAddr  string
	http     string
	cmd      *exec.Cmd
	exited   chan error
	started  time.Time
	// settle is how long RSS must stop falling for a settled reading
	// (settledMemory; 0: eight seconds).
	settle time.Duration
	// discover: the users come from the PBX's directory, not the YAML
	// (lampload -tenants); the API takes the token apiToken.
	discover bool
}

// apiToken is the API token of the configuration lampload writes.
const apiToken = "lampload"

// writeConfig writes the configuration: the SIP server on sipPort (UDP
// and TCP), the phones' 127.0.0.1 trusted, the profiler on, one FreeSWITCH (the
// double at eslAddr) and the users.
func (t *target) writeConfig(sipPort, httpPort int, eslAddr string, users []*user, maxPerSource int) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, `# Written by lampload.
sip:
  domain: lampload
  listen:
    - {transport: udp, address: "127.0.0.1:%[1]d"}
    - {transport: tcp, address: "127.0.0.1:%[1]d"}
  trusted_networks: [127.0.0.1/32]  # the phones; the flood comes from 127.0.0.2
policy:
  max_expires: 7200
  max_subscriptions_per_source: %[2]d
  # every phone connects from 127.0.0.1: room for all of them
  max_connections: %[2]d
  max_connections_per_address: %[2]d
http:
  listen: "127.0.0.1:%[3]d"
  pprof: true
  token: `+apiToken+`
state_dir: %[4]q
log:
  level: %[6]s
pbx:
  - name: fs
    kind: esl
    address: %[5]q
    password: ClueCon
`, sipPort, maxPerSource, httpPort, filepath.Join(t.dir, "state"), eslAddr, t.logLevel)
	if t.discover {
		// Read at connect and at every reload; the clock's reads are out
		// of the measurement.
		b.WriteString("    discover: {interval: 1h}\n")
		users = nil
	}
	b.WriteString("users:\n")
	for i, u := range users {
		// The first has a SIP password: a flood guessing it (-flood-modes
		// wrong-password/...) costs the server a digest per request.
		password := ""
		if i == 0 {
			password = ", sip: {password: not-this-one}"
		}
		fmt.Fprintf(&b, "  - {id: %s, extensions: [%q], devices: [{pbx: fs, device: %q}]%s}\n", u.id, u.ext, u.ext, password)
	}
	b.WriteString(t.extra)
	t.sipAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(sipPort))
	t.http = "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort))
	return os.WriteFile(filepath.Join(t.dir, "lamplighter.yaml"), b.Bytes(), 0o600)
}

// start runs Lamplighter and waits until its SIP listeners are up.
func (t *target) start(ctx context.Context) error {
	logf, err := os.OpenFile(filepath.Join(t.dir, "lamplighter.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	t.cmd = exec.Command(t.binary, "-config", filepath.Join(t.dir, "lamplighter.yaml"))
	t.cmd.Stdout, t.cmd.Stderr = logf, logf
	t.started = time.Now()
	if err := t.cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting %s: %w", t.binary, err)
	}
	t.exited = make(chan error, 1)
	go func() { t.exited <- t.cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-t.exited:
			log := filepath.Join(t.dir, "lamplighter.log")
			tail, _ := os.ReadFile(log)
			if len(tail) > 2000 {
				tail = tail[len(tail)-2000:]
			}
			return fmt.Errorf("lamplighter exited at start (%v); see %s, which ends:\n%s", err, log, tail)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if c, err := net.DialTimeout("tcp", t.sipAddr, time.Second); err == nil {
			c.Close()
			return nil
		}
	}
	return fmt.Errorf("lamplighter did not listen on %s within 30s", t.sipAddr)
}

// stop ends Lamplighter with SIGTERM (a clean shutdown) and waits.
func (t *target) stop() error {
	if t.cmd == nil || t.cmd.Process == nil {
		return nil
	}
	t.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-t.exited:
		t.cmd = nil
		return err
	case <-time.After(20 * time.Second):
		t.cmd.Process.Kill()
		<-t.exited
		t.cmd = nil
		return fmt.Errorf("lamplighter did not stop within 20s of SIGTERM")
	}
}

// api makes one API request with the token; it returns the status code.
func (t *target) api(method, path string) (int, error) {
	req, err := http.NewRequest(method, t.http+"/api/v1"+path, nil)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+apiToken)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, nil
}

// discovered waits until the PBX's directory, read, holds n users, and
// returns how long that took from the start.
func (t *target) discovered(ctx context.Context, n int, within time.Duration) (float64, error) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, "GET", t.http+"/api/v1/discovery", nil)
		req.Header.Set("Authorization", "Bearer "+apiToken)
		if res, err := http.DefaultClient.Do(req); err == nil {
			var d struct {
				PBXs []struct {
					Users int `json:"users"`
				} `json:"pbxs"`
			}
			err = json.NewDecoder(res.Body).Decode(&d)
			res.Body.Close()
			if err == nil && len(d.PBXs) == 1 && d.PBXs[0].Users == n {
				// The directory is put in force right after the read.
				if code, err := t.api("GET", "/users/1000@t0.lampload"); err == nil && code == 200 {
					return time.Since(t.started).Seconds(), nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return 0, fmt.Errorf("the directory did not hold %d users within %v", n, within)
}

// ready waits until /readyz says every PBX is synchronised.
func (t *target) ready(ctx context.Context, within time.Duration) error {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		res, err := http.Get(t.http + "/readyz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return fmt.Errorf("lamplighter not ready within %v", within)
}

// memory is Lamplighter's memory after a garbage collection.
type memory struct {
	RSS      int64 `json:"rss_bytes"`
	RSSFile  int64 `json:"rss_file_bytes"` // of RSS, file pages (the state file bbolt maps)
	HeapLive int64 `json:"heap_live_bytes"`
	// HeapSpans is the heap's pages in use by spans (live objects and the
	// free slots between them); HeapFreeKept the free pages not yet given
	// back to the kernel. With HeapLive they tell where RSS goes.
	HeapSpans    int64 `json:"heap_in_spans_bytes"`
	HeapFreeKept int64 `json:"heap_free_kept_bytes"`
}

// memory forces a collection (through the profiler) and reads the live
// heap from /metrics and the resident set from /proc.
func (t *target) memory() (memory, error) {
	var m memory
	res, err := http.Get(t.http + "/debug/pprof/heap?gc=1")
	if err != nil {
		return m, err
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	metrics, err := t.metrics()
	if err != nil {
		return m, err
	}
	m.HeapLive = int64(metrics["go_memstats_heap_alloc_bytes"])
	m.HeapSpans = int64(metrics["go_memstats_heap_inuse_bytes"])
	m.HeapFreeKept = int64(metrics["go_memstats_heap_idle_bytes"] - metrics["go_memstats_heap_released_bytes"])
	m.RSS, m.RSSFile, err = t.resident()
	return m, err
}

// settledMemory reads the memory as memory does, then RSS again every
// half second until it has stopped falling (less than 1 MiB in eight
// seconds) or for at most 40 s: free pages go back to the system after a
// collection, by the Go runtime in the background and by Lamplighter's
// trimmer once its heap is quiet (it looks every two seconds, at most
// once in ten), so a reading at once still counts the heap from before.
// Held figures are what a process keeps, so they are read settled.
func (t *target) settledMemory(ctx context.Context) (memory, error) {
	m, err := t.memory()
	if err != nil {
		return m, err
	}
	quiet := t.settle
	if quiet <= 0 {
		quiet = 8 * time.Second
	}
	deadline := time.Now().Add(5 * quiet)
	mark := m.RSS
	markAt := time.Now()
	for time.Now().Before(deadline) {
		select {
		case <-time.After(500 * time.Millisecond):
		case <-ctx.Done():
			return m, ctx.Err()
		}
		rss, _, err := t.resident()
		if err != nil {
			return m, err
		}
		m.RSS = rss
		switch {
		case mark-rss >= 1<<20:
			mark, markAt = rss, time.Now()
		case time.Since(markAt) >= quiet:
			return t.memory() // the rest read again, at the settled point
		}
	}
	return t.memory()
}

// resident reads the resident set size from /proc, in all and of it the
// file pages (the state file, mapped by bbolt).
func (t *target) resident() (rss, file int64, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", t.cmd.Process.Pid))
	if err != nil {
		return 0, 0, err
	}
	kb := func(v string) int64 {
		n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		return n * 1024
	}
	found := false
	for line := range strings.Lines(string(status)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss, found = kb(v), true
		}
		if v, ok := strings.CutPrefix(line, "RssFile:"); ok {
			file = kb(v)
		}
	}
	if !found {
		return 0, 0, errors.New("no VmRSS in /proc status")
	}
	return rss, file, nil
}

// metrics reads /metrics into name{labels} → value.
func (t *target) metrics() (map[string]float64, error) {
	res, err := http.Get(t.http + "/metrics")
	if err != nil {
		return nil, err
	}
	defer res.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// sum adds every series of a metric whose name and labels start with prefix.
func sum(metrics map[string]float64, prefix string) float64 {
	var total float64
	for k, v := range metrics {
		if strings.HasPrefix(k, prefix) {
			total += v
		}
	}
	return total
}

// profile fetches a CPU profile of the given length into path.
func (t *target) profile(path string, seconds int) error {
	return t.fetch(fmt.Sprintf("/debug/pprof/profile?seconds=%d", seconds), path)
}

// fetch saves what Lamplighter's HTTP endpoint serves at uri into path.
func (t *target) fetch(uri, path string) error {
	res, err := http.Get(t.http + uri)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode != 200 {
		return fmt.Errorf("%s: %s", uri, res.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, res.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
