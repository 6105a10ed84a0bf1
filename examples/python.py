"""The gateway from Python with `requests` only: create a computation, print its first data points
with their series' dimensions, drop the connection and resume with Last-Event-ID, then stop it."""
import json, os, requests

GW = os.environ.get("GATEWAY", "http://127.0.0.1:8080")
PROGRAM = "data('cpu.utilization').mean(by=['region']).publish('A')"
dims, last = {}, None


def stream(cid, count):  # prints the points of `count` data events, resuming after `last`
    global last
    headers = {"accept": "text/event-stream", **({"last-event-id": last} if last else {})}
    with requests.get(f"{GW}/computations/{cid}/events", headers=headers, stream=True, timeout=30) as r:
        r.raise_for_status()
        r.encoding, event = "utf-8", {}
        for line in r.iter_lines(chunk_size=None, decode_unicode=True):
            if line:
                field, _, value = line.partition(": ")
                event[field] = value
                continue
            last, body = event.get("id", last), json.loads(event.get("data", "null"))
            if event.get("event") == "metadata":
                props = body["properties"]
                dims[body["tsId"]] = " ".join(f"{k}={v}" for k, v in props.items() if not k.startswith(("sf_", "computationId")))
            elif event.get("event") == "data":
                for p in body["data"]:
                    print(f"data id={last} t={body['logicalTimestampMs']} {dims.get(p['tsId'], '')} value={p['value']}", flush=True)
                count -= 1
                if count == 0:
                    return
            event = {}


cid = requests.post(f"{GW}/computations", json={"program": PROGRAM, "start": "-1m", "resolution": "1s"}, timeout=30).json()["id"]
stream(cid, 3)
print(f"resumed after id {last}", flush=True)
stream(cid, 2)
requests.delete(f"{GW}/computations/{cid}", params={"reason": "example done"}, timeout=30).raise_for_status()
print(f"stopped {cid}")
