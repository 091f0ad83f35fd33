#!/bin/sh
# An analyst that leaves something hostile where 01-brd.md belongs, chosen by
# the work item: EVIL-1 a symlink to /dev/zero, EVIL-2 a FIFO with no writer,
# EVIL-3 a 100 MiB (sparse) file, EVIL-4 a directory. Every other run is the
# well-behaved contract agent.
set -eu
dir="$ORCH_ARTIFACT_DIR"
brd="$dir/01-brd.md"
if [ "$ORCH_ROLE" = analyst ]; then
  case "$ORCH_WORK_ITEM" in
    EVIL-1) mkdir -p "$dir"; rm -rf "$brd"; ln -s /dev/zero "$brd" ;;
    EVIL-2) mkdir -p "$dir"; rm -rf "$brd"; mkfifo "$brd" ;;
    EVIL-3) mkdir -p "$dir"; rm -rf "$brd"; truncate -s 100M "$brd" ;;
    EVIL-4) mkdir -p "$dir"; rm -rf "$brd"; mkdir "$brd" ;;
    *) exec sh "$(dirname "$0")/contract-agent.sh" ;;
  esac
  echo '{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.01,"usage":{"input_tokens":1,"output_tokens":1}}'
  exit 0
fi
exec sh "$(dirname "$0")/contract-agent.sh"
