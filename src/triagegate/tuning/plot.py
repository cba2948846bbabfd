"""The calibration curves as a PNG: coverage against kept accuracy, cost against overall accuracy.

matplotlib is an optional dependency (``pip install 'triagegate[calibrate]'``) and draws with
the Agg backend, so no display is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from triagegate.errors import InputError
from triagegate.tuning.calibration import CalibrationResult, CurveRow


def _xy(rows: Sequence[CurveRow], x: str, y: str) -> tuple[list[float], list[float]]:
    points = [r.point for r in rows if not r.label and getattr(r.point, y) is not None]
    pairs = sorted((float(getattr(p, x)), float(getattr(p, y))) for p in points)
    return [a for a, _ in pairs], [b for _, b in pairs]


def plot(
    result: CalibrationResult,
    path: str | Path,
    *,
    held_out: Sequence[CurveRow],
    calibration: Sequence[CurveRow],
    title: str = "",
) -> Path:
    """Draw both panels from dense curves (:func:`triagegate.tuning.calibration.curve_rows`) and write ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib: pip install 'triagegate[calibrate]'") from None
    path = Path(path)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    try:
        for rows, name, style in ((calibration, "calibration", "--"), (held_out, "held-out", "-")):
            xs, ys = _xy(rows, "coverage", "accuracy_kept")
            left.plot(xs, ys, style, label=f"{name} (one threshold)")
            xs, ys = _xy(rows, "cost_per_1000", "system_accuracy")
            right.plot(xs, ys, style, label=f"{name} (one threshold)")
        for row in held_out:
            if not row.label:
                continue
            p = row.point
            marker = "o" if row.label.startswith("fitted") else "s"
            if p.accuracy_kept is not None:
                left.plot([p.coverage], [p.accuracy_kept], marker, label=f"{row.label} (held-out)")
            right.plot([p.cost_per_1000], [p.system_accuracy], marker, label=f"{row.label} (held-out)")
        if result.objective == "target_accuracy":
            left.axhline(result.target, color="grey", linewidth=0.8, linestyle=":", label="target")
        if result.objective == "max_escalation":
            left.axvline(
                1 - result.target, color="grey", linewidth=0.8, linestyle=":", label="escalation limit"
            )
        if result.objective == "budget":
            right.axvline(result.target, color="grey", linewidth=0.8, linestyle=":", label="budget")
        left.set_xlabel("coverage (share kept by the mini tier)")
        left.set_ylabel("accuracy on kept tickets")
        right.set_xlabel("estimated USD per 1,000 tickets")
        right.set_ylabel(
            f"overall accuracy (flagship right on {result.flagship_accuracy:.0%} of escalations)"
        )
        for axis in (left, right):
            axis.grid(True, alpha=0.3)
            axis.legend(fontsize=7)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, format="png", dpi=110)
    finally:
        plt.close(fig)
    return path
