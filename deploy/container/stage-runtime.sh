#!/bin/sh
# Lay out what the runtime image needs under STAGE, at the absolute paths it will have in the image:
#
#   stage-runtime.sh cpu|cuda BINDIR STAGE
#
#   STAGE/opt/freqsweep/bin/{freqsweep,freqsweep-worker}
#   STAGE/<the libtorch lib dir the worker was linked against>/...   (same absolute path)
#
# Why the same path: build.rs gives freqsweep-worker a RUNPATH to the libtorch lib dir it was linked
# against (DEP_TCH_LIBTORCH_LIB), so keeping that path in the image means no LD_LIBRARY_PATH, which
# Apptainer and SLURM environments like to rewrite. That is also why the builders put libtorch under
# /opt and never under $HOME: Apptainer bind-mounts the caller's home over the image's.
#
# cpu:  exactly the libraries ldd resolves inside the libtorch lib dir (libtorch_cpu, libc10, libgomp,
#       and the libcudart/libcupti that the PyPI libtorch_cpu.so needs at load time even on a CPU).
# cuda: the lib dir is a venv's site-packages/torch/lib. libtorch_cuda.so dlopens much of what it
#       uses (cuDNN's engine libraries, libcaffe2_nvrtc/libnvrtc-builtins for JIT kernels,
#       libtorch_cuda_linalg for cusolver/magma ops), which ldd cannot see, so keep every shared
#       library of torch/lib and of the nvidia/* wheels, and keep their relative layout: the torch
#       libraries find the CUDA ones through RPATHs like $ORIGIN/../../nvidia/cudnn/lib.
#       Dropped: libtorch_python.so (needs libpython; only `import torch` uses it), headers and
#       static archives.
#
# System libraries (glibc, libstdc++, libgcc_s) come from the runtime base image, which must be the
# same Debian release as the builder (bookworm) so the versions the binaries were linked against exist.
set -eu

usage() { echo "usage: $0 cpu|cuda BINDIR STAGE" >&2; exit 2; }
[ $# -eq 3 ] || usage
variant=$1 bindir=$2 stage=$3
case "$variant" in cpu|cuda) ;; *) usage ;; esac
worker=$bindir/freqsweep-worker
coordinator=$bindir/freqsweep
for bin in "$worker" "$coordinator"; do
  [ -x "$bin" ] || { echo "$0: $bin is not an executable" >&2; exit 1; }
done

# The coordinator must not link libtorch (an architecture invariant); fail loudly if it ever does.
if ldd "$coordinator" | grep -q 'libtorch\|libc10'; then
  echo "$0: $coordinator links libtorch; it must not" >&2; exit 1
fi
if ldd "$worker" | grep 'not found'; then
  echo "$0: $worker has unresolved libraries (above)" >&2; exit 1
fi
libtorch_cpu=$(ldd "$worker" | awk '$1 == "libtorch_cpu.so" { print $3 }')
[ -n "$libtorch_cpu" ] || { echo "$0: $worker does not link libtorch_cpu.so" >&2; exit 1; }
libdir=$(dirname "$libtorch_cpu")

copy() { # copy FILE to the same absolute path under STAGE
  mkdir -p "$stage$(dirname "$1")"
  cp -L --preserve=mode "$1" "$stage$1"
}

mkdir -p "$stage/opt/freqsweep/bin"
cp --preserve=mode "$coordinator" "$worker" "$stage/opt/freqsweep/bin/"

if [ "$variant" = cpu ]; then
  ldd "$worker" | awk -v dir="$libdir/" 'index($3, dir) == 1 { print $3 }' | while read -r lib; do
    copy "$lib"
  done
else
  [ -e "$libdir/libtorch_cuda.so" ] || {
    echo "$0: cuda: $libdir has no libtorch_cuda.so (a CPU-only libtorch?)" >&2; exit 1
  }
  torch_cuda=$(ldd "$worker" | awk '$1 == "libtorch_cuda.so" { print $3 }')
  [ -n "$torch_cuda" ] || {
    echo "$0: cuda: $worker does not link libtorch_cuda.so (CUDA would be unavailable)" >&2; exit 1
  }
  site=$(dirname "$(dirname "$libdir")")   # .../site-packages
  find "$libdir" -maxdepth 1 -name '*.so*' ! -name 'libtorch_python.so' -type f | while read -r lib; do
    copy "$lib"
  done
  if [ -d "$site/nvidia" ]; then
    find "$site/nvidia" -path '*/lib/*' -name '*.so*' -type f | while read -r lib; do
      copy "$lib"
    done
  fi
fi

# Every library ldd resolved outside the system directories must now be in the stage.
ldd "$worker" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | while read -r lib; do
  case "$lib" in
    /lib/*|/lib64/*|/usr/lib/*|/usr/lib64/*) ;;
    *) [ -e "$stage$lib" ] || { echo "$0: $lib was not staged" >&2; exit 1; } ;;
  esac
done
printf '%s\n' "$libdir" > "$stage/opt/freqsweep/LIBTORCH_LIB"
echo "$0: staged $variant runtime in $stage ($(du -sh "$stage" | cut -f1)); libtorch lib dir $libdir"
