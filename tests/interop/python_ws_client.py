#!/usr/bin/env python3
"""Drives the official SignalFlow Python client (`signalfx` from PyPI, WebSocket transport)
against a SignalFlow endpoint and prints ONE JSON document on stdout describing what the client
observed. Run by the Rust interop tests (tests/it/interop_python_ws.rs), which assert on it.

Usage: python_ws_client.py SCENARIO BASE_URL [options]

  SCENARIO   bounded | invalid | live
  BASE_URL   the endpoint's http base, e.g. http://127.0.0.1:PORT (the client turns it into
             ws://127.0.0.1:PORT/v2/signalflow/connect)

Scenarios:
  bounded  execute PROGRAM over [--start, --stop) and consume the whole stream
  invalid  execute PROGRAM (expected to be invalid) and report the exception it raises
  live     execute PROGRAM with no start/stop, read --batches batches, stop the computation
           with `SignalFlowClient.stop(handle, reason)` and keep reading until the stream ends

Every scenario reports the same shape:
  {"scenario", "compress", "handle", "resolutionMs", "numInputTimeseries", "state",
   "metadata": {tsId: properties},
   "batches": [{"t", "points": {tsId: value}, "bits": {tsId: IEEE-754 bits of a float, hex}}],
   "batchesBeforeStop", "yielded": [message class names], "ended": "normally" | "exception" |
   "timeout", "exception": null | {"class", "str", + class-specific fields},
   "frames": [every websocket frame the transport received, as {"binary": false, "type",
   "event"} or {"binary": true, "version", "mtype", "flags"}],
   "errorPayloads": [every decoded `error` message, as the transport saw it]}

The frame and error records come from wrapping two WebSocketTransport methods that observe and
then call the originals unchanged; the client's behaviour is the library's own.

A watchdog prints what was observed so far with "ended": "timeout" and exits with status 3 if
the stream does not end within --timeout seconds (a hang guard: the Python WS client has no read
timeout of its own).
"""

import argparse
import json
import logging
import os
import struct
import sys
import threading

import signalfx
from signalfx.signalflow import computation as sf_computation
from signalfx.signalflow import errors as sf_errors
from signalfx.signalflow import messages as sf_messages
from signalfx.signalflow import ws as sf_ws

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

    def __init__(self, scenario, compress):
        self.doc = {
            "scenario": scenario,
            "compress": compress,
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
            "frames": [],
            "errorPayloads": [],
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


def observe_transport(report):
    """Records every frame and every `error` message the WebSocket transport receives."""
    original_received = sf_ws.WebSocketTransport.received_message
    original_process = sf_ws.WebSocketTransport._process_message

    def received_message(self, message):
        data = bytes(message.data)
        if message.is_binary:
            version, mtype, flags = struct.unpack("!BBB", data[0:3])
            frame = {"binary": True, "version": version, "mtype": mtype, "flags": flags}
        else:
            decoded = json.loads(data.decode("utf-8"))
            frame = {"binary": False, "type": decoded.get("type"), "event": decoded.get("event")}
        report.doc["frames"].append(frame)
        return original_received(self, message)

    def process_message(self, message):
        if message.get("type") == "error":
            report.doc["errorPayloads"].append(message)
        return original_process(self, message)

    sf_ws.WebSocketTransport.received_message = received_message
    sf_ws.WebSocketTransport._process_message = process_message


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
    """The exact value as 16 hex digits of its IEEE-754 bits (floats survive JSON only
    approximately in general); integers and nulls as they are."""
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("scenario", choices=["bounded", "invalid", "live"])
    parser.add_argument("base_url")
    parser.add_argument("--program", required=True)
    parser.add_argument("--token", default="interop-token")
    parser.add_argument("--start", type=int)
    parser.add_argument("--stop", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--compress", choices=["on", "off"], default="on")
    parser.add_argument("--batches", type=int, default=3,
                        help="live: batches to read before stopping")
    parser.add_argument("--stop-reason", default="interop test stop")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    compress = args.compress == "on"
    report = Report(args.scenario, compress)
    observe_transport(report)

    def watchdog():
        report.doc["ended"] = "timeout"
        report.emit()
        sys.stderr.write("python_ws_client: timed out after %ss\n" % args.timeout)
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(args.timeout, watchdog)
    timer.daemon = True
    timer.start()

    # The public entry point: SignalFx(stream_endpoint=...).signalflow(token) builds a
    # SignalFlowClient with the WebSocket transport.
    sfx = signalfx.SignalFx(stream_endpoint=args.base_url, compress=compress)
    flow = sfx.signalflow(args.token)
    try:
        if args.scenario in ("bounded", "invalid"):
            comp = flow.execute(args.program, start=args.start, stop=args.stop,
                                resolution=args.resolution)
            consume(report, comp)
        else:
            stopped = []

            def maybe_stop(comp):
                if not stopped and len(report.doc["batches"]) >= args.batches:
                    stopped.append(True)
                    report.doc["batchesBeforeStop"] = len(report.doc["batches"])
                    flow.stop(comp.id, args.stop_reason)

            comp = flow.execute(args.program, resolution=args.resolution)
            consume(report, comp, on_batch=maybe_stop)
    finally:
        flow.close()
    timer.cancel()
    report.emit()


if __name__ == "__main__":
    main()
