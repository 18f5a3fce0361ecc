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
          f"{meta['seconds']} s in all, Redis {meta['redis']}.\n")  # fmt: skip
    print("| scenario | system | pool | figure | ratio to aiotq |")
    print("| --- | --- | --- | --- | --- |")
    for row in data["rows"]:
        if "error" in row:
            print(f"| {row['scenario']} | {row['system']} | | FAILED: {row['error']} | |")
            continue
        if row.get("figure") == "factor":
            print(f"| scale | {row['system']} | 2 workers | {row['value']}x one worker | |")
            continue
        ratio = row.get("ratio_to_aiotq")
        shown = f"{ratio:.2f}x" if ratio is not None else ""
        print(f"| {row['scenario']} | {row['system']} | {row.get('pool', '')} | "
              f"{row['value']:g} {row['unit']} | {shown} |")  # fmt: skip
    print("\nHow each system is configured:\n")
    for label, how in meta["systems"].items():
        print(f"- **{label}**: {how}")


if __name__ == "__main__":
    main()
