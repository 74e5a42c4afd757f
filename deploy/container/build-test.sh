#!/bin/bash
# Build the runtime stage of deploy/container/Dockerfile from already built binaries and run them,
# on a machine that cannot pull images (no Docker Hub): the base image is made with debootstrap
# from the Debian mirror and imported into podman.
#
#   deploy/container/build-test.sh target/release/freqsweep target/release/freqsweep-worker
#
# What it checks: stage-runtime.sh finds and stages the libraries the worker needs; the Dockerfile's
# runtime stage (SOURCE=prebuilt) builds on Debian 12 and its RUN check loads libtorch
# (`freqsweep-worker info --device cpu`); both binaries then run in a container.
# It does not compile anything and does not exercise the Dockerfile's builder stages.
#
# Needs root and `apt-get install podman debootstrap runc` (Debian 12); runc is optional (without it
# the container-run step is skipped; the build's RUN check still ran the binaries).
#
# Environment:
#   VARIANT                  cpu | cuda (default: cuda when the worker links libtorch_cuda.so)
#   FREQSWEEP_CONTAINER_WORK work directory (default /var/tmp/freqsweep-container): debootstrap root,
#                            build context, and a podman storage of its own (so nothing here touches
#                            the machine's default image store; `rm -rf` it to clean up)
#   DEBIAN_MIRROR            default: the Debian mirror this machine's apt uses (its sources)
#   STORAGE_DRIVER           podman storage driver, default overlay (vfs where overlay is refused)
#   IMAGE                    tag to build, default localhost/freqsweep:$VARIANT-test
#
# Why the podman flags:
#   --isolation=chroot  buildah's default OCI isolation runs RUN steps with crun, and Debian 12's
#                       crun 1.8 refuses hosts with hybrid cgroups ("cgroups in hybrid mode not
#                       supported, drop all controllers from cgroupv2"); chroot isolation needs no
#                       cgroups.
#   --runtime runc, --ulimit  for `podman run`: runc copes with hybrid cgroups; podman asks for
#                       RLIMIT_NOFILE 1048576 by default, which a root without CAP_SYS_RESOURCE
#                       above its hard limit cannot set ("setrlimit `RLIMIT_NOFILE`: Operation not
#                       permitted"), so pass the current hard limits (nproc at most 32768, what
#                       conmon runs with).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -eq 2 ] || { echo "usage: $0 FREQSWEEP FREQSWEEP_WORKER" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "$0: needs root (debootstrap, podman)" >&2; exit 2; }
for tool in podman debootstrap; do
  command -v "$tool" > /dev/null || { echo "$0: $tool missing: apt-get install podman debootstrap runc" >&2; exit 2; }
done
coordinator=$(realpath "$1")
worker=$(realpath "$2")
if [ -z "${VARIANT:-}" ]; then
  if ldd "$worker" | grep -q libtorch_cuda.so; then VARIANT=cuda; else VARIANT=cpu; fi
fi
work=${FREQSWEEP_CONTAINER_WORK:-/var/tmp/freqsweep-container}
# The mirror apt already uses here (deb822 `.sources` or one-line `sources.list`), for the suite's
# main archive (not -security or -updates).
apt_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk 'BEGIN { RS = ""; FS = "\n" }
      /(^|\n)Suites:[^\n]*bookworm( |$|\n)/ && !/Suites:[^\n]*bookworm-security/ {
        for (i = 1; i <= NF; i++) if ($i ~ /^URIs:/) { split($i, u, " "); print u[2]; exit } }' "$f"
  done | head -1
  if [ -f /etc/apt/sources.list ]; then
    awk '$1 == "deb" && $3 == "bookworm" { print $2; exit }' /etc/apt/sources.list
  fi
}
mirror=${DEBIAN_MIRROR:-$(apt_mirror | head -1)}
[ -n "$mirror" ] || { echo "$0: no Debian bookworm mirror in this machine's apt sources: set DEBIAN_MIRROR" >&2; exit 2; }
image=${IMAGE:-localhost/freqsweep:$VARIANT-test}
base=localhost/freqsweep-test-base:bookworm
mkdir -p "$work"
podman=(podman --root "$work/storage" --runroot "$work/runroot" --storage-driver "${STORAGE_DRIVER:-overlay}")

timed() { # timed NAME CMD...: run CMD, print how long it took
  local name=$1 start=$SECONDS
  shift
  echo "build-test: ── $name"
  "$@"
  echo "build-test: ── $name: $((SECONDS - start)) s"
}

make_base() {
  rm -rf "$work/rootfs"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -20 "$work/debootstrap.log" >&2; return 1; }
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
  tar -C "$work/rootfs" -c . | "${podman[@]}" import --change 'CMD ["/bin/bash"]' - "$base" > /dev/null
  rm -rf "$work/rootfs"
}

stage() {
  rm -rf "$work/bin" "$work/context"
  mkdir -p "$work/bin" "$work/context"
  ln -s "$coordinator" "$work/bin/freqsweep"
  ln -s "$worker" "$work/bin/freqsweep-worker"
  "$here/stage-runtime.sh" "$VARIANT" "$work/bin" "$work/context/stage"
}

build() {
  "${podman[@]}" build --isolation=chroot -f "$here/Dockerfile" \
    --build-arg VARIANT="$VARIANT" --build-arg SOURCE=prebuilt --build-arg RUNTIME_IMAGE="$base" \
    -t "$image" "$work/context"
}

run_checks() {
  local nofile nproc
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
  if [ "$nofile" = unlimited ]; then nofile=1048576; fi
  local run=("${podman[@]}" --runtime runc run --rm --network none
    --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
  "${run[@]}" --entrypoint freqsweep "$image" --help > /dev/null
  echo "build-test: freqsweep --help: ok"
  "${run[@]}" "$image" --help > /dev/null
  echo "build-test: freqsweep-worker --help (the entry point): ok"
  "${run[@]}" "$image" info --device cpu
}

total=$SECONDS
if "${podman[@]}" image exists "$base"; then
  echo "build-test: base image $base exists in $work/storage"
else
  timed "debootstrap bookworm (minbase) and podman import" make_base
fi
timed "stage-runtime.sh $VARIANT" stage
timed "podman build (runtime stage, SOURCE=prebuilt)" build
if command -v runc > /dev/null; then
  timed "podman run" run_checks
else
  echo "build-test: runc not installed: skipping podman run (the build's RUN check ran the binaries)"
fi
echo "build-test: $image ok in $((SECONDS - total)) s; $(du -sh "$work" | cut -f1) in $work"
"${podman[@]}" images "$image"
