# Shared by scripts/test and scripts/demo: system packages and the virtualenv.
# Sourced, not run. Idempotent and quick when everything is in place already.

# need_pkg CHECK PACKAGE: queue PACKAGE when the shell test CHECK fails.
_missing=()
need_pkg() {
  if ! eval "$1" >/dev/null 2>&1; then _missing+=("$2"); fi
}

bootstrap_system() {
  # Every argument is "check|package".
  local item
  _missing=()
  for item in "$@"; do need_pkg "${item%%|*}" "${item##*|}"; done
  [ ${#_missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "installing system packages: ${_missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${_missing[@]}" >/dev/null
  else
    echo "missing system packages: ${_missing[*]}" >&2
    echo "install them with: sudo apt-get install ${_missing[*]}" >&2
    return 1
  fi
}

bootstrap_venv() {
  local py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
  fi
  # Reinstall only when the dependency list changed.
  local stamp=.venv/.cloudlet-deps
  local want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    echo "$want" >"$stamp"
  fi
}

SYSTEM_BASE=(
  "python3 -c 'import venv, ensurepip'|python3-venv"
  "command -v mkfs.ext4|e2fsprogs"
  "command -v qemu-img|qemu-utils"
)
SYSTEM_TEST=(
  "ls /usr/lib/postgresql/*/bin/initdb|postgresql"
  "command -v debugfs|e2fsprogs"
  "command -v qemu-system-x86_64|qemu-system-x86"
  "ls /boot/vmlinuz-*|linux-image-amd64"
  "test -x /bin/busybox|busybox-static"
  "command -v prometheus|prometheus"
  "command -v nft|nftables"
  "command -v chromium|chromium"
  "command -v chromedriver|chromium-driver"
)
