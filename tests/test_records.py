"""The one record format of the benchmarks (``stimulative.io``): written whole with its standard fields, older
records read with the standard fields mapped from their names."""

from __future__ import annotations

import json

import pytest

from stimulative.io import RECORD_FIELDS, RECORD_FORMAT, benchmark_record, read_record, write_record


def test_a_record_has_the_standard_fields_and_is_written_whole(tmp_path):
    rec = benchmark_record("bench_x", {"test_acc": 91.5, "seed": 3}, command="python benchmarks/bench_x.py",
                           setting="s", method="CT", seed=0, wall_s=12.5, code="abc", machine={"cpu_count": 2})
    assert list(rec)[:len(RECORD_FIELDS)] == list(RECORD_FIELDS)
    assert rec["seed"] == 3 and rec["test_acc"] == 91.5  # a measured field wins over the argument
    path = tmp_path / "new" / "r.json"
    write_record(rec, path)
    write_record(rec | {"test_acc": 92.0}, path)
    assert read_record(path)["test_acc"] == 92.0 and [p.name for p in path.parent.iterdir()] == ["r.json"]
    with pytest.raises(ValueError, match="benchmark_record"):
        write_record({"test_acc": 1.0}, tmp_path / "bad.json")
    default = benchmark_record("bench_x", {}, command="c")
    assert default["machine"]["cpu_count"] and "code_version" in default


def test_an_older_record_reads_with_the_standard_fields_from_its_names(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"variant": "ct", "setting_name": "r20", "seed": 10, "train_s": 300.0,
                                "command": "stimulative train", "trained_at": ["a" * 40], "test_acc": 60.0}))
    rec = read_record(path, "bench_peers")
    assert rec["format"] == RECORD_FORMAT and rec["benchmark"] == "bench_peers"
    assert (rec["setting"], rec["method"], rec["wall_s"], rec["code_version"]) == ("r20", "ct", 300.0, "a" * 40)
    assert rec["test_acc"] == 60.0 and "variant" in rec and rec["machine"] is None
