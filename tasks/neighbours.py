"""Which class the retained data says an input belongs to: its nearest retained rows' labels.

The `no_redirect` gate asks whether a forgotten slice was moved onto a class its inputs do not
support. A slice whose labels were wrong (part of a faulty source: patched 6s labelled 0) is
forgotten correctly when its rows are read as 6 again — retrain reads them so — and a gate that
counts every prediction other than the label as a redirect fails retrain itself there. The
retained rows closest in input space say which class an input looks like without asking any
model, so neither the candidate nor the shortcut it may carry decides it. Where input distance
means little (features on unrelated scales), neighbours rarely agree with a redirected
prediction and the gate stays as strict as without them.
"""

from __future__ import annotations

import numpy as np

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
