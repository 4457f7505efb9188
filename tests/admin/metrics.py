#!/usr/bin/env python3
"""Parses the broker's /metrics text (stdin) with the Prometheus client library's own
parser, which raises on anything outside the text format, and prints every sample as
one JSON object: {"families": {name: type}, "samples": [[name, labels, value], ...]}.

Also checks what the parser leaves alone: every family has HELP and TYPE lines and
appears once, and each histogram's buckets are cumulative and end at +Inf = _count.
"""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

text = sys.stdin.read()
families, samples = {}, []
for f in text_string_to_metric_families(text):
    if f.name in families:
        sys.exit(f"family {f.name} appears twice")
    families[f.name] = f.type
    if not f.documentation:
        sys.exit(f"family {f.name} has no HELP")
    buckets = {}
    for s in f.samples:
        samples.append([s.name, s.labels, s.value])
        if f.type == "histogram" and s.name.endswith("_bucket"):
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            buckets.setdefault(key, []).append((float(s.labels["le"]), s.value))
    for key, bs in buckets.items():
        counts = [c for _, c in sorted(bs)]
        if counts != sorted(counts):
            sys.exit(f"{f.name}{dict(key)}: buckets are not cumulative: {counts}")
        if sorted(bs)[-1][0] != float("inf"):
            sys.exit(f"{f.name}{dict(key)}: no +Inf bucket")
        total = [s.value for s in f.samples
                 if s.name == f.name + "_count"
                 and tuple(sorted(s.labels.items())) == key]
        if total != [counts[-1]]:
            sys.exit(f"{f.name}{dict(key)}: _count {total} is not the +Inf bucket {counts[-1]}")
for line in text.splitlines():
    if line.startswith("# TYPE "):
        name = line.split()[2]
        if f"# HELP {name} " not in text:
            sys.exit(f"{name}: TYPE without HELP")
print(json.dumps({"families": families, "samples": samples}))
