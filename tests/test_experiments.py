"""The experiment matrix as tasks: the graph, the learning-rate scan, a killed matrix resumed, and run
directories shared by tasks working on different stages at once (tiny config of test_cli.py)."""
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from internalrl.cli import main
from internalrl.config import load_config
from internalrl.errors import RunDirError
from internalrl.executors import LocalExecutor, execute
from internalrl.experiments import Task, choose_lr, matrix_tasks
from internalrl.rundir import RunDir

from test_cli import TINY
from test_reliability import HOLDER, _env

TINY_SET = [a for a in TINY if "=" in a]


def _cfg():
    return load_config("quick", TINY_SET)


def test_the_matrix_is_a_graph_that_follows_the_pipeline(tmp_path):
    methods = ["internal", "raw", "no-switch", "cotrained", "compile"]
    tasks = matrix_tasks(_cfg(), tmp_path, 2, 2, methods, None, [1e-4, 3e-4], rl_seeds=3)
    by = {t.label: t for t in tasks}
    assert len(by) == len(tasks)  # labels are unique
    seen = set()
    for t in tasks:  # each after what it needs
        assert set(t.deps) <= seen, t.label
        seen.add(t.label)
    kinds = [t.kind for t in tasks]
    assert kinds.count("base") == 2
    assert kinds.count("metacontroller") == kinds.count("noswitch") == kinds.count("compile") == 4  # 2 base x 2 meta
    # 4 methods with a metacontroller x 2 x 2 seeds, raw once per base model; each x 2 rates x 3 RL seeds
    assert kinds.count("rl") == (4 * 2 * 2 + 2) * 2 * 3
    rl = by["rl cotrained lr=3e-4 base1 meta1 rl2"]
    assert rl.deps == ("base model base1", "metacontroller base1 meta1")
    assert rl.cfg.rl.lr == 3e-4 and rl.cfg.seed == _cfg().seed + 1 and (rl.meta_seed, rl.rl_seed) == (1, 2)
    assert by["rl compile lr=1e-4 base0 meta1 rl0"].deps == ("base model base0", "compile base0 meta1")
    assert by["rl raw lr=1e-4 base1 meta0 rl1"].deps == ("base model base1",)
    assert not any(label.startswith("rl raw") and "meta1" in label for label in by)
    assert all(Path(t.run_dir).is_absolute() for t in tasks)
    # without a method that needs one, no metacontroller is trained
    only_raw = matrix_tasks(_cfg(), tmp_path, 1, 3, ["raw"])
    assert [t.kind for t in only_raw] == ["base", "rl"] and only_raw[1].cfg.rl.lr == _cfg().rl.lr


def test_the_best_median_learning_rate_is_chosen():
    assert choose_lr({1e-4: [0.1, 0.5, 0.6], 3e-4: [0.0, 0.4, 0.9]}) == 1e-4  # median 0.5 > 0.4, whatever the mean
    assert choose_lr({1e-4: [0.0, 0.0, 0.3], 3e-4: [0.0, 0.0, 0.0]}) == 1e-4  # equal medians: the mean decides
    assert choose_lr({1e-4: [0.0, 0.0], 3e-4: [0.0, 0.0], 1e-5: [0.0, 0.0]}, default=3e-4) == 3e-4  # then the default
    assert choose_lr({1e-4: [0.0], 1e-5: [0.0]}) == 1e-4  # then the first listed
    assert choose_lr({1e-4: [0.2, 0.3], 3e-4: [0.9, None]}) == 1e-4  # a rate with a diverged run loses
    assert choose_lr({1e-4: [None, 0.1], 3e-4: [0.9, None]}) == 3e-4  # unless every rate has one


def test_a_learning_rate_scan_writes_every_run_the_choice_and_the_summary(tmp_path, capsys):
    out = tmp_path / "exp"
    args = ["experiment", "--out", str(out), "--base-seeds", "1", "--meta-seeds", "1", "--methods", "raw", "--task", "0-1",
            "--lrs", "1e-4,3e-3", "--rl-seeds", "2", *TINY]
    assert main(args) == 0
    printed = capsys.readouterr().out
    res = json.loads((out / "experiment.json").read_text())
    runs = res["runs"]
    assert sorted((r["lr"], r["rl_seed"]) for r in runs) == [(1e-4, 0), (1e-4, 1), (3e-3, 0), (3e-3, 1)]
    assert len({r["folder"] for r in runs}) == 4  # every run its own folder
    for r in runs:
        metrics = json.loads((out / r["folder"] / "metrics.json").read_text())
        assert metrics["headline"]["final_success"] == r["final_success"]
        assert json.loads((out / r["folder"] / "config.json").read_text())["rl"]["lr"] == r["lr"]
    finals = {lr: [r["final_success"] for r in runs if r["lr"] == lr] for lr in (1e-4, 3e-3)}
    chosen = res["chosen_lr"]["raw"]
    assert chosen == choose_lr(finals, _cfg().rl.lr)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["methods"]["raw"] == {"lr": chosen, "final_success": finals[chosen]}
    assert res["table"]["raw"]["runs"] == 2 and res["table"]["raw"]["lr"] == chosen
    assert set(res["lr_scan"]["raw"]) == {"1e-4", "3e-3"}
    assert (out / "fig8.png").stat().st_size > 1000
    assert "[5/5]" in printed and "rl raw lr=3e-3 base0 meta0 rl1: final success" in printed
    assert "chosen" in printed  # the table at the end
    # the two RL seeds are two runs: different random streams
    seeds = {json.loads((out / r["folder"] / "config.json").read_text())["seed"] for r in runs}
    assert len(seeds) == 2
    for bad in (["--lrs", "1e-4,x"], ["--lrs", "0,1e-4"], ["--lrs", "1e-4,1e-4"], ["--rl-seeds", "0"]):
        assert main([*args, *bad]) == 2
        assert bad[0] in capsys.readouterr().err


def test_bad_executor_flags_are_refused(tmp_path, capsys, monkeypatch):
    args = ["experiment", "--base-seeds", "1", "--meta-seeds", "1", "--methods", "raw", *TINY]
    assert main([*args, "--out", "relative/exp", "--executor", "ray", "--ray-address", "auto"]) == 2
    assert "absolute path" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "e"), "--ray-address", "auto"]) == 2  # --executor local
    assert "--executor ray" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "e"), "--executor", "ray", "--max-parallel", "0"]) == 2
    assert "--max-parallel" in capsys.readouterr().err
    try:
        import ray  # noqa: F401
    except ImportError:
        pass
    else:  # nothing listens there: refused at once (Ray itself would retry for minutes)
        assert main([*args, "--out", str(tmp_path / "e"), "--executor", "ray", "--ray-address", "127.0.0.1:1"]) == 2
        assert "cannot join the Ray cluster at 127.0.0.1:1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # Ray not installed
    assert main([*args, "--out", str(tmp_path / "e"), "--executor", "ray"]) == 2
    assert "pip install 'internalrl[ray]'" in capsys.readouterr().err
    assert main(["sweep-alpha", "--out", str(tmp_path / "run"), "--executor", "ray", *TINY]) == 2
    assert "pip install 'internalrl[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists() and not (tmp_path / "run").exists()  # refused before anything was written


def test_a_failed_task_stops_only_what_needs_it(capsys):
    def fn(t, progress):
        if t.label == "b":
            raise ValueError("b broke")
        return {"summary": f"did {t.label}", "seconds": 0.0, "skipped": False}

    cfg = _cfg()
    tasks = [Task("x", "a", "/", cfg), Task("x", "b", "/", cfg), Task("x", "c", "/", cfg, ("b",)),
             Task("x", "d", "/", cfg, ("a",))]
    with pytest.raises(ValueError, match="b broke"):
        execute(tasks, fn, LocalExecutor(False))
    out = capsys.readouterr().out
    assert "a: did a" in out and "d: did d" in out and "b: FAILED" in out and "c:" not in out
    assert "1 of 4 tasks failed, 1 did not start" in out
    with pytest.raises(ValueError, match="not listed before"):
        execute([Task("x", "c", "/", cfg, ("b",))], fn, LocalExecutor(False))


# ------------------------------------------------------------------ a killed matrix resumes
def test_a_killed_matrix_resumes_from_its_checkpoints_to_the_same_numbers(tmp_path, capsys, monkeypatch):
    import internalrl.checkpoint as checkpoint

    monkeypatch.setattr(checkpoint, "CHECKPOINT_SECONDS", 0.0)  # every loop checkpoints every step
    tiny = [*TINY, "--set", "rl.episodes=12"]  # 3 PPO iterations a run
    args = ["--base-seeds", "1", "--meta-seeds", "1", "--methods", "internal,raw", "--task", "0-1",
            "--lrs", "1e-4,3e-4", *tiny]
    assert main(["experiment", "--out", str(tmp_path / "ref"), *args]) == 0
    ref = json.loads((tmp_path / "ref" / "experiment.json").read_text())

    real_save, real_restore = checkpoint.Checkpoint.save, checkpoint.Checkpoint.restore
    saves, starts = [], []

    def save_then_die(self, step, extra=None):  # the kill: right after the 2nd RL run's first checkpoint
        real_save(self, step, extra)
        if "rl_" in str(self.path):
            saves.append(str(self.path))
            if len(set(saves)) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.Checkpoint, "save", save_then_die)
    out = tmp_path / "exp"
    assert main(["experiment", "--out", str(out), *args]) == 130
    killed_stage = Path(saves[-1]).parent  # .rl_....partial: its checkpoint is kept
    assert killed_stage.name.startswith(".rl_") and (killed_stage / "checkpoint.pt").exists()
    capsys.readouterr()

    def restore(self, *a, **kw):
        got = real_restore(self, *a, **kw)
        if self.path is not None and "rl_" in str(self.path):
            starts.append((self.path.parent.name, got[0]))
        return got

    monkeypatch.setattr(checkpoint.Checkpoint, "save", real_save)
    monkeypatch.setattr(checkpoint.Checkpoint, "restore", restore)
    assert main(["experiment", "--out", str(out), *args]) == 0
    printed = capsys.readouterr().out
    # what finished before the kill is skipped: the base model, the metacontroller and the first RL run
    assert printed.count("(finished earlier)") == 3, printed
    assert "base model base0: held-out" in printed and "(finished earlier)" in printed.split("base model base0")[1].split("\n")[0]
    # the interrupted run continues from its checkpoint (after 1 of its 3 iterations), the others start at 0
    assert (killed_stage.name, 1) in starts
    assert sorted(s for _, s in starts) == [0, 0, 1]
    assert printed.count("continued from a checkpoint") == 1
    res = json.loads((out / "experiment.json").read_text())
    strip = lambda runs: [{k: v for k, v in r.items() if k != "folder"} for r in runs]  # noqa: E731
    assert strip(res["runs"]) == strip(ref["runs"])  # the same numbers as the uninterrupted matrix
    curve = lambda c: [{**r, "curve": [p[:2] for p in r["curve"]]} for r in c]  # noqa: E731 (seconds apart)
    assert {m: curve(c) for m, c in res["curves"].items()} == {m: curve(c) for m, c in ref["curves"].items()}


# ------------------------------------------------------------------ run directories shared by tasks
def test_tasks_sharing_a_run_directory_never_write_one_stage_twice(tmp_path):
    cfg = _cfg()
    root = tmp_path / "run"
    a = RunDir(root, cfg, shared=True)
    b = RunDir(root, replace(cfg, rl=replace(cfg.rl, lr=1e-4)), shared=True)  # another task, other RL settings
    assert a.shared and b.shared
    a.partial("metacontroller")
    with pytest.raises(RunDirError, match="being written by another internalrl process"):
        b.partial("metacontroller")
    b.partial("compile")  # another stage: at the same time
    a.finish("metacontroller", {}, {"headline": {"f1": 1.0}})
    with pytest.raises(RunDirError, match="finished by another process"):
        b.partial("metacontroller")  # the claim is free again, but the stage is published
    b.finish("compile", {}, {"headline": {"f1": 0.5}})
    assert json.loads((root / "results.json").read_text()) == {"compile": {"f1": 0.5}, "metacontroller": {"f1": 1.0}}
    a.partial("rl_x")
    a.close()  # the end of a task: its claims are given up, even unfinished
    b.partial("rl_x")
    b.close()


SHARED_HOLDER = """
import sys
from internalrl.config import load_config
from internalrl.rundir import RunDir
run = RunDir(sys.argv[1], load_config("quick", [a for a in sys.argv[2:] if "=" in a]), shared=True)
run.partial("metacontroller")
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_shared_run_directory_excludes_exclusive_holders_both_ways(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["data", "--out", str(out), *TINY]) == 0
    cfg = _cfg()
    for script, other in ((SHARED_HOLDER, "exclusive"), (HOLDER, "shared")):
        holder = subprocess.Popen([sys.executable, "-c", script, str(out), *TINY], env=_env(), stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "holding"
            if other == "exclusive":  # a task of an experiment works here: a command is refused, another task is not
                assert main(["train", "--out", str(out), *TINY]) == 2
                assert "in use by another internalrl process" in capsys.readouterr().err
                task = RunDir(out, cfg, shared=True)
                with pytest.raises(RunDirError, match=f"pid {holder.pid}"):
                    task.partial("metacontroller")  # the holder's stage
                task.partial("base_model")
                task.close()
                del task
            else:  # a command works here: a task is refused
                with pytest.raises(RunDirError, match=f"pid {holder.pid}.*in use|in use.*pid {holder.pid}"):
                    RunDir(out, cfg, shared=True)
        finally:
            holder.kill()
            holder.wait()


def test_results_json_is_rewritten_by_one_process_at_a_time(tmp_path, monkeypatch):
    """Two tasks publish a stage each at the same moment; the one that read the stages first must not
    write its older view over the other's (a lost update), whatever the timing."""
    import threading

    from internalrl import rundir

    root = tmp_path / "run"
    a, b = RunDir(root, _cfg(), shared=True), RunDir(root, _cfg(), shared=True)
    a.partial("sa")
    b.partial("sb")
    a_read, b_done = threading.Event(), threading.Event()
    real = rundir.load_results

    def load_then_dawdle(r):
        got = real(r)
        if threading.current_thread().name == "A":
            a_read.set()
            b_done.wait(1.0)  # B publishes its stage and rewrites results.json now, unless a lock holds it back
        return got

    monkeypatch.setattr(rundir, "load_results", load_then_dawdle)
    ta = threading.Thread(target=a.finish, args=("sa", {}, {"headline": {"x": 1}}), name="A")
    ta.start()
    assert a_read.wait(10)
    b.finish("sb", {}, {"headline": {"x": 2}})
    b_done.set()
    ta.join()
    assert json.loads((root / "results.json").read_text()) == {"sa": {"x": 1}, "sb": {"x": 2}}
