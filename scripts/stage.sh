#!/usr/bin/env bash
# Run one named stage of `make book` / `make test`, print its wall time, and
# append it to _build/stage-times.txt so the final summary can list them all.
# usage: scripts/stage.sh "stage name" command [args...]
set -uo pipefail
name="$1"; shift
mkdir -p _build
start=$(date +%s)
printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$name"
"$@"
rc=$?
secs=$(( $(date +%s) - start ))
printf '==> %s: %s in %dm%02ds\n' "$name" "$([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)")" $((secs/60)) $((secs%60))
printf '%-34s %4dm%02ds  %s\n' "$name" $((secs/60)) $((secs%60)) "$([ $rc -eq 0 ] && echo ok || echo FAILED)" >> _build/stage-times.txt
exit $rc
