"""`internalrl diagnose NAME RUN` on a tiny finished run, and the rules the diagnoses sort by."""
import json

import numpy as np
import pytest

from internalrl.analysis.diagnose import (FAILURE_KINDS, code_segments, compass_direction, failure_kind,
                                          load_finished_run)
from internalrl.cli import main

TINY = ["--set", "data.num_episodes=60", "--set", "model.width=16", "--set", "model.depth=2",
        "--set", "model.heads=2", "--set", "model.head_dim=8", "--set", "model.mlp=16",
        "--set", "train.steps=6", "--set", "train.batch_size=8", "--set", "train.eval_every=3",
        "--set", "train.snapshots=1", "--set", "train.warmup_steps=1", "--set", "eval.num_envs=8",
        "--set", "metacontroller.steps=3", "--set", "metacontroller.batch_size=4",
        "--set", "env.horizon=40", "--set", "model.max_len=48", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diagnose") / "run"
    for command in ("data", "train", "metacontroller"):
        assert main([command, "--out", str(out), *TINY]) == 0
    return out


def test_failure_kinds_follow_the_colours_visited_before():
    kind = lambda before, wrong: failure_kind(before, wrong, 2, 8)  # noqa: E731
    assert kind([2, 3], 4) == FAILURE_KINDS[0]  # after the pair 2-3, the next colour in number order
    assert kind([6, 7], 0) == FAILURE_KINDS[0]  # 7 -> 0 wraps around
    assert kind([2, 3], 2) == FAILURE_KINDS[1]
    assert kind([], 5) == FAILURE_KINDS[2] and kind([2, 3], 7) == FAILURE_KINDS[2]
    assert kind([], 4) == FAILURE_KINDS[3] and kind([2, 3], 6) == FAILURE_KINDS[3]
    assert kind([2, 3, 4], 4) == FAILURE_KINDS[4]
    assert kind([2, 3, 4], 0) == FAILURE_KINDS[5]


def test_compass_direction_on_a_7x7_grid():
    centre = 3 * 7 + 3
    assert compass_direction(centre, [3, 45, 21, 27], 7).tolist() == [0, 1, 2, 3]  # up, down, left, right
    assert int(compass_direction(centre, 0, 7)) == 0  # a tie goes vertical


def test_free_play_failures_accounts_for_every_episode(run, tmp_path, capsys):
    assert main(["diagnose", "free-play-failures", str(run), "--episodes", "16", "--json", str(tmp_path / "f.json")]) == 0
    res = json.loads((tmp_path / "f.json").read_text())
    assert res["episodes"] == 16
    assert res["success"] + res["wrong_colour"] + res["time_limit"] == pytest.approx(1)
    assert sum(res["kinds"].values()) == pytest.approx(res["wrong_colour"])
    assert set(res["kinds"]) <= set(FAILURE_KINDS)
    assert "wrong colours, by kind" in capsys.readouterr().out
    assert main(["diagnose", "free-play-failures", str(run), "--episodes", "16", "--json", str(tmp_path / "g.json")]) == 0
    assert json.loads((tmp_path / "g.json").read_text()) == res  # the same seed gives the same numbers


def test_code_segments_are_the_subgoal_segments_of_the_heldout_episodes(run, tmp_path):
    r = load_finished_run(run, "metacontroller")
    codes, rows = code_segments(r, episodes=5)
    sub = r.data.arrays["subgoals"][r.val_idx[:5]]
    lengths = r.data.arrays["lengths"][r.val_idx[:5]]
    expected = []
    for i, s in enumerate(sub):
        s = s[: lengths[i]]
        changes = [0] + [t for t in range(1, len(s)) if s[t] != s[t - 1]]
        expected += [int(s[t]) for t in changes]
    assert rows[:, 1].tolist() == expected
    assert codes.shape == (len(rows), r.meta.cfg.code_dim)
    assert (rows[rows[:, 0] == 0, 2] == -1).all()  # a first segment has no predecessor
    assert main(["diagnose", "code-content", str(run), "--episodes", "20", "--json", str(tmp_path / "c.json")]) == 0
    res = json.loads((tmp_path / "c.json").read_text())
    for row in res["later segments"].values():
        assert 0 <= row["accuracy"] <= 1 and 0 < row["majority_class"] <= 1


def test_code_search_runs_and_scores_its_table(run, tmp_path):
    args = ["diagnose", "code-search", str(run), "--iterations", "2", "--population", "3", "--episodes", "4",
            "--final-episodes", "4", "--index", "both", "--json", str(tmp_path / "s.json")]
    assert main(args) == 0
    res = json.loads((tmp_path / "s.json").read_text())
    assert len(res["iterations"]) == 2 and np.array(res["table"]).shape[0] == 16  # 4 subgoals x 4 directions
    assert 0 <= res["searched_success"] <= 1 and len(res["prior_tables_success"]) == 4


def test_code_search_scores_a_given_table_and_refuses_a_misshapen_one(run, tmp_path, capsys):
    table = np.random.default_rng(0).normal(size=(4, run_code_dim(run))).round(3).tolist()  # one row per subgoal
    (tmp_path / "t.json").write_text(json.dumps(table))
    args = ["diagnose", "code-search", str(run), "--iterations", "0", "--episodes", "4", "--final-episodes", "4",
            "--init", str(tmp_path / "t.json"), "--json", str(tmp_path / "s.json")]
    assert main(args) == 0
    res = json.loads((tmp_path / "s.json").read_text())
    assert res["iterations"] == [] and np.allclose(res["table"], table, atol=1e-6)
    (tmp_path / "t.json").write_text(json.dumps([row[:-1] for row in table]))
    assert main(args) == 2
    assert "--init must hold a 4 x" in capsys.readouterr().err
    (tmp_path / "t.json").write_text(json.dumps({"rows": table}))
    assert main(args) == 2
    assert "--init must hold a 4 x" in capsys.readouterr().err
    (tmp_path / "t.json").write_text("not json")
    assert main(args) == 2
    assert "cannot read a JSON code table" in capsys.readouterr().err
    assert main(args[:3] + ["--iterations", "0"]) == 2  # without a table to score, there must be a search
    assert "--iterations" in capsys.readouterr().err


def run_code_dim(run) -> int:
    return json.loads((run / "metacontroller" / "config.json").read_text())["metacontroller"]["code_dim"]


def test_diagnose_says_what_a_run_lacks(run, tmp_path, capsys):
    assert main(["diagnose", "free-play-failures", str(tmp_path)]) == 2
    assert "not an internalrl run" in capsys.readouterr().err
    assert main(["diagnose", "code-content", str(run), "--stage", "metacontroller_m1"]) == 2
    assert "no finished metacontroller_m1 stage" in capsys.readouterr().err
    assert main(["diagnose", "free-play-failures", str(run), "--episodes", "0"]) == 2
    assert main(["diagnose", "code-content", str(run), "--set", "metacontroller.nope=1"]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["diagnose", "--help"])
    assert e.value.code == 0
