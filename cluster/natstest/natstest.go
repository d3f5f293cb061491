// Package natstest runs Debian's nats-server with JetStream on loopback
// for tests: one server, or a cluster of several whose servers can be
// stopped and started again. With LAMPLIGHTER_E2E=require (set by `make
// test`) a missing nats-server fails the test instead of skipping it;
// .ci/deps installs it.
package natstest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Cluster is a set of nats-server processes on loopback.
type Cluster struct {
	t       testing.TB
	bin     string
	servers []*server
}

type server struct {
	name        string
	port, route int
	dir         string
	cmd         *exec.Cmd
	log         *os.File
}

// Start starts n JetStream servers (a cluster when n > 1) and waits until
// JetStream answers on every one. They are killed at the test's end.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		bin, err = exec.LookPath("/usr/sbin/nats-server") // Debian's, off a user's PATH
	}
	if err != nil {
		if os.Getenv("LAMPLIGHTER_E2E") == "require" {
			t.Fatal("nats-server is not installed (apt-get install nats-server; .ci/deps does it)")
		}
		t.Skip("nats-server is not installed")
	}
	c := &Cluster{t: t, bin: bin}
	base := t.TempDir()
	for i := range n {
		c.servers = append(c.servers, &server{name: "n" + strconv.Itoa(i+1), port: freePort(t), route: freePort(t),
			dir: filepath.Join(base, "n"+strconv.Itoa(i+1))})
	}
	t.Cleanup(c.StopAll)
	for i := range c.servers {
		c.start(i)
	}
	c.WaitReady(30 * time.Second)
	return c
}

// URLs are the client URLs of every server.
func (c *Cluster) URLs() []string {
	var out []string
	for _, s := range c.servers {
		out = append(out, "nats://127.0.0.1:"+strconv.Itoa(s.port))
	}
	return out
}

func (c *Cluster) start(i int) {
	s := c.servers[i]
	args := []string{"-js", "-sd", s.dir, "-a", "127.0.0.1", "-p", strconv.Itoa(s.port), "-n", s.name}
	if len(c.servers) > 1 {
		var routes []string
		for j, o := range c.servers {
			if j != i {
				routes = append(routes, "nats://127.0.0.1:"+strconv.Itoa(o.route))
			}
		}
		args = append(args, "--cluster_name", "lltest", "--cluster", "nats://127.0.0.1:"+strconv.Itoa(s.route),
			"--routes", strings.Join(routes, ","))
	}
	if err := os.MkdirAll(s.dir, 0o755); err != nil {
		c.t.Fatal(err)
	}
	log, err := os.OpenFile(s.dir+".log", os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	s.log = log
	s.cmd = exec.Command(c.bin, args...)
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		c.t.Fatalf("nats-server: %v", err)
	}
}

// Index returns the index of the server named name (as JetStream names
// a stream's leader: "n1", "n2", ...).
func (c *Cluster) Index(name string) (int, error) {
	for i, s := range c.servers {
		if s.name == name {
			return i, nil
		}
	}
	return 0, fmt.Errorf("no nats-server named %q", name)
}

// Stop kills server i (as a power cut would).
func (c *Cluster) Stop(i int) {
	s := c.servers[i]
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
	s.log.Close()
}

// StartAgain starts server i again on the same ports and storage.
func (c *Cluster) StartAgain(i int) { c.start(i) }

// StopAll kills every server.
func (c *Cluster) StopAll() {
	for i := range c.servers {
		c.Stop(i)
	}
}

// StartAll starts every stopped server again and waits until JetStream
// answers.
func (c *Cluster) StartAll() {
	for i, s := range c.servers {
		if s.cmd == nil {
			c.start(i)
		}
	}
	c.WaitReady(30 * time.Second)
}

// WaitReady waits until JetStream answers on every running server (a
// cluster has elected its leader).
func (c *Cluster) WaitReady(within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for _, s := range c.servers {
		if s.cmd == nil {
			continue
		}
		for {
			err := jetStreamAnswers(s.port)
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				b, _ := os.ReadFile(s.dir + ".log")
				c.t.Fatalf("nats-server %s: JetStream not ready within %v: %v\n%s", s.name, within, err, b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

func jetStreamAnswers(port int) error {
	nc, err := nats.Connect("nats://127.0.0.1:"+strconv.Itoa(port), nats.Timeout(time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// freePort returns a TCP port free on loopback now.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// String names the servers, for logs.
func (c *Cluster) String() string { return fmt.Sprint(c.URLs()) }

// Logs returns every server's log, for a failing test to show.
func (c *Cluster) Logs() string {
	var b strings.Builder
	for _, s := range c.servers {
		out, _ := os.ReadFile(s.dir + ".log")
		fmt.Fprintf(&b, "--- nats-server %s (client port %d)\n%s", s.name, s.port, out)
	}
	return b.String()
}
