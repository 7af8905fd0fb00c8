"""What a gate verdict says: each gate's statistic, size, interval and result, and the table
a reviewer reads in MLflow and Prefect."""

from __future__ import annotations

import math

from pydantic import BaseModel, computed_field

from uib.metrics import Metrics


class GateResult(BaseModel):
    name: str
    value: float
    threshold: float
    passed: bool
    rule: str
    statistic: str = ""
    n: int | None = None
    interval: tuple[float, float] | None = None
    decidable: bool = True
    judged_by: str | None = None
    p_value: float | None = None

    @computed_field
    @property
    def shortfall(self) -> float:
        """How far the value is on the wrong side of the threshold (0 when passed)."""
        if self.passed:
            return 0.0
        return abs(self.value - self.threshold) if math.isfinite(self.value) else math.inf

    def verdict(self) -> str:
        if not self.passed:
            return f"**FAIL** (short by {self.shortfall:.4f})"
        if not self.decidable:
            return f"pass — {self.judged_by or 'not decidable at this size'}"
        return "pass"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class GateReport(BaseModel):
    passed: bool
    gates: list[GateResult]
    before: Metrics
    after: Metrics
    confidence: float = 0.95

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def message(self) -> str:
        if self.passed:
            return f"all {len(self.gates)} gates passed"
        return "failed gates: " + "; ".join(
            f"{g.name} {g.value:.4f} vs {g.threshold:.4f} ({g.rule}, short by {g.shortfall:.4f})"
            for g in self.failed
        )

    def to_markdown(self) -> str:
        """The gate table, preceded by a blank line so MLflow's Markdown renders it."""
        header = (
            f"| gate | statistic | n | value | interval ({self.confidence:.0%}) | threshold "
            "| rule | result |"
        )
        lines = ["", header, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for g in self.gates:
            n = "—" if g.n is None else str(g.n)
            interval = "—" if g.interval is None else format_interval(g.interval)
            cells = [
                g.name,
                g.statistic or "—",
                n,
                f"{g.value:.4f}",
                interval,
                f"{g.threshold:.4f}",
                g.rule,
                g.verdict(),
            ]
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        return "\n".join(lines) + "\n"


def format_interval(interval: tuple[float, float]) -> str:
    return f"[{interval[0]:.4f}, {interval[1]:.4f}]"
