#!/bin/sh
# Before Lamplighter's package is removed (not upgraded): the service is
# stopped and disabled. dpkg passes "remove", rpm "0" (erase) or "1"
# (upgrade).
set -e
case "$1" in
  remove|0)
    if [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ]; then
      systemctl disable --now lamplighter.service >/dev/null 2>&1 || true
    fi
    ;;
esac
exit 0
