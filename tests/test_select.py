from custseg.select import choose_elbow, elbow_k
from custseg.sweep import SweepResult


def test_elbow_on_a_clear_knee():
    ks = list(range(1, 11))
    sse = [100, 40, 12, 10, 9, 8.5, 8, 7.6, 7.3, 7]
    assert elbow_k(ks, sse) == 3
    sel = choose_elbow(SweepResult(tuple(ks), tuple(sse), 10, 0.0))
    assert sel.chosen_k == 3 and sel.method == "elbow" and "k=3" in sel.reason


def test_no_knee_falls_back_to_k_min_and_says_so(caplog):
    ks = list(range(2, 12))
    sse = [100 - 10 * i for i in range(10)]  # a straight line has no knee
    sel = choose_elbow(SweepResult(tuple(ks), tuple(sse), 10, 0.0))
    assert sel.details["knee"] is None
    assert sel.chosen_k == 2
    assert "returned None" in sel.reason and "k_min=2" in sel.reason
    assert "falling back" in caplog.text


def test_too_few_ks_for_an_elbow():
    sel = choose_elbow(SweepResult((3, 4), (10.0, 5.0), 10, 0.0))
    assert sel.chosen_k == 3 and "too few" in sel.reason
