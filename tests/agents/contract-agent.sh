#!/bin/sh
# A scripted agent that follows the agent contract: it writes its role's
# artifact with the verdict lines and prints a Claude stream-json result.
# AGENT_SLEEP=<seconds> makes it take that long.
set -eu
dir="$ORCH_ARTIFACT_DIR"
mkdir -p "$dir"
# AGENT_FAIL_ONCE_ROLE=reviewer: that role reports failure on its first run
# only (a marker in the artifact dir remembers it).
fail=0
if [ "${AGENT_FAIL_ONCE_ROLE:-}" = "$ORCH_ROLE" ] && [ ! -e "$dir/.failed-once" ]; then
  fail=1; touch "$dir/.failed-once"
fi
[ -n "${AGENT_SLEEP:-}" ] && sleep "$AGENT_SLEEP"
test -s "$ORCH_PROMPT_FILE"
case "$ORCH_ROLE" in
  analyst)   printf '# BRD %s\n\nstatus: READY\n' "$ORCH_WORK_ITEM" > "$dir/01-brd.md" ;;
  architect) mkdir -p "$dir/06-adr"; printf '# ADR\n\nstatus: READY\n' > "$dir/06-adr/ADR-001-plan.md" ;;
  developer) mkdir -p src
             # AGENT_OWN_FILE=1: each work item changes a file of its own, so
             # parallel tasks do not conflict at the merge gate.
             f=src/feature.txt; [ -n "${AGENT_OWN_FILE:-}" ] && f="src/feature-$ORCH_WORK_ITEM.txt"
             printf 'feature for %s, attempt %s\n' "$ORCH_WORK_ITEM" "$ORCH_ATTEMPT" > "$f" ;;
  reviewer)  if [ $fail = 1 ]; then v=REQUEST_CHANGES; else v=APPROVE; fi
             printf '# Review\n\nverdict: %s\n' "$v" > "$dir/11-review.md" ;;
  tester)    if [ $fail = 1 ]; then r=FAIL; else r=PASS; fi
             printf '# Tests\n\nresult: %s\nstatus: %s\ntests_run: 4\n' "$r" "$r" > "$dir/13-test-report.md" ;;
  deployer)  if [ "$ORCH_STAGE" = deploy ]; then
               # Production (no deploy_command): AGENT_DEPLOY_LOG counts deploys.
               if [ $fail = 1 ]; then s=FAILURE; else s=SUCCESS; fi
               if [ -n "${AGENT_DEPLOY_LOG:-}" ]; then echo "$ORCH_WORK_ITEM" >> "$AGENT_DEPLOY_LOG"; fi
               printf '# Production deploy\n\ndeploy_status: %s\n' "$s" > "$dir/15-deploy-report.md"
             else
               printf '# Staging\n\nstaging_status: SUCCESS\n' > "$dir/14-staging-report.md"
             fi ;;
esac
echo '{"type":"system","subtype":"init","model":"claude-sonnet-4-5"}'
echo '{"type":"result","subtype":"success","is_error":false,"total_cost_usd":0.25,"usage":{"input_tokens":10,"output_tokens":200,"cache_creation_input_tokens":1000,"cache_read_input_tokens":5000}}'
