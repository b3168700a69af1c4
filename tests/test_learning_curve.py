"""learning_curve.py: the CSV a run writes a row per update into, and cuts back on resume."""

from __future__ import annotations

import csv

from trpo_pipeline.rl.learning_curve import open_curve


def read(path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_a_new_curve_has_one_header_and_a_row_per_write(tmp_path):
    path = tmp_path / "learning_curve.csv"
    path.write_text("update,stale\n1,x\n")  # a fresh run replaces an old curve

    with open_curve(path, keep_updates=0) as curve:
        curve.write({"update": 1, "kl": 0.5, "skipped": ""})
        assert read(path) == [{"update": "1", "kl": "0.5", "skipped": ""}]  # flushed per row
        curve.write({"update": 2, "kl": 0.25, "skipped": "zero gradient"})

    assert path.read_text().splitlines() == ["update,kl,skipped", "1,0.5,", "2,0.25,zero gradient"]


def test_resume_keeps_the_rows_up_to_the_checkpoint_and_none_after_it(tmp_path):
    path = tmp_path / "learning_curve.csv"
    # Updates 1-3 written, then a kill while writing update 4; the checkpoint is at update 2.
    path.write_text("update,kl\n1,0.5\n2,0.25\n3,0.125\n4")

    with open_curve(path, keep_updates=2) as curve:
        curve.write({"update": 3, "kl": 0.1})

    assert path.read_text().splitlines() == ["update,kl", "1,0.5", "2,0.25", "3,0.1"]


def test_resume_drops_a_row_cut_inside_its_last_field(tmp_path):
    path = tmp_path / "learning_curve.csv"
    path.write_text("update,kl\n1,0.5\n2")  # update 2's row lost its kl column

    with open_curve(path, keep_updates=5):
        pass

    assert read(path) == [{"update": "1", "kl": "0.5"}]
