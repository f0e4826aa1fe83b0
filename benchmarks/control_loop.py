"""Control-loop speed: client -> policy server -> SimArm on localhost, for BC, diffusion and image BC.

    python benchmarks/control_loop.py [--steps 150] [--rate 15] [--only image]

For each setting a `python -m datamil.real_robot.serve` process serves a freshly initialized policy of the
default size (datamil/configs/policy/*.yaml), and the real control loop (safety layer included, recording off)
drives SimArm at `--rate` Hz, then unthrottled. Reported: the sustained loop rate, per-step latency
(observation read -> action applied) p50/p99, the unthrottled rate, and the bars of issues 7 and 8:
15 Hz with p99 <= one control period for BC and image BC, 15 Hz for diffusion executing chunks.

Image BC (bc_image, 84 x 84, the default encoder) reads SimArm's `corner` camera: each observation
renders a frame in SimArm's env worker (Mesa software EGL, fast flags), so the latency includes the
"camera read", and the 21 KB frame travels to the server and through the conv net on one torch thread.
The last row (no bar) renders without multisampling, which is faster but not what datamil.sim_tasks renders.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datamil.checkpoint import save_policy
from datamil.policies import POLICIES
from datamil.real_robot.chunking import PolicySource
from datamil.real_robot.client import PolicyClient
from datamil.real_robot.control import LoopConfig, run_episode
from datamil.real_robot.localhost import ServerProcess
from datamil.real_robot.safety import SafetyLayer, SafetyLimits
from datamil.real_robot.sim_arm import SIM_ACTION_SPACE, SimArm

TASK = "metaworld/reach"
LIMITS = SafetyLimits(
    workspace_low=(-0.45, 0.38, 0.05), workspace_high=(0.45, 0.95, 0.45), gripper_range=(-1, 1)
)


@dataclass(frozen=True)
class Setting:
    name: str
    policy: str
    execute_steps: int | None  # None: the policy's own n_action_steps
    temporal_ensemble: bool = False
    bar_p99: bool = False  # the bar includes p99 <= one period
    cameras: bool = False  # SimArm renders image_primary (the corner camera) for an image policy
    render_samples: int = 0  # SimArm's multisampling: 0 is what image data is generated with; 4 is MuJoCo's


SETTINGS = [
    Setting("BC MLP", "bc_mlp", 1, bar_p99=True),
    Setting("diffusion, no chunking (k=1)", "diffusion", 1),
    Setting("diffusion, chunks (k=4 of H=8)", "diffusion", None),
    Setting("diffusion, temporal ensembling", "diffusion", 1, temporal_ensemble=True),
    Setting("image BC (84x84 corner camera)", "bc_image", 1, bar_p99=True, cameras=True),
    Setting("image BC, MuJoCo's 4x multisampling", "bc_image", 1, cameras=True, render_samples=4),
]
CAMERAS = {"image_primary": "corner"}
IMAGE_SIZE = (84, 84)


def checkpoint(directory: Path, name: str) -> Path:
    """A default-size policy for the 39-d MetaWorld state and 4-d action (weights do not change speed)."""
    kwargs = {"image_keys": list(CAMERAS), "image_size": IMAGE_SIZE, "cameras": CAMERAS}
    policy = POLICIES.get(name)(39, 4, **(kwargs if name == "bc_image" else {}))
    return save_policy(directory / f"{name}.pt", policy, task=TASK)


class TimedArm(SimArm):
    """SimArm that times each observe() (for image settings: the frame render and its pipe trip)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.observe_ms: list[float] = []

    def observe(self):
        start = time.perf_counter()
        obs = super().observe()
        self.observe_ms.append((time.perf_counter() - start) * 1e3)
        return obs


def measure(url: str, setting: Setting, rate_hz: float, steps: int) -> dict[str, float]:
    client = PolicyClient(url)
    if not client.connect(wait_s=10):
        raise SystemExit(f"no server at {url}")
    source = PolicySource(client, setting.execute_steps, setting.temporal_ensemble)
    cameras = CAMERAS if setting.cameras else None
    arm = TimedArm(
        TASK, seed=0, cameras=cameras, image_size=IMAGE_SIZE, render_samples=setting.render_samples
    )
    arm.connect()
    arm.home()
    safety = SafetyLayer(LIMITS, SIM_ACTION_SPACE)
    source.reset(0)
    run_episode(arm, source, safety, LoopConfig(rate_hz, 10), threading.Event())  # warm-up
    arm.observe_ms.clear()
    server_ms: list[float] = []
    result = run_episode(arm, source, safety, LoopConfig(rate_hz, steps), threading.Event(),
                         lambda record: server_ms.append(client.last_infer_ms))  # fmt: skip
    client.close()
    arm.close()
    observe = np.percentile(arm.observe_ms[:steps], [50, 99])
    return {**result.timing(), "holds": result.interventions.get("hold_no_action", 0),
            "observe_p50_ms": observe[0], "observe_p99_ms": observe[1],
            "infer_p50_ms": float(np.nanpercentile(server_ms, 50))}  # fmt: skip


def row(setting: Setting, paced: dict, free: dict, rate_hz: float) -> str:
    period_ms = 1e3 / rate_hz
    ok = paced["hz"] >= 0.98 * rate_hz and paced["holds"] == 0
    ok = ok and (paced["latency_p99_ms"] <= period_ms if setting.bar_p99 else True)
    barred = setting.bar_p99 or (setting.policy == "diffusion" and setting.execute_steps is None)
    verdict = ("pass" if ok else "FAIL") if barred else "-"
    return (
        f"| {setting.name} | {paced['hz']:.2f} | {paced['latency_p50_ms']:.1f} | {paced['latency_p99_ms']:.1f} "
        f"| {free['hz']:.0f} | {free['latency_p99_ms']:.1f} | {verdict} |"
    )


def breakdown(setting: Setting, paced: dict) -> str:
    """Where an image step's time goes, at the paced rate."""
    return (
        f"{setting.name} at the paced rate: observe (render + pipe) p50 {paced['observe_p50_ms']:.1f} ms, "
        f"p99 {paced['observe_p99_ms']:.1f} ms; server inference p50 {paced['infer_p50_ms']:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="measured steps per setting")
    parser.add_argument("--rate", type=float, default=15.0, help="control rate in Hz")
    parser.add_argument("--only", default="", help="run only settings whose name contains this text")
    args = parser.parse_args()
    lines = [
        f"| setting | Hz at {args.rate:g} Hz | p50 ms | p99 ms | Hz unthrottled | p99 ms unthrottled | bar |",
        "|---|---|---|---|---|---|---|",
    ]
    settings = [s for s in SETTINGS if args.only.lower() in s.name.lower()]
    notes = [f"load average at start {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = {name: checkpoint(Path(tmp), name) for name in {s.policy for s in settings}}
        for setting in settings:
            with ServerProcess(checkpoints[setting.policy]) as server:
                paced = measure(server.url, setting, args.rate, args.steps)
                free = measure(server.url, setting, 1000.0, args.steps)
            lines.append(row(setting, paced, free, args.rate))
            print(lines[-1], flush=True)
            if setting.cameras:
                notes.append(breakdown(setting, paced))
    notes.append(f"load average at end {os.getloadavg()[0]:.1f}")
    print("\n" + "\n".join(lines + [""] + notes))


if __name__ == "__main__":
    main()
