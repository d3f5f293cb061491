#!/bin/sh
# After Lamplighter's package is removed. Removing keeps the state
# (subscriptions, registrations, publications: StateDirectory=, under
# /var/lib/private/lamplighter for the unit's dynamic user) and the edited
# config; only dpkg --purge deletes them.
set -e
root="${DPKG_ROOT:-}"
case "$1" in
  purge)
    rm -rf "$root/var/lib/private/lamplighter" "$root/var/lib/lamplighter"
    ;;
esac
if [ -z "$root" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
fi
exit 0
