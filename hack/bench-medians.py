#!/usr/bin/env python3
"""Prints the median of every criterion benchmark under target/criterion,
as a Markdown table (criterion's console output shows the mean)."""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")


def human(ns: float) -> str:
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.2f} {unit}"
    return f"{ns:.2f} ns"


print("| benchmark | median | 95% CI of the median |")
print("|---|---|---|")
for estimates in sorted(root.glob("**/new/estimates.json")):
    bench = estimates.parent.parent.relative_to(root).as_posix()
    median = json.loads(estimates.read_text())["median"]
    ci = median["confidence_interval"]
    print(f"| {bench} | {human(median['point_estimate'])} | "
          f"{human(ci['lower_bound'])} – {human(ci['upper_bound'])} |")
