# Shared by the scripts: install Debian/Ubuntu packages that are missing (with sudo when not
# root), running `apt-get update` once, only when something has to be installed.
apt_install() {
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing: ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

need_rust() {
  command -v cargo >/dev/null || { echo "error: Rust is not installed: see https://rustup.rs" >&2; exit 1; }
}

need_node() {
  if ! command -v npm >/dev/null; then apt_install nodejs npm; fi
  local major; major=$(node -p 'process.versions.node.split(".")[0]')
  if [ "$major" -lt 20 ]; then echo "error: the web UI needs Node.js 20 or newer (found $(node -v))" >&2; exit 1; fi
}

# Builds ui/dist (npm ci only when package-lock.json changed since the last install).
build_ui() {
  (cd ui
   if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then npm ci --no-audit --no-fund; fi
   npm run --silent build)
}
