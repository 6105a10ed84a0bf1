"""Parses Prometheus text from stdin with prometheus_client's own parser (what a scrape of the
gateway's /latest?format=prometheus meets) and prints the families as one JSON document:
[{"name", "type", "samples": [{"name", "labels", "value", "timestamp"}]}]. A parse error exits
non-zero with the parser's message."""

import json
import math
import sys

from prometheus_client.parser import text_string_to_metric_families


def number(value):
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return value


def main():
    text = sys.stdin.read()
    families = []
    for family in text_string_to_metric_families(text):
        samples = [
            {
                "name": s.name,
                "labels": dict(s.labels),
                "value": number(s.value),
                "timestamp": None if s.timestamp is None else float(s.timestamp),
            }
            for s in family.samples
        ]
        families.append({"name": family.name, "type": family.type, "samples": samples})
    print(json.dumps(families))


if __name__ == "__main__":
    main()
