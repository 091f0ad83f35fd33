#!/bin/sh
# An agent whose stream spends without end (B-7): one Claude stream-json
# assistant message a second, 10,000 output tokens each ($0.15 at the
# default claude-sonnet-4-5 price), and never a result line.
i=0
while [ $i -lt 600 ]; do
  i=$((i + 1))
  printf '{"type":"assistant","message":{"id":"msg_%s","model":"claude-sonnet-4-5","usage":{"input_tokens":1,"output_tokens":10000}}}\n' "$i"
  sleep 1
done
