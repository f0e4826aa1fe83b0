"""Control-loop speed: client -> policy server -> SimArm on localhost, for BC and diffusion policies.

    python benchmarks/control_loop.py [--steps 150] [--rate 15]

For each setting a `python -m real_robot.serve` process serves a freshly initialized policy of the
default size (configs/policy/*.yaml), and the real control loop (safety layer included, recording off)
drives SimArm at `--rate` Hz, then unthrottled. Reported: the sustained loop rate, per-step latency
(observation read -> action applied) p50/p99, the unthrottled rate, and the bar of issue 7:
15 Hz with p99 <= one control period for BC, 15 Hz for diffusion executing chunks.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from datamil.checkpoint import save_policy
from datamil.policies import POLICIES
from real_robot.chunking import PolicySource
from real_robot.client import PolicyClient
from real_robot.control import LoopConfig, run_episode
from real_robot.localhost import ServerProcess
from real_robot.safety import SafetyLayer, SafetyLimits
from real_robot.sim_arm import SIM_ACTION_SPACE, SimArm

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


SETTINGS = [
    Setting("BC MLP", "bc_mlp", 1, bar_p99=True),
    Setting("diffusion, no chunking (k=1)", "diffusion", 1),
    Setting("diffusion, chunks (k=4 of H=8)", "diffusion", None),
    Setting("diffusion, temporal ensembling", "diffusion", 1, temporal_ensemble=True),
]


def checkpoint(directory: Path, name: str) -> Path:
    """A default-size policy for the 39-d MetaWorld state and 4-d action (weights do not change speed)."""
    return save_policy(directory / f"{name}.pt", POLICIES.get(name)(39, 4), task=TASK)


def measure(url: str, setting: Setting, rate_hz: float, steps: int) -> dict[str, float]:
    client = PolicyClient(url)
    if not client.connect(wait_s=10):
        raise SystemExit(f"no server at {url}")
    source = PolicySource(client, setting.execute_steps, setting.temporal_ensemble)
    arm = SimArm(TASK, seed=0)
    arm.connect()
    arm.home()
    safety = SafetyLayer(LIMITS, SIM_ACTION_SPACE)
    source.reset(0)
    run_episode(arm, source, safety, LoopConfig(rate_hz, 10), threading.Event())  # warm-up
    result = run_episode(arm, source, safety, LoopConfig(rate_hz, steps), threading.Event())
    client.close()
    arm.close()
    return {**result.timing(), "holds": result.interventions.get("hold_no_action", 0)}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="measured steps per setting")
    parser.add_argument("--rate", type=float, default=15.0, help="control rate in Hz")
    args = parser.parse_args()
    lines = [
        f"| setting | Hz at {args.rate:g} Hz | p50 ms | p99 ms | Hz unthrottled | p99 ms unthrottled | bar |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoints = {name: checkpoint(Path(tmp), name) for name in ("bc_mlp", "diffusion")}
        for setting in SETTINGS:
            with ServerProcess(checkpoints[setting.policy]) as server:
                paced = measure(server.url, setting, args.rate, args.steps)
                free = measure(server.url, setting, 1000.0, args.steps)
            lines.append(row(setting, paced, free, args.rate))
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
