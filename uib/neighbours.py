"""Which class the retained data says an input belongs to: its nearest retained rows' labels.

Two readers ask it. The pipeline's `no_redirect` gate asks whether a forgotten slice was moved
onto a class its inputs do not support. A slice whose labels were wrong (part of a faulty
source: patched 6s labelled 0) is forgotten correctly when its rows are read as 6 again —
retrain reads them so — and a gate that counts every prediction other than the label as a
redirect fails retrain itself there. UIB asks how often a systematic forget set's rows look like
their label, against held-out rows (`uib.methods.uib.slice_agreement`): a *relabelled* slice
(most rows look like another class) has the entries only it uses reset
(`uib.prior.reset_slice_entries`); an *unreadable* one (rows that look like their label far less
often than held-out rows: a fog) is held where the IF step left it (`forget_hold`). The retained rows closest in input space say which class
an input looks like without asking any model, so neither the candidate nor the shortcut it may
carry decides it. Where input distance means little (features on unrelated scales), neighbours
rarely agree with any label: the gate then stays as strict as without them, and the agreement
of held-out rows, measured beside the forget rows', says how much agreement to expect.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import BaseModel

NEIGHBOURS = 5
REFERENCE_ROWS = 10_000
CHUNK_ROWS = 512


def neighbour_labels(
    reference_x: np.ndarray, reference_y: np.ndarray, x: np.ndarray, seed: int = 0
) -> np.ndarray:
    """The majority label of each row's `NEIGHBOURS` nearest reference rows (Euclidean, on the
    flattened inputs); a tie goes to the class of the nearer row. At most `REFERENCE_ROWS` reference
    rows, drawn at random, so the cost stays bounded on large retain sets."""
    if len(x) == 0 or len(reference_y) == 0:
        return np.full(len(x), -1, dtype=np.int64)
    if len(reference_y) > REFERENCE_ROWS:
        keep = np.random.default_rng(seed).choice(len(reference_y), REFERENCE_ROWS, replace=False)
        reference_x, reference_y = reference_x[keep], reference_y[keep]
    ref = reference_x.reshape(len(reference_x), -1).astype(np.float32)
    ref_sq = np.einsum("ij,ij->i", ref, ref)
    labels = np.asarray(reference_y, dtype=np.int64)
    k = min(NEIGHBOURS, len(labels))
    out = np.empty(len(x), dtype=np.int64)
    for start in range(0, len(x), CHUNK_ROWS):
        rows = x[start : start + CHUNK_ROWS].reshape(-1, ref.shape[1]).astype(np.float32)
        dist = ref_sq[None, :] - 2.0 * rows @ ref.T
        nearest = np.argpartition(dist, k - 1, axis=1)[:, :k]
        order = np.take_along_axis(dist, nearest, 1).argsort(1)
        votes = labels[np.take_along_axis(nearest, order, 1)]
        counts = (votes[:, :, None] == votes[:, None, :]).sum(2)
        first_best = np.argmax(counts == counts.max(1, keepdims=True), axis=1)
        out[start : start + len(rows)] = votes[np.arange(len(rows)), first_best]
    return out


class LabelAgreement(BaseModel):
    """The share of forget rows, and of held-out rows, whose nearest retained rows carry their
    label; `rows`: how many forget rows were read (only those whose label the retain set still
    has: neighbours cannot vote for a label it lost)."""

    forget: float
    held_out: float
    rows: int

    @property
    def share(self) -> float:
        """The forget rows' agreement as a share of the held-out rows' (1: read alike)."""
        return self.forget / self.held_out if self.held_out else 0.0


Rows = tuple[torch.Tensor, torch.Tensor]


def label_agreement(
    retain: Rows, forget: Rows, held_out: Rows, rows: int, generator: torch.Generator
) -> LabelAgreement | None:
    """`LabelAgreement` on at most `rows` forget and held-out rows drawn at random (a share, so
    a few hundred rows pin it to a few points); None when no forget row keeps its label in the
    retain set (a whole class removed) or nothing is held out."""
    kept = torch.isin(forget[1], retain[1].unique())
    if not bool(kept.any()) or not len(held_out[1]):
        return None

    def draw(x: torch.Tensor, y: torch.Tensor, n: int) -> tuple[np.ndarray, np.ndarray]:
        chosen = torch.randperm(len(y), generator=generator)[:n].to(y.device)
        return x[chosen].cpu().numpy(), y[chosen].cpu().numpy()

    reference = draw(*retain, REFERENCE_ROWS)
    fx, fy = draw(forget[0][kept], forget[1][kept], rows)
    hx, hy = draw(*held_out, rows)
    read = neighbour_labels(*reference, np.concatenate([fx, hx]))
    return LabelAgreement(
        forget=float(np.mean(read[: len(fy)] == fy)),
        held_out=float(np.mean(read[len(fy) :] == hy)),
        rows=len(fy),
    )
