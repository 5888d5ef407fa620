#!/usr/bin/env bash
# check_systemd_unit.sh SOURCE_DIR BINARY - checks config/mqtt2amqp.service
# without a running systemd (ctest -L packaging):
#  1. `systemd-analyze verify` accepts it with no warning at all (it exits 0
#     on unknown keys and bad values, so any output fails the test; --man=no:
#     the man page of Documentation= is installed only with the package); the
#     unit is copied with ExecStart pointing at BINARY, which verify wants
#     to exist;
#  2. TimeoutStopSec is longer than shutdown_timeout in
#     config/mqtt2amqp.yaml, so a stop lets the bridge drain;
#  3. Type=notify with NotifyAccess=main and a WatchdogSec of at least 2 s
#     (the bridge pings every WatchdogSec/2 from a loop that turns every
#     250 ms; what it sends: tests/integration/test_systemd_notify.c).
# Exits 77 (skipped) when systemd-analyze is not installed.
set -euo pipefail
SRC=${1:?usage: check_systemd_unit.sh SOURCE_DIR BINARY}
BIN=${2:?usage: check_systemd_unit.sh SOURCE_DIR BINARY}
UNIT="$SRC/config/mqtt2amqp.service"

command -v systemd-analyze >/dev/null 2>&1 || {
    echo "check_systemd_unit: systemd-analyze not installed: skipped"
    exit 77
}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/bin/mqtt2amqp|$BIN|g" "$UNIT" >"$tmp/mqtt2amqp.service"
out=$(cd "$tmp" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no mqtt2amqp.service 2>&1) || {
    echo "check_systemd_unit: systemd-analyze verify failed:" >&2
    echo "$out" >&2
    exit 1
}
if [ -n "$out" ]; then
    echo "check_systemd_unit: systemd-analyze verify warns:" >&2
    echo "$out" >&2
    exit 1
fi

stop=$(sed -n 's/^TimeoutStopSec=\([0-9]*\)s\{0,1\}[[:space:]]*$/\1/p' "$UNIT")
drain=$(sed -n 's/^shutdown_timeout:[[:space:]]*\([0-9]*\).*/\1/p' "$SRC/config/mqtt2amqp.yaml")
if [ -z "$stop" ] || [ -z "$drain" ] || [ "$stop" -le "$drain" ]; then
    echo "check_systemd_unit: TimeoutStopSec (${stop:-unset, in plain seconds}) must exceed" \
        "shutdown_timeout (${drain:-unset}) of config/mqtt2amqp.yaml" >&2
    exit 1
fi
for line in Type=notify NotifyAccess=main; do
    grep -qx "$line" "$UNIT" || {
        echo "check_systemd_unit: $UNIT lacks $line" >&2
        exit 1
    }
done
wd=$(sed -n 's/^WatchdogSec=\([0-9]*\)s\{0,1\}[[:space:]]*$/\1/p' "$UNIT")
if [ -z "$wd" ] || [ "$wd" -lt 2 ]; then
    echo "check_systemd_unit: WatchdogSec (${wd:-unset, in plain seconds}) must be at least 2 s" >&2
    exit 1
fi
echo "check_systemd_unit: $UNIT verifies; TimeoutStopSec ${stop}s > shutdown_timeout ${drain}s;" \
    "Type=notify, WatchdogSec ${wd}s"
