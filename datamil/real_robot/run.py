"""`python -m datamil.real_robot.run robot=franka task=...`: run a served policy on an arm.

Config: datamil/configs/run.yaml.
"""

from __future__ import annotations

import threading

import hydra
from omegaconf import DictConfig

from datamil.cli import CONFIG_DIR
from datamil.errors import DatamilError


@hydra.main(config_path=CONFIG_DIR, config_name="run", version_base=None)
def main(cfg: DictConfig) -> None:
    from datamil.real_robot.build import build_loop, build_recorder, build_robot, build_safety, match_cameras
    from datamil.real_robot.chunking import PolicySource
    from datamil.real_robot.client import PolicyClient
    from datamil.real_robot.keys import KeyEvents, install_stop
    from datamil.real_robot.session import make_labeler, run_session

    robot = build_robot(cfg)
    safety, loop = build_safety(cfg, robot), build_loop(cfg)
    client = PolicyClient(cfg.server.url, connect_timeout=safety.limits.watchdog_deadline_s * 5)
    if not client.connect(wait_s=cfg.server.connect_wait_s):
        raise SystemExit(
            f"error: no policy server at {cfg.server.url}; start python -m datamil.real_robot.serve"
        )
    try:
        match_cameras(robot, client.meta)
    except DatamilError as e:
        client.close()
        raise SystemExit(f"error: {e}") from None
    source = PolicySource(client, **cfg.execution)
    keys, stop = KeyEvents(cfg.key_input).start(), threading.Event()
    install_stop(stop, keys)
    try:
        run_session(robot, source, safety, build_recorder(cfg, "policy"), loop, int(cfg.episodes),
                    make_labeler(cfg.label, keys), stop, int(cfg.seed), label_source=cfg.label)  # fmt: skip
    except DatamilError as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        keys.close()
        client.close()


if __name__ == "__main__":
    main()
