package ari

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"
)

// The dialplan's hints are the one part of Asterisk's directory ARI does
// not show. The Asterisk Manager Interface lists them (ExtensionStateList,
// an action of the "reporting" class: a user whose write permission is
// only "reporting" can list and read, never change). This is the small
// part of AMI Lamplighter speaks: log in, list the hints, log off.

// hint is one dialplan hint: exten@context watches devices.
type hint struct {
	Exten, Context string
	Devices        []string
}

// amiMaxMessages bounds what one listing may read (a PBX with more hints
// than this is refused rather than read without end).
const amiMaxMessages = 200000

// readHints logs in to AMI and lists the dialplan's hints.
func readHints(ctx context.Context, a *AMI, timeout time.Duration) ([]hint, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", a.Address)
	if err != nil {
		return nil, fmt.Errorf("ami: %w", err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(timeout))
	r := textproto.NewReader(bufio.NewReader(conn))
	banner, err := r.ReadLine()
	if err != nil {
		return nil, fmt.Errorf("ami: %w", err)
	}
	if !strings.HasPrefix(banner, "Asterisk Call Manager") {
		return nil, fmt.Errorf("ami: %s is no Asterisk Manager Interface (it says %q)", a.Address, banner)
	}
	send := func(fields ...string) error {
		var b strings.Builder
		for i := 0; i+1 < len(fields); i += 2 {
			b.WriteString(fields[i] + ": " + fields[i+1] + "\r\n")
		}
		b.WriteString("\r\n")
		_, err := conn.Write([]byte(b.String()))
		return err
	}
	if err := send("Action", "Login", "ActionID", "login", "Username", a.Username, "Secret", a.Secret, "Events", "off"); err != nil {
		return nil, fmt.Errorf("ami: %w", err)
	}
	if err := send("Action", "ExtensionStateList", "ActionID", "hints"); err != nil {
		return nil, fmt.Errorf("ami: %w", err)
	}
	var hints []hint
	for range amiMaxMessages {
		m, err := r.ReadMIMEHeader()
		if err != nil {
			return nil, fmt.Errorf("ami: %w", err)
		}
		switch {
		case m.Get("Actionid") == "login":
			if !strings.EqualFold(m.Get("Response"), "Success") {
				return nil, fmt.Errorf("ami: login as %s refused: %s", a.Username, m.Get("Message"))
			}
		case m.Get("Actionid") != "hints":
			// An event or another action's answer: not ours.
		case strings.EqualFold(m.Get("Response"), "Error"):
			if strings.Contains(m.Get("Message"), "No dialplan hints") {
				return nil, nil
			}
			return nil, fmt.Errorf("ami: ExtensionStateList: %s", m.Get("Message"))
		case m.Get("Event") == "ExtensionStatus":
			if h, ok := parseHint(m.Get("Exten"), m.Get("Context"), m.Get("Hint")); ok {
				hints = append(hints, h)
			}
		case m.Get("Event") == "ExtensionStateListComplete":
			_ = send("Action", "Logoff")
			return hints, nil
		}
	}
	return nil, errors.New("ami: the hint list does not end")
}

// parseHint reads a hint as AMI shows it: devices joined by '&', then
// optionally ',' and a presence provider (CustomPresence:...), which
// Lamplighter does not follow.
func parseHint(exten, context, value string) (hint, bool) {
	devices, _, _ := strings.Cut(value, ",")
	h := hint{Exten: exten, Context: context}
	for _, d := range strings.Split(devices, "&") {
		if d = strings.TrimSpace(d); d != "" {
			h.Devices = append(h.Devices, d)
		}
	}
	return h, exten != "" && len(h.Devices) > 0
}
