#!/usr/bin/env bash
# Build a wheelhouse (a folder of wheels for hpc-tune and every runtime dependency) on a machine
# with network, or install hpc-tune into a virtual environment from such a folder with no network.
#
# Usage:
#   scripts/wheelhouse.sh build DIR [--python-version 3.11] [--platform manylinux_2_28_x86_64]
#                                   [--torch-index URL] [--torch SPEC]
#   scripts/wheelhouse.sh install DIR [VENV]
#
# build    writes DIR with the wheels, requirements.lock (every wheel pinned with its SHA-256,
#          for pip's --require-hashes), SHA256SUMS (for sha256sum --check) and target.txt (the
#          Python version and platform of the wheels). DIR must not exist yet or be empty.
#            --python-version  Python of the machines that install from DIR (default: the
#                              version of $PYTHON)
#            --platform        newest manylinux tag those machines accept; older manylinux
#                              wheels are accepted too (default: manylinux_2_28_<uname -m>,
#                              glibc 2.28 or newer, which torch 2.13 requires)
#            --torch-index     package index of the torch build to ship, such as
#                              https://download.pytorch.org/whl/cu126 (default: pip's own
#                              configuration; PyPI's Linux x86_64 torch is a CUDA build)
#            --torch           requirement of torch (default: the torch line of constraints.txt)
# install  checks DIR against SHA256SUMS, creates VENV (default .venv) with $PYTHON when it is
#          missing, and installs every wheel of requirements.lock with pip --no-index. pip then
#          reads no configuration file and no PIP_* variable, so DIR is its only source.
#
# Environment: PYTHON, the interpreter that runs pip for build and creates VENV (default python3).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}

log() { echo "wheelhouse: $*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Print the pip options that select wheels for Python $1 on platform $2 and every older
# manylinux level: pip takes a --platform list literally and does not add the older levels.
target_options() {
    local python_version=$1 platform=$2 arch glibc_minor minor
    local abi="cp${python_version/./}"
    if [[ $platform =~ ^manylinux_2_([0-9]+)_([a-z0-9_]+)$ ]]; then
        glibc_minor=${BASH_REMATCH[1]}
        arch=${BASH_REMATCH[2]}
    elif [[ $platform =~ ^manylinux2014_([a-z0-9_]+)$ ]]; then
        glibc_minor=17
        arch=${BASH_REMATCH[1]}
    else
        die "--platform $platform is not a manylinux tag; use manylinux_2_<glibc minor>_<arch>, \
such as manylinux_2_28_x86_64 for glibc 2.28 (run 'ldd --version' on a compute node)"
    fi
    echo --only-binary=:all: --implementation cp --python-version "$python_version"
    echo --abi "$abi" --abi abi3 --abi none
    for ((minor = glibc_minor; minor >= 5; minor--)); do
        echo --platform "manylinux_2_${minor}_${arch}"
    done
    [ "$glibc_minor" -ge 17 ] && echo --platform "manylinux2014_${arch}"
    [ "$glibc_minor" -ge 12 ] && echo --platform "manylinux2010_${arch}"
    echo --platform "manylinux1_${arch}"
}

# Print "name==version" for each wheel file name given (PEP 427: name-version-...).
wheel_pins() {
    local file base
    for file in "$@"; do
        base=$(basename "$file")
        IFS=- read -r name version _ <<<"$base"
        echo "$name==$version"
    done
}

# Copy the source tree without ignored files (build/, .venv/, ...), so that no stale module of
# an earlier build/ folder ends up in the wheel.
copy_source() {
    local destination=$1
    if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        # A file deleted from the work tree but not from the index is left out.
        (cd "$REPO" && git ls-files -z --cached --others --exclude-standard \
            | while IFS= read -r -d '' file; do [ ! -e "$file" ] || printf '%s\0' "$file"; done \
            | tar --null -cf - -T -) | tar -xf - -C "$destination"
    else
        cp -a "$REPO/." "$destination"
        rm -rf "$destination/build" "$destination/.venv"
    fi
}

build() {
    local dest=$1
    shift
    local python_version="" platform="" torch_index="" torch_spec=""
    while [ $# -gt 0 ]; do
        case $1 in
            --python-version) python_version=${2:?--python-version needs a value}; shift 2 ;;
            --platform) platform=${2:?--platform needs a value}; shift 2 ;;
            --torch-index) torch_index=${2:?--torch-index needs a value}; shift 2 ;;
            --torch) torch_spec=${2:?--torch needs a value}; shift 2 ;;
            *) die "unknown option $1 (see scripts/wheelhouse.sh --help)" ;;
        esac
    done
    [ -n "$python_version" ] \
        || python_version=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [[ $python_version =~ ^3\.[0-9]+$ ]] \
        || die "--python-version $python_version is not a Python version such as 3.11"
    [ -n "$platform" ] || platform="manylinux_2_28_$(uname -m)"
    [ -n "$torch_spec" ] || torch_spec=$(grep -E '^torch[=<>!~ ]' "$REPO/constraints.txt") \
        || die "constraints.txt has no torch line; pass --torch, such as --torch torch==2.13.0"
    if [ -e "$dest" ] && [ -n "$(ls -A "$dest")" ]; then
        die "$dest already exists and is not empty: remove it (rm -r $dest) or choose another \
WHEELHOUSE"
    fi
    local options target
    options=$(target_options "$python_version" "$platform")
    read -r -d '' -a target <<<"$options" || true

    WORK_DIR=$(mktemp -d)
    trap 'rm -rf "$WORK_DIR"' EXIT
    local work=$WORK_DIR
    mkdir -p "$work/source" "$work/wheels"

    log "building the hpc-tune wheel"
    copy_source "$work/source"
    "$PYTHON" -m pip wheel --quiet --no-deps -w "$work/wheels" "$work/source"

    # torch comes first, with its dependencies from the same index as PyTorch's install
    # instructions do, because a CUDA build's CUDA libraries are wheels of that index too.
    log "downloading $torch_spec for Python $python_version on $platform${torch_index:+ from $torch_index}"
    "$PYTHON" -m pip download --quiet -d "$work/wheels" "${target[@]}" \
        ${torch_index:+--index-url "$torch_index"} "$torch_spec"

    # Pin what the torch step downloaded, so that the second step takes no other version of
    # torch or of its dependencies.
    grep -Ev '^torch[=<>!~ ]' "$REPO/constraints.txt" >"$work/constraints.txt" || true
    wheel_pins "$work"/wheels/*.whl | grep -v '^hpc_tune==' >>"$work/constraints.txt"

    log "downloading the dependencies of hpc-tune"
    "$PYTHON" -m pip download --quiet -d "$work/wheels" "${target[@]}" \
        --find-links "$work/wheels" -c "$work/constraints.txt" "$work"/wheels/hpc_tune-*.whl

    write_lock "$work/wheels" "$python_version" "$platform" "${torch_index:-pip configuration}"
    mkdir -p "$dest"
    mv "$work"/wheels/* "$dest"/
    log "wrote $(ls "$dest"/*.whl | wc -l) wheels ($(du -sh "$dest" | cut -f1)) to $dest"
}

write_lock() {
    local folder=$1 python_version=$2 platform=$3 torch_source=$4 file pin
    local duplicates
    duplicates=$(wheel_pins "$folder"/*.whl | cut -d= -f1 | tr '[:upper:]' '[:lower:]' \
        | sed 's/[-.]/_/g' | sort | uniq -d)
    [ -z "$duplicates" ] || die "pip downloaded several versions of $duplicates, which cannot \
be installed together: check --torch against the other pins of constraints.txt"
    {
        echo "# hpc-tune wheelhouse for Python $python_version on $platform (torch from $torch_source)."
        echo "# Install: scripts/wheelhouse.sh install DIR, or pip install --no-index"
        echo "#   --find-links DIR --require-hashes -r DIR/requirements.lock"
        for file in "$folder"/*.whl; do
            pin=$(wheel_pins "$file")
            echo "$pin --hash=sha256:$(sha256sum "$file" | cut -d' ' -f1)"
        done
    } >"$folder/requirements.lock"
    (cd "$folder" && sha256sum -- *.whl >SHA256SUMS)
    printf 'python_version=%s\nplatform=%s\ntorch_source=%s\n' \
        "$python_version" "$platform" "$torch_source" >"$folder/target.txt"
}

install() {
    local dir=${1:?usage: scripts/wheelhouse.sh install DIR [VENV]} venv=${2:-$REPO/.venv}
    [ -d "$dir" ] || die "wheelhouse $dir not found; build it with 'make wheelhouse' on a \
machine with network and copy it here"
    local file
    for file in requirements.lock SHA256SUMS target.txt; do
        [ -f "$dir/$file" ] || die "$dir/$file is missing: $dir was not built by 'make \
wheelhouse', or not copied whole"
    done
    (cd "$dir" && sha256sum --check --quiet --strict SHA256SUMS) >&2 \
        || die "$dir does not match its SHA256SUMS (a wheel is missing or changed): copy the \
wheelhouse again"

    local wanted have
    wanted=$(sed -n 's/^python_version=//p' "$dir/target.txt")
    if [ ! -x "$venv/bin/python" ]; then
        log "creating $venv with $PYTHON"
        "$PYTHON" -m venv "$venv"
    fi
    have=$("$venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$have" = "$wanted" ] || die "$dir contains wheels for Python $wanted, but $venv runs Python \
$have: set PYTHON=python$wanted (and remove $venv), or build the wheelhouse with \
PYTHON_VERSION=$have"

    log "installing from $dir into $venv, with no package index"
    # PIP_CONFIG_FILE=/dev/null skips every pip.conf and --isolated every PIP_* variable, so a
    # site's find-links or index settings cannot add a source besides the wheelhouse.
    PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip --isolated install --quiet \
        --no-index --find-links "$dir" --require-hashes -r "$dir/requirements.lock"
    PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip --isolated check
    log "installed hpc-tune into $venv"
}

case ${1:-} in
    build) shift; [ $# -ge 1 ] || usage; build "$@" ;;
    install) shift; [ $# -ge 1 ] || usage; install "$@" ;;
    -h | --help | "") usage ;;
    *) die "unknown command $1: use build or install (see scripts/wheelhouse.sh --help)" ;;
esac
