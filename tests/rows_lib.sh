# rows_lib.sh: what the expert-rows-per-step tests share (test_rows_per_step.sh,
# test_rows_per_step_hmoe.sh). Source it after `set -e` with MOEC set: it makes a scratch
# directory, removed at exit, and enters it.
#   run TAG MODEL ARGS...  12 steps of MODEL ($LAUNCH moec, $RUN_ARGS before ARGS): its
#                          step losses in TAG.loss, its checkpoint TAG.ck, stderr TAG.err
#   same A B               B's losses and checkpoint are A's, bit for bit
#   worst_vs_step W S MODEL P ARGS...  MODEL on P devices with every route's buffers
#                          (--expert-headroom P; tag W) and sized per step (tag S): the same
#   MPI2                   the launch of 2 MPI ranks ($LAUNCH), empty without mpirun
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
cd "$W"
MPI2=
if command -v mpirun >/dev/null 2>&1; then
  MPI2="env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 mpirun \
    --oversubscribe -np 2"
fi
fail() {
  echo "FAIL: $*"
  exit 1
}
LAUNCH=
RUN_ARGS=
run() {
  tag=$1
  model=$2
  shift 2
  # shellcheck disable=SC2086 # LAUNCH and RUN_ARGS are lists of words
  $LAUNCH "$MOEC" run "$model" $RUN_ARGS "$@" --steps 12 --no-eval --save "$tag.ck" \
    --metrics "$tag.metrics" >"$tag.err" 2>&1 || fail "$tag: exit status $? ($(tail -3 "$tag.err"))"
  grep '"event":"step"' "$tag.metrics" | sed 's/.*"loss":\([^,]*\),.*/\1/' >"$tag.loss"
  [ "$(wc -l <"$tag.loss")" -eq 12 ] || fail "$tag: expected 12 step losses"
}
same() {
  cmp -s "$1.loss" "$2.loss" || fail "$2's losses differ from $1's"
  cmp -s "$1.ck" "$2.ck" || fail "$2's checkpoint differs from $1's"
  echo "$2 = $1: $(wc -l <"$1.loss") losses and the checkpoint, bit for bit"
}
worst_vs_step() {
  w=$1
  s=$2
  model=$3
  p=$4
  shift 4
  run "$w" "$model" --devices "$p" --expert-headroom "$p" "$@" # every route: the worst case
  run "$s" "$model" --devices "$p" "$@"
  same "$w" "$s"
}
