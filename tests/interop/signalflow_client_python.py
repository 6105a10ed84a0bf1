#!/usr/bin/env python3
"""Drives `signalflow-client-python` (PyPI, the successor of `signalfx`'s SignalFlow client)
over wss:// with a CA file, and prints ONE JSON document describing what the client observed
(the shape of sfclient_common.Report, plus "compress"). Run by the Rust interop tests
(tests/it/interop_signalflow_client.rs) in their own virtualenv (target/interop-venv-sfc): the
package installs into the same `signalfx` directory as PyPI `signalfx`.

Usage: signalflow_client_python.py SCENARIO BASE_URL --ca-certs FILE [options]

  SCENARIO   bounded | invalid | live (as in python_ws_client.py)
  BASE_URL   https://HOST:PORT (the client refuses anything but https:// or wss:// and turns it
             into wss://HOST:PORT/v2/signalflow/connect)
"""

from signalfx import signalflow

import sfclient_common as common


def main():
    parser = common.argument_parser(__doc__)
    parser.add_argument("--ca-certs", required=True)
    parser.add_argument("--compress", choices=["on", "off"], default="on")
    args = parser.parse_args()

    compress = args.compress == "on"
    report = common.Report(args.scenario, compress=compress)

    def connect():
        return signalflow.SignalFlowClient(
            args.token, endpoint=args.base_url, compress=compress, ca_certs=args.ca_certs)

    common.run(report, args, "signalflow_client_python", connect, common.client_scenarios(report, args))


if __name__ == "__main__":
    main()
