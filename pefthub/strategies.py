"""DeepSpeed on CPU: Lightning's ``DeepSpeedStrategy`` over gloo, registered as ``deepspeed_cpu``.

Lightning's strategy refuses any accelerator but CUDA, yet DeepSpeed itself runs ZeRO-1/2/3
on CPU: its CPU accelerator (chosen automatically where no GPU is visible, or with
``DS_ACCELERATOR=cpu``) talks over gloo when ``oneccl_bindings_for_pytorch`` is not installed.
:class:`DeepSpeedCPUStrategy` changes only what ties Lightning's strategy to CUDA: the
accelerator check, the root device and the process-group backend. It exists for tests and CI
(the same DeepSpeed engine, checkpoints and ZeRO partitioning as on GPUs, at CPU speed) and
for users without GPUs; on GPUs use Lightning's own ``deepspeed_stage_2`` / ``_stage_3``.

Registered names (``--trainer.strategy NAME`` or ``trainer.strategy: NAME``):
``deepspeed_cpu`` (ZeRO-2), ``deepspeed_cpu_stage_1``, ``deepspeed_cpu_stage_2``,
``deepspeed_cpu_stage_3``. Importing :mod:`pefthub.cli` registers them.

Frozen parameters are left out of DeepSpeed's checkpoints (``exclude_frozen_parameters``),
as pefthub's own checkpoints leave out the frozen backbone.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch import Trainer
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, StrategyRegistry
from lightning.pytorch.strategies.deepspeed import remove_module_hooks

CPU_STRATEGY_NAMES = {
    "deepspeed_cpu": 2,
    "deepspeed_cpu_stage_1": 1,
    "deepspeed_cpu_stage_2": 2,
    "deepspeed_cpu_stage_3": 3,
}


class DeepSpeedCPUStrategy(DeepSpeedStrategy):
    """``DeepSpeedStrategy`` for ``accelerator: cpu`` (gloo); same arguments as Lightning's.

    Args:
        stage: ZeRO stage (1, 2 or 3).
        exclude_frozen_parameters: leave frozen parameters out of checkpoints (default true:
            pefthub rebuilds the frozen backbone from ``model.backbone``).
        **kwargs: any other ``lightning.pytorch.strategies.DeepSpeedStrategy`` argument.
    """

    strategy_name = "deepspeed_cpu"

    def __init__(self, stage: int = 2, exclude_frozen_parameters: bool = True, **kwargs: Any) -> None:
        if stage not in (1, 2, 3):
            raise ValueError(f"trainer.strategy.stage must be 1, 2 or 3 for DeepSpeed on CPU, got {stage!r}")
        # DeepSpeed picks its accelerator once, at first use; on a machine with a GPU it would pick CUDA.
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        kwargs.setdefault("process_group_backend", "gloo")
        super().__init__(stage=stage, exclude_frozen_parameters=exclude_frozen_parameters, **kwargs)

    def setup_environment(self) -> None:
        if not isinstance(self.accelerator, CPUAccelerator):
            raise ValueError(
                f"trainer.strategy deepspeed_cpu needs trainer.accelerator: cpu, got {type(self.accelerator).__name__}; "
                "on GPUs use Lightning's deepspeed_stage_2 / deepspeed_stage_3"
            )
        from deepspeed.accelerator import get_accelerator

        if get_accelerator().device_name() != "cpu":
            raise ValueError(
                f"trainer.strategy deepspeed_cpu: DeepSpeed chose its {get_accelerator().device_name()!r} accelerator; "
                "set DS_ACCELERATOR=cpu before starting pefthub"
            )
        # Lightning's DeepSpeedStrategy.setup_environment is only its CUDA check, then DDP's.
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        # Lightning's version first checks that CUDA device indices match the local ranks;
        # CPU devices have no index.
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    @property
    def root_device(self) -> torch.device:
        return torch.device("cpu")

    def _get_process_group_backend(self) -> str:
        return self._process_group_backend or "gloo"

    def _setup_model_and_optimizer(self, model: Any, optimizer: Any, lr_scheduler: Any = None) -> tuple[Any, Any]:
        # Lightning passes ``device_rank=root_device.index``, None on CPU, which DeepSpeed's engine
        # compares with 0; the local rank is what it means.
        import deepspeed

        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, deepspeed_optimizer

    def _initialize_deepspeed_inference(self, model: Any) -> None:
        # Lightning's version with the same device_rank fix as above.
        import deepspeed

        inference_config: dict[str, Any] = {"train_micro_batch_size_per_gpu": 1}
        for key in ("fp16", "bf16"):
            if key in self.config:
                inference_config[key] = self.config[key]
        if self.zero_stage_3:
            inference_config["zero_allow_untested_optimizer"] = self.config["zero_allow_untested_optimizer"]
            inference_config["zero_optimization"] = self.config["zero_optimization"]
        remove_module_hooks(model)
        self.model, _, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=inference_config,
            model=model,
            optimizer=None,
            lr_scheduler=None,
            model_parameters=[],
            dist_init_required=False,
        )

    def setup(self, trainer: Trainer) -> None:
        from pefthub.deepspeed_support import check_method_supported

        if self.lightning_module is not None:
            check_method_supported(self.lightning_module, self)
        super().setup(trainer)

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        for name, stage in CPU_STRATEGY_NAMES.items():
            strategy_registry.register(
                name, cls, description=f"DeepSpeed ZeRO stage {stage} on CPU (gloo), pefthub", stage=stage, override=True
            )


def zero_stage(strategy: Any) -> int | None:
    """The ZeRO stage of a DeepSpeed strategy (0 for DeepSpeed without ZeRO), None for any other."""
    if not isinstance(strategy, DeepSpeedStrategy):
        return None
    config = strategy.config or {}
    return int((config.get("zero_optimization") or {}).get("stage", 0))


def is_deepspeed(trainer: Trainer | None) -> bool:
    """Whether ``trainer`` runs a DeepSpeed strategy (Lightning's or :class:`DeepSpeedCPUStrategy`)."""
    return trainer is not None and isinstance(trainer.strategy, DeepSpeedStrategy)


def register() -> None:
    """Add the ``deepspeed_cpu*`` names to Lightning's strategy registry (idempotent)."""
    DeepSpeedCPUStrategy.register_strategies(StrategyRegistry)

