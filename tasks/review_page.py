"""The model version page a reviewer decides from: what MLflow shows as a version's description.

It reads top-down as a decision: the headline (approved or rejected, by which gates, for which
request; what the request selected, how many samples went and why), then the gates as a
before | after | threshold table, then the links (data commit, Prefect flow run, audit record,
the full reports).

MLflow renders the description with showdown and sanitises it down to bare tags: no `style`,
no `align`, and its stylesheet gives table cells no padding, so adjacent numbers run together
(`0.94740.9374`). Each cell is therefore padded with an en space on either side, written as
the entity `&ensp;`: showdown trims every Unicode space off a cell, and HTML collapses plain ones.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from urllib.parse import quote

from pydantic import BaseModel

if TYPE_CHECKING:  # the CLI imports this module before anything heavy (torch, scipy)
    from tasks.gate_report import GateReport, GateResult

PAD = "&ensp;"  # an en space: showdown trims cells of every Unicode space, not of an entity
AUDIT_LINE = "- audit record: "
OVER_FORGETTING_MARGIN = 0.05
NOT_PROMOTED = (
    " **Not promoted:** the `champion` alias stays where it was; the failed gates are marked "
    "FAIL below."
)
PROMOTED_ON_REVIEW = " **Promoted on review** despite the failed gates marked FAIL below."
# The metric of `Metrics` a gate's value is, where it is one (shown before and after).
GATE_METRIC = {
    "test_accuracy_retained": "TA",
    "retain_accuracy_retained": "RA",
    "forget_like_unseen": "forget_acc",
    "forget_loss_like_unseen": "forget_loss_rank",
    "mia_efficacy": "mia_efficacy",
    "bias_asr": "bias_asr",
}
# Which side of its threshold a gate's value must be on; the others explain it in their rule.
GATE_DIRECTION = {
    "test_accuracy_retained": "≥",
    "retain_accuracy_retained": "≥",
    "forget_like_unseen": "≤",
    "mia_efficacy": "≥",
    "bias_asr": "≤",
    "no_redirect": "≤",
    "sanity": "≥",
}


class VersionLinks(BaseModel):
    """Where the evidence behind a version lives, as the description links it."""

    model_name: str
    experiment_id: str
    run_id: str
    data_repo: str
    data_version_before: str
    data_version_after: str
    audit_file: str
    flow_run_url: str | None = None
    has_shift_validation: bool = True

    def version(self, version: str) -> str:
        return f"#/models/{quote(self.model_name)}/versions/{version}"

    def artifact(self, path: str) -> str:
        """A link MLflow's UI resolves on whatever host serves it (relative to the page)."""
        return f"#/experiments/{self.experiment_id}/runs/{self.run_id}/artifacts/{quote(path)}"


def selection_text(request) -> str:
    """What a request selected, without its ids: `where source=faulty`, or `2 ids`."""
    if request.sample_ids is not None:
        n = len(request.sample_ids)
        return f"{n} id{'' if n == 1 else 's'}"
    where = request.where
    if isinstance(where, dict):  # a request stored before predicates were clauses
        return "where " + " AND ".join(f"{k}={v}" for k, v in where.items())
    return f"where {where}"


def samples(n: int) -> str:
    return f"{n} sample{'' if n == 1 else 's'}"


def headline(verdict: str, request_id: str, detail: str) -> str:
    """The first line of a candidate's description: `# REJECTED — request req-42: failed …`."""
    return f"# {verdict.upper()} — request {request_id}: {detail}"


def verdict_headline(gates: GateReport, request_id: str, method: str) -> str:
    if gates.passed:
        return headline("approved", request_id, f"every gate holds ({method})")
    return headline("rejected", request_id, "failed " + ", ".join(g.name for g in gates.failed))


def over_forgetting(
    forget_nonmember_rate: float | None, n_forget: int, unseen_nonmember_rate: float | None
) -> str | None:
    """A plain sentence when the forget set looks *less* member-like than data never seen.

    A retrained model treats the forgotten samples like unseen ones, so a membership attack
    calls about as many of them non-members as it calls of the test data (the retrain-free
    reference level). Clearly more — the one-sided 95 % lower bound of the forget rate more than
    `OVER_FORGETTING_MARGIN` above the unseen rate, which is itself measured on a few hundred
    rows — means the candidate pushed them past unseen data: the attack can tell them apart by
    that, which is what over-forgetting looks like.
    """
    from tasks.gate_stats import cp_lower

    if forget_nonmember_rate is None or unseen_nonmember_rate is None or n_forget <= 0:
        return None
    if not (math.isfinite(forget_nonmember_rate) and math.isfinite(unseen_nonmember_rate)):
        return None
    k = int(round(forget_nonmember_rate * n_forget))
    if cp_lower(k, n_forget, 0.05) <= unseen_nonmember_rate + OVER_FORGETTING_MARGIN:
        return None
    return (
        f"Over-forgetting: the forget set looks less member-like than data the model never "
        f"saw — the membership attack calls {forget_nonmember_rate:.0%} of the forgotten "
        f"samples non-members, and {unseen_nonmember_rate:.0%} of unseen test samples, the "
        "level a retrained model would leave them at."
    )


def over_forgetting_of(gates: GateReport, n_forget: int) -> str | None:
    """`over_forgetting` for a candidate's metrics; for a patch-bias request, why it may be fine."""
    after = gates.after
    note = over_forgetting(after.mia_efficacy, n_forget, after.mia_test_level)
    if note and after.bias_asr is not None:
        note += (
            " Here the removed slice carries a faulty source's labels, which a retrained model "
            "rejects as well; the gates on test and retained accuracy decide."
        )
    return note


def _pad(text: str) -> str:
    cell = text.replace("|", "\\|").replace("\n", " ")
    return f"{PAD}{cell}{PAD}"


def _number(value: float | None) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.4f}"


def before_value(gate: GateResult, gates: GateReport) -> float | None:
    """The original's value of a gate's statistic, where the gate reads one metric of both."""
    metric = GATE_METRIC.get(gate.name)
    if metric is None:
        return None
    after = getattr(gates.after, metric, None)
    if after is None or not math.isclose(after, gate.value, rel_tol=0, abs_tol=1e-12):
        return None  # the gate's value is not that metric (a statistic of its own)
    return getattr(gates.before, metric, None)


def short_verdict(gate: GateResult) -> str:
    """`pass`, `**FAIL**`, or `pass (not decidable at n = 2)`: the judge is in gate_report.md."""
    if not gate.passed:
        return "**FAIL**"
    if not gate.decidable:
        return "pass (not measured)" if gate.n is None else f"pass (not decidable at n = {gate.n})"
    return "pass"


def gate_table(gates: GateReport) -> str:
    """The gates as a before | after | threshold table, every cell padded (see the module)."""
    header = ["gate", "before", "after", "threshold", "n", "result", "rule"]
    lines = [
        "| " + " | ".join(_pad(h) for h in header) + " |",
        "|" + " --- |" * len(header),
    ]
    for g in gates.gates:
        threshold = _number(g.threshold)
        if g.name in GATE_DIRECTION and threshold != "—":
            threshold = f"{GATE_DIRECTION[g.name]} {threshold}"
        cells = [
            g.name,
            _number(before_value(g, gates)),
            _number(g.value),
            threshold,
            "—" if g.n is None else str(g.n),
            short_verdict(g),
            g.rule,
        ]
        lines.append("| " + " | ".join(_pad(c) for c in cells) + " |")
    return "\n".join(lines)


def audit_line(links: VersionLinks, logged_in_run: str | None) -> str:
    """The audit record's link once it is logged to a run; until then, where it will be."""
    path = f"audit/{links.audit_file}"
    if logged_in_run is None:
        return (
            f"{AUDIT_LINE}`{path}`, logged to the source run of the request's last candidate "
            "once the forget set is erased"
        )
    target = links.model_copy(update={"run_id": logged_in_run}).artifact(path)
    return f"{AUDIT_LINE}[{path}]({target})"


def links_section(links: VersionLinks, audit_logged_in: str | None = None) -> str:
    before, after = links.data_version_before, links.data_version_after
    lines = [
        "### Links",
        "",
        f"- data commit: `{before[:10]}` → `{after[:10]}` "
        f"(`git -C {links.data_repo} show --stat {after[:10]}`)",
    ]
    if links.flow_run_url:
        lines.append(f"- Prefect flow run: [{links.flow_run_url}]({links.flow_run_url})")
    lines.append(audit_line(links, audit_logged_in))
    lines.append(
        f"- every gate's statistic and interval: [gate_report.md]({links.artifact('gate_report.md')})"
    )
    if links.has_shift_validation:
        lines.append(
            "- the data shift validation (Great Expectations): "
            f"[shift_validation.md]({links.artifact('shift_validation.md')})"
        )
    lines.append(
        f"- before / after, every metric: [plots/before_after.png]"
        f"({links.artifact('plots/before_after.png')})"
    )
    return "\n".join(lines)


def version_description(
    request,
    gates: GateReport,
    method: str,
    n_forget: int,
    parent_version: str,
    links: VersionLinks,
) -> str:
    """The whole description of a candidate version, headline first."""
    reason = request.reason or "no reason given"
    summary = (
        f"**{samples(n_forget)} removed** — selected `{selection_text(request)}`; "
        f"reason: {reason}. Method `{method}`, unlearned from "
        f"[version {parent_version}]({links.version(parent_version)})."
    )
    if not gates.passed:
        summary += NOT_PROMOTED
    parts = [verdict_headline(gates, request.request_id, method), "", summary, ""]
    if note := over_forgetting_of(gates, n_forget):
        parts += [f"> **{note.split(':', 1)[0]}:**{note.split(':', 1)[1]}", ""]
    parts += [
        "### Gates: before (the parent version) and after (this candidate)",
        "",
        gate_table(gates),
        "",
        links_section(links),
    ]
    return "\n".join(parts) + "\n"


def with_headline(description: str, line: str) -> str:
    """The description under a new headline (a review changes the verdict, not the record); a
    version approved on review no longer says it was not promoted."""
    body = (
        description.split("\n", 1)[1]
        if description.startswith("# ") and "\n" in description
        else description
    )
    if line.startswith("# APPROVED"):
        body = body.replace(NOT_PROMOTED, PROMOTED_ON_REVIEW)
    return f"{line}\n{body}" if body else line


def with_audit_link(description: str, links: VersionLinks, run_id: str) -> str:
    """The description with its audit line pointing at the run the record was logged to."""
    lines = description.split("\n")
    for i, line in enumerate(lines):
        if line.startswith(AUDIT_LINE):
            lines[i] = audit_line(links, run_id)
    return "\n".join(lines)


def known_flow_run_url() -> str | None:
    """This flow run's page in the Prefect UI, when a server outlives the run (PREFECT_API_URL);
    the CLI's temporary server is gone once the command returns."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL
    from prefect.utilities.urls import url_for

    run_id = flow_run.get_id()
    if not PREFECT_API_URL.value() or run_id is None:
        return None
    return url_for("flow-run", obj_id=run_id)


def mlflow_version_url(tracking_uri: str, model_name: str, version: str) -> str:
    """The version page's URL: on the tracking server itself, or on `mlflow ui`'s default."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base}/#/models/{quote(model_name)}/versions/{version}"


def mlflow_ui_command(tracking_uri: str) -> str | None:
    """The command that serves a local store's UI; None when the store is a server already."""
    if tracking_uri.startswith("http"):
        return None
    return f".venv/bin/mlflow ui --backend-store-uri {tracking_uri}"
