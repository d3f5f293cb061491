// Package version says which Lamplighter this is: the version a release
// build stamps in (make package: -ldflags "-X ….version.stamped=1.2.0"),
// else what Go's build information holds (the module's version, or the
// commit of a build from a checkout), with the commit and the Go version.
package version

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// stamped and stampedCommit are the release version and its commit, set
// at link time by make build and make package (a build with
// -buildvcs=false has no commit of its own).
var stamped, stampedCommit string

// Info is one build's identity.
type Info struct {
	Version  string `json:"version"`
	Commit   string `json:"commit,omitempty"`
	Time     string `json:"commit_time,omitempty"`
	Modified bool   `json:"modified,omitempty"` // built from a checkout with changes
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

// Get returns this build's identity.
func Get() Info {
	info := Info{Version: stamped, Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	bi, ok := debug.ReadBuildInfo()
	if ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Commit = s.Value
			case "vcs.time":
				info.Time = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
	}
	if info.Commit == "" {
		info.Commit = stampedCommit
	}
	if info.Version == "" && ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		info.Version = strings.TrimPrefix(bi.Main.Version, "v")
	}
	if info.Version == "" {
		info.Version = "devel"
		if info.Commit != "" {
			info.Version += "-" + short(info.Commit)
		}
		if info.Modified {
			info.Version += "+changes"
		}
	}
	return info
}

func short(commit string) string {
	if len(commit) > 12 {
		return commit[:12]
	}
	return commit
}

// String is what lamplighter -version prints.
func (i Info) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "lamplighter %s\n", i.Version)
	if i.Commit != "" {
		fmt.Fprintf(&b, "commit %s", i.Commit)
		if i.Time != "" {
			fmt.Fprintf(&b, " (%s)", i.Time)
		}
		if i.Modified {
			b.WriteString(" with uncommitted changes")
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "built with %s for %s\n", i.Go, i.Platform)
	return b.String()
}

// UserAgent is how Lamplighter names itself in SIP (User-Agent, Server)
// and HTTP where the config names it nothing else: "Lamplighter/1.2.0".
func UserAgent() string { return "Lamplighter/" + Get().Version }
