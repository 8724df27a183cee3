"""The run directory: one folder per stage, each written under a temporary name and renamed
when whole, so a finished artifact is never replaced by a broken one and a killed run
resumes where it stopped. ``run.json`` records the version and config that own the folder;
a different config is refused rather than mixed in. A config section that did not exist when
the run was made (absent from its ``run.json``) is not compared: none of its stages used it; nor is a
field added since, when it holds its default (the run behaved as the default does). The ``rl``
section may differ: each RL run is its own folder, named after its settings.

One process at a time owns a run directory: :class:`RunDir` takes an exclusive lock on
``.lock`` inside it (released when the process ends, however it ends), and a second process
is refused with a message naming the holder. The tasks of an experiment (one stage each, in
several processes or on several machines) open it *shared* instead (``RunDir(..., shared=True)``):
they exclude every exclusive holder, and each claims the stage it writes (an exclusive lock on
``.locks/STAGE.lock``, taken by :meth:`RunDir.partial`, dropped when the stage is published), so two
tasks never write one artifact; ``results.json`` is rewritten under a lock of its own, so no
stage's entry is lost to a concurrent rewrite. Every file is written atomically
(:mod:`internalrl.atomic`); a finished stage keeps checksums of its files (``MANIFEST.json``)
so a damaged artifact is reported rather than used. ``results.json`` holds every stage's
headline numbers, and their timings apart under ``"timings"``, so two runs compare with a diff."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import weakref
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no lock (the rest still works)
    fcntl = None

from . import __version__
from .atomic import StorageError, describe_os_error, manifest, missing_files, write_json
from .config import Config, ConfigError, _check_types_and_finite
from .errors import RunDirError

RUN_FORMAT = 1
LOCK_FILE = ".lock"
LOCKS = ".locks"  # the folder of the claims on stages and of the lock on results.json
RESULTS_LOCK = "results.json.lock"  # in LOCKS: held while results.json is rewritten
MAY_DIFFER = ("rl",)  # config sections a command may change on an existing run (each RL run names its settings)


def _split_timings(headline: dict) -> tuple[dict, dict]:
    """(results, timings): seconds and rates differ between two runs of the same config, so they go apart."""
    timing = lambda k: k == "seconds" or k.endswith("_seconds") or "per_s" in k  # noqa: E731
    return ({k: v for k, v in headline.items() if not timing(k)}, {k: v for k, v in headline.items() if timing(k)})


def _with_timings_last(results: dict, stage: str, headline: dict, timings: dict) -> dict:
    out = {k: v for k, v in results.items() if k != "timings"}
    if headline:
        out[stage] = headline
    all_timings = dict(results.get("timings", {}))
    if timings:
        all_timings[stage] = timings
    return {**out, **({"timings": all_timings} if all_timings else {})}


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [f"{prefix[:-1]}: {a!r} there, {b!r} now"]


def _without_additions(current, stored, defaults):
    """``current`` less what Config gained after ``stored`` was written and that cannot have changed that run:
    whole new sections (none of its stages used them) and new fields at their default (it behaved so)."""
    if not (isinstance(current, dict) and isinstance(stored, dict)):
        return current
    defaults = defaults if isinstance(defaults, dict) else {}
    return {k: _without_additions(v, stored.get(k), defaults.get(k)) for k, v in current.items()
            if k in stored or not (isinstance(v, dict) or v == defaults.get(k, object()))}


# ------------------------------------------------------------------ provenance
_ARGV: list[str] | None = None  # the command line of this invocation (set by the CLI; else sys.argv)


def set_command(argv: list[str]) -> None:
    global _ARGV
    _ARGV = list(argv)


def _command() -> str:
    return shlex.join(["internalrl", *(sys.argv[1:] if _ARGV is None else _ARGV)])

def _git(*args: str) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(Path(__file__).parent), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() if r.returncode == 0 else None


def provenance() -> dict:
    """What made an artifact: the date, the command line, the host, the code (package version,
    git commit and whether the checkout had uncommitted changes) and the versions of its dependencies."""
    from importlib import metadata

    deps = {}
    for name in ("torch", "numpy", "safetensors", "gymnasium", "matplotlib", "tqdm", "mujoco"):
        try:
            deps[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    commit = _git("rev-parse", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": _command(), "host": socket.gethostname(),
            "internalrl_version": __version__, "git_commit": commit, "git_dirty": bool(dirty) if commit else None,
            "python": sys.version.split()[0], "dependencies": deps}


# ------------------------------------------------------------------ the lock
_HELD: "weakref.WeakValueDictionary[str, _RunLock]" = weakref.WeakValueDictionary()


def _holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 65536, 0) or b"{}")
    except ValueError:
        holder = {}
    return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}: "
            f"{holder.get('command', '?')}")


def _in_use(root: Path, who: str) -> str:
    return (f"{root} is in use by another internalrl process ({who}). Wait for it to finish "
            "(or stop it), or use another --out folder.")


class _RunLock:
    """A ``flock`` on ``path`` (exclusive, or ``shared`` with other shared holders), held while this
    object lives (and by the kernel only while the process lives: a killed holder never leaves a
    stale lock). The file records the holder (pid, host, command, start) so that a refused process
    can say who holds it; ``refused(who)`` is the message it is refused with."""

    def __init__(self, path: Path, shared: bool = False, refused=None) -> None:
        self.fd = None
        self.shared = shared
        self.refused = refused or (lambda who: _in_use(path.parent, who))
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StorageError(describe_os_error(e, path)) from None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _holder(fd)
            os.close(fd)
            raise RunDirError(self.refused(who)) from None
        self.fd = fd
        self._record()

    def _record(self) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps(info).encode(), 0)

    def make_exclusive(self) -> None:
        """Turn a shared lock of this process into an exclusive one (refused while others share it)."""
        if not self.shared:
            return
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:  # a refused conversion may have dropped the shared lock: take it back
                fcntl.flock(self.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass
            raise RunDirError(self.refused("the tasks of an experiment share it")) from None
        self.shared = False
        self._record()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor releases the lock
            self.fd = None

    def __del__(self) -> None:
        self.release()


def _lock(root: Path, shared: bool = False):
    """This process's lock on ``root``: taken once, shared by every RunDir of the process on that folder
    (an exclusive one serves shared requests too; a shared one is made exclusive when asked)."""
    if fcntl is None:
        return None
    key = str(root.resolve())
    lock = _HELD.get(key)
    if lock is None:
        lock = _RunLock(root / LOCK_FILE, shared)
        _HELD[key] = lock
    elif lock.shared and not shared:
        lock.make_exclusive()
    return lock


@contextlib.contextmanager
def _briefly_locked(path: Path):
    """An exclusive lock on ``path`` for the length of a ``with`` block, waiting for it if need be
    (for a read-modify-write of a file that processes sharing a run directory all rewrite)."""
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise StorageError(describe_os_error(e, path)) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def is_lock_file(path: Path) -> bool:
    return path.name in (LOCK_FILE, LOCKS)


def _locks(root: Path) -> Path:
    try:
        (root / LOCKS).mkdir(exist_ok=True)
    except OSError as e:
        raise StorageError(describe_os_error(e, root / LOCKS)) from None
    return root / LOCKS


# ------------------------------------------------------------------ the stored config
def stored_env(root: Path) -> str | None:
    """The environment of the run in ``root`` (``grid`` for runs made before it was recorded), or None."""
    meta = read_run_json(Path(root))
    if meta is None:
        return None
    env = meta["config"].get("env")
    return env.get("name", "grid") if isinstance(env, dict) else "grid"


def read_run_json(root: Path) -> dict | None:
    """The record of the run in ``root`` (None if there is none); a damaged record is refused with what to do."""
    path = Path(root) / "run.json"
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        meta = None
    if not (isinstance(meta, dict) and isinstance(meta.get("config"), dict)):
        raise RunDirError(f"{path} is corrupt (not an internalrl run record); if the folder holds a run you want, restore "
                          "its run.json (it records the run's config), otherwise use another --out folder")
    return meta


def config_from_dict(d: dict, cls=Config):
    """The dataclass ``cls`` with the values of ``d`` (a ``to_dict()``); fields ``d`` lacks keep their defaults."""
    obj = cls()
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        cur = getattr(obj, f.name)
        if dataclasses.is_dataclass(cur):
            if not isinstance(d[f.name], dict):
                raise RunDirError(f"run.json: config section {f.name!r} is not a mapping")
            setattr(obj, f.name, config_from_dict(d[f.name], type(cur)))
        else:
            setattr(obj, f.name, d[f.name])
    return obj


def stored_config(root: Path) -> Config | None:
    """The config recorded in ``root/run.json`` (None when ``root`` holds no run)."""
    meta = read_run_json(root)
    if meta is None:
        return None
    try:
        cfg = config_from_dict(meta["config"])
        _check_types_and_finite(cfg)  # the rest is checked with the command's overrides applied
        return cfg
    except ConfigError as e:
        raise RunDirError(f"{Path(root) / 'run.json'} holds a config this version cannot use ({e}); "
                          "use another --out folder") from None


# ------------------------------------------------------------------ the run directory
class RunDir:
    tensorboard = False  # set by --tensorboard: training stages also write scalars to tensorboard/ (internalrl.scalars)

    def __init__(self, root: str | Path, cfg: Config, create: bool = True, shared: bool = False) -> None:
        """Open (or, with ``create``, make) the run directory ``root`` for ``cfg``. ``shared``: for one
        task of an experiment among others working in the same folder at once (see the module's doc)."""
        self.root = Path(root)
        self.cfg = cfg
        self._claims: dict[str, _RunLock] = {}
        if self.root.exists() and not self.root.is_dir():
            raise RunDirError(f"--out {self.root} is a file, not a folder; choose a folder")
        meta_path = self.root / "run.json"
        if not meta_path.exists():
            if not create:
                raise RunDirError(f"{self.root} is not an internalrl run (no run.json); "
                                  f"run `internalrl run --out {self.root}` first")
            if self.root.exists() and any(not is_lock_file(p) for p in self.root.iterdir()):
                raise RunDirError(f"{self.root} is not empty and is not an internalrl run; use an empty or new --out folder")
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(describe_os_error(e, self.root)) from None
        self._lock = _lock(self.root, shared)  # held from here on: nothing below races another process
        self.shared = self._lock is not None and self._lock.shared
        if not self.shared:
            for leftover in self.root.glob(".*.tmp"):  # half-written by a killed process (no other writer now)
                leftover.unlink(missing_ok=True)
        want = {"run_format": RUN_FORMAT, "config": cfg.to_dict()}
        with _briefly_locked(_locks(self.root) / RESULTS_LOCK):  # tasks sharing the folder: one makes run.json
            meta = read_run_json(self.root)
            if meta is not None:
                if meta.get("run_format") != RUN_FORMAT:
                    raise RunDirError(
                        f"{self.root} was written by internalrl {meta.get('internalrl_version', '?')} "
                        f"(run format {meta.get('run_format')}); this is {__version__} (format {RUN_FORMAT}). "
                        "Use a new --out folder."
                    )
                stored, current = meta.get("config"), want["config"]
                diffs = _diff({k: v for k, v in stored.items() if k not in MAY_DIFFER},
                              {k: v for k, v in _without_additions(current, stored, Config().to_dict()).items()
                               if k not in MAY_DIFFER})
                if diffs:
                    shown = "\n  ".join(diffs[:8]) + ("\n  ..." if len(diffs) > 8 else "")
                    raise RunDirError(
                        f"{self.root} holds another run's artifacts (its config differs):\n  {shown}\n"
                        "Use a new --out folder, or leave out --preset and the overrides: a command on an existing run "
                        "uses that run's config."
                    )
                self.stored = meta
                self._rewrite_results()  # a kill between a stage's rename and its results.json entry left it out
            elif create:
                self.stored = {"internalrl_version": __version__, **want, "provenance": provenance()}
                write_json(meta_path, self.stored)
            else:
                raise RunDirError(f"{self.root} is not an internalrl run (no run.json); run `internalrl run --out {self.root}` first")

    def close(self) -> None:
        """Give up this object's claims on stages and its hold on the folder (the end of a task)."""
        for lock in self._claims.values():
            lock.release()
        self._claims.clear()
        self._lock = None

    def claim(self, name: str) -> None:
        """Make this process the only writer of ``name`` (a stage, or a part of one such as one point of
        a sweep) among the processes sharing the folder, until the stage is published or :meth:`close`.
        A process that holds the folder exclusively is the only writer already. Refused when another
        process holds the claim, or when the stage was published meanwhile."""
        if not self.shared or name in self._claims:
            return
        stage = name.split(".")[0]
        self._claims[name] = _RunLock(
            _locks(self.root) / f"{name}.lock",
            refused=lambda who: (f"{self.root / stage} is being written by another internalrl process ({who}); "
                                 "two processes never write one artifact: wait for it to finish (or stop it) "
                                 "and re-run the command, which then skips what it finished"))
        if (self.root / stage / "DONE").exists() and name == stage:
            self._claims.pop(name).release()
            raise RunDirError(f"{self.root / stage} was finished by another process meanwhile; nothing was changed. "
                              "Re-run the command: it skips the finished stage")

    def path(self, stage: str) -> Path:
        return self.root / stage

    def done(self, stage: str) -> bool:
        """Whether ``stage`` finished. A finished stage that lost files since is refused with what to do
        (deleting it is the user's call: it may be all that is left of a long computation)."""
        folder = self.root / stage
        if not (folder / "DONE").exists():
            return False
        gone = missing_files(folder)
        if gone:
            raise RunDirError(f"the finished stage {folder} is damaged ({', '.join(gone[:3])} missing or cut short); "
                              f"delete the folder {folder} and re-run the command that makes it (it is rebuilt "
                              "with the same config and seed)")
        return True

    def require(self, stage: str, command: str) -> Path:
        if not self.done(stage):
            raise RunDirError(f"{self.root} has no finished {stage!r} stage; run `internalrl {command} --out {self.root}` first")
        return self.root / stage

    def partial(self, stage: str, claim: bool = True) -> Path:
        """Working folder of a stage in progress (kept across a kill so training resumes), claimed for
        this process (:meth:`claim`) unless ``claim`` is False (a part of the stage is claimed instead)."""
        if claim:
            self.claim(stage)
        p = self.root / f".{stage}.partial"
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(describe_os_error(e, p)) from None
        return p

    def finish(self, stage: str, config: dict, metrics: dict) -> Path:
        """Publish the stage: its config, metrics, provenance and checksums, then one rename. Training
        checkpoints left in the working folder are dropped first (the artifact holds the results)."""
        from .checkpoint import CHECKPOINT_GLOB

        tmp = self.partial(stage)
        for f in [*tmp.glob(CHECKPOINT_GLOB), *tmp.rglob(".*.tmp")]:  # training state; files a kill left half-written
            f.unlink()
        write_json(tmp / "config.json", config)
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "provenance.json", provenance())
        manifest(tmp)
        (tmp / "DONE").write_text("")
        final = self.root / stage
        if (final / "DONE").exists():  # impossible while the lock is held; never replace a finished artifact
            raise RunDirError(f"{final} was finished by another process; nothing was changed")
        if final.exists():  # an unfinished leftover (no DONE)
            shutil.rmtree(final)
        os.replace(tmp, final)
        claim = self._claims.pop(stage, None)
        if claim is not None:
            claim.release()
        self.update_results(stage, metrics)
        return final

    def metrics(self, stage: str, command: str) -> dict:
        """The metrics a finished stage wrote (``command`` makes it when it is missing)."""
        return json.loads((self.require(stage, command) / "metrics.json").read_text())

    def update_results(self, stage: str | None = None, metrics: dict | None = None) -> None:
        """Rewrite ``results.json`` from the finished stages' metrics (so a kill between a stage's rename and
        this write loses nothing), plus ``stage``'s ``metrics`` when it is not a stage folder (e.g. a wall time).
        Each stage's headline goes under its name, its timings under ``"timings"``. Under a lock: the
        processes sharing a run directory rewrite it one at a time, each from every stage finished so far."""
        with _briefly_locked(_locks(self.root) / RESULTS_LOCK):
            self._rewrite_results(stage, metrics)

    def _rewrite_results(self, stage: str | None = None, metrics: dict | None = None) -> None:
        results = load_results(self.root)
        if stage is not None and not (self.root / stage / "DONE").exists():
            results = _with_timings_last(results, stage, *_split_timings(metrics.get("headline", metrics)))
        path = self.root / "results.json"
        try:
            same = path.exists() and json.loads(path.read_text()) == results
        except (OSError, ValueError):
            same = False
        if not same:
            write_json(path, results)

    def results(self) -> dict:
        return load_results(self.root)


def load_results(root: Path) -> dict:
    """Every finished stage's headline (sorted by stage), timings apart; entries of ``results.json`` that are
    not stages (the last invocation's wall time) are kept. A damaged ``results.json`` loses only those."""
    path = Path(root) / "results.json"
    try:
        old = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        old = {}
    old = old if isinstance(old, dict) else {}
    results: dict = {}
    for folder in sorted(p for p in Path(root).iterdir() if (p / "DONE").exists()):
        try:
            m = json.loads((folder / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(m, dict):
            results = _with_timings_last(results, folder.name, *_split_timings(m.get("headline", m)))
    for key, value in old.items():  # not a stage folder: keep
        if key != "timings" and not (Path(root) / key).exists():
            results = _with_timings_last(results, key, value, {})
    for key, value in (old.get("timings") or {}).items():
        if not (Path(root) / key).exists() and isinstance(value, dict):
            results = _with_timings_last(results, key, {}, value)
    return results
