#!/usr/bin/env bash
# Runs one analyze job's ffprobe/ffmpeg commands as plain processes, for
# `scripts/bench transcode`. Usage: PLAN, a file written by
#   reelfleet [--config FILE] media plan --print0 [--legacy] CLIP OUTDIR
# which lists the commands the fleet runs for CLIP (or, with --legacy, the
# per-output commands it ran before one decode per stage: the baseline),
# built by the stages' own argument builders (so the replay cannot drift
# from the fleet; HLS variant folders under OUTDIR must exist): every word
# NUL-terminated, every command ended by an empty word. Nothing is parsed by
# a shell; output goes nowhere, a failing command's stderr is shown.
set -euo pipefail
cmd=()
ran=0
while IFS= read -r -d '' word; do
  if [ -n "$word" ]; then
    cmd+=("$word")
    continue
  fi
  if ! err=$("${cmd[@]}" 2>&1 >/dev/null); then
    printf '%s: %s failed:\n%s\n' "$1" "${cmd[0]}" "$(tail -n 5 <<<"$err")" >&2
    exit 1
  fi
  cmd=()
  ran=$((ran + 1))
done <"$1"
[ "$ran" -gt 0 ] || { echo "$1: no command in the plan" >&2; exit 1; }
