#!/bin/bash
# freqsweep-worker from an Apptainer image, as one command, for deploy/slurm/freqsweep-workers.sbatch:
# that script runs `exec "$FREQSWEEP_WORKER" --coordinator … --device … --cache-dir …`, and the quoted
# "$FREQSWEEP_WORKER" is a single word, so FREQSWEEP_WORKER="apptainer exec --nv image.sif
# freqsweep-worker" would be looked up as one file name with spaces and fail. Point it here instead:
#
#   export FREQSWEEP_IMAGE=$PWD/freqsweep-cuda.sif
#   export FREQSWEEP_WORKER=$PWD/deploy/container/freqsweep-worker-apptainer.sh
#   sbatch --array=0-15 deploy/slurm/freqsweep-workers.sbatch
#
# Environment:
#   FREQSWEEP_IMAGE           the .sif (or sandbox directory) to run; required
#   FREQSWEEP_APPTAINER       the runtime binary (default: apptainer, else singularity, on PATH)
#   FREQSWEEP_APPTAINER_NV    1: always --nv; 0: never; default: --nv when SLURM allocated a GPU
#                             (CUDA_VISIBLE_DEVICES set and not "NoDevFiles", the sbatch script's test)
#   FREQSWEEP_APPTAINER_ARGS  extra `apptainer exec` options, e.g. "--bind /scratch"
#
# What it adds: --bind for the worker's --cache-dir (it may be on node-local scratch that Apptainer
# does not mount by default; $HOME, /tmp and the working directory are) and for the TLS CA file
# (--tls-ca or FREQSWEEP_TLS_CA). The environment passes through as it is (FREQSWEEP_TOKEN,
# FREQSWEEP_TLS_CA, CUDA_VISIBLE_DEVICES): do not add --cleanenv. `exec` keeps the process the batch
# shell, and Apptainer forwards SIGTERM (scancel, --signal=B:TERM@120) to the worker, which drains.
set -euo pipefail

image=${FREQSWEEP_IMAGE:-}
if [ -z "$image" ]; then
  echo "freqsweep-worker-apptainer.sh: error: set FREQSWEEP_IMAGE to the freqsweep .sif image" >&2
  exit 2
fi
runtime=${FREQSWEEP_APPTAINER:-}
if [ -z "$runtime" ]; then
  runtime=$(command -v apptainer || command -v singularity || true)
  if [ -z "$runtime" ]; then
    echo "freqsweep-worker-apptainer.sh: error: neither apptainer nor singularity is on PATH (module load apptainer?)" >&2
    exit 2
  fi
fi

opts=()
case "${FREQSWEEP_APPTAINER_NV:-auto}" in
  1) opts+=(--nv) ;;
  0) ;;
  *)
    if [ -n "${CUDA_VISIBLE_DEVICES:-}" ] && [ "${CUDA_VISIBLE_DEVICES}" != "NoDevFiles" ]; then
      opts+=(--nv)
    fi
    ;;
esac

bind() { # bind PATH if it exists (Apptainer refuses a missing bind source)
  [ -e "$1" ] && opts+=(--bind "$(realpath "$1")")
  return 0
}
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --cache-dir | --tls-ca) [ $((i + 1)) -lt ${#args[@]} ] && bind "${args[$((i + 1))]}" ;;
    --cache-dir=* | --tls-ca=*) bind "${args[$i]#*=}" ;;
  esac
done
[ -n "${FREQSWEEP_TLS_CA:-}" ] && bind "$FREQSWEEP_TLS_CA"

# Word splitting of the extra options is intended.
# shellcheck disable=SC2206
extra=(${FREQSWEEP_APPTAINER_ARGS:-})

exec "$runtime" exec ${opts[@]+"${opts[@]}"} ${extra[@]+"${extra[@]}"} "$image" freqsweep-worker "$@"
