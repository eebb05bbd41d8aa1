"""``python -m nmt.train +recipe=NAME [overrides]`` — one training run (``-m`` for sweeps).

Hydra composes the config; :func:`nmt.config_checks.validate` checks it; the Trainer runs in the
Hydra run directory (``outputs/<name>`` by default, ``hydra.run.dir=...`` to choose).
"""

from __future__ import annotations

# How OpenMP's idle workers wait (spin briefly on idle cores, sleep at once on shared ones):
# libgomp reads it when torch loads, so it is chosen before any import that loads torch.
from nmt.omp_wait import choose_wait

OMP_WAIT = choose_wait()

import logging
import sys
from pathlib import Path
from typing import Any, cast

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from nmt.config import Config, register
from nmt.config_checks import validate
from nmt.errors import EXIT_USER_ERROR, UserError, fail
from nmt.logs import setup_logging
from nmt.training import distributed

register()
_entered = False


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def _main(dcfg: DictConfig) -> float | None:
    global _entered
    _entered = True
    try:
        setup_logging(distributed.detect().rank, console=False)  # after Hydra's own set-up: rank 0 informs, others warn
        logging.getLogger(__name__).info(OMP_WAIT)
        resolved = cast(dict[str, Any], OmegaConf.to_container(dcfg, resolve=True))
        cfg = cast(Config, OmegaConf.to_object(dcfg))  # the structured schema registered in nmt.config
        validate(cfg)
        from nmt.sweeps.cell import finish_cell, prepare_cell
        from nmt.training.trainer import Trainer

        if cfg.interference.arm:  # one run of an interference sweep (recipes/interference)
            if distributed.detect().world_size > 1:
                raise UserError("interference runs measure best.pt in one process: launch each cell as one "
                                "process (no torchrun, tasks_per_node=1, nodes=1)")
            prepare_cell(cfg, resolved)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        trainer = Trainer(cfg, run_dir, resolved)
        summary = trainer.fit()
        if cfg.interference.arm:
            finish_cell(trainer, summary)
        distributed.shutdown()
        return summary.get("valid/loss")
    except UserError as e:
        fail(str(e))
    except OmegaConfBaseException as e:
        fail(f"bad config: {str(e).splitlines()[0]}")
    return None


def main() -> None:
    try:
        _main()
    except SystemExit as e:
        # Hydra reports config errors (unknown key, wrong type, missing recipe) with exit code 1
        # before our code runs: those are user errors too.
        if e.code == 1 and not _entered:
            sys.exit(EXIT_USER_ERROR)
        raise


if __name__ == "__main__":
    main()
