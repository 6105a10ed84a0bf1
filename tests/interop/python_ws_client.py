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

What both interop scripts share (the report's common members, consuming the stream, the
arguments, the watchdog) is in sfclient_common.py.
"""

import json
import struct

import signalfx
from signalfx.signalflow import ws as sf_ws

import sfclient_common as common


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


def main():
    parser = common.argument_parser(__doc__)
    parser.add_argument("--compress", choices=["on", "off"], default="on")
    args = parser.parse_args()

    compress = args.compress == "on"
    report = common.Report(args.scenario, compress=compress, frames=[], errorPayloads=[])
    observe_transport(report)

    def connect():
        # The public entry point: SignalFx(stream_endpoint=...).signalflow(token) builds a
        # SignalFlowClient with the WebSocket transport.
        sfx = signalfx.SignalFx(stream_endpoint=args.base_url, compress=compress)
        return sfx.signalflow(args.token)

    common.run(report, args, "python_ws_client", connect, common.client_scenarios(report, args))


if __name__ == "__main__":
    main()
