#!/usr/bin/env bash
# check_deb.sh BUILD_DIR - the Debian package, end to end (ctest -L
# packaging; issue 14):
#  1. `cpack -G DEB` in BUILD_DIR (into a temp dir) gives a package with the
#     binary, the example config as a conffile under /etc/mqtt2amqp/, the
#     systemd unit, the man page and the copyright file, and computed
#     dependencies;
#  2. lintian finds no error in it (its warnings and notes are printed);
#  3. `dpkg -i` installs it (then `apt-get -f install -y` if dependencies
#     are missing), no mqtt2amqp process is started, `mqtt2amqp --version`
#     and `mqtt2amqp --check -c /etc/mqtt2amqp/mqtt2amqp.yaml` succeed;
#  4. `dpkg -r` removes it (the conffile stays, as dpkg does), `dpkg --purge`
#     removes the rest, and the machine is as before: the same packages
#     installed and none of the package's paths left.
# Needs root, or sudo without a password; fails saying so otherwise. Exits
# 77 (skipped) when a mqtt2amqp package is already installed here: the test
# does not replace someone's installation.
set -euo pipefail
BUILD=${1:?usage: check_deb.sh BUILD_DIR}
BUILD=$(cd "$BUILD" && pwd)
PKG=mqtt2amqp

say() { echo "check_deb: $*"; }
fail() {
    echo "check_deb: FAIL: $*" >&2
    exit 1
}

SUDO=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO=(sudo -n)
    else
        fail "installing a package needs root or password-less sudo: run ctest as root" \
            "(CI does), or 'ctest -LE packaging' to leave this test out"
    fi
fi
for tool in cpack dpkg dpkg-deb dpkg-shlibdeps lintian apt-get; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not installed (scripts/deps.sh installs it)"
done
if [ "$(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null)" != "" ] &&
    [ "$(dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null)" != "unknown ok not-installed" ]; then
    say "a $PKG package is already installed here ($(dpkg-query -W -f='${Version} ${Status}' "$PKG")): skipped"
    exit 77
fi

tmp=$(mktemp -d)
installed=0
cleanup() {
    if [ $installed = 1 ]; then
        "${SUDO[@]}" dpkg --purge "$PKG" >/dev/null 2>&1 || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# dpkg takes a lock; an apt run elsewhere on the machine holds it for a
# while: retry for up to 120 s on that error only.
dpkg_locked_retry() {
    local out end=$((SECONDS + 120))
    while :; do
        if out=$("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive "$@" 2>&1 </dev/null); then
            echo "$out"
            return 0
        fi
        if grep -qi 'lock' <<<"$out" && [ $SECONDS -lt $end ]; then
            sleep 2
            continue
        fi
        echo "$out"
        return 1
    done
}

# The paths the package owns, and what is installed before.
PATHS=(/usr/bin/mqtt2amqp /etc/mqtt2amqp /usr/lib/systemd/system/mqtt2amqp.service
    /lib/systemd/system/mqtt2amqp.service /usr/share/man/man8/mqtt2amqp.8.gz
    /usr/share/doc/mqtt2amqp /etc/systemd/system/multi-user.target.wants/mqtt2amqp.service)
for p in "${PATHS[@]}"; do
    [ ! -e "$p" ] || fail "$p exists before the package is installed: not a clean machine for this test"
done
dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\n' | sort >"$tmp/before"

# 1. build and inspect
say "cpack -G DEB in $BUILD"
(cd "$BUILD" && cpack -G DEB -B "$tmp/pkg") >"$tmp/cpack.log" 2>&1 || {
    cat "$tmp/cpack.log" >&2
    fail "cpack -G DEB failed"
}
deb=$(ls "$tmp"/pkg/${PKG}_*.deb 2>/dev/null | head -n 1)
[ -n "$deb" ] || fail "cpack made no ${PKG}_*.deb (log: $(tail -n 5 "$tmp/cpack.log"))"
say "built $(basename "$deb") ($(stat -c %s "$deb") bytes)"
dpkg-deb -c "$deb" | awk '{print $6}' | sed 's|^\./|/|' >"$tmp/contents"
for want in /usr/bin/mqtt2amqp /etc/mqtt2amqp/mqtt2amqp.yaml /usr/lib/systemd/system/mqtt2amqp.service \
    /usr/share/man/man8/mqtt2amqp.8.gz /usr/share/doc/mqtt2amqp/copyright \
    /usr/share/doc/mqtt2amqp/changelog.gz /usr/share/doc/mqtt2amqp/examples/prometheus-alerts.yml \
    /usr/share/doc/mqtt2amqp/examples/grafana-dashboard.json; do
    grep -qx "$want" "$tmp/contents" || fail "the package lacks $want"
done
dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles >"$tmp/conffiles"
grep -qx /etc/mqtt2amqp/mqtt2amqp.yaml "$tmp/conffiles" || fail "/etc/mqtt2amqp/mqtt2amqp.yaml is not a conffile"
depends=$(dpkg-deb -f "$deb" Depends)
for lib in libmosquitto1 librabbitmq4 libyaml-0-2 libmicrohttpd12 libssl3 libc6; do
    grep -q "$lib" <<<"$depends" || fail "Depends lacks $lib: $depends"
done
say "Depends: $depends"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/lib/systemd/system/mqtt2amqp.service |
    grep -qx 'ExecStart=/usr/bin/mqtt2amqp -c /etc/mqtt2amqp/mqtt2amqp.yaml' ||
    fail "the packaged unit does not run /usr/bin/mqtt2amqp"

# 2. lintian: errors fail, the rest is listed
lintian_out=$(lintian --display-info --pedantic "$deb" 2>&1 | grep -v 'running with root privileges' || true)
if [ -n "$lintian_out" ]; then
    say "lintian says:"
    sed 's/^/  /' <<<"$lintian_out"
fi
if grep -q '^E: ' <<<"$lintian_out"; then
    fail "lintian reports errors"
fi

# 3. install, run, check nothing started
say "dpkg -i"
if ! dpkg_locked_retry dpkg -i "$deb" >"$tmp/dpkg-i.log"; then
    installed=1
    say "dpkg -i left dependencies missing; apt-get -f install -y"
    dpkg_locked_retry apt-get -o DPkg::Lock::Timeout=120 -f install -y >"$tmp/apt.log" || {
        cat "$tmp/dpkg-i.log" "$tmp/apt.log" >&2
        fail "apt-get -f install could not complete the installation"
    }
fi
installed=1
[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$PKG")" = "ii " ] || fail "$PKG is not installed after dpkg -i"
for d in /proc/[0-9]*; do
    if [ "$(readlink "$d/exe" 2>/dev/null)" = /usr/bin/mqtt2amqp ]; then
        fail "installing started mqtt2amqp (pid ${d#/proc/}): it must not"
    fi
done
version=$(/usr/bin/mqtt2amqp --version) || fail "mqtt2amqp --version failed"
want_version=$(dpkg-deb -f "$deb" Version)
[ "$version" = "mqtt2amqp $want_version" ] || fail "--version says '$version', the package is $want_version"
say "$version"
/usr/bin/mqtt2amqp --check -c /etc/mqtt2amqp/mqtt2amqp.yaml || fail "mqtt2amqp --check of the installed config failed"
zcat /usr/share/man/man8/mqtt2amqp.8.gz | grep -q '^\.SH "\{0,1\}EXIT STATUS' || fail "the man page has no EXIT STATUS section"

# 4. remove, purge, compare
say "dpkg -r"
dpkg_locked_retry dpkg -r "$PKG" >/dev/null || fail "dpkg -r failed"
[ ! -e /usr/bin/mqtt2amqp ] || fail "dpkg -r left /usr/bin/mqtt2amqp"
[ ! -e /usr/lib/systemd/system/mqtt2amqp.service ] || fail "dpkg -r left the unit"
say "dpkg --purge"
dpkg_locked_retry dpkg --purge "$PKG" >/dev/null || fail "dpkg --purge failed"
installed=0
for p in "${PATHS[@]}"; do
    [ ! -e "$p" ] || fail "$p is left after dpkg --purge"
done
dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\n' | sort >"$tmp/after"
if ! diff -u "$tmp/before" "$tmp/after" >"$tmp/diff"; then
    # Only apt-get -f install can add packages (dependencies, left as on any
    # machine that installs them); anything else changed is a failure.
    if grep -q '^-[^-]' "$tmp/diff"; then
        cat "$tmp/diff" >&2
        fail "packages changed or disappeared between before and after"
    fi
    say "dependencies apt-get installed (left in place):"
    grep '^+[^+]' "$tmp/diff" | sed 's/^+/  /'
fi
say "$(basename "$deb"): built, lint-clean, installed, ran, removed and purged"
