import numpy as np

import uib.neighbours as neighbours
from uib.neighbours import neighbour_labels
from uib.scenarios import ScenarioConfig, build_scenario, select_forget


def test_the_majority_of_the_nearest_rows_wins_and_a_tie_goes_to_the_nearer_class():
    reference = np.array([[0.0], [0.1], [0.2], [1.0], [1.1], [1.2], [5.0]], dtype=np.float32)
    labels = np.array([2, 2, 2, 7, 7, 7, 9])
    x = np.array([[0.05], [1.05], [4.9], [0.5]], dtype=np.float32)
    assert neighbour_labels(reference, labels, x).tolist() == [2, 7, 7, 2]
    # one row of each of two classes nearest, then a third class: the nearer row decides
    tie = np.array([[0.0], [0.3], [0.31], [0.32], [0.33], [0.34]], dtype=np.float32)
    tie_labels = np.array([4, 1, 1, 4, 8, 8])
    assert neighbour_labels(tie, tie_labels, np.array([[-0.1]], np.float32)).tolist() == [4]


def test_rows_are_answered_the_same_in_chunks_and_the_reference_is_capped(monkeypatch):
    rng = np.random.default_rng(0)
    reference, labels = rng.normal(size=(300, 1, 4, 4)), rng.integers(0, 10, 300)
    x = rng.normal(size=(50, 1, 4, 4))
    whole = neighbour_labels(reference, labels, x)
    monkeypatch.setattr(neighbours, "CHUNK_ROWS", 7)
    assert neighbour_labels(reference, labels, x).tolist() == whole.tolist()
    monkeypatch.setattr(neighbours, "REFERENCE_ROWS", 20)
    capped = neighbour_labels(reference, labels, x)
    assert capped.shape == (50,) and not np.array_equal(capped, whole)
    assert neighbour_labels(reference, labels, x[:0]).shape == (0,)


def test_part_of_a_faulty_source_is_read_as_its_true_digit_by_its_retained_neighbours(digits):
    """The patched 5s and 6s of the faulty source are labelled 0; their retained neighbours
    (the other patched digits, labelled 0, among them) say 5 and 6."""
    data = build_scenario(digits, ScenarioConfig(name="patch-bias", seed=0)).dataset
    for digit in (5, 6):
        ids = select_forget(data.manifest, where={"source": "faulty", "original_label": digit})
        retain, forget = data.train.split_off(ids)
        assert set(forget.y) == {0}
        read = neighbour_labels(retain.x, retain.y, forget.x)
        assert np.mean(read == digit) >= 0.9
