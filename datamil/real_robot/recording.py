"""Recording every episode (teleoperated or autonomous) as RLDS, one atomic dataset per episode.

Why one small RLDS dataset per episode: `write_rlds` writes a whole dataset atomically, so writing each
episode as its own dataset is the simplest way to make every finished episode durable the moment it
ends, with nothing ever rewritten. `merge_session` later writes one dataset for `datamil.select`; each
episode directory is also readable on its own by `read_rlds`.

Session layout:
    <root>/session.json                       who recorded what (robot, task, dataset, start time)
    <root>/episodes/ep_000003/1.0.0/          RLDS (state [+ image_*] observations, applied actions,
                                              success in episode_metadata) + record.json + steps.npz
    <root>/episodes/ep_000004_partial/1.0.0/  an episode cut by a crash, rebuilt from its journal
    <root>/.ep_000005.journal                 the episode being recorded: msgpack records appended
                                              and flushed every step, fsynced every `fsync_every`
record.json: episode id, checkpoint id, operator label, end reason, partial flag, intervention counts,
timing. steps.npz: per step `timestamp` (T,) float64 wall clock, `intervention` (T,) int32 bits of
safety.Intervention, `proposed` (T, A) raw source actions (NaN: none or malformed), `latency_ms`.
Those live beside the RLDS files, not in its observations, so recorded demos keep the exact
observation layout of the prior data they are mixed with.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from datamil.data.schema import OBS_STATE, Episode, EpisodeMeta, is_image_key
from datamil.errors import DatamilError
from datamil.io import atomic_write_json
from datamil.real_robot.control import EpisodeResult, StepRecord
from datamil.real_robot.robot import TIMESTAMP
from datamil.real_robot.safety import flag_names
from datamil.real_robot.wire import pack, unpack_stream

RECORD_FILE, STEPS_FILE, SESSION_FILE = "record.json", "steps.npz", "session.json"
PARTIAL = "_partial"
_EPISODE_DIR = re.compile(r"^ep_(\d{6})(_partial)?$")
_JOURNAL = re.compile(r"^\.ep_(\d{6})\.journal$")


@dataclass(frozen=True)
class SessionInfo:
    """What every episode of a session shares."""

    dataset: str  # dataset name in episode_metadata (groups normalization statistics)
    task: str
    instruction: str = ""
    robot: str = ""
    operator: str = ""  # "policy" or the teleop operator's name


class SessionRecorder:
    """Writes one episode at a time; opening a session first recovers any crashed episode."""

    def __init__(self, root: str | os.PathLike, info: SessionInfo, fsync_every: int = 10) -> None:
        self.root, self.info, self.fsync_every = Path(root), info, fsync_every
        (self.root / "episodes").mkdir(parents=True, exist_ok=True)
        self.recovered = recover(self.root)
        if not (self.root / SESSION_FILE).exists():
            atomic_write_json(self.root / SESSION_FILE, {**info.__dict__, "created": time.time()})
        _import_writer()
        self._journal: Any = None
        self._steps: list[StepRecord] = []
        self._header: dict = {}

    @property
    def recording(self) -> bool:
        return self._journal is not None

    def begin(self, checkpoint_id: str | None = None, **extra: Any) -> str:
        """Open the next episode's journal; returns its episode id."""
        if self.recording:
            raise DatamilError("an episode is already being recorded; end() or abort() it first")
        index = next_index(self.root)
        episode_id = f"{self.info.dataset}/{self.root.name}/{index:06d}"
        self._header = {
            "type": "header",
            "index": index,
            "episode_id": episode_id,
            "checkpoint_id": checkpoint_id,
            "start_time": time.time(),
            **self.info.__dict__,
            **extra,
        }
        self._journal = open(self.root / f".ep_{index:06d}.journal", "wb")  # noqa: SIM115 - closed in end()
        self._append(self._header, sync=True)
        self._steps = []
        return episode_id

    def step(self, record: StepRecord) -> None:
        """Append one executed step to the journal (and to memory, for the normal end)."""
        sync = (len(self._steps) + 1) % self.fsync_every == 0
        self._append({"type": "step", **_journal_step(record)}, sync=sync)
        self._steps.append(record)

    def _append(self, message: dict, sync: bool) -> None:
        self._journal.write(pack(message))
        self._journal.flush()
        if sync:
            os.fsync(self._journal.fileno())

    def end(
        self, success: bool | None, result: EpisodeResult | None = None, label_source: str = ""
    ) -> Path | None:
        """Write the episode atomically and drop its journal; None if it had no steps."""
        if not self.recording:
            raise DatamilError("no episode is being recorded; call begin() first")
        steps = [_journal_step(s) for s in self._steps]
        extra = {"success": success, "label_source": label_source, "partial": False}
        if result is not None:
            extra.update(
                end_reason=result.end_reason,
                interventions=result.interventions,
                timing=result.timing(),
                overruns=result.overruns,
                success_signal=result.success_signal,
            )
        return self._finish(steps, extra)

    def abort(self, reason: str) -> Path | None:
        """Write what was recorded so far as a partial episode (the loop crashed or was interrupted)."""
        if not self.recording:
            return None
        steps = [_journal_step(s) for s in self._steps]
        return self._finish(steps, {"success": None, "partial": True, "end_reason": reason})

    def _finish(self, steps: list[dict], extra: dict) -> Path | None:
        self._journal.close()
        journal = Path(self._journal.name)
        self._journal = None
        path = write_episode(self.root, {**self._header, **extra}, steps) if steps else None
        journal.unlink(missing_ok=True)
        return path


def _import_writer() -> None:
    """Import TensorFlow now, before the first episode, not during it: the import takes seconds of CPU
    and of the GIL, and on 2 cores it slowed that episode's loop from 25 Hz to 9 Hz (image BC at 30 Hz)."""
    from datamil.data.tfds_env import load_tf

    try:
        load_tf()
    except DatamilError:
        pass  # no TensorFlow: the first write says so, in one line


def _journal_step(record: StepRecord) -> dict:
    obs = {k: v for k, v in record.obs.items() if k == OBS_STATE or is_image_key(k)}
    return {
        "obs": obs,
        "t": record.obs[TIMESTAMP],
        "action": record.action,
        "proposed": record.proposed,
        "flags": record.flags,
        "latency_ms": record.latency_ms,
    }


def next_index(root: Path) -> int:
    """One more than the largest episode index in the session (finished, partial or in a journal)."""
    names = [p.name for p in (root / "episodes").iterdir()] + [p.name for p in root.iterdir()]
    indices = [int(m.group(1)) for n in names if (m := _EPISODE_DIR.match(n) or _JOURNAL.match(n))]
    return max(indices, default=-1) + 1


def write_episode(root: Path, record: dict, steps: list[dict]) -> Path:
    """RLDS + record.json + steps.npz assembled in <root>/.staging, then moved into place in one rename."""
    from datamil.data.rlds import write_rlds

    name = f"ep_{record['index']:06d}" + (PARTIAL if record.get("partial") else "")
    episode = _episode(record, steps)
    staging = root / ".staging" / uuid.uuid4().hex
    try:
        version_dir = write_rlds([episode], staging, name)
        _write_sidecars(version_dir, record, steps)
        final = root / "episodes" / name
        os.rename(staging / name, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final / version_dir.name


def _episode(record: dict, steps: list[dict]) -> Episode:
    keys = steps[0]["obs"].keys()
    observations = {k: np.stack([np.asarray(s["obs"][k]) for s in steps]) for k in keys}
    observations = {k: v if is_image_key(k) else v.astype(np.float32) for k, v in observations.items()}
    actions = np.stack([np.asarray(s["action"], np.float32) for s in steps])
    success = record.get("success")
    rewards = np.zeros(len(steps), np.float32)
    rewards[-1] = float(bool(success))
    terminal = (np.arange(len(steps)) == len(steps) - 1) & bool(success)
    episode_id = record["episode_id"] + ("/partial" if record.get("partial") else "")
    meta = EpisodeMeta(episode_id, record["dataset"], record["task"], success)
    return Episode(
        observations,
        actions,
        meta,
        rewards,
        is_terminal=terminal,
        language_instruction=record.get("instruction", ""),
    )


def _write_sidecars(version_dir: Path, record: dict, steps: list[dict]) -> None:
    proposed = [np.asarray(s["proposed"], np.float32) for s in steps]
    dim = max((p.size for p in proposed), default=0)
    proposed = [p if p.size == dim else np.full(dim, np.nan, np.float32) for p in proposed]
    flags = np.asarray([s["flags"] for s in steps], np.int32)
    np.savez(
        version_dir / STEPS_FILE,
        timestamp=np.asarray([s["t"] for s in steps], np.float64),
        intervention=flags,
        proposed=np.stack(proposed),
        latency_ms=np.asarray([s["latency_ms"] for s in steps]),
    )
    counts: dict[str, int] = {}
    for value in flags:
        for name in flag_names(int(value)):
            counts[name] = counts.get(name, 0) + 1
    record = {k: v for k, v in record.items() if k != "type"}
    record.update(steps=len(steps), interventions=counts)
    (version_dir / RECORD_FILE).write_text(json.dumps(record, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def recoverable(root: Path, journal: Path) -> tuple[dict, list[dict]] | None:
    """(header, steps) of a journal that holds an unwritten episode's steps; None for one with no header
    or no step, or whose episode was written (a crash between the final rename and the unlink)."""
    with open(journal, "rb") as f:
        messages = list(unpack_stream(f))
    header = messages[0] if messages and messages[0].get("type") == "header" else None
    steps = [m for m in messages if m.get("type") == "step"]
    if header is None or not steps or any((root / "episodes").glob(f"ep_{header['index']:06d}*")):
        return None
    return header, steps


def recover(root: str | os.PathLike) -> list[Path]:
    """Turn every journal left by a crash into a partial episode (marked as such); returns their paths."""
    root, paths = Path(root), []
    for journal in sorted(root.glob(".ep_*.journal")):
        found = recoverable(root, journal)
        if found is not None:
            header, steps = found
            paths.append(
                write_episode(
                    root,
                    {**header, "success": None, "partial": True, "end_reason": "recovered after a crash"},
                    steps,
                )
            )
        journal.unlink()
    shutil.rmtree(root / ".staging", ignore_errors=True)
    return paths


def session_episodes(
    root: str | os.PathLike, include_partial: bool = False
) -> Iterator[tuple[Episode, dict]]:
    """(episode, record.json + steps.npz arrays) of every episode of a session, in recording order."""
    from datamil.data.rlds import read_rlds

    for path in sorted((Path(root) / "episodes").iterdir()):
        match = _EPISODE_DIR.match(path.name)
        if match is None or (match.group(2) and not include_partial):
            continue
        version_dir = next(path.glob("*/dataset_info.json")).parent
        record = json.loads((version_dir / RECORD_FILE).read_text())
        with np.load(version_dir / STEPS_FILE) as arrays:
            record.update({k: arrays[k] for k in arrays.files})
        episode = next(iter(read_rlds(version_dir, progress=False)))
        yield episode, record


def merge_session(roots: list[str | os.PathLike], data_dir: str | os.PathLike, name: str) -> Path:
    """One RLDS dataset of the finished episodes of one or more sessions, ready for `datamil.select`."""
    from datamil.data.rlds import write_rlds

    episodes = (episode for root in roots for episode, _ in session_episodes(root))
    return write_rlds(episodes, data_dir, name)
