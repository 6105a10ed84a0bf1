"""What python_ws_client.py and python_sse_client.py share: the report they print, how they
consume a computation's stream and describe what it raised, their common arguments, the
watchdog, and the run of one scenario. Each script keeps only its transport (how it builds the
client and what it observes of it) and its scenarios.

Imported as `sfclient_common`: Python puts a script's own directory on sys.path, so the scripts
find it when run as `python tests/interop/python_ws_client.py ...`.
"""

import argparse
import json
import logging
import os
import struct
import sys
import threading

from signalfx.signalflow import computation as sf_computation
from signalfx.signalflow import errors as sf_errors
from signalfx.signalflow import messages as sf_messages

STATE_NAMES = {
    sf_computation.Computation.STATE_UNKNOWN: "UNKNOWN",
    sf_computation.Computation.STATE_STREAM_STARTED: "STREAM_STARTED",
    sf_computation.Computation.STATE_COMPUTATION_STARTED: "COMPUTATION_STARTED",
    sf_computation.Computation.STATE_DATA_RECEIVED: "DATA_RECEIVED",
    sf_computation.Computation.STATE_COMPLETED: "COMPLETED",
    sf_computation.Computation.STATE_ABORTED: "ABORTED",
}


class Report(object):
    """What the client observed; printed exactly once. `fields` are the script's own members
    (with their initial values), next to the ones every script reports."""

    def __init__(self, scenario, **fields):
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
        }
        self.doc.update(fields)
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


def describe_exception(exc):
    out = {"class": type(exc).__name__, "str": str(exc)}
    if isinstance(exc, sf_errors.SignalFlowException):
        out.update(code=exc.code, message=exc.message, errorType=exc.error_type)
    elif isinstance(exc, sf_errors.ComputationAborted):
        out.update(state=exc.state, reason=exc.reason)
    elif isinstance(exc, sf_errors.ComputationFailed):
        out.update(errors=exc.errors)
    return out


def record_exception(report, exc):
    """The client raised `exc`: that is how the stream ended."""
    report.doc["ended"] = "exception"
    report.doc["exception"] = describe_exception(exc)


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
        record_exception(report, exc)
    snapshot(report, comp)


def stop_after_batches(report, batches, stop):
    """An `on_batch` for `consume` that records how many batches were read and calls
    `stop(comp)` once, as soon as there are `batches` of them."""
    stopped = []

    def on_batch(comp):
        if not stopped and len(report.doc["batches"]) >= batches:
            stopped.append(True)
            report.doc["batchesBeforeStop"] = len(report.doc["batches"])
            stop(comp)

    return on_batch


def argument_parser(doc):
    """The arguments every script takes; `doc` is the script's docstring."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
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
    return parser


def start_watchdog(report, timeout, name):
    """After `timeout` seconds, prints what was observed so far with "ended": "timeout" and
    exits with status 3 (a hang guard); cancel the returned timer once the stream ended."""

    def watchdog():
        report.doc["ended"] = "timeout"
        report.emit()
        sys.stderr.write("%s: timed out after %ss\n" % (name, timeout))
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(timeout, watchdog)
    timer.daemon = True
    timer.start()
    return timer


def client_scenarios(report, args):
    """The scenarios every SignalFlow client script runs: a bounded query read to its end, the
    same with an invalid program, and a live query stopped after a few batches."""

    def bounded(flow):
        comp = flow.execute(args.program, start=args.start, stop=args.stop,
                            resolution=args.resolution)
        consume(report, comp)

    def live(flow):
        stop = stop_after_batches(
            report, args.batches, lambda comp: flow.stop(comp.id, args.stop_reason))
        comp = flow.execute(args.program, resolution=args.resolution)
        consume(report, comp, on_batch=stop)

    return {"bounded": bounded, "invalid": bounded, "live": live}


def run(report, args, name, connect, scenarios):
    """Runs `scenarios[args.scenario](flow)` with the client `connect()` builds, under the
    watchdog, closes the client and prints the report."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    timer = start_watchdog(report, args.timeout, name)
    flow = connect()
    try:
        scenarios[args.scenario](flow)
    finally:
        flow.close()
    timer.cancel()
    report.emit()
