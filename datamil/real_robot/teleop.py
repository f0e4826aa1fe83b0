"""`python -m datamil.real_robot.teleop robot=... operator.name=keyboard task=...`: record demos.

Config: datamil/configs/teleop.yaml.
"""

from __future__ import annotations

import threading

import hydra
from omegaconf import DictConfig

from datamil.cli import CONFIG_DIR
from datamil.errors import DatamilError


@hydra.main(config_path=CONFIG_DIR, config_name="teleop", version_base=None)
def main(cfg: DictConfig) -> None:
    from datamil.real_robot.build import build_loop, build_recorder, build_robot, build_safety
    from datamil.real_robot.keys import KeyEvents, install_stop
    from datamil.real_robot.operators import OPERATORS
    from datamil.real_robot.session import make_labeler, run_session

    robot = build_robot(cfg)
    safety, loop = build_safety(cfg, robot), build_loop(cfg)
    keys, stop = KeyEvents(cfg.key_input), threading.Event()
    try:
        operator = OPERATORS.get(cfg.operator.name)(
            str(cfg.task), robot.action_space, keys, **cfg.operator.kwargs
        )
        install_stop(stop, keys.start())
        run_session(robot, operator, safety, build_recorder(cfg, cfg.operator.name), loop, int(cfg.episodes),
                    make_labeler(cfg.label, keys), stop, int(cfg.seed), label_source=cfg.label)  # fmt: skip
    except DatamilError as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        keys.close()


if __name__ == "__main__":
    main()
