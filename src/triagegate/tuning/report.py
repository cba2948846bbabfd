"""The JSON report of ``triagegate calibrate``.

Kept apart from the command module so ``triagegate --help`` does not import numpy and the
calibration code just to declare the command.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from triagegate.cost import CostEstimate
from triagegate.tuning.calibration import CalibrationResult


class CalibrateReport(BaseModel):
    """Everything ``triagegate calibrate`` measured and decided, JSON-serialisable."""

    graph: str
    data: str
    triage_model: str
    reference: str
    """Where the reference labels came from: DATA's label column or the flagship's triage."""
    tickets: int
    dropped: int = 0
    """Tickets left out because the flagship could not label them."""
    split: dict[str, float | int] | None = None
    calibration_fraction: float
    cost: CostEstimate
    result: CalibrationResult
    patch: str
    """The ``gate`` keys to set, as YAML."""
    wrote: str | None = None
    plot: str | None = None
    seconds: float = 0.0
    notes: list[str] = Field(default_factory=list)
