package main

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"syscall"

	"github.com/lamplighter/lamplighter/cmd/lamplighter/config"
)

// demoPortMove says that the demo listens on another port than its
// built-in one, because another program holds that one.
type demoPortMove struct {
	what     string // "SIP server (udp, tcp)" or "switchboard (and API)"
	who      string // who likely holds the port
	from, to string // host:port
}

func (m demoPortMove) String() string {
	return fmt.Sprintf("%s is in use by another program (%s): the demo's %s listens on %s instead", m.from, m.who, m.what, m.to)
}

// moveDemoOffTakenPorts moves the demo's listeners off the ports another
// program already holds (a PBX holds 5060 on most hosts where Lamplighter
// is tried as a sidecar), so that the demo starts anyway. The listeners
// that share a port (SIP over UDP and TCP) move together, to the first
// port after it that is free for all of them, or else to one the system
// picks. A real configuration is never moved: there a taken port is an
// error the administrator must see.
func moveDemoOffTakenPorts(cfg *config.Config) ([]demoPortMove, error) {
	var moves []demoPortMove
	// SIP listeners, grouped by address.
	groups := map[string][]int{}
	var order []string
	for i, l := range cfg.SIP.Listen {
		if _, ok := groups[l.Address]; !ok {
			order = append(order, l.Address)
		}
		groups[l.Address] = append(groups[l.Address], i)
	}
	for _, addr := range order {
		idx := groups[addr]
		nets := make([]string, len(idx))
		for j, i := range idx {
			nets[j] = cfg.SIP.Listen[i].Transport
			if nets[j] == "tls" {
				nets[j] = "tcp"
			}
		}
		to, err := freeAddress(addr, nets, 2)
		if err != nil {
			return nil, fmt.Errorf("demo SIP address %s: %w", addr, err)
		}
		if to == addr {
			continue
		}
		for _, i := range idx {
			cfg.SIP.Listen[i].Address = to
		}
		moves = append(moves, demoPortMove{what: fmt.Sprintf("SIP server (%s)", joinTransports(cfg, idx)),
			who: "a PBX on this host?", from: addr, to: to})
	}
	if cfg.HTTP.Listen != "" {
		to, err := freeAddress(cfg.HTTP.Listen, []string{"tcp"}, 1)
		if err != nil {
			return nil, fmt.Errorf("demo HTTP address %s: %w", cfg.HTTP.Listen, err)
		}
		if to != cfg.HTTP.Listen {
			moves = append(moves, demoPortMove{what: "switchboard (and API)", who: "a web service?", from: cfg.HTTP.Listen, to: to})
			cfg.HTTP.Listen = to
		}
	}
	return moves, nil
}

func joinTransports(cfg *config.Config, idx []int) string {
	s := ""
	for j, i := range idx {
		if j > 0 {
			s += ", "
		}
		s += cfg.SIP.Listen[i].Transport
	}
	return s
}

// freeAddress returns addr when every network in nets can bind it, else
// the same host on the first of the next 40 ports (counting by step: SIP
// skips 5061, the port of SIP over TLS) where all can, else on a port the
// system picks.
func freeAddress(addr string, nets []string, step int) (string, error) {
	host, portText, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	port, err := strconv.Atoi(portText)
	if err != nil {
		return "", err
	}
	ok, err := bindable(addr, nets)
	if ok || err != nil {
		return addr, err
	}
	for p := port + step; p <= port+40*step && p < 65536; p += step {
		a := net.JoinHostPort(host, strconv.Itoa(p))
		if ok, _ := bindable(a, nets); ok {
			return a, nil
		}
	}
	for range 20 {
		ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
		if err != nil {
			return "", err
		}
		a := ln.Addr().String()
		ln.Close()
		if ok, _ := bindable(a, nets); ok {
			return a, nil
		}
	}
	return "", fmt.Errorf("no free port found")
}

// bindable says whether every network in nets can bind addr now. Any
// failure but "address in use" is returned as an error: the demo cannot
// fix it by moving.
func bindable(addr string, nets []string) (bool, error) {
	var closers []func() error
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	for _, n := range nets {
		var err error
		switch n {
		case "udp":
			var pc net.PacketConn
			if pc, err = net.ListenPacket("udp", addr); err == nil {
				closers = append(closers, pc.Close)
			}
		default:
			var ln net.Listener
			if ln, err = net.Listen("tcp", addr); err == nil {
				closers = append(closers, ln.Close)
			}
		}
		if errors.Is(err, syscall.EADDRINUSE) || errors.Is(err, syscall.EACCES) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
	return true, nil
}
