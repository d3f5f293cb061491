#!/bin/sh
# After Lamplighter's package is installed or upgraded. Installing enables
# and starts nothing; an upgrade restarts a running service so that the
# new binary serves (its subscriptions are kept in the state directory).
# dpkg passes "configure OLD-VERSION" (OLD-VERSION empty on a first
# install), rpm "1" (install) or "2" (upgrade). Under dpkg --root (tests,
# image builds) DPKG_ROOT is set and no service is touched.
set -e
upgrade=no
case "$1" in
  configure) [ -n "${2:-}" ] && upgrade=yes ;;
  [2-9]) upgrade=yes ;;
esac
if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload >/dev/null 2>&1 || true
  if [ "$upgrade" = yes ]; then
    systemctl try-restart lamplighter.service >/dev/null 2>&1 || true
  fi
fi
if [ "$upgrade" = no ]; then
  echo "Lamplighter is installed and not started. Edit /etc/lamplighter/config.yaml"
  echo "(check it with: lamplighter -check-config /etc/lamplighter/config.yaml), then:"
  echo "  systemctl enable --now lamplighter"
fi
exit 0
