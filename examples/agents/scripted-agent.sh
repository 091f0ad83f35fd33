#!/bin/sh
# A SCRIPTED EXAMPLE AGENT, NOT AN LLM. It follows the agent contract
# (README "Agent contract"): each role writes its artifact under
# $ORCH_ARTIFACT_DIR ending with its verdict lines, the developer changes a
# file outside that directory, and the last line is a Claude Code style
# `result` object so the usage parser has something to read (cost 0).
# `orchestrator demo` runs it; point ORCH_AGENT_COMMAND at a real agent CLI
# (examples/agent-clis.toml) for real work.
set -eu
dir="$ORCH_ARTIFACT_DIR"
mkdir -p "$dir"
say() { printf '[scripted example agent, not an LLM] %s: %s\n' "$ORCH_ROLE" "$*" >&2; }
case "$ORCH_ROLE" in
  analyst)
    say "writing the BRD of $ORCH_WORK_ITEM"
    printf '# BRD %s\n\nWritten by the scripted example agent (not an LLM).\n\nstatus: READY\n' \
      "$ORCH_WORK_ITEM" > "$dir/01-brd.md" ;;
  architect)
    say "writing the ADR"
    mkdir -p "$dir/06-adr"
    printf '# ADR-001 plan\n\nAppend a line to CHANGES.md.\n\nstatus: READY\n' > "$dir/06-adr/ADR-001-plan.md" ;;
  developer)
    say "changing CHANGES.md"
    printf -- '- %s (attempt %s)\n' "$ORCH_WORK_ITEM" "${ORCH_ATTEMPT:-1}" >> CHANGES.md ;;
  reviewer)
    say "approving the change"
    printf '# Review\n\nverdict: APPROVE\n' > "$dir/11-review.md" ;;
  tester)
    say "running sh test.sh"
    if [ -f test.sh ] && sh test.sh >&2; then r=PASS; else r=FAIL; fi
    printf '# Tests\n\nresult: %s\nstatus: %s\ntests_run: 1\n' "$r" "$r" > "$dir/13-test-report.md" ;;
  deployer)
    if [ "$ORCH_STAGE" = deploy ]; then
      say "deploying (nothing to deploy in the example)"
      printf '# Production deploy\n\ndeploy_status: SUCCESS\n' > "$dir/15-deploy-report.md"
    else
      say "staging (nothing to stage in the example)"
      printf '# Staging\n\nstaging_status: SUCCESS\n' > "$dir/14-staging-report.md"
    fi ;;
  *)
    say "unknown role"; exit 2 ;;
esac
echo '{"type":"result","subtype":"success","is_error":false,"result":"scripted example agent, not an LLM","total_cost_usd":0,"usage":{"input_tokens":0,"output_tokens":0,"cache_creation_input_tokens":0,"cache_read_input_tokens":0}}'
