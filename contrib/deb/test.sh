#!/usr/bin/env bash
# The Debian package, built and installed as an operator would, in a
# throwaway Debian root (debootstrap; kept between runs under
# $KILN_DEB_ROOT, /var/cache/kiln-deb-test/bookworm by default):
#
#   1. builds it from the release binary (cargo deb) and checks with
#      dpkg-deb and lintian what it holds;
#   2. installs the package "before": the one an earlier commit's run
#      left in the cache, or else this build at a lower version; checks
#      the user, /var/lib/kiln and the installed config;
#   3. changes /etc/kiln/kiln.toml as an operator would, then upgrades:
#      the change is kept (a conffile);
#   4. starts the unit's ExecStart as user kiln (systemd does not run in a
#      chroot), relays a message through it to a sink, stops it with
#      SIGTERM (exit 0);
#   5. removes the package (config and data kept), then purges it (gone).
#
# Runs as root (debootstrap, chroot, mount). Needs network for debootstrap
# and the package's dependencies the first time.
set -euo pipefail
cd "$(dirname "$0")/../.."

cache="${KILN_DEB_CACHE:-/var/cache/kiln-deb-test}"
root="${KILN_DEB_ROOT:-$cache/bookworm}"
mirror="${KILN_DEB_MIRROR:-http://deb.debian.org/debian}"
smtp_port=2525
sink_port=2590

say() { printf '\ncontrib/deb/test.sh: %s\n' "$*"; }
fail() { printf 'contrib/deb/test.sh: FAILED: %s\n' "$*" >&2; exit 1; }

# What a fresh machine lacks.
missing=()
command -v lintian >/dev/null || missing+=(lintian)
command -v debootstrap >/dev/null || missing+=(debootstrap)
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb --version 3.8.0

say "building the package"
cargo build --release -p kiln
version="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="kiln"))')"
out=target/debian
rm -rf "$out" && mkdir -p "$out/before"
cargo deb -p kiln --no-build --strip --deb-version "${version}-0" -o "$out/before/" >/dev/null
deb="$(cargo deb -p kiln --no-build --strip --deb-version "${version}-1" -o "$out/")"
this_build_before="$(ls "$out"/before/*.deb)"
commit="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# The package an earlier commit built (its version -0, this one's -1): an
# upgrade from the code before this change, where the machine kept it.
if [ -f "$cache/before.deb" ] && [ "$(cat "$cache/before.commit" 2>/dev/null)" != "$commit" ]; then
  before="$cache/before.deb"
  before_from="commit $(cut -c1-8 "$cache/before.commit")"
else
  before="$this_build_before"
  before_from="this build"
fi
echo "$deb"

say "what the package holds"
contents="$(dpkg-deb --contents "$deb")"
expect() { # mode owner path (owner root: root/root or 0/0)
  grep -qE "^$1 ($2|0/0) +[0-9]+ [0-9-]+ [0-9:]+ \./$3\$" <<<"$contents" \
    || fail "$3 is not in the package as $1 $2"
}
expect '-rwxr-xr-x' root/root usr/bin/kiln
expect '-rw-r--r--' root/root lib/systemd/system/kiln.service
expect '-rw-r--r--' root/root usr/lib/sysusers.d/kiln.conf
expect '-rw-r--r--' root/root etc/kiln/kiln.toml
expect '-rw-r--r--' root/root etc/kiln/policy.lua
for p in limits.lua reputation.lua warmup.lua bounces.lua content_filter.lua callbacks.lua egress.lua \
         callbacks/tencent.lua callbacks/generic.lua egress/providers.toml egress/signals.toml; do
  expect '-rw-r--r--' root/root "usr/share/kiln/plugins/$p"
done
expect '-rw-r--r--' root/root usr/share/kiln/grafana/kiln.json
expect '-rw-r--r--' root/root usr/share/doc/kiln/README.md
expect '-rw-r--r--' root/root usr/share/doc/kiln/docs/lua-api.md
expect '-rw-r--r--' root/root usr/share/doc/kiln/copyright
conffiles="$(dpkg-deb --ctrl-tarfile "$deb" | tar -xO ./conffiles)"
[ "$conffiles" = "$(printf '/etc/kiln/kiln.toml\n/etc/kiln/policy.lua')" ] \
  || fail "conffiles: $conffiles"
size="$(stat -c %s "$deb")"
echo "$(basename "$deb"): $((size / 1024 / 1024)) MiB"

say "lintian"
# Errors fail; warnings are listed (docs/packaging.md explains each).
lintian --fail-on error --tag-display-limit 0 "$deb" || fail "lintian found errors"

say "a Debian root to install into ($root)"
if [ ! -x "$root/usr/bin/apt-get" ]; then
  rm -rf "$root" && mkdir -p "$root"
  debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
mounted=()
cleanup() {
  [ -n "${kiln_pid:-}" ] && kill "$kiln_pid" 2>/dev/null || true
  [ -n "${sink_pid:-}" ] && kill "$sink_pid" 2>/dev/null || true
  for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null || true; done
}
trap cleanup EXIT
for m in proc dev; do
  mountpoint -q "$root/$m" || { mount --bind "/$m" "$root/$m"; mounted+=("$root/$m"); }
done
in_root() { chroot "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }
# What a Debian host has that minbase leaves out: systemd (for the unit's
# check) and procps (its ExecReload's kill).
if [ ! -x "$root/usr/bin/systemctl" ] || [ ! -x "$root/bin/kill" ]; then
  in_root apt-get install -y -q --no-install-recommends systemd procps >/dev/null
fi
# A root left by an interrupted run.
in_root dpkg -P kiln >/dev/null 2>&1 || true
rm -rf "$root/var/lib/kiln"
cp "$before" "$root/tmp/kiln-before.deb"
cp "$deb" "$root/tmp/kiln.deb"

say "installing the package before ($(basename "$before"), from $before_from)"
in_root apt-get install -y -q /tmp/kiln-before.deb >/dev/null || fail "apt install"
in_root getent passwd kiln >/dev/null || fail "no user kiln"
in_root getent group kiln >/dev/null || fail "no group kiln"
# Names as the installed system resolves them, not the host.
[ "$(in_root stat -c '%a %U:%G' /var/lib/kiln)" = "700 kiln:kiln" ] \
  || fail "/var/lib/kiln is $(in_root stat -c '%a %U:%G' /var/lib/kiln)"
in_root kiln check-config || fail "kiln check-config on the installed config"

say "the operator's change, then the upgrade ($(basename "$deb"))"
cat >>"$root/etc/kiln/kiln.toml" <<EOF

# Changed by the operator: relay from this host, deliver to the test's sink.
[[smtp.listeners]]
address = "127.0.0.1:$smtp_port"
tls = "starttls"
relay_networks = ["127.0.0.0/8"]

[smtp]
address_literals = true
literal_networks = ["127.0.0.0/8"]

[delivery]
mx_port = $sink_port
EOF
in_root apt-get install -y -q /tmp/kiln.deb >/dev/null || fail "the upgrade"
grep -q "Changed by the operator" "$root/etc/kiln/kiln.toml" || fail "the upgrade lost the operator's change"
[ "$(in_root dpkg-query -W -f '${Version}' kiln)" = "${version}-1" ] || fail "not upgraded"
in_root kiln check-config || fail "kiln check-config after the operator's change"

say "the service, as the unit starts it"
exec_start="$(sed -n 's/^ExecStart=//p' "$root/lib/systemd/system/kiln.service")"
workdir="$(sed -n 's/^WorkingDirectory=//p' "$root/lib/systemd/system/kiln.service")"
environment="$(sed -n 's/^Environment=//p' "$root/lib/systemd/system/kiln.service")"
python3 -W ignore -m smtpd -n -c DebuggingServer "127.0.0.1:$sink_port" >"$out/sink.log" 2>&1 &
sink_pid=$!
# shellcheck disable=SC2086
chroot --userspec=kiln:kiln "$root" env -i PATH=/usr/bin:/bin HOME="$workdir" $environment \
  sh -c "cd $workdir && exec $exec_start" >"$out/kiln.log" 2>&1 &
kiln_pid=$!
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$smtp_port") 2>/dev/null && break
  kill -0 "$kiln_pid" 2>/dev/null || { cat "$out/kiln.log"; fail "kiln exited"; }
  sleep 0.2
done
python3 - "$smtp_port" <<'EOF' || fail "the message was not accepted"
import smtplib, sys
with smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=30) as s:
    s.ehlo("package-test")
    s.sendmail("ops@example.org", ["someone@[127.0.0.1]"],
               "From: ops@example.org\r\nTo: someone@[127.0.0.1]\r\nSubject: installed from the package\r\n\r\nhello\r\n")
EOF
for _ in $(seq 1 100); do
  grep -q "installed from the package" "$out/sink.log" && break
  sleep 0.2
done
grep -q "installed from the package" "$out/sink.log" || { tail -20 "$out/kiln.log"; fail "nothing reached the sink"; }
kill -TERM "$kiln_pid"
status=0
wait "$kiln_pid" || status=$?
kiln_pid=
[ "$status" = 0 ] || { tail -20 "$out/kiln.log"; fail "kiln exited $status on SIGTERM"; }
[ -n "$(ls -A "$root/var/lib/kiln")" ] || fail "nothing in /var/lib/kiln"
echo "relayed to the sink; SIGTERM: exit 0"

if command -v systemd-analyze >/dev/null; then
  say "systemd-analyze verify"
  systemd-analyze verify --root="$root" /lib/systemd/system/kiln.service \
    || fail "systemd-analyze verify"
fi

say "removing, then purging"
in_root dpkg -r kiln >/dev/null
[ ! -e "$root/usr/bin/kiln" ] || fail "/usr/bin/kiln left after remove"
[ -f "$root/etc/kiln/kiln.toml" ] || fail "remove took the config"
[ -d "$root/var/lib/kiln" ] || fail "remove took /var/lib/kiln"
in_root dpkg -P kiln 2>"$out/purge.log" >/dev/null
grep -q "deleting /var/lib/kiln" "$out/purge.log" || fail "purge did not say what it deletes"
[ ! -e "$root/etc/kiln/kiln.toml" ] || fail "/etc/kiln/kiln.toml left after purge"
[ ! -e "$root/var/lib/kiln" ] || fail "/var/lib/kiln left after purge"

# For the next commit's run: this build, as its "before".
mkdir -p "$cache"
cp "$this_build_before" "$cache/before.deb.new" && mv "$cache/before.deb.new" "$cache/before.deb"
echo "$commit" >"$cache/before.commit"

say "passed"
