#!/usr/bin/env bash
# The gateway from a shell, with curl and jq: create a computation, print its first data points
# with their series' dimensions, drop the connection and resume with Last-Event-ID, then stop it.
set -euo pipefail
GW=${GATEWAY:-http://127.0.0.1:8080}
id=$(curl -sf "$GW/computations" -H 'content-type: application/json' \
  -d '{"program": "data(\"cpu.utilization\").mean(by=[\"region\"]).publish(\"A\")", "start": "-1m", "resolution": "1s"}' | jq -r .id)
declare -A dims
last=
stream() { # stream N: print the points of N data events, resuming after $last if it is set
  local seen=0 event= line
  exec 3< <(curl -sN "$GW/computations/$id/events" -H 'accept: text/event-stream' ${last:+-H "last-event-id: $last"})
  local curl_pid=$!
  while IFS= read -r line <&3; do
    case $line in
      "id: "*) last=${line#id: } ;;
      "event: "*) event=${line#event: } ;;
      "data: "*) if [ "$event" = metadata ]; then
          dims[$(jq -r .tsId <<<"${line#data: }")]=$(jq -r '.properties | to_entries
            | map(select(.key | test("^(sf_|computationId)") | not) | "\(.key)=\(.value)") | join(" ")' <<<"${line#data: }")
        elif [ "$event" = data ]; then
          while read -r ts tsid value; do echo "data id=$last t=$ts ${dims[$tsid]-} value=$value"; done \
            < <(jq -r '.logicalTimestampMs as $t | .data[] | "\($t) \(.tsId) \(.value)"' <<<"${line#data: }")
          seen=$((seen + 1)); if [ "$seen" -ge "$1" ]; then break; fi
        fi ;;
    esac
  done
  kill "$curl_pid" 2>/dev/null || true; exec 3<&-
}
stream 3
echo "resumed after id $last"
stream 2
curl -sf -X DELETE "$GW/computations/$id?reason=example+done" >/dev/null
echo "stopped $id"
