#!/usr/bin/env bash
# Trains facerecon on a Cloud TPU VM slice (a single host or a pod):
# creates the slice with gcloud (or reuses it), ships this checkout to every
# worker, installs it there with its TPU extra, and runs main.py on all
# workers at once; they find each other through jax.distributed (--multihost).
#
#   bash launch_tpu.sh --name=facerecon-v4 --zone=us-central2-b \
#       --accelerator-type=v4-32 --config=configs/resnet.py \
#       --workdir=gs://BUCKET/runs/resnet -- --config.coarse.batch_size=256
#
# Everything after `--` goes to main.py unchanged (absl overrides). The
# workdir must be shared by all workers (a gs:// path). --dry-run prints
# every command instead of running it. Needs gcloud (authenticated, with a
# project set, or --project) and git (it ships the checkout's files as they
# are, less what .gitignore ignores).
set -euo pipefail

NAME=""
ZONE=""
PROJECT=""
ACCELERATOR="v4-8"
VERSION="tpu-ubuntu2204-base"
CONFIG="configs/resnet.py"
WORKDIR=""
DRY_RUN=0
REMOTE_DIR="facerecon"
MAIN_ARGS=()

usage() {
  sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
  cat <<EOF
Flags:
  --name=NAME               TPU VM name (required)
  --zone=ZONE               its zone (required)
  --project=PROJECT         Google Cloud project (default: gcloud's)
  --accelerator-type=TYPE   e.g. v4-8, v4-32, v5litepod-16 (default: $ACCELERATOR)
  --version=VERSION         TPU VM software version (default: $VERSION)
  --config=FILE             main.py's config (default: $CONFIG)
  --workdir=gs://...        main.py's workdir, shared by all workers (required)
  --dry-run                 print the commands, run nothing
EOF
}

die() {
  echo "launch_tpu.sh: $*" >&2
  exit 2
}

while (($#)); do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --accelerator-type=*) ACCELERATOR="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --dry-run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; MAIN_ARGS=("$@"); break ;;
    *) die "unknown flag '$1' (main.py's flags go after --; see --help)" ;;
  esac
  shift
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required (a gs:// path every worker can reach)"
[[ "$WORKDIR" == gs://* ]] || echo "launch_tpu.sh: warning: --workdir=$WORKDIR is not a" \
  "gs:// path; on a pod every worker needs the same checkpoints" >&2
cd "$(dirname "${BASH_SOURCE[0]}")"
[[ -f "$CONFIG" ]] || die "--config=$CONFIG does not exist"

GCLOUD=(gcloud compute tpus tpu-vm)
WHERE=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && WHERE+=(--project="$PROJECT")

# Prints a command, shell-quoted; runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if ((!DRY_RUN)); then
    "$@"
  fi
}

# 1. The slice: reuse it if it exists, else create it.
if ((DRY_RUN)); then
  run "${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}"
  echo "# (if that fails:)"
  run "${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$VERSION"
elif "${GCLOUD[@]}" describe "$NAME" "${WHERE[@]}" >/dev/null 2>&1; then
  echo "reusing TPU VM $NAME"
else
  run "${GCLOUD[@]}" create "$NAME" "${WHERE[@]}" --accelerator-type="$ACCELERATOR" \
    --version="$VERSION"
fi

# 2. The code: this checkout's files, less what git ignores (.venv, runs, ...).
ARCHIVE="$(mktemp -d)/facerecon.tar.gz"
if ((DRY_RUN)); then
  echo "# (pack the checkout, less what git ignores, into $ARCHIVE)"
else
  git ls-files -z --cached --others --exclude-standard \
    | tar --null --ignore-failed-read -czf "$ARCHIVE" -T - 2>/dev/null
fi
run "${GCLOUD[@]}" scp "$ARCHIVE" "$NAME:facerecon.tar.gz" "${WHERE[@]}" --worker=all

# 3. Install on every worker: a fresh copy of the code, the TPU extra.
INSTALL="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf facerecon.tar.gz -C $REMOTE_DIR"
INSTALL+=" && cd $REMOTE_DIR && python3 -m pip install --quiet '.[tpu]'"
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$INSTALL"

# 4. Train on all workers at once.
TRAIN="cd $REMOTE_DIR && python3 main.py --multihost"
for arg in --config="$CONFIG" --workdir="$WORKDIR" "${MAIN_ARGS[@]}"; do
  TRAIN+=" $(printf '%q' "$arg")"
done
run "${GCLOUD[@]}" ssh "$NAME" "${WHERE[@]}" --worker=all --command="$TRAIN"
