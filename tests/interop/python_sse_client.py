#!/usr/bin/env python3
"""Drives the official SignalFlow Python client (`signalfx` from PyPI) with its SSE transport
(`SSETransport`, the REST/SSE API under /v2/signalflow) against a gateway and prints ONE JSON
document on stdout describing what the client observed. Run by the Rust interop tests
(tests/it/interop_python_sse.rs), which assert on it.

Usage: python_sse_client.py SCENARIO BASE_URL [options]

  SCENARIO   bounded | invalid | live
  BASE_URL   the gateway's http base, e.g. http://127.0.0.1:PORT

Scenarios:
  bounded  execute PROGRAM over [--start, --stop) and consume the whole stream
  invalid  execute PROGRAM (expected to be invalid) and report the exception it raises
  live     execute PROGRAM with no start/stop, read --batches batches, then stop the
           computation by handle and keep reading until the stream ends. The client's own
           `SignalFlowClient.stop` cannot do it over SSE (it calls a `_port` method that does
           not exist, protocol doc 7.3): the script tries it, records the exception, then POSTs
           /v2/signalflow/{handle}/stop?reason=... itself, as a fixed client would.

Every scenario reports the same shape:
  {"scenario", "handle", "resolutionMs", "numInputTimeseries", "state",
   "metadata": {tsId: properties},
   "batches": [{"t", "points": {tsId: value}, "bits": {tsId: IEEE-754 bits of a float, hex}}],
   "batchesBeforeStop", "yielded": [message class names], "ended": "normally" | "exception" |
   "timeout", "exception": null | {"class", "str", + class-specific fields},
   "events": [every SSE event the transport decoded, as {"event", "control" (a control
   message's event), "t" and "n" (a data event's timestamp and number of points)}],
   "chunkShapes": [the distinct field sequences of the raw SSE chunks, e.g. "event,data"; ":" is a
   comment], "dataLines": [the distinct prefixes of raw data lines, up to the JSON],
   "clientStopError", "stopStatus", "stopBody"}

The event and chunk records come from wrapping two `sseclient.SSEClient` methods that observe
and then call the originals unchanged; the client's behaviour is the library's own.

A watchdog prints what was observed so far with "ended": "timeout" and exits with status 3 if
the stream does not end within --timeout seconds (a hang guard: the SSE transport reads with no
timeout).

What both interop scripts share (the report's common members, consuming the stream, the
arguments, the watchdog) is in sfclient_common.py.
"""

import json

import sseclient
import urllib3
from signalfx.signalflow import SignalFlowClient
from signalfx.signalflow.sse import SSETransport

import sfclient_common as common


def add_distinct(items, item):
    if item not in items:
        items.append(item)


def observe_sse(report):
    """Records every raw SSE chunk's field sequence and every event the client dispatches."""
    original_read = sseclient.SSEClient._read
    original_events = sseclient.SSEClient.events

    def read(self):
        for chunk in original_read(self):
            fields = []
            for line in chunk.splitlines():
                if not line.strip():
                    continue
                if line.startswith(b":"):
                    fields.append(":")
                    continue
                field = line.split(b":", 1)[0].decode("utf-8")
                fields.append(field)
                if field == "data":
                    # Up to the JSON: exactly "data: " is what strict parsers need.
                    add_distinct(report.doc["dataLines"], line[:line.index(b"{")].decode("utf-8")
                                 if b"{" in line else line.decode("utf-8"))
            add_distinct(report.doc["chunkShapes"], ",".join(fields))
            yield chunk

    def events(self):
        for event in original_events(self):
            payload = json.loads(event.data)
            record = {"event": event.event, "control": None, "t": None, "n": None}
            if event.event == "control-message":
                record["control"] = payload.get("event")
            elif event.event == "data":
                record["t"] = payload.get("logicalTimestampMs")
                record["n"] = len(payload.get("data", []))
            report.doc["events"].append(record)
            yield event

    sseclient.SSEClient._read = read
    sseclient.SSEClient.events = events


def stop_by_handle(report, base_url, token, handle, reason):
    """POST /v2/signalflow/{handle}/stop?reason=..., as SSETransport.stop would if it worked."""
    http = urllib3.PoolManager()
    url = "{0}/v2/signalflow/{1}/stop".format(base_url, handle)
    r = http.request_encode_url("POST", url, fields={"reason": reason},
                                headers={"X-SF-Token": token}, timeout=20.0)
    report.doc["stopStatus"] = r.status
    report.doc["stopBody"] = r.data.decode("utf-8")


def main():
    args = common.argument_parser(__doc__).parse_args()

    report = common.Report(args.scenario, events=[], chunkShapes=[], dataLines=[],
                           clientStopError=None, stopStatus=None, stopBody=None)
    observe_sse(report)

    def connect():
        # `SignalFx(...).signalflow(token)` always builds the WebSocket transport; the SSE one
        # is chosen by constructing the client with `transport=SSETransport`.
        return SignalFlowClient(args.token, endpoint=args.base_url, transport=SSETransport)

    def bounded(flow):
        try:
            comp = flow.execute(args.program, start=args.start, stop=args.stop,
                                resolution=args.resolution)
        except Exception as exc:  # the execute POST itself is refused
            common.record_exception(report, exc)
        else:
            common.consume(report, comp)

    def live(flow):
        def stop(comp):
            try:
                flow.stop(comp.id, args.stop_reason)
            except Exception as exc:
                report.doc["clientStopError"] = type(exc).__name__
            stop_by_handle(report, args.base_url, args.token, comp.id, args.stop_reason)

        comp = flow.execute(args.program, resolution=args.resolution)
        common.consume(report, comp, on_batch=common.stop_after_batches(report, args.batches, stop))

    common.run(report, args, "python_sse_client", connect,
               {"bounded": bounded, "invalid": bounded, "live": live})


if __name__ == "__main__":
    main()
