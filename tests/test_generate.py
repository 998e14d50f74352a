import numpy as np

from custseg.generate import generate_customers, write_table, zero_padded_ids
from custseg.io import load_customers


def test_zero_padded_ids_match_zfill():
    for rows in (1, 9, 10, 12345):
        width = max(4, len(str(rows)))
        expected = [str(i).zfill(width) for i in range(1, rows + 1)]
        assert zero_padded_ids(rows).tolist() == expected


def test_generate_rows_segments_and_roundtrip(tmp_path):
    frame = generate_customers(5000, segments=3, seed=7)
    assert len(frame) == 5000
    assert sorted(frame["segment"].unique()) == [0, 1, 2]
    assert set(frame["Genre"].astype(str)) == {"Female", "Male"}
    assert frame["CustomerID"].iloc[[0, -1]].tolist() == ["0001", "5000"]
    for name in ("g.csv", "g.parquet", "g.csv.gz"):
        path = str(tmp_path / name)
        write_table(frame, path)
        table = load_customers(path)
        assert table.n_rows_read == 5000
        assert table.frame["CustomerID"].iloc[-1] == "5000"
        np.testing.assert_array_equal(
            table.frame["Annual Income (k$)"].to_numpy(), frame["Annual Income (k$)"].to_numpy()
        )


def test_generate_is_deterministic_per_seed():
    a = generate_customers(2000, seed=3)
    b = generate_customers(2000, seed=3)
    assert a.equals(b)
    assert not a.equals(generate_customers(2000, seed=4))
