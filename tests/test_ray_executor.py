"""A tiny experiment matrix and α sweep through a local Ray cluster give the same numbers as the
local executor with the same seeds. One Ray cluster (2 CPUs) for the module."""
import json

import pytest

from internalrl.cli import main

from test_cli import TINY

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


def _numbers(res: dict) -> dict:
    """experiment.json without the seconds (in every curve point) and the folder names."""
    return {"runs": [{k: v for k, v in r.items() if k != "folder"} for r in res["runs"]],
            "chosen_lr": res["chosen_lr"], "table": res["table"],
            "curves": {m: [{**r, "curve": [p[:2] for p in r["curve"]]} for r in runs] for m, runs in res["curves"].items()}}


def test_the_matrix_and_the_alpha_sweep_on_ray_match_the_local_executor(cluster, tmp_path, capsys):
    args = ["--base-seeds", "2", "--meta-seeds", "1", "--methods", "internal,raw", "--task", "0-1", *TINY]
    assert main(["experiment", "--out", str(tmp_path / "local"), *args]) == 0
    capsys.readouterr()
    assert main(["experiment", "--out", str(tmp_path / "ray"), *args, "--executor", "ray", "--max-parallel", "2"]) == 0
    printed = capsys.readouterr().out
    assert "ray: started" not in printed  # the cluster this process has
    assert "[8/8]" in printed and "(ray executor)" in printed
    local = json.loads((tmp_path / "local" / "experiment.json").read_text())
    remote = json.loads((tmp_path / "ray" / "experiment.json").read_text())
    assert local["table"]["internal"]["runs"] == 2 and local["table"]["raw"]["runs"] == 2
    assert _numbers(remote) == _numbers(local)
    assert json.loads((tmp_path / "ray" / "summary.json").read_text()) == \
        json.loads((tmp_path / "local" / "summary.json").read_text())
    for b in ("base0", "base1"):  # the stages' own numbers too (timings apart)
        res = [json.loads((tmp_path / e / b / "results.json").read_text()) for e in ("local", "ray")]
        for r in res:
            r.pop("timings")
        assert res[0] == res[1]
    # a second invocation on Ray finds everything finished
    assert main(["experiment", "--out", str(tmp_path / "ray"), *args, "--executor", "ray"]) == 0
    assert capsys.readouterr().out.count("(finished earlier)") == 8

    sweep = ["sweep-alpha", "--alphas", "0,0.5", *TINY]
    assert main([*sweep, "--out", str(tmp_path / "local" / "base0")]) == 0
    assert main([*sweep, "--out", str(tmp_path / "ray" / "base0"), "--executor", "ray"]) == 0
    points = [[{k: v for k, v in p.items() if k != "train_seconds"} for p in
               json.loads((tmp_path / e / "base0" / "alpha_sweep" / "metrics.json").read_text())["points"]]
              for e in ("local", "ray")]
    assert [(p["variant"], p["alpha"]) for p in points[1]] == [("frozen", 0.0), ("frozen", 0.5), ("cotrained", 0.0),
                                                              ("cotrained", 0.5)]
    assert points[0] == points[1]
