#!/usr/bin/env bash
# Runs chunks of bench/gpu_study.sh on the GPU machine from a branch's own tree, for a helper whose worktree is not
# the checkout the device tool sends (it sends the session's checkout). Here, in the branch's worktree:
#   git archive --format=tar.gz -o CHECKOUT/build/gputree.tgz HEAD && cp bench/device_tree.sh CHECKOUT/build/go.sh
# and put .teacher/, .whl/site.tar.xz and .data/fashion-mnist/ (ignored) in CHECKOUT too. On the device, in its root:
#   bash build/go.sh DEADLINE_S CHUNK [CHUNK ...]      (carry build, plus .whl/.data/.teacher on the first call)
# The tree unpacks into runs_gpu/tree (ignored); the store (runs_gpu/store), the unpacked site and the cache stay
# there while the machine is warm, so a chunk cut off at the deadline resumes in the next call.
R=$PWD; T=$R/runs_gpu/tree
rm -rf "$T"; mkdir -p "$T" "$R/runs_gpu/site" || exit 3
tar -xzf "$R/build/gputree.tgz" -C "$T" || exit 3
for d in .whl .data .teacher; do ln -sfn "$R/$d" "$T/$d"; done
ln -sfn "$R/runs_gpu/site" "$T/.site"
cd "$T" || exit 3
export RUNS=$R/runs_gpu/store
start=$(date +%s); deadline=$1; shift
for chunk in "$@"; do
  left=$(( deadline - ($(date +%s) - start) ))
  if [ "$left" -lt 90 ]; then echo "skip $chunk: $left s left"; continue; fi
  bash bench/gpu_study.sh "$chunk" "$left"
done
echo "go.sh done after $(( $(date +%s) - start )) s"
