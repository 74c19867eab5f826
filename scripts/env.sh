# shellcheck shell=bash
# Development environment of reasoning_seg: source it, don't run it.
#
#     source scripts/env.sh        # after `make setup` (scripts/setup.sh)
#
# - activates .venv (Python 3.11 with the ROS 2 Kilted wheels, colcon, open3d, ...);
# - puts the interfaces built by setup.sh (ros2_ws/install/reasoning_seg_msgs: reasoning_seg_msgs.msg,
#   .srv, .action and their C typesupport libraries) on PYTHONPATH / LD_LIBRARY_PATH, *after*
#   src/ so that edits to src/reasoning_seg/*.py take effect without rebuilding;
# - AMENT_PREFIX_PATH / CMAKE_PREFIX_PATH so ament_index (get_package_share_directory) and CMake
#   find both this package and the ROS packages inside the venv;
# - pins the middleware (rmw_fastrtps_cpp), keeps DDS discovery on this host, and sends ROS log
#   files to .cache/ros_log (git-ignored) instead of ~/.ros/log.
#
# Safe to source repeatedly (no duplicate path entries), from any directory, in bash or zsh, and
# from shells running with `set -eu`. On a machine with a real ROS 2 install, source
# /opt/ros/<distro>/setup.bash and ros2_ws/install/setup.bash instead (see DEVELOPERS.md).

if [ -n "${BASH_SOURCE:-}" ]; then
    _rs_here="${BASH_SOURCE[0]}"
elif [ -n "${ZSH_VERSION:-}" ]; then
    # shellcheck disable=SC2296
    _rs_here="${(%):-%x}"
else
    _rs_here="$0"
fi
REASONING_SEG_ROOT="$(cd "$(dirname "$_rs_here")/.." && pwd)"
unset _rs_here
export REASONING_SEG_ROOT

_rs_venv="$REASONING_SEG_ROOT/.venv"
if [ ! -x "$_rs_venv/bin/python" ]; then
    echo "scripts/env.sh: $_rs_venv is missing; run 'make setup' (or bash scripts/setup.sh) first" >&2
    unset _rs_venv
    # shellcheck disable=SC2317  # `exit` is reached when this file is run instead of sourced
    return 1 2>/dev/null || exit 1
fi

# Prepend $2 to the colon-separated variable named $1, unless already present.
_rs_prepend() {
    local _cur
    eval "_cur=\"\${$1:-}\""
    case ":$_cur:" in
        *":$2:"*) ;;
        *) if [ -n "$_cur" ]; then eval "export $1=\"\$2:\$_cur\""; else eval "export $1=\"\$2\""; fi ;;
    esac
}

# Activate the venv with its stock activate script (PATH, VIRTUAL_ENV, prompt, `deactivate`).
# shellcheck disable=SC1091
. "$_rs_venv/bin/activate"

_rs_install="$REASONING_SEG_ROOT/ros2_ws/install/reasoning_seg"
_rs_msgs="$REASONING_SEG_ROOT/ros2_ws/install/reasoning_seg_msgs"
_rs_pyver="$("$_rs_venv/bin/python3" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")' 2>/dev/null || echo 3.11)"

# Order matters: the last prepend ends up first. src/ must precede the install tree.
_rs_prepend PYTHONPATH "$_rs_msgs/lib/python$_rs_pyver/site-packages"
_rs_prepend PYTHONPATH "$REASONING_SEG_ROOT/src"
# The ros_wheels_bootstrapper re-execs every venv Python with $VIRTUAL_ENV/lib and the wheels'
# ros_*.libs added; the generated interface libraries live elsewhere and must be added here.
_rs_prepend LD_LIBRARY_PATH "$_rs_venv/lib"
_rs_prepend LD_LIBRARY_PATH "$_rs_msgs/lib"
_rs_prepend AMENT_PREFIX_PATH "$_rs_venv"
_rs_prepend AMENT_PREFIX_PATH "$_rs_msgs"
_rs_prepend AMENT_PREFIX_PATH "$_rs_install"
_rs_prepend CMAKE_PREFIX_PATH "$_rs_venv"

export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export ROS_LOG_DIR="$REASONING_SEG_ROOT/.cache/ros_log"
mkdir -p "$ROS_LOG_DIR"

unset _rs_venv _rs_install _rs_msgs _rs_pyver
unset -f _rs_prepend
