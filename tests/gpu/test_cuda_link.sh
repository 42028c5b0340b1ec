#!/bin/sh
# test_cuda_link.sh: how a CUDA build links (docs/cuda.md, "Building").
#   usage: test_cuda_link.sh MOEC PROBE
#   - PROBE (cuda_link_probe, linked with --no-as-needed: every library on the link
#     line becomes NEEDED) does not need libcuda.so.1: the toolkit's link-only libcuda is not on the
#     line, so the binaries start on machines without a driver
#   - moec needs no libcuda either, nor libcudart twice (no static runtime beside the
#     shared one)
#   - moec calls NCCL (ncclCommInitAll, ncclCommInitRank, ncclAllGather, ncclSend,
#     ncclRecv among its dynamic symbols) when the build found NCCL
set -u
MOEC=$1
PROBE=$2
command -v readelf >/dev/null 2>&1 || { echo "SKIP: readelf not found"; exit 77; }
. "$(dirname "$0")/../lib.sh"
t_tmpdir test_cuda_link
needed() { readelf -d "$1" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p'; }

if needed "$PROBE" | grep -q '^libcuda\.so'; then
  fail "the probe (--no-as-needed) needs $(needed "$PROBE" | grep '^libcuda')"
else
  pass "the probe, linked with --no-as-needed, does not need libcuda.so"
fi
if "$PROBE" >"$TMP/probe.out" 2>&1; then
  pass "the probe starts: $(cat "$TMP/probe.out")"
else
  fail "the probe does not start"
  cat "$TMP/probe.out"
fi
if needed "$MOEC" | grep -q '^libcuda\.so'; then fail "moec needs libcuda"; else pass "moec does not need libcuda"; fi
if [ "$(needed "$MOEC" | grep -c '^libcudart')" -le 1 ]; then
  pass "one CUDA runtime"
else
  fail "moec needs several libcudart"
fi
if needed "$MOEC" | grep -q '^libnccl'; then
  missing=""
  for s in ncclCommInitAll ncclCommInitRank ncclAllGather ncclSend ncclRecv; do
    nm -D "$MOEC" | grep -q " U $s\$" || missing="$missing $s"
  done
  if [ -z "$missing" ]; then
    pass "moec calls NCCL ($(nm -D "$MOEC" | grep -c ' U nccl') NCCL symbols)"
  else
    fail "moec lacks NCCL symbols:$missing"
  fi
else
  echo "note: this build has no NCCL (moec does not link libnccl)"
fi
finish
