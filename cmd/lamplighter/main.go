// Command lamplighter is the busy-lamp and presence server: it follows the
// calls of one or more PBXs (Asterisk over ARI, FreeSWITCH over the event
// socket, or the built-in demo PBX), merges each person's devices into one
// state, and serves it to phones as SIP presence and dialog-info.
//
//	lamplighter -config /etc/lamplighter/config.yaml   run
//	lamplighter -check-config FILE                     check a file, print ok or FILE:LINE: problems
//	lamplighter -check-config FILE -discover           ... and print the directory the PBXs and the YAML make
//	lamplighter -demo                                  run on the demo PBX (also with no -config)
//	lamplighter -version                               print the version, commit and Go version
package main

import (
	"context"
	_ "embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/emiago/sipgo/sip"

	"github.com/lamplighter/lamplighter/cmd/lamplighter/config"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/version"
	"github.com/lamplighter/lamplighter/presence/durable"
)

//go:embed demo.yaml
var demoConfig []byte

// exitNewerState is the exit status when the state file is of a newer
// Lamplighter (a downgrade): the unit does not restart on it
// (RestartPreventExitStatus=), since every start would fail the same
// way. 78 is sysexits' EX_CONFIG.
const exitNewerState = 78

// builtInConfig names the demo config in messages (it has no file).
const builtInConfig = "(built-in demo config)"

func main() {
	// sipgo's package logger (not the one Lamplighter hands each of its
	// layers) says only "ref went negative" at warning level: sipgo's
	// TCPConnection.Close zeroes a connection's reference count, and the
	// read loop ending after it takes one more off. Lamplighter gives back
	// every reference it takes (a presence test holds it to that); the
	// warning is sipgo's bookkeeping at close, so only its errors are
	// shown. Set here, before any sipgo goroutine exists.
	sip.SetDefaultLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run is main without the process around it, so that tests can call it.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("lamplighter", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "configuration `file` (without it, or with -demo, Lamplighter runs on its demo PBX)")
	check := fs.String("check-config", "", "check the configuration `file`, print ok or every problem as FILE:LINE: what, and exit")
	demo := fs.Bool("demo", false, "run on the built-in demo PBX with a built-in directory")
	showVersion := fs.Bool("version", false, "print the version, the commit it was built from and the Go version, and exit")
	discover := fs.Bool("discover", false, "with -check-config: also read the directory of each PBX with discover on, and print the users it and the YAML make, from where, and what is left out")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: lamplighter [-config FILE | -demo | -check-config FILE [-discover] | -version]\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "lamplighter: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	if *showVersion {
		fmt.Fprint(stdout, version.Get())
		return 0
	}
	if *discover && *check == "" {
		fmt.Fprintln(stderr, "lamplighter: -discover goes with -check-config FILE")
		return 2
	}
	if *check != "" {
		cfg, err := config.Load(*check)
		if err != nil {
			fmt.Fprintln(stdout, err)
			return 1
		}
		fmt.Fprintln(stdout, "ok")
		if *discover {
			return checkDiscovery(ctx, cfg, stdout)
		}
		return 0
	}
	var cfg *config.Config
	var err error
	var moved []demoPortMove
	if *demo || *configPath == "" {
		cfg, err = config.Parse(builtInConfig, demoConfig, os.LookupEnv)
		if err == nil {
			cfg.StateDir = demoStateDir()
			moved, err = moveDemoOffTakenPorts(cfg)
		}
	} else {
		cfg, err = config.Load(*configPath)
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	level := new(slog.LevelVar)
	log := newLogger(cfg.Log, stderr, level)
	if *demo || *configPath == "" {
		log.Info("no -config given: running the demo PBX with a built-in directory", "users", len(cfg.Users))
		for _, m := range moved {
			log.Warn(m.String())
		}
		if len(cfg.SIP.Listen) > 0 {
			log.Info("demo: SIP on " + cfg.SIP.Listen[0].Address + " (a BLF key for sip:100@" + cfg.SIP.Listen[0].Address +
				"), switchboard on http://" + cfg.HTTP.Listen + "/ (token demo)")
		}
	}
	d, err := newDaemon(cfg, log, level)
	if err != nil {
		log.Error("cannot start", "err", err)
		if newer := (*durable.NewerError)(nil); errors.As(err, &newer) {
			return exitNewerState
		}
		return 1
	}
	if err := d.Run(ctx); err != nil {
		log.Error("stopped with an error", "err", err)
		return 1
	}
	return 0
}

func demoStateDir() string {
	return fmt.Sprintf("%s/lamplighter-demo-%d", os.TempDir(), os.Getuid())
}

// newLogger builds the slog logger the config asks for; level is set
// from the config and may be changed by a reload.
func newLogger(c config.Log, w io.Writer, level *slog.LevelVar) *slog.Logger {
	setLevel(level, c.Level)
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// setLevel sets a level variable from a config level name.
func setLevel(v *slog.LevelVar, name string) {
	var l slog.Level
	_ = l.UnmarshalText([]byte(name))
	v.Set(l)
}
