#!/bin/sh
# Prints one line, then hangs with grandchildren in its process group.
echo "working..."
sleep 1000 &
sleep 1000 &
wait
