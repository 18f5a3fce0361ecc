"""benchmarks/results/latest.json as a Markdown table (for docs/benchmarks.md).

.venv/bin/python -m benchmarks.report
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    data = json.loads((RESULTS / "latest.json").read_text())
    meta = data["meta"]
    print(f"Run of {meta['date']}: {meta['rounds']} round(s), best round shown, "
          f"{meta['seconds']} s in all, Redis {meta['redis']}, "
          "RabbitMQ vhost aiotq-bench.\n")  # fmt: skip
    print("| scenario | system | broker | pool | figure | ratio to aiotq (same broker) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in data["rows"]:
        head = f"| {row['scenario']} | {row['system']} | {row.get('broker', 'redis')} |"
        if "error" in row:
            print(f"{head} | FAILED: {row['error']} | |")
            continue
        if row.get("figure") == "factor":
            print(f"{head} 2 workers | {row['value']}x one worker | |")
            continue
        ratio = row.get("ratio_to_aiotq")
        shown = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"{head} {row.get('pool', '')} | {row['value']:g} {row['unit']} | {shown} |")
    print("\nHow each system is configured:\n")
    for label, how in meta["systems"].items():
        print(f"- **{label}**: {how}")


if __name__ == "__main__":
    main()
