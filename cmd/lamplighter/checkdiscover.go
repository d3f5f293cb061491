package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lamplighter/lamplighter/adapters"
	"github.com/lamplighter/lamplighter/adapters/ari"
	"github.com/lamplighter/lamplighter/adapters/esl"
	"github.com/lamplighter/lamplighter/adapters/sim"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/config"
	"github.com/lamplighter/lamplighter/cmd/lamplighter/discovery"
)

// directoryReader returns what reads a PBX's own directory, without
// connecting to its events.
func directoryReader(cfg *config.Config, pb *config.PBX, log *slog.Logger) (adapters.Discoverer, error) {
	pw, err := cfg.PBXPassword(pb, nil)
	if err != nil {
		return nil, err
	}
	conn := adapters.Connection{Name: pb.Name, Address: pb.Address, Username: pb.Username, Password: pw}
	none := func() []string { return nil }
	switch pb.Kind {
	case config.KindARI:
		section, err := cfg.ARISection(pb, nil)
		if err != nil {
			return nil, err
		}
		return ari.New(conn, section, none, log)
	case config.KindESL:
		return esl.New(conn, *pb.ESL, none, log)
	case config.KindSim:
		return sim.New(conn, *pb.Sim, nil, log), nil
	}
	return nil, fmt.Errorf("a pbx of kind %q has no directory to read", pb.Kind)
}

// checkDiscovery reads the directory of every PBX with discover on, once,
// and prints the directory they and the YAML make, where each user comes
// from, and what was left out and why. It returns the exit status: 1 when
// a PBX's directory could not be read.
func checkDiscovery(ctx context.Context, cfg *config.Config, out io.Writer) int {
	log := slog.New(slog.DiscardHandler)
	found := discovery.Found{}
	status := 0
	for i := range cfg.PBX {
		pb := &cfg.PBX[i]
		if pb.Discovering() == nil {
			continue
		}
		r, err := directoryReader(cfg, pb, log)
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, 15*time.Second)
			start := time.Now()
			var users []adapters.DiscoveredUser
			users, err = r.Discover(rctx)
			cancel()
			if err == nil {
				found[pb.Name] = users
				fmt.Fprintf(out, "pbx %s: %d users in its directory (read in %s)\n", pb.Name, len(users), time.Since(start).Round(time.Millisecond))
			}
		}
		if err != nil {
			fmt.Fprintf(out, "pbx %s: cannot read its directory: %v\n", pb.Name, err)
			status = 1
		}
	}
	if len(found) == 0 && status == 0 {
		fmt.Fprintln(out, "no pbx has discover on: the directory is the YAML's")
	}
	dir, leftOut, err := cfg.Directory(found)
	if err != nil {
		fmt.Fprintln(out, err)
		return 1
	}
	fmt.Fprintf(out, "directory: %d users\n", dir.Len())
	tw := tabwriter.NewWriter(out, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  ID\tNAME\tEXTENSIONS\tDEVICES\tFROM")
	for _, u := range dir.Users() {
		var devs []string
		for _, ref := range u.Devices {
			devs = append(devs, ref.String())
		}
		var from []string
		if u.Configured {
			from = append(from, "yaml")
		}
		from = append(from, u.Discovered...)
		if u.Domain != "" {
			from[len(from)-1] += " (" + u.Domain + ")"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", u.ID, u.Name, strings.Join(u.Extensions, ","), strings.Join(devs, " "), strings.Join(from, " + "))
	}
	tw.Flush()
	if len(leftOut) > 0 {
		fmt.Fprintf(out, "left out: %d\n", len(leftOut))
		for _, l := range leftOut {
			where := strings.TrimSpace(l.PBX + " " + l.Extension)
			if where != "" {
				where += ": "
			}
			fmt.Fprintf(out, "  %s%s\n", where, l.Reason)
		}
	}
	return status
}
