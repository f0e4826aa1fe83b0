"""`python -m datamil.real_robot.serve checkpoint=...`: serve a datamil policy to robot computers.

Config: datamil/configs/serve.yaml.
"""

from __future__ import annotations

import asyncio
import logging

import hydra
from omegaconf import DictConfig

from datamil.cli import CONFIG_DIR
from datamil.errors import DatamilError

log = logging.getLogger("datamil.real_robot.serve")


@hydra.main(config_path=CONFIG_DIR, config_name="serve", version_base=None)
def main(cfg: DictConfig) -> None:
    import torch

    from datamil.real_robot.server import load_served, serve

    torch.set_num_threads(int(cfg.threads))
    try:
        served = load_served(cfg.checkpoint, cfg.device)
    except DatamilError as e:
        raise SystemExit(f"error: {e}") from None

    def ready(port: int) -> None:
        print(
            f"serving {served.name} {served.checkpoint_id} on ws://{cfg.host}:{port} ({served.device})",
            flush=True,
        )

    try:
        asyncio.run(serve(served, cfg.host, int(cfg.port), ready))
    except KeyboardInterrupt:
        log.info("server stopped")


if __name__ == "__main__":
    main()
