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
"""

import argparse
import json
import logging
import os
import struct
import sys
import threading

import sseclient
import urllib3
from signalfx.signalflow import SignalFlowClient
from signalfx.signalflow import computation as sf_computation
from signalfx.signalflow import errors as sf_errors
from signalfx.signalflow import messages as sf_messages
from signalfx.signalflow.sse import SSETransport

STATE_NAMES = {
    sf_computation.Computation.STATE_UNKNOWN: "UNKNOWN",
    sf_computation.Computation.STATE_STREAM_STARTED: "STREAM_STARTED",
    sf_computation.Computation.STATE_COMPUTATION_STARTED: "COMPUTATION_STARTED",
    sf_computation.Computation.STATE_DATA_RECEIVED: "DATA_RECEIVED",
    sf_computation.Computation.STATE_COMPLETED: "COMPLETED",
    sf_computation.Computation.STATE_ABORTED: "ABORTED",
}


class Report(object):
    """What the client observed; printed exactly once."""

    def __init__(self, scenario):
        self.doc = {
            "scenario": scenario,
            "handle": None,
            "resolutionMs": None,
            "numInputTimeseries": None,
            "state": None,
            "metadata": {},
            "batches": [],
            "batchesBeforeStop": None,
            "yielded": [],
            "ended": None,
            "exception": None,
            "events": [],
            "chunkShapes": [],
            "dataLines": [],
            "clientStopError": None,
            "stopStatus": None,
            "stopBody": None,
        }
        self._lock = threading.Lock()
        self._printed = False

    def emit(self):
        with self._lock:
            if self._printed:
                return False
            self._printed = True
            sys.stdout.write(json.dumps(self.doc, sort_keys=True))
            sys.stdout.write("\n")
            sys.stdout.flush()
            return True


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


def describe_exception(exc):
    out = {"class": type(exc).__name__, "str": str(exc)}
    if isinstance(exc, sf_errors.SignalFlowException):
        out.update(code=exc.code, message=exc.message, errorType=exc.error_type)
    elif isinstance(exc, sf_errors.ComputationAborted):
        out.update(state=exc.state, reason=exc.reason)
    elif isinstance(exc, sf_errors.ComputationFailed):
        out.update(errors=exc.errors)
    return out


def value_bits(value):
    """The exact value as 16 hex digits of its IEEE-754 bits; integers and nulls as they are."""
    if isinstance(value, float):
        return "%016x" % struct.unpack("!Q", struct.pack("!d", value))[0]
    return value


def snapshot(report, comp):
    """Copies the computation's accumulated knowledge into the report."""
    report.doc["handle"] = comp.id
    report.doc["resolutionMs"] = comp.resolution
    report.doc["numInputTimeseries"] = comp.num_input_timeseries
    report.doc["state"] = STATE_NAMES.get(comp.state, comp.state)
    report.doc["metadata"] = dict(
        (tsid, comp.get_metadata(tsid)) for tsid in comp.get_known_tsids())


def consume(report, comp, on_batch=None):
    """Iterates `comp.stream()` to its end, recording every message it yields."""
    try:
        for message in comp.stream():
            report.doc["yielded"].append(type(message).__name__)
            if isinstance(message, sf_messages.DataMessage):
                report.doc["batches"].append({
                    "t": message.logical_timestamp_ms,
                    "points": dict(message.data),
                    "bits": dict((tsid, value_bits(value))
                                 for tsid, value in message.data.items()),
                })
                if on_batch:
                    on_batch(comp)
        report.doc["ended"] = "normally"
    except Exception as exc:  # the client's exceptions are what this script reports
        report.doc["ended"] = "exception"
        report.doc["exception"] = describe_exception(exc)
    snapshot(report, comp)


def stop_by_handle(report, base_url, token, handle, reason):
    """POST /v2/signalflow/{handle}/stop?reason=..., as SSETransport.stop would if it worked."""
    http = urllib3.PoolManager()
    url = "{0}/v2/signalflow/{1}/stop".format(base_url, handle)
    r = http.request_encode_url("POST", url, fields={"reason": reason},
                                headers={"X-SF-Token": token}, timeout=20.0)
    report.doc["stopStatus"] = r.status
    report.doc["stopBody"] = r.data.decode("utf-8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=["bounded", "invalid", "live"])
    parser.add_argument("base_url")
    parser.add_argument("--program", required=True)
    parser.add_argument("--token", default="interop-token")
    parser.add_argument("--start", type=int)
    parser.add_argument("--stop", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--batches", type=int, default=3,
                        help="live: batches to read before stopping")
    parser.add_argument("--stop-reason", default="interop test stop")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    report = Report(args.scenario)
    observe_sse(report)

    def watchdog():
        report.doc["ended"] = "timeout"
        report.emit()
        sys.stderr.write("python_sse_client: timed out after %ss\n" % args.timeout)
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(args.timeout, watchdog)
    timer.daemon = True
    timer.start()

    # `SignalFx(...).signalflow(token)` always builds the WebSocket transport; the SSE one is
    # chosen by constructing the client with `transport=SSETransport`.
    flow = SignalFlowClient(args.token, endpoint=args.base_url, transport=SSETransport)
    try:
        if args.scenario in ("bounded", "invalid"):
            try:
                comp = flow.execute(args.program, start=args.start, stop=args.stop,
                                    resolution=args.resolution)
            except Exception as exc:  # the execute POST itself is refused
                report.doc["ended"] = "exception"
                report.doc["exception"] = describe_exception(exc)
            else:
                consume(report, comp)
        else:
            stopped = []

            def maybe_stop(comp):
                if not stopped and len(report.doc["batches"]) >= args.batches:
                    stopped.append(True)
                    report.doc["batchesBeforeStop"] = len(report.doc["batches"])
                    try:
                        flow.stop(comp.id, args.stop_reason)
                    except Exception as exc:
                        report.doc["clientStopError"] = type(exc).__name__
                    stop_by_handle(report, args.base_url, args.token, comp.id, args.stop_reason)

            comp = flow.execute(args.program, resolution=args.resolution)
            consume(report, comp, on_batch=maybe_stop)
    finally:
        flow.close()
    timer.cancel()
    report.emit()


if __name__ == "__main__":
    main()
