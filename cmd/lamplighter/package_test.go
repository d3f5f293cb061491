package main

import (
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// previousRelease is the commit of the release before the first package
// (the last one deployed from a build by hand): the upgrade test builds
// it, packages it as previousVersion and upgrades from it.
const (
	previousRelease = "293273b"
	previousVersion = "0.8.0"
)

// need finds a program the package tests use, or skips (fails under
// LAMPLIGHTER_E2E=require: .ci/deps installs them).
func need(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("LAMPLIGHTER_E2E") == "require" {
			t.Fatalf("%s is required (.ci/deps installs it)", name)
		}
		t.Skipf("%s not installed", name)
	}
	return path
}

// sh runs a command and returns its output; a failure fails the test.
func sh(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// buildPackages runs make package's script into dir.
func buildPackages(t *testing.T, dir string, args ...string) {
	t.Helper()
	sh(t, nil, "bash", append([]string{"../../packaging/build.sh", "-o", dir}, args...)...)
}

// TestPackages: make package builds a .deb and an .rpm for amd64 and
// arm64 with the binary of each architecture, the hardened unit (which
// systemd-analyze accepts as installed), the example config as a
// conffile / %config(noreplace), the secrets directory, the man page and
// the docs; installing enables and starts nothing; the installed example
// passes -check-config with its secrets given as the unit gives them;
// the .rpm installs and upgrades too, keeping an edited config.
func TestPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds packages")
	}
	need(t, "dpkg")
	need(t, "rpm")
	analyze := need(t, "systemd-analyze")
	dir := t.TempDir()
	buildPackages(t, dir)
	version := strings.TrimSpace(mustRead(t, "../../packaging/VERSION"))
	debs, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	rpms, _ := filepath.Glob(filepath.Join(dir, "*.rpm"))
	slices.Sort(debs)
	slices.Sort(rpms)
	wantDebs := []string{"lamplighter_" + version + "-1_amd64.deb", "lamplighter_" + version + "-1_arm64.deb"}
	wantRPMs := []string{"lamplighter-" + version + "-1.aarch64.rpm", "lamplighter-" + version + "-1.x86_64.rpm"}
	var gotDebs, gotRPMs []string
	for _, p := range debs {
		gotDebs = append(gotDebs, filepath.Base(p))
	}
	for _, p := range rpms {
		gotRPMs = append(gotRPMs, filepath.Base(p))
	}
	if !slices.Equal(gotDebs, wantDebs) || !slices.Equal(gotRPMs, wantRPMs) {
		t.Fatalf("packages %v %v, want %v %v", gotDebs, gotRPMs, wantDebs, wantRPMs)
	}
	files := []string{"/etc/lamplighter/config.yaml", "/etc/lamplighter/secrets", "/usr/bin/lamplighter",
		"/usr/lib/systemd/system/lamplighter.service", "/usr/share/doc/lamplighter/README.md",
		"/usr/share/doc/lamplighter/calendar.md", "/usr/share/doc/lamplighter/cluster.md",
		"/usr/share/doc/lamplighter/config.example.yaml", "/usr/share/man/man8/lamplighter.8.gz"}

	t.Run("deb", func(t *testing.T) {
		for i, arch := range []string{"amd64", "arm64"} {
			deb := debs[i]
			if got := strings.TrimSpace(sh(t, nil, "dpkg-deb", "-f", deb, "Architecture")); got != arch {
				t.Errorf("%s: Architecture %s", deb, got)
			}
			// The binary is the architecture's.
			x := t.TempDir()
			sh(t, nil, "dpkg-deb", "-x", deb, x)
			checkMachine(t, filepath.Join(x, "usr/bin/lamplighter"), map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[arch])
			var listed []string
			for _, l := range strings.Split(strings.TrimSpace(sh(t, nil, "dpkg-deb", "-c", deb)), "\n") {
				f := strings.Fields(l)
				if p := strings.TrimSuffix(strings.TrimPrefix(f[len(f)-1], "."), "/"); !strings.HasSuffix(l, "/") || p == "/etc/lamplighter/secrets" {
					listed = append(listed, p)
				}
			}
			slices.Sort(listed)
			if !slices.Equal(listed, files) {
				t.Errorf("%s holds %v, want %v", arch, listed, files)
			}
			if cf := strings.TrimSpace(string(debControl(t, deb, "conffiles"))); cf != "/etc/lamplighter/config.yaml" {
				t.Errorf("conffiles: %q", cf)
			}
		}
		// Installed (amd64, into a root of its own): nothing enabled or
		// started, the unit as systemd reads it, the man page readable.
		root := dpkgRoot(t)
		out := dpkgInstall(t, root, debs[0])
		if !strings.Contains(out, "installed and not started") {
			t.Errorf("the install says nothing of what to do next:\n%s", out)
		}
		if m, _ := filepath.Glob(filepath.Join(root, "etc/systemd/system/*.wants/lamplighter.service")); len(m) > 0 {
			t.Errorf("installing enabled the service: %v", m)
		}
		if st, err := os.Stat(filepath.Join(root, "etc/lamplighter/secrets")); err != nil || st.Mode().Perm() != 0o700 {
			t.Errorf("the secrets directory: %v %v", st.Mode(), err)
		}
		unit := filepath.Join(root, "usr/lib/systemd/system/lamplighter.service")
		if text := mustRead(t, unit); !strings.Contains(text, "ExecStart=/usr/bin/lamplighter -config /etc/lamplighter/config.yaml") {
			t.Errorf("the installed unit runs:\n%s", grepLines(text, "Exec"))
		}
		// (Verified in place of the host's units, with the root's binary.)
		verify := filepath.Join(t.TempDir(), "lamplighter.service")
		os.WriteFile(verify, []byte(strings.ReplaceAll(mustRead(t, unit), "/usr/bin/lamplighter", filepath.Join(root, "usr/bin/lamplighter"))), 0o644)
		cmd := exec.Command(analyze, "verify", verify)
		cmd.Dir = filepath.Dir(verify)
		if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify of the installed unit: %v\n%s", err, out)
		}
		if man := sh(t, []string{"MANWIDTH=80"}, "man", "-l", filepath.Join(root, "usr/share/man/man8/lamplighter.8.gz")); !strings.Contains(man, "-check-config") || !strings.Contains(man, version) {
			t.Errorf("the man page:\n%s", man)
		}
		// The installed binary says which it is; the installed example
		// passes -check-config with its secrets as the unit gives them
		// (LoadCredential= files in $CREDENTIALS_DIRECTORY, Environment=).
		bin := filepath.Join(root, "usr/bin/lamplighter")
		if v := sh(t, nil, bin, "-version"); !strings.HasPrefix(v, "lamplighter "+version+"\n") || !strings.Contains(v, "commit ") {
			t.Errorf("-version: %q", v)
		}
		creds := t.TempDir()
		for _, f := range []string{"ari-password", "api-token", "sip-debbie"} {
			os.WriteFile(filepath.Join(creds, f), []byte("s3cret\n"), 0o600)
		}
		env := []string{"CREDENTIALS_DIRECTORY=" + creds, "LAMPLIGHTER_ESL_PASSWORD=ClueCon",
			"LAMPLIGHTER_SIP_BOB=b", "LAMPLIGHTER_SIP_CAROL=c", "LAMPLIGHTER_SIP_DAN=d"}
		if out := sh(t, env, bin, "-check-config", filepath.Join(root, "etc/lamplighter/config.yaml")); strings.TrimSpace(out) != "ok" {
			t.Errorf("-check-config of the installed example: %s", out)
		}
		// Removed: the binary goes, the config stays (dpkg -r keeps
		// conffiles), and nothing of the state directory is touched.
		state := filepath.Join(root, "var/lib/private/lamplighter")
		os.MkdirAll(state, 0o700)
		os.WriteFile(filepath.Join(state, "lamplighter.db"), []byte("state"), 0o600)
		sh(t, nil, "dpkg", "--root="+root, "--force-script-chrootless", "--force-not-root", "--log=/dev/null", "-r", "lamplighter")
		if _, err := os.Stat(bin); err == nil {
			t.Error("dpkg -r left the binary")
		}
		for _, keep := range []string{filepath.Join(root, "etc/lamplighter/config.yaml"), filepath.Join(state, "lamplighter.db")} {
			if _, err := os.Stat(keep); err != nil {
				t.Errorf("dpkg -r removed %s", keep)
			}
		}
		sh(t, nil, "dpkg", "--root="+root, "--force-script-chrootless", "--force-not-root", "--log=/dev/null", "--purge", "lamplighter")
		for _, gone := range []string{filepath.Join(root, "etc/lamplighter/config.yaml"), state} {
			if _, err := os.Stat(gone); err == nil {
				t.Errorf("dpkg --purge left %s", gone)
			}
		}
	})

	t.Run("rpm", func(t *testing.T) {
		for i, want := range []string{"aarch64", "x86_64"} {
			if got := strings.TrimSpace(sh(t, nil, "rpm", "-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE} %{ARCH}", rpms[i])); got != "lamplighter "+version+" 1 "+want {
				t.Errorf("%s: %q", rpms[i], got)
			}
			sh(t, nil, "rpm", "-K", "--nosignature", rpms[i]) // digests
		}
		rpm := rpms[1] // x86_64
		var listed []string
		flags := map[string]string{}
		for _, l := range strings.Split(strings.TrimSpace(sh(t, nil, "rpm", "-qp", "--qf", "[%{FILEFLAGS} %{FILEMODES:perms} %{FILENAMES}\n]", rpm)), "\n") {
			f := strings.Fields(l)
			listed = append(listed, f[2])
			flags[f[2]] = f[0] + " " + f[1]
		}
		slices.Sort(listed)
		if !slices.Equal(listed, files) {
			t.Errorf("the rpm holds %v, want %v", listed, files)
		}
		// %config(noreplace): RPMFILE_CONFIG (1) | RPMFILE_NOREPLACE (16).
		if flags["/etc/lamplighter/config.yaml"] != "17 -rw-r--r--" || flags["/etc/lamplighter/secrets"] != "0 drwx------" {
			t.Errorf("file flags: %v", flags)
		}
		if s := sh(t, nil, "rpm", "-qp", "--scripts", rpm); !strings.Contains(s, "postinstall scriptlet") ||
			!strings.Contains(s, "preuninstall scriptlet") || regexp.MustCompile(`(?m)^\s*systemctl (enable|start)`).MatchString(s) {
			t.Errorf("scriptlets:\n%s", s)
		}
		// Installed into a root of its own, with a shell there for the
		// scriptlets (rpm runs them chrooted): the first install says
		// what to do next; an upgrade keeps an edited config.
		root := rpmRoot(t)
		out := sh(t, nil, "rpm", "--root", root, "-i", "--nodeps", rpm)
		if !strings.Contains(out, "installed and not started") {
			t.Errorf("rpm -i says:\n%s", out)
		}
		if got := sh(t, nil, "rpm", "--root", root, "-V", "lamplighter"); strings.TrimSpace(got) != "" {
			t.Errorf("rpm -V after install: %s", got)
		}
		config := filepath.Join(root, "etc/lamplighter/config.yaml")
		os.WriteFile(config, []byte("# edited\n"), 0o644)
		later := filepath.Join(t.TempDir(), "later")
		os.MkdirAll(later, 0o755)
		buildPackages(t, later, "-v", version+".1", "amd64")
		newer, _ := filepath.Glob(filepath.Join(later, "*.rpm"))
		out = sh(t, nil, "rpm", "--root", root, "-U", "--nodeps", newer[0])
		if strings.Contains(out, "installed and not started") {
			t.Errorf("an upgrade talks like an install:\n%s", out)
		}
		if got := mustRead(t, config); got != "# edited\n" {
			t.Errorf("the upgrade replaced the edited config: %q", got)
		}
		if got := strings.TrimSpace(sh(t, nil, "rpm", "--root", root, "-q", "lamplighter")); got != "lamplighter-"+version+".1-1.x86_64" {
			t.Errorf("after the upgrade: %s", got)
		}
	})
}

// TestUpgradeKeepsDialogs: the previous release, packaged, installed;
// the administrator edits the config; phones subscribe (UDP and TCP);
// the service stops, the new package is installed over it and started:
// the edited config is kept, the state file is read, and every phone
// gets a NOTIFY in its dialog and refreshes it with 200, without
// subscribing again. Going back to the previous package then works too
// (its format is the same), and the new binary refuses a state file of
// a newer format (TestNewerStateFileRefusesToStart).
func TestUpgradeKeepsDialogs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds packages")
	}
	need(t, "dpkg")
	need(t, "git")
	tmp := t.TempDir()
	// The previous release, built as it was.
	src := filepath.Join(tmp, "previous")
	os.MkdirAll(src, 0o755)
	archive := exec.Command("git", "-C", "../..", "archive", previousRelease)
	untar := exec.Command("tar", "-x", "-C", src)
	pipe, _ := archive.StdoutPipe()
	untar.Stdin = pipe
	var aerr bytes.Buffer
	archive.Stderr = &aerr
	if err := untar.Start(); err != nil {
		t.Fatal(err)
	}
	if err := archive.Run(); err != nil {
		t.Fatalf("git archive %s (a clone with the release's history is needed): %v\n%s", previousRelease, err, aerr.String())
	}
	if err := untar.Wait(); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(tmp, "lamplighter-"+previousVersion)
	build := exec.Command("go", "build", "-trimpath", "-o", old, "./cmd/lamplighter")
	build.Dir = src
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building %s: %v\n%s", previousRelease, err, out)
	}
	pkgs := filepath.Join(tmp, "pkgs")
	buildPackages(t, pkgs, "-b", old, "-v", previousVersion, "amd64")
	buildPackages(t, pkgs, "amd64")
	version := strings.TrimSpace(mustRead(t, "../../packaging/VERSION"))
	oldDeb := filepath.Join(pkgs, "lamplighter_"+previousVersion+"-1_amd64.deb")
	newDeb := filepath.Join(pkgs, "lamplighter_"+version+"-1_amd64.deb")

	root := dpkgRoot(t)
	dpkgInstall(t, root, oldDeb)
	// The administrator's config (free ports; the state directory as the
	// unit's StateDirectory= gives it).
	sipPort, httpPort := freePort(t), freePort(t)
	httpAddr := fmt.Sprintf("127.0.0.1:%d", httpPort)
	config := filepath.Join(root, "etc/lamplighter/config.yaml")
	edited := fmt.Sprintf(`# Edited by the administrator.
sip:
  domain: upgrade.test
  listen:
    - {transport: udp, address: "127.0.0.1:%d"}
    - {transport: tcp, address: "127.0.0.1:%d"}
  trusted_networks: [127.0.0.0/8]
http: {listen: "%s", token: s3cret}
state_dir: %s
users:
  - {id: debbie, name: Debbie Harry, extensions: ["100"]}
  - {id: bob, name: Bob Marley, extensions: ["101"]}
`, sipPort, sipPort, httpAddr, filepath.Join(root, "var/lib/lamplighter"))
	if err := os.WriteFile(config, []byte(edited), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "usr/bin/lamplighter")
	server := fmt.Sprintf("127.0.0.1:%d", sipPort)

	first := start(t, bin, config)
	type sub struct {
		w    *watcher
		cseq uint32
	}
	var subs []*sub
	for _, tr := range []string{"UDP", "TCP"} {
		w := newWatcher(t, tr)
		if res := w.subscribe(server, "100", "dialog", 3600); res.StatusCode != 200 {
			t.Fatalf("%s SUBSCRIBE to the previous release: %d", tr, res.StatusCode)
		}
		subs = append(subs, &sub{w: w, cseq: w.notifyWhere("active", 5*time.Second).CSeq().SeqNo})
	}
	// Stopped as systemd stops it for the upgrade (SIGTERM).
	first.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-first.end:
	case <-time.After(10 * time.Second):
		t.Fatal("the previous release did not stop on SIGTERM")
	}

	out := dpkgInstall(t, root, newDeb)
	if strings.Contains(out, "installed and not started") {
		t.Errorf("the upgrade talks like an install:\n%s", out)
	}
	if got := mustRead(t, config); got != edited {
		t.Errorf("the upgrade changed the edited config:\n%s", got)
	}
	if v := sh(t, nil, bin, "-version"); !strings.HasPrefix(v, "lamplighter "+version+"\n") {
		t.Fatalf("the upgraded binary is %q", v)
	}
	second := start(t, bin, config)
	waitFor(t, second.out, "restored saved state", 5*time.Second)
	for _, s := range subs {
		n := s.w.notifyWhere("active", 5*time.Second)
		if got := n.CSeq().SeqNo; got <= s.cseq {
			t.Errorf("%s: CSeq %d after the upgrade, not above %d", s.w.transport, got, s.cseq)
		}
		if res := s.w.subscribe("", "", "", 3600); res.StatusCode != 200 {
			t.Errorf("%s: refresh after the upgrade got %d, want 200", s.w.transport, res.StatusCode)
		}
	}
	if code, body := apiDo(t, "GET", "http://"+httpAddr+"/api/v1/users/debbie", "s3cret", ""); code != 200 || !strings.Contains(body, `"watchers": 2`) {
		t.Errorf("after the upgrade: %d %s", code, body)
	}
	if m := regexp.MustCompile(`lamplighter_build_info\{[^}]*version="([^"]+)"`).FindStringSubmatch(metricsText(t, httpAddr)); m == nil || m[1] != version {
		t.Errorf("lamplighter_build_info: %v", m)
	}
	second.cmd.Process.Signal(syscall.SIGTERM)
	<-second.end

	// Back to the previous package: its state format is the same, so it
	// starts and keeps the dialogs too.
	dpkgInstall(t, root, oldDeb)
	third := start(t, bin, config)
	waitFor(t, third.out, "restored saved state", 5*time.Second)
	for _, s := range subs {
		if res := s.w.subscribe("", "", "", 3600); res.StatusCode != 200 {
			t.Errorf("%s: refresh after the downgrade got %d, want 200", s.w.transport, res.StatusCode)
		}
	}
}

// dpkgRoot makes an empty root with a dpkg database of its own, so that
// packages are installed there and not on this machine.
func dpkgRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	for _, f := range []string{"var/lib/dpkg/status", "var/lib/dpkg/available"} {
		os.WriteFile(filepath.Join(root, f), nil, 0o644)
	}
	return root
}

// dpkgInstall installs (or upgrades to) a .deb in root, its maintainer
// scripts run with DPKG_ROOT set (as dpkg does for --root without a
// chroot), and returns what dpkg and the scripts said.
func dpkgInstall(t *testing.T, root, deb string) string {
	t.Helper()
	return sh(t, nil, "dpkg", "--root="+root, "--force-script-chrootless", "--force-not-root", "--force-downgrade",
		"--force-confold", "--log=/dev/null", "-i", deb)
}

// rpmRoot makes an empty root with an rpm database and a shell for the
// scriptlets (rpm runs them chrooted): the host's dash and its libraries.
func rpmRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	sh(t, nil, "rpm", "--root", root, "--initdb")
	dash, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	copyInto(t, root, dash, "/bin/sh")
	ldd := sh(t, nil, "ldd", dash)
	for _, lib := range regexp.MustCompile(`(/\S+\.so[.\d]*)`).FindAllString(ldd, -1) {
		real, err := filepath.EvalSymlinks(lib)
		if err != nil {
			t.Fatal(err)
		}
		copyInto(t, root, real, lib)
	}
	return root
}

func copyInto(t *testing.T, root, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(root, to)
	os.MkdirAll(filepath.Dir(dst), 0o755)
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

// debControl reads one member of a .deb's control archive.
func debControl(t *testing.T, deb, member string) []byte {
	t.Helper()
	x := t.TempDir()
	sh(t, nil, "dpkg-deb", "-e", deb, x)
	b, err := os.ReadFile(filepath.Join(x, member))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkMachine checks that an ELF binary is for the machine want.
func checkMachine(t *testing.T, path string, want elf.Machine) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Machine != want {
		t.Errorf("%s is for %v, want %v", path, f.Machine, want)
	}
}

// metricsText is the whole of /metrics.
func metricsText(t *testing.T, httpAddr string) string {
	t.Helper()
	_, body := apiDo(t, "GET", "http://"+httpAddr+"/metrics", "", "")
	return body
}
