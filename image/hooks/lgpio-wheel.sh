#!/bin/sh
# Builds the lgpio wheel inside the new root ($1) into /opt/hyperpi/wheels (see customize.sh).
set -eu
root="$1"
version=0.2.2.0
sha256=11372e653b200f76a0b3ef8a23a0735c85ec678a9f8550b9893151ed0f863fff
sdist="lgpio-$version.tar.gz"
build_deps="gcc libc6-dev python3-dev python3-setuptools swig"

mkdir -p "$root/tmp/lgpio"
python3 -m pip download --quiet --no-deps --no-binary :all: \
    -d "$root/tmp/lgpio" "lgpio==$version"
echo "$sha256  $root/tmp/lgpio/$sdist" | sha256sum -c --quiet \
    || { echo "lgpio-wheel.sh: $sdist does not match its pinned sha256" >&2; exit 1; }

in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"; }
# shellcheck disable=SC2016
installed() { in_root dpkg-query -W -f '${Package}\n' | sort; }
installed > "$root/tmp/lgpio/before"
# shellcheck disable=SC2086
in_root apt-get install -y -qq --no-install-recommends $build_deps >/dev/null
in_root python3 -m venv --system-site-packages /tmp/lgpio/venv
in_root sh -c "cd /tmp/lgpio && tar xzf $sdist && cd lgpio-$version && PYPI=1 /tmp/lgpio/venv/bin/python -m pip wheel --quiet --no-deps --no-build-isolation -w /opt/hyperpi/wheels ."
# Remove exactly what was added for the build (never a package the image had before).
added=$(installed | comm -13 "$root/tmp/lgpio/before" -)
# shellcheck disable=SC2086
[ -z "$added" ] || in_root apt-get purge -y -qq $added >/dev/null
in_root apt-get clean
rm -rf "$root/tmp/lgpio"
ls "$root"/opt/hyperpi/wheels/lgpio-"$version"-*.whl >/dev/null
