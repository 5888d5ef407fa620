#!/usr/bin/env bash
# check_runtime_libs.sh BINARY DOCKERFILE - checks that the runtime stage of
# docker/Dockerfile installs every shared library the bridge links (ctest -L
# packaging). The image is built on the same Debian release as this machine,
# so `ldd BINARY` here lists what the binary needs there: each library is
# mapped to its Debian package (dpkg -S) and that package must appear on an
# `apt-get install` line of the Dockerfile's last stage, or be pulled in by
# one of those (Depends/Pre-Depends), or be part of the debian:bookworm-slim
# base image (BASE below, on purpose a short explicit list). Sanitizer runtimes (an ASan build of the tests) are reported and
# ignored: the image is never built with them.
# Exit 0 when every library is covered; otherwise 1, naming the packages to
# add. Needs ldd and dpkg (Debian).
set -euo pipefail
BIN=${1:?usage: check_runtime_libs.sh BINARY DOCKERFILE}
DOCKERFILE=${2:?usage: check_runtime_libs.sh BINARY DOCKERFILE}

# In every debian:bookworm-slim image: libc6 (libc, libm, ld-linux...) is
# Essential; libgcc-s1 is a dependency of libc6; zlib1g of dpkg; libstdc++6
# of apt.
BASE=(libc6 libgcc-s1 zlib1g libstdc++6)
SANITIZERS=(libasan8 libubsan1 liblsan0 libtsan2 libasan6 libubsan0)

for tool in ldd dpkg; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "check_runtime_libs: $tool not found (Debian needed)" >&2
        exit 1
    }
done
[ -x "$BIN" ] || {
    echo "check_runtime_libs: $BIN is not an executable (build it first)" >&2
    exit 1
}
[ -f "$DOCKERFILE" ] || {
    echo "check_runtime_libs: $DOCKERFILE not found" >&2
    exit 1
}

# The packages the last stage installs: RUN lines joined at backslashes,
# words after "apt-get [options] install" up to the end of that command.
mapfile -t INSTALLED < <(awk '
    { line = $0 }
    /^[[:space:]]*#/ && !cont { next }
    {
        if (cont) buf = buf " " line; else buf = line
        if (sub(/\\[[:space:]]*$/, "", buf)) { cont = 1; next }
        cont = 0
        if (toupper(buf) ~ /^[[:space:]]*FROM[[:space:]]/) { n = 0; delete pkgs }
        if (toupper(buf) ~ /^[[:space:]]*RUN[[:space:]]/) {
            w = split(buf, words, /[[:space:]]+/)
            inst = 0
            for (i = 1; i <= w; i++) {
                t = words[i]
                if (t == "&&" || t == "||" || t == ";" || t == "|") { inst = 0; apt = 0; continue }
                if (t == "apt-get" || t == "apt") { apt = 1; continue }
                if (apt && t == "install") { inst = 1; continue }
                if (inst && t !~ /^-/ && t != "") { sub(/[=;].*$/, "", t); pkgs[++n] = t }
            }
        }
    }
    END { for (i = 1; i <= n; i++) print pkgs[i] }
' "$DOCKERFILE")
if [ ${#INSTALLED[@]} -eq 0 ]; then
    echo "check_runtime_libs: found no apt-get install in the last stage of $DOCKERFILE" >&2
    exit 1
fi

# What apt installs along with the list: the closure of Depends and
# Pre-Depends (the Dockerfile passes --no-install-recommends), first
# alternative, read from dpkg (or apt-cache for packages not installed here).
deps() {
    local d
    d=$(dpkg-query -W -f='${Depends}, ${Pre-Depends}' "$1" 2>/dev/null) ||
        d=$(apt-cache depends --no-recommends --no-suggests --no-conflicts --no-breaks \
            --no-replaces --no-enhances "$1" 2>/dev/null |
            sed -n 's/^ *|\{0,1\}\(Pre\)\{0,1\}Depends: //p' | tr '\n' ',') || true
    tr ',' '\n' <<<"$d" | sed 's/|.*//; s/(.*)//; s/:any//; s/[[:space:]]//g' | grep -v '^$' || true
}
declare -A PULLED=() # package -> the listed package that pulls it in
queue=("${INSTALLED[@]}")
for p in "${INSTALLED[@]}"; do PULLED[$p]=$p; done
while [ ${#queue[@]} -gt 0 ]; do
    p=${queue[0]}
    queue=("${queue[@]:1}")
    while read -r d; do
        [ -n "${PULLED[$d]+x}" ] && continue
        PULLED[$d]=${PULLED[$p]}
        queue+=("$d")
    done < <(deps "$p")
done

# The package owning a library, trying the path as ldd prints it and its
# /usr-merged and resolved forms (dpkg knows only the one it unpacked).
owner() {
    local p=$1 c out
    for c in "$p" "/usr$p" "$(readlink -f "$p")" "${p#/usr}"; do
        out=$(dpkg -S "$c" 2>/dev/null | grep -v '^diversion' | head -n 1) || continue
        [ -n "$out" ] && {
            echo "${out%%:*}"
            return 0
        }
    done
    return 1
}

in_list() {
    local x=$1
    shift
    local y
    for y in "$@"; do [ "$x" = "$y" ] && return 0; done
    return 1
}

status=0
missing=()
while read -r name arrow path _; do
    # "libfoo.so.1 => /path (0x...)", "/lib64/ld-linux... (0x...)", "linux-vdso.so.1 (0x...)"
    if [ "$arrow" != "=>" ]; then
        path=$name
    fi
    case "$path" in
    /*) ;;
    not) # "libfoo.so.1 => not found"
        echo "check_runtime_libs: $name not found on this machine" >&2
        status=1
        continue
        ;;
    *) continue ;; # the vDSO: no file
    esac
    if ! pkg=$(owner "$path"); then
        echo "check_runtime_libs: $path belongs to no Debian package" >&2
        status=1
        continue
    fi
    if in_list "$pkg" "${INSTALLED[@]}"; then
        echo "  $path: $pkg (installed by the Dockerfile)"
    elif in_list "$pkg" "${BASE[@]}"; then
        echo "  $path: $pkg (base image)"
    elif [ -n "${PULLED[$pkg]+x}" ]; then
        echo "  $path: $pkg (a dependency of ${PULLED[$pkg]}, installed by the Dockerfile)"
    elif in_list "$pkg" "${SANITIZERS[@]}"; then
        echo "  $path: $pkg (sanitizer runtime, ignored)"
    else
        echo "check_runtime_libs: $path comes from $pkg, which the runtime stage of $DOCKERFILE does not install" >&2
        in_list "$pkg" "${missing[@]+"${missing[@]}"}" || missing+=("$pkg")
        status=1
    fi
done < <(ldd "$BIN")

for p in "${INSTALLED[@]}"; do
    case "$p" in
    *-dev) echo "check_runtime_libs: the runtime stage installs $p: -dev packages belong in the build stage" >&2
        status=1 ;;
    esac
done

if [ $status = 0 ]; then
    echo "check_runtime_libs: every library of $BIN is installed by the runtime stage (${INSTALLED[*]})"
elif [ ${#missing[@]} -gt 0 ]; then
    echo "check_runtime_libs: add to the runtime apt-get install line: ${missing[*]}" >&2
fi
exit $status
