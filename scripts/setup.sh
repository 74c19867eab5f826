#!/usr/bin/env bash
# Development setup of reasoning_seg, without a system ROS 2 install: everything comes from PyPI.
#
#     bash scripts/setup.sh          # or: make setup
#     source scripts/env.sh
#
# Steps (each one skipped when its stamp says it is up to date, so a second run takes seconds):
#   1. system tools: cmake >= 3.20, gcc, g++, make (apt-get installs them only when missing, as
#      for the libraries of step 3);
#   2. .venv (Python 3.11: the ROS 2 Kilted wheels are cp311 only) with the exact versions of
#      requirements.txt, installed with --no-deps so nothing is re-resolved;
#   3. repairs the CMake files of the ROS wheels, which hard-code the include directories of the
#      machine the wheels were built on (/opt/python/cp311-cp311/...), and installs the shared
#      libraries Open3D loads when the system lacks them (libusb-1.0-0 on a stock image);
#   4. builds the two ROS packages of packages/ with colcon in ros2_ws: reasoning_seg_msgs (the
#      interfaces) and reasoning_seg (launch files, configuration, `ros2 run` launchers; without
#      installing a copy of src/reasoning_seg) into ros2_ws/install/<name>;
#   5. `pip install -e .` (no deps, no build isolation): src/reasoning_seg is imported from the
#      working tree, the generated reasoning_seg_msgs from ros2_ws/install.
#
# Stamps: .venv/.reasoning_seg-*.stamp and ros2_ws/install/.reasoning_seg-interfaces.stamp hold a
# hash of their inputs (requirements.txt; everything under packages/, the file names in launch/ and
# config/; pyproject.toml). Delete .venv or ros2_ws/install
# (or run `make clean`) to force a step. Environment: PYTHON=/path/to/python3.11 picks the
# interpreter; REASONING_SEG_SETUP_VERBOSE=1 shows the full pip and colcon output.
set -euo pipefail

# Bump to invalidate every stamp when the logic below changes.
SETUP_VERSION=1

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
WS="$ROOT/ros2_ws"
INSTALL="$WS/install/reasoning_seg"
MSGS_INSTALL="$WS/install/reasoning_seg_msgs"
VERBOSE="${REASONING_SEG_SETUP_VERBOSE:-0}"

T0=$(date +%s%N)
log() {
    local ms=$((($(date +%s%N) - T0) / 1000000))
    printf '[setup %4d.%ds] %s\n' $((ms / 1000)) $((ms % 1000 / 100)) "$*"
}
die() { printf 'scripts/setup.sh: error: %s\n' "$*" >&2; exit 1; }
# Hash of strings and files: hash_inputs STRING... -- FILE...
hash_inputs() {
    {
        while [ $# -gt 0 ] && [ "$1" != "--" ]; do printf 'str:%s\n' "$1"; shift; done
        [ $# -gt 0 ] && shift
        local f
        for f in "$@"; do
            printf 'file:%s\n' "$f"
            if [ -f "$f" ]; then cat "$f"; fi
        done
    } | sha256sum | cut -d' ' -f1
}
stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }
# Run a noisy command; show its output only on failure (or always with VERBOSE=1).
quiet() {
    if [ "$VERBOSE" = 1 ]; then "$@"; return; fi
    local out rc=0
    out="$(mktemp)"
    "$@" >"$out" 2>&1 || rc=$?
    if [ $rc -ne 0 ]; then
        tail -n 80 "$out" >&2
        rm -f "$out"
        return $rc
    fi
    rm -f "$out"
}

# Serialise concurrent runs (several `make test` in one checkout).
mkdir -p "$ROOT/.cache"
exec 9>"$ROOT/.cache/setup.lock"
flock 9

# --- 1. System tools ------------------------------------------------------------------------------
cmake_ok() {
    command -v cmake >/dev/null 2>&1 || return 1
    local v
    v="$(cmake --version | sed -n 's/^cmake version \([0-9]*\)\.\([0-9]*\).*/\1 \2/p')"
    # shellcheck disable=SC2086
    set -- $v
    [ "${1:-0}" -gt 3 ] || { [ "${1:-0}" -eq 3 ] && [ "${2:-0}" -ge 20 ]; }
}
missing=()
cmake_ok || missing+=(cmake)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
command -v make >/dev/null 2>&1 || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing missing system packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        quiet apt-get update -q
        quiet apt-get install -y -q --no-install-recommends "${missing[@]}"
        cmake_ok || die "cmake >= 3.20 is required (have: $(cmake --version 2>/dev/null | head -n1))"
    else
        die "missing system tools: ${missing[*]} (install them, e.g. apt-get install ${missing[*]})"
    fi
fi

# --- 2. Python 3.11 virtual environment -----------------------------------------------------------
is_py311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; }
if [ ! -x "$VENV/bin/python" ] || ! is_py311 "$VENV/bin/python"; then
    py="${PYTHON:-}"
    if [ -z "$py" ]; then
        for cand in python3.11 python3; do
            if command -v "$cand" >/dev/null 2>&1 && is_py311 "$cand"; then py="$cand"; break; fi
        done
    fi
    if [ -z "$py" ] || ! is_py311 "$py"; then
        die "Python 3.11 not found (the ROS 2 wheels are cp311 only); set PYTHON=/path/to/python3.11"
    fi
    log "creating .venv with $(command -v "$py")"
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PYVER=3.11
SITE="$VENV/lib/python$PYVER/site-packages"

# --- 3. Pinned packages, then repair the wheels' CMake files -----------------------------------------
deps_hash="$(hash_inputs "v$SETUP_VERSION" "$VENV" -- requirements.txt)"
deps_stamp="$VENV/.reasoning_seg-deps.stamp"
if ! stamp_ok "$deps_stamp" "$deps_hash"; then
    log "installing requirements.txt into .venv (first run: ~1-2 min)"
    rm -f "$deps_stamp"
    quiet "$VPY" -m pip install --no-input --disable-pip-version-check --progress-bar off \
        --retries 5 --no-deps -r requirements.txt
    quiet "$VPY" -m pip check

    # The ros-* wheels' exported CMake targets (share/<pkg>/cmake/*Export.cmake) name the build
    # machine's Python and NumPy include directories; CMake rejects imported targets whose include
    # directories do not exist, so rosidl_generate_interfaces fails on them. Point them at ours.
    pyinc="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
    [ -f "$pyinc/Python.h" ] || die "Python headers not found ($pyinc/Python.h): install the -dev package of your Python 3.11"
    "$VPY" -c 'import numpy, os, sys; sys.exit(not os.path.isdir(numpy.get_include()))' \
        || die "numpy's C headers are missing from .venv"
    mapfile -t cmake_files < <(grep -rlI --include='*.cmake' '/opt/python/cp311-cp311' "$VENV/share" || true)
    if [ ${#cmake_files[@]} -gt 0 ]; then
        sed -i -e "s#/opt/python/cp311-cp311/include/python3\.11#$pyinc#g" \
               -e "s#/opt/python/cp311-cp311/lib/python3\.11/site-packages#$SITE#g" "${cmake_files[@]}"
        log "repaired hard-coded include paths in ${#cmake_files[@]} CMake files of the ROS wheels"
    fi
    if grep -rlI --include='*.cmake' '/opt/python/' "$VENV/share" >&2; then
        die "the CMake files above still name /opt/python/...: extend the rewrite in scripts/setup.sh"
    fi
    echo "$deps_hash" >"$deps_stamp"
fi

# --- 3b. Shared libraries that the binary wheels load from the system ---------------------------------
# Open3D's extension links libusb-1.0, libGL/libEGL, libX11 and libudev. The stock image has all but
# libusb-1.0 (`import open3d` then fails with "libusb-1.0.so.0: cannot open shared object file").
# ldd takes milliseconds, so this runs every time; apt-get runs only for what is missing.
declare -A LIB_PKG=(
    [libusb-1.0.so.0]=libusb-1.0-0 [libGL.so.1]=libgl1 [libEGL.so.1]=libegl1 [libGLX.so.0]=libglx0
    [libOpenGL.so.0]=libopengl0 [libX11.so.6]=libx11-6 [libxcb.so.1]=libxcb1 [libudev.so.1]=libudev1
    [libgomp.so.1]=libgomp1
)
check_libs() {
    # Only the extension and libOpen3D: open3d_torch_ops.so / open3d_tf_ops.so need torch or
    # TensorFlow, which are optional.
    ldd "$SITE"/open3d/pybind*.so "$SITE"/open3d/libOpen3D.so* 2>/dev/null \
        | awk '/=> not found/ {print $1}' | sort -u
}
mapfile -t missing_libs < <(check_libs)
if [ ${#missing_libs[@]} -gt 0 ]; then
    pkgs=()
    for lib in "${missing_libs[@]}"; do
        [ -n "${LIB_PKG[$lib]:-}" ] || die "Open3D needs $lib, which no known Debian package provides here; install it by hand"
        pkgs+=("${LIB_PKG[$lib]}")
    done
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        log "installing shared libraries Open3D needs: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        quiet apt-get update -q
        quiet apt-get install -y -q --no-install-recommends "${pkgs[@]}"
        mapfile -t missing_libs < <(check_libs)
        [ ${#missing_libs[@]} -eq 0 ] || die "still missing after apt-get install: ${missing_libs[*]}"
    else
        die "Open3D needs ${missing_libs[*]}: run 'sudo apt-get install ${pkgs[*]}' and re-run"
    fi
fi

# --- 3c. A browser for the report test (optional) ------------------------------------------------------
# tests/test_report.py opens the demo's HTML report in headless Chromium; without one that test is
# skipped with a reason. Debian's chromium is installed where apt-get runs as root; elsewhere, or with
# REASONING_SEG_NO_BROWSER=1, nothing happens here (install `chromium` yourself to run the test).
if [ -z "${REASONING_SEG_NO_BROWSER:-}" ] && ! command -v chromium >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's chromium for the report's browser test (once; REASONING_SEG_NO_BROWSER=1 skips)"
    export DEBIAN_FRONTEND=noninteractive
    { quiet apt-get update -q && quiet apt-get install -y -q --no-install-recommends chromium; } \
        || log "chromium could not be installed: the browser test will be skipped"
fi

# --- 4. Interfaces (colcon build of ros2_ws) --------------------------------------------------------
# ros2_ws holds only build products: the packages are crawled from packages/ (an older checkout's
# ros2_ws/src link to the repository root would find them twice: remove it).
[ -L "$WS/src/reasoning_seg" ] && rm -f "$WS/src/reasoning_seg" && rmdir "$WS/src" 2>/dev/null || true
iface_files=()
while IFS= read -r -d '' f; do iface_files+=("$f"); done \
    < <(find packages -type f -print0 2>/dev/null | sort -z)
# launch/ and config/ are symlinked file by file (--symlink-install): edits are live, but an added
# or removed file needs a new install, so their *names* are part of the hash.
iface_names="$(find launch config -type f 2>/dev/null | sort | tr '\n' ' ')"
iface_hash="$(hash_inputs "v$SETUP_VERSION" "$ROOT" "$deps_hash" "$iface_names" -- "${iface_files[@]}")"
iface_stamp="$WS/install/.reasoning_seg-interfaces.stamp"
if ! stamp_ok "$iface_stamp" "$iface_hash" || [ ! -d "$INSTALL" ]; then
    log "building reasoning_seg_msgs and reasoning_seg with colcon (-> ros2_ws/install, ~30 s)"
    # Always from scratch: an incremental build would keep the generated code of a deleted .msg,
    # and CMake caches absolute paths of the venv.
    rm -rf "$WS/build" "$WS/install"
    mkdir -p "$WS"
    (
        cd "$WS"
        # A clean environment: only the venv's ROS, never a sourced /opt/ros or an old overlay.
        env -u PYTHONPATH -u LD_LIBRARY_PATH -u COLCON_PREFIX_PATH -u ROS_DISTRO \
            PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV" REASONING_SEG_NO_DEVENV=1 \
            AMENT_PREFIX_PATH="$VENV" CMAKE_PREFIX_PATH="$VENV" \
            "$VENV/bin/colcon" --log-base log build \
            --base-paths "$ROOT/packages" --build-base build --install-base install \
            --symlink-install --event-handlers desktop_notification- status- \
            --cmake-args -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
            -DREASONING_SEG_INSTALL_PYTHON_PACKAGE=OFF -DPython3_EXECUTABLE="$VENV/bin/python3"
    ) >"$ROOT/.cache/colcon_build.log" 2>&1 || {
        tail -n 60 "$ROOT/.cache/colcon_build.log" >&2
        die "colcon build failed; full output in .cache/colcon_build.log and ros2_ws/log/latest_build"
    }
    [ "$VERBOSE" = 1 ] && cat "$ROOT/.cache/colcon_build.log"
    [ -d "$MSGS_INSTALL/lib/python$PYVER/site-packages/reasoning_seg_msgs/msg" ] \
        || die "colcon build produced no Python interfaces (see .cache/colcon_build.log)"
    echo "$iface_hash" >"$iface_stamp"
    iface_built=1
fi

# Make `.venv/bin/python` find the interfaces even without `source scripts/env.sh` (IDEs, tools
# that spawn Python with a scrubbed environment): a .pth in the venv appends the install tree to
# sys.path and imports a tiny module that adds its lib/ to LD_LIBRARY_PATH and AMENT_PREFIX_PATH.
# The .pth sorts before ros_wheels_bootstrapper.pth, whose re-exec of the interpreter then hands
# the amended LD_LIBRARY_PATH to the dynamic loader.
write_if_changed() { if [ ! -f "$1" ] || [ "$(cat "$1")" != "$2" ]; then printf '%s\n' "$2" >"$1"; fi; }
devenv_py="$(cat <<EOF
"""Written by scripts/setup.sh: environment for the interfaces built in ros2_ws/install."""

import os

if not os.environ.get("REASONING_SEG_NO_DEVENV"):  # set by setup.sh while it builds
    for _key, _paths in (
        ("LD_LIBRARY_PATH", ("$MSGS_INSTALL/lib", "$INSTALL/lib", "$VENV/lib")),
        ("AMENT_PREFIX_PATH", ("$INSTALL", "$MSGS_INSTALL", "$VENV")),
    ):
        _cur = [p for p in os.environ.get(_key, "").split(os.pathsep) if p]
        os.environ[_key] = os.pathsep.join([p for p in _paths if p not in _cur] + _cur)
EOF
)"
devenv_pth="$(cat <<EOF
$MSGS_INSTALL/lib/python$PYVER/site-packages
import _reasoning_seg_devenv
EOF
)"
write_if_changed "$SITE/_reasoning_seg_devenv.py" "$devenv_py"
write_if_changed "$SITE/reasoning_seg_dev.pth" "$devenv_pth"

# --- 5. Editable install of the Python package ----------------------------------------------------
edit_hash="$(hash_inputs "v$SETUP_VERSION" "$ROOT" "$deps_hash" -- pyproject.toml)"
edit_stamp="$VENV/.reasoning_seg-editable.stamp"
if ! stamp_ok "$edit_stamp" "$edit_hash"; then
    log "pip install -e . (editable, no dependencies)"
    rm -f "$edit_stamp"
    quiet "$VPY" -m pip install --no-input --disable-pip-version-check --progress-bar off \
        --no-deps --no-build-isolation -e .
    echo "$edit_hash" >"$edit_stamp"
    edit_done=1
fi

# --- Smoke test after any change --------------------------------------------------------------------
if [ -n "${iface_built:-}" ] || [ -n "${edit_done:-}" ]; then
    (
        # shellcheck disable=SC1091
        . "$ROOT/scripts/env.sh"
        python -c 'import reasoning_seg, reasoning_seg_msgs.msg, reasoning_seg_msgs.srv, reasoning_seg_msgs.action, rclpy
import os, sys
src = os.path.realpath(os.path.join(os.environ["REASONING_SEG_ROOT"], "src", "reasoning_seg"))
if os.path.realpath(os.path.dirname(reasoning_seg.__file__)) != src:
    sys.exit("reasoning_seg is imported from %s, not from src/" % reasoning_seg.__file__)
reasoning_seg_msgs.msg.SegmentationResult()'
    ) || die "smoke test failed: the interfaces or the package do not import"
    log "smoke test passed (reasoning_seg + reasoning_seg_msgs.msg/.srv/.action + rclpy import)"
fi
log "ready: source scripts/env.sh"
