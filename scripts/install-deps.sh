#!/usr/bin/env bash
# Installs what the project needs when it is missing (Debian/Ubuntu, via apt), by purpose:
#   build    protoc and protobuf's .proto includes (etcd-client's build script needs both)
#   runtime  build + MariaDB server and client (`make demo`)
#   (none)   runtime + the test tools: sysbench, haproxy, etcd, curl, chromium and its driver, binutils (objdump
#            for the glibc check), a JDK and Maven (Connector/J), pip and the Python drivers the client tests drive (PyMySQL,
#            mysql-connector-python); then the packaging tools (cargo-zigbuild, ziglang, tiup)
#            through packaging/tools.sh
# When everything is present it only checks and exits (well under a second), so make targets
# can call it every time. Safe to run again.
set -euo pipefail
mode=${1:-all}
need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
# protoc alone is not enough: the well-known types (google/protobuf/*.proto) come with
# libprotobuf-dev, which --no-install-recommends leaves out.
have protoc || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
have cc || need+=(gcc libc6-dev)
if [ "$mode" != build ]; then
  have mariadbd || need+=(mariadb-server)
  have mariadb || need+=(mariadb-client)
fi
if [ "$mode" = all ]; then
  have sysbench || need+=(sysbench)
  have haproxy || need+=(haproxy)
  have etcd || need+=(etcd-server)
  have curl || need+=(curl)
  have chromium || need+=(chromium)
  have chromedriver || need+=(chromium-driver)
  have objdump || need+=(binutils)
  have debootstrap || need+=(debootstrap)
  # Connector/J's view of proxy errors (tests/errors_cli.rs): a JDK runs the one-file client,
  # Maven fetches the driver.
  have javac || need+=(default-jdk-headless)
  have mvn || need+=(maven)
fi
# One interpreter start answers every Python question (each start costs ~0.1-0.3 s).
py_missing=$(python3 -c 'import importlib.util as u; print(*[m for m in ("pip", "ziglang", "pymysql", "mysql", "selenium") if u.find_spec(m) is None])' 2>/dev/null || echo "pip ziglang pymysql mysql selenium")
if [ "$mode" = all ] && [[ " $py_missing " == *" pip "* ]]; then need+=(python3-pip); fi

if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install: ${need[*]}" >&2; exit 1; }
    SUDO=sudo
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # Package scripts try to start services; a private instance is all the project uses.
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

[ "$mode" = all ] || exit 0
# The drivers tests/errors_cli.rs and tests/compression_drivers.rs run, and Selenium, which
# clicks the dashboard's buttons in tests/dashboard.rs (Debian's Python wants
# --break-system-packages for a user-wide install; a pyenv or venv Python does not).
py_drivers=()
[[ " $py_missing " != *" pymysql "* ]] || py_drivers+=(PyMySQL)
[[ " $py_missing " != *" mysql "* ]] || py_drivers+=(mysql-connector-python)
[[ " $py_missing " != *" selenium "* ]] || py_drivers+=(selenium)
if [ ${#py_drivers[@]} -gt 0 ]; then
  echo "installing Python drivers: ${py_drivers[*]}"
  python3 -m pip install --quiet "${py_drivers[@]}" ||
    python3 -m pip install --quiet --break-system-packages "${py_drivers[@]}"
fi
# The packaging tools live in user-level bin dirs; look there before calling the installer, so
# a machine that has them pays nothing.
gopath=$(go env GOPATH 2>/dev/null || echo "$HOME/go")
export PATH="$HOME/.cargo/bin:$gopath/bin:$HOME/.local/bin:$PATH"
tools=()
command -v cargo-zigbuild >/dev/null 2>&1 || tools+=(zig)
if ! command -v zig >/dev/null 2>&1 && [[ " $py_missing " == *" ziglang "* ]]; then tools+=(zig); fi
# The TiUP tests need Go to build tiup; without Go they fail and say so.
if command -v go >/dev/null 2>&1 && ! command -v tiup >/dev/null 2>&1; then tools+=(tiup); fi
[ ${#tools[@]} -eq 0 ] || "$(dirname "$0")/../packaging/tools.sh" $(printf '%s\n' "${tools[@]}" | sort -u)
