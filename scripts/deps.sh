#!/usr/bin/env bash
# deps.sh - installs what building, testing and running mqtt2amqp need on
# Debian 12. Idempotent: when every package is installed it does nothing
# (no network, no root needed).
#
# Installing rabbitmq-server or mosquitto may try to start their system
# services. Nothing here relies on them (the tests and scripts/run.sh start
# private brokers), so when the machine has no policy-rc.d we put a
# temporary one in place that tells invoke-rc.d not to start anything, and
# remove it afterwards. Services already running are left alone.
set -euo pipefail

PACKAGES=(
    build-essential cmake pkg-config           # toolchain
    libmosquitto-dev librabbitmq-dev libyaml-dev # the bridge's libraries
    libssl-dev libmicrohttpd-dev               # TLS set-up and failure reasons; /metrics
    openssl                                    # TLS tests generate their certificates
    check libsubunit-dev                       # unit tests
    mosquitto mosquitto-clients                # MQTT broker for tests and scripts/run.sh
    rabbitmq-server amqp-tools                 # AMQP broker (and epmd) for tests and run.sh
    iproute2                                   # ss: free-port probing in scripts/lib.sh
    clang-14 libclang-rt-14-dev                # libFuzzer targets (scripts/fuzz.sh)
    docker-compose                             # validates docker/docker-compose.yml (no engine)
    scdoc                                      # builds the man page (man/mqtt2amqp.8.scd)
    dpkg-dev lintian                           # cpack -G DEB (dpkg-shlibdeps), its lint
    prometheus                                 # promtool: alerting rules, live /metrics
    curl                                       # the README's "Try it in one minute"
    ejabberd                                   # interop tests: mod_mqtt (tests/support/brokers.h)
    python3                                    # test scripts: JSON of spool dump, compose, dashboard
)
# The interop tests also run aedes, installed at test time with npm from the
# lockfile in tests/support/aedes/. aedes 1.x needs Node.js 20 or later: the
# machine's own (this project's machines have 20); Debian 12's nodejs is 18,
# installed only where there is no node at all, and then aedes will refuse.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    PACKAGES+=(nodejs npm)
fi

missing=()
for p in "${PACKAGES[@]}"; do
    if [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]; then
        missing+=("$p")
    fi
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "deps: all ${#PACKAGES[@]} packages installed"
    exit 0
fi
echo "deps: installing ${missing[*]}"

SUDO=()
if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || {
        echo "deps: need root (or sudo) to install: ${missing[*]}" >&2
        exit 1
    }
    SUDO=(sudo)
fi

POLICY=/usr/sbin/policy-rc.d
made_policy=0
cleanup() {
    if [ $made_policy = 1 ]; then
        "${SUDO[@]}" rm -f "$POLICY"
    fi
}
trap cleanup EXIT
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\n# temporary, from mqtt2amqp scripts/deps.sh: start no services\nexit 101\n' |
        "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 755 "$POLICY"
    made_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "${missing[@]}" </dev/null
echo "deps: done"
