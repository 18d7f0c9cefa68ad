"""Multi-label data: a label cell of several ``;``-joined labels, manifests that know they are multi-label, and
multi-hot targets."""

from __future__ import annotations

import numpy as np
from test_streaming import write_rows

from training.data.collection import MultiHot, read_manifest
from training.data.datasets import read_records


def test_a_label_column_with_semicolons_holds_several_labels(tmp_path):
    """The manifest's ``label`` column and an AV dataset's ``index.csv`` both read ``a;b`` as two labels; a manifest
    is multi-label when any row (of any split) has several, and its multi-hot targets drop labels a run lacks."""
    m = write_rows(tmp_path / "m.csv", [
        ["a.mp4", 4, 24, 64, 64, 1, "dog; bark", "train", "", "", ""],
        ["b.mp4", 4, 24, 64, 64, 1, "cat", "train", "", "", ""],
        ["c.mp4", 4, 24, 64, 64, 1, "", "train", "", "", ""],
        ["d.mp4", 4, 24, 64, 64, 1, "cat", "test", "", "", ""],
    ])
    table = read_manifest(m)
    assert table.row_labels(0) == ["dog", "bark"] and table.row_labels(1) == ["cat"] and table.row_labels(2) == []
    assert table.multi_label and read_manifest(m, split="test").multi_label  # the file's, not the split's
    targets = MultiHot(table, ["bark", "cat"])  # "dog" is not among these labels
    assert targets.dropped == 1 and len(targets) == 3
    np.testing.assert_array_equal(np.stack([targets[i] for i in range(3)]), [[1, 0], [0, 1], [0, 0]])
    assert targets[0].dtype == np.float32
    single = write_rows(tmp_path / "s.csv", [["b.mp4", 4, 24, 64, 64, 1, "cat", "train", "", "", ""]])
    assert not read_manifest(single).multi_label

    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "index.csv").write_text("video,label\nx.mp4,dog;bark\ny.mp4,cat\n")
    x, y = read_records(tmp_path / "ds")
    assert x.labels == ("dog", "bark") and x.label is None and y.labels == ("cat",) and y.label == "cat"
