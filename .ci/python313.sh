#!/usr/bin/env bash
# Builds CPython 3.13 from Debian's source package (this machine's own apt archive, suite trixie,
# deb-src) into a cache folder, once, and prints the interpreter's path. CI needs it because the
# machine's Python is 3.11 and JAX releases from 0.11 on need Python >= 3.12.
#   PY313=$(.ci/python313.sh) && "$PY313" -m venv .ci-venv-newest
# Cache: $JAXMM_PY313_PREFIX (default ~/.cache/jaxmm/python3.13). First run 10-15 min on 2 cores,
# then instant. Needs root (apt) the first time; progress goes to stderr, the path to stdout.
set -euo pipefail
prefix=${JAXMM_PY313_PREFIX:-$HOME/.cache/jaxmm/python3.13}
modules="import ssl, zlib, ctypes, lzma, bz2, sqlite3"
if [ -x "$prefix/bin/python3.13" ] && "$prefix/bin/python3.13" -c "$modules" 2>/dev/null; then
    echo "$prefix/bin/python3.13"
    exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The headers of the standard library's compiled modules, from the machine's own suite: only
# those missing are installed (nothing already installed is upgraded under a running CI).
missing=()
for package in build-essential xz-utils libssl-dev zlib1g-dev libffi-dev liblzma-dev libbz2-dev \
    libsqlite3-dev libreadline-dev; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "python313.sh: installing ${missing[*]}" >&2
    apt-get -q update >&2
    DEBIAN_FRONTEND=noninteractive apt-get -q install -y --no-install-recommends "${missing[@]}" >&2
fi

# The same archive as the machine's own sources (first stanza), as a trixie source entry.
base=$(ls /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
[ -n "$base" ] || { echo "python313.sh: no deb822 apt sources file to start from" >&2; exit 1; }
awk 'BEGIN{RS="";ORS="\n"} NR==1' "$base" |
    sed -e 's/^Types: .*/Types: deb-src/' -e 's/^Suites: .*/Suites: trixie/' >"$work/trixie-src.sources"
mkdir -p "$work/lists/partial"
apt_opts=(-o "Dir::Etc::sourcelist=$work/trixie-src.sources" -o "Dir::Etc::sourceparts=-"
    -o "Dir::State::Lists=$work/lists" -o "APT::Get::List-Cleanup=0")
echo "python313.sh: fetching the python3.13 source package" >&2
apt-get -q "${apt_opts[@]}" update >&2
(cd "$work" && apt-get -q "${apt_opts[@]}" source --download-only python3.13 >&2)
tar -C "$work" -xJf "$work"/python3.13_*.orig.tar.xz
src=$(ls -d "$work"/Python-3.13*/ | head -1)
echo "python313.sh: building $(basename "$src") into $prefix" >&2
(cd "$src" &&
    ./configure --prefix="$prefix" --with-ensurepip=install --disable-test-modules \
        >"$work/configure.log" 2>&1 &&
    make -j"$(nproc)" >"$work/make.log" 2>&1 &&
    make install >"$work/install.log" 2>&1) || {
    tail -30 "$work"/*.log >&2
    exit 1
}
"$prefix/bin/python3.13" -c "$modules" >&2
echo "$prefix/bin/python3.13"
