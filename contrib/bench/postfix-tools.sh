# Sourced by the benchmark scripts: finds Postfix's smtp-source and
# smtp-sink on PATH, or extracts them from Debian's postfix package into
# target/postfix-tools without installing it. Sets source_bin and sink_bin
# (empty when unavailable) and the library path they need.
find_postfix_tools() {
  source_bin="$(command -v smtp-source || true)"
  sink_bin="$(command -v smtp-sink || true)"
  if [ -n "$source_bin" ] && [ -n "$sink_bin" ]; then
    return
  fi
  local tools="$PWD/target/postfix-tools"
  if [ ! -x "$tools/usr/sbin/smtp-source" ]; then
    mkdir -p "$tools"
    (cd "$tools" && apt-get download postfix >&2 && dpkg -x postfix_*.deb . && rm -f postfix_*.deb) \
      || echo "kiln-bench: Postfix's smtp-source and smtp-sink unavailable" >&2
  fi
  if [ -x "$tools/usr/sbin/smtp-source" ]; then
    source_bin="$tools/usr/sbin/smtp-source"
    sink_bin="$tools/usr/sbin/smtp-sink"
    export LD_LIBRARY_PATH="$tools/usr/lib/postfix${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
}
