"""Evaluate every NumPy run of the committed report again and compare with its record.

    python scripts/check_report_weights.py [--reference]

For each docs/report/runs/**/metrics.json of the NumPy twin with its weights.npz beside
it, evaluates the weights on the test split and prints the recorded and the measured
test accuracy and loss; exits 1 if any accuracy differs (what issue 31 asks to stay).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from twinnet.api import evaluate
from twinnet.backend import load_model
from twinnet.data import load_mnist

RUNS = Path(__file__).resolve().parents[1] / "docs" / "report" / "runs"


def main() -> int:
    reference = "--reference" in sys.argv[1:]
    mnist = load_mnist()
    changed = 0
    for metrics_path in sorted(RUNS.glob("**/metrics.json")):
        weights = metrics_path.with_name("weights.npz")
        metrics = json.loads(metrics_path.read_text())
        if metrics["config"]["backend"] != "numpy" or not weights.is_file():
            continue
        recorded = metrics["final"]["test"]
        model = load_model(metrics["config"]["model"], "numpy", weights=str(weights), reference=reference)
        measured = evaluate(model, mnist.test.x, mnist.test.y)
        same = measured["correct"] == recorded["correct"]
        changed += not same
        print(f"{'same' if same else 'DIFFERS'}  {metrics_path.parent.relative_to(RUNS)}: "
              f"recorded {recorded['accuracy']:.4f} ({recorded['loss']:.6f}), "
              f"now {measured['accuracy']:.4f} ({measured['loss']:.6f})")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
