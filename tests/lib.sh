# lib.sh: what the shell tests share. Source it after `set -u`:
#   . "$(dirname "$0")/lib.sh"; t_tmpdir NAME
# pass/fail count the checks; finish ends the test: exit 1 on any failure, or when no
# check passed at all (a test that checks nothing must not pass).
FAILS=0
PASSES=0
PY=${PYTHON:-python3}
pass() {
  echo "ok: $*"
  PASSES=$((PASSES + 1))
}
fail() {
  echo "FAIL: $*"
  FAILS=$((FAILS + 1))
}

# t_tmpdir NAME: a fresh folder under $TMPDIR (or /tmp) as $TMP, the working directory,
# removed on exit
t_tmpdir() {
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/moec_$1.XXXXXX") || exit 1
  trap 'rm -rf "$TMP"' EXIT
  cd "$TMP" || exit 1
}

# json FILE KEY: a key of the last JSON line of FILE
json() { "$PY" -c 'import json,sys; print(json.loads([l for l in open(sys.argv[1]) if l.startswith("{")][-1])[sys.argv[2]])' "$1" "$2"; }
# check EXPR: a Python boolean expression
check() { "$PY" -c "import sys; sys.exit(0 if ($1) else 1)"; }

# expect_error PATTERN CMD...: CMD exits non-zero (not a crash) and its stderr has PATTERN
expect_error() {
  pat=$1
  shift
  "$@" >out.txt 2>err.txt
  rc=$?
  if [ $rc -eq 0 ]; then
    fail "'$*' succeeded, expected an error with '$pat'"
  elif [ $rc -gt 100 ]; then
    fail "'$*' crashed (exit $rc)"
    cat err.txt
  elif ! grep -qF -- "$pat" err.txt; then
    fail "'$*' exited $rc without '$pat':"
    cat err.txt
  else
    pass "error '$pat' (exit $rc)"
  fi
}

# skip_without_cuda MOEC FILE: one step of FILE on the cuda backend; where it cannot run
# (no GPU, or a build without CUDA) prints "SKIP: <the reason moec gives>" and exits 77,
# on any other failure prints FAIL with moec's error and exits 1
skip_without_cuda() {
  "$1" run "$2" --backend cuda --steps 1 --no-eval --quiet >probe.out 2>probe.err
  rc=$?
  [ $rc -eq 0 ] && return 0
  if grep -qE 'no CUDA device|built without CUDA' probe.err; then
    echo "SKIP: $(sed -n 's/.*--backend cuda: //p' probe.err | head -1)"
    exit 77
  fi
  echo "FAIL: moec run --backend cuda exited $rc:"
  cat probe.err
  exit 1
}

# finish: the verdict (the test's exit status)
finish() {
  if [ "$FAILS" -ne 0 ]; then
    echo "$FAILS of $((FAILS + PASSES)) checks failed"
    exit 1
  fi
  if [ "$PASSES" -eq 0 ]; then
    echo "FAIL: no check was made"
    exit 1
  fi
  echo "all passed ($PASSES checks)"
  exit 0
}
