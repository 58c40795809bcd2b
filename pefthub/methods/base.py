"""PEFTModule: the shared LightningModule every method subclasses.

It owns the frozen backbone, the task head, the optimiser (AdamW by default, linear
warm-up then linear decay keyed on optimiser steps), torchmetrics metrics and logging.
A method's ``__init__`` is plain: ``super().__init__(**shared)`` builds the frozen host and
head, the method validates its settings and inserts its adapters, then calls
:meth:`adapters_ready` (it may override :meth:`regularization` and :meth:`configure_callbacks`).
Checkpoints hold only the trainable tensors (adapters and head): the frozen backbone is rebuilt
from ``backbone`` on load (:class:`~pefthub.methods.adapter_files.AdapterFiles` has the
checkpoint hooks and the adapter-file I/O).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from pefthub.adapters.inject import adapter_state, mark_only_adapters_trainable
from pefthub.backbones import CAUSAL_FAMILIES, family_of, hidden_size, load_backbone
from pefthub.callbacks.adapter_export import SaveAdapter
from pefthub.callbacks.logging_step import is_logging_step
from pefthub.callbacks.rng import RNGState
from pefthub.callbacks.timing import StepTimer
from pefthub.losses import NonFiniteLossError, focal_loss
from pefthub.methods.adapter_files import AdapterFiles
from pefthub.metrics import EntityTypeF1, build_metrics

__all__ = ["LOSSES", "POOLINGS", "NonFiniteLossError", "PEFTModule", "focal_loss"]

POOLINGS = ("auto", "mean", "cls", "last")
LOSSES = ("cross_entropy", "focal")


def _adamw(params) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)


class PEFTModule(AdapterFiles, LightningModule):
    """Backbone + task head + optimiser; subclasses add adapters.

    Args:
        backbone: backbone name or path (``tiny-bert``, ``minilm-l6``, a local HF directory
            or a hub id); the data module's tokenizer is linked to it.
        num_labels: number of classes; linked from the data module.
        task_type: ``sequence_classification`` (one label per input, pooled head) or
            ``token_classification`` (one label per token, per-token head; positions
            labelled -100 are ignored in the loss); linked from the data module.
        label_names: class names in label-id order; linked from the data module and saved
            with the adapter.
        pooling: how a sequence becomes one vector for the head: ``mean`` (masked mean of
            the last hidden states), ``cls`` (first token), ``last`` (last non-padding
            token) or ``auto`` (``last`` for decoder families, ``mean`` otherwise).
        head_dropout: dropout before the classification head.
        optimizer: optimiser factory called with the trainable parameters
            (default ``torch.optim.AdamW`` with lr 1e-3, no weight decay).
        warmup_fraction: fraction of all optimiser steps spent warming the learning rate
            up linearly from 0; it then decays linearly to 0 (``lr_schedule: linear``).
        lr_schedule: ``linear`` (warm-up + linear decay) or ``constant`` (warm-up only).
        head_lr: learning rate of the task head (its own optimiser parameter group, same
            schedule); ``null`` (default) trains it at the optimiser's lr. A freshly
            initialised head on a frozen or slowly adapted backbone often wants a higher lr
            than the adapter (token tasks: ``configs/lora/ner.yaml``).
        loss: the task loss: ``cross_entropy`` (default) or ``focal`` — cross-entropy scaled
            per position by (1 − p_y)^γ, which down-weights positions the model already gets
            right (e.g. the ~95 % ``O`` tags of NER) so the rare classes drive the gradient.
        focal_gamma: γ of the focal loss (``loss: focal``); 0 is plain cross-entropy.
        fast_cpu_kernels: CPU-only kernel choices of the LoRA-shaped adapters (LoRA, AdaLoRA,
            FW/IW-LoRA, GLoRA, UniHyperLoRA's dropout): dropout masks drawn from 16-bit random
            integers, about 3x faster than torch's kernel (keep probability rounded to a multiple
            of 1/65536), and the backward's skinny products in the layout MKL runs fast.
            ``false`` uses torch's dropout kernel and the layouts every GPU run uses. No effect
            on a GPU.
        compile: run the forward pass (backbone, adapters, head; its backward follows) through
            ``torch.compile``. The adapters then use their plain composition (the compiler
            fuses it; the hand-written fused functions are for eager mode). Each new input
            shape compiles once more: set ``data.pad_to_multiple_of`` (or ``max_length``) to
            bound the shapes. Off by default (the first steps pay the compilation).
        compile_backend: ``torch.compile``'s backend (``inductor``: generated kernels;
            ``aot_eager``: graph capture and AOT autograd without code generation, for checks).
        init_adapter: an adapter directory to start from (what ``fit`` writes to
            ``<run>/adapter``, or a Hugging Face PEFT LoRA directory, imported on the fly): its
            tensors (adapter and task head) are loaded after the adapters are built, so
            ``pefthub test/predict --model.init_adapter DIR`` evaluates a shared adapter and
            ``fit`` continues from it. The method's structural settings (rank, targets, ...)
            must match the file's (a mismatch is a one-line error naming the tensor).
    """

    method_name = "base"

    def __init__(
        self,
        backbone: str = "tiny-bert",
        num_labels: int = 2,
        task_type: str = "sequence_classification",
        label_names: list[str] | None = None,
        pooling: str = "auto",
        head_dropout: float = 0.1,
        optimizer: OptimizerCallable = _adamw,
        warmup_fraction: float = 0.06,
        lr_schedule: str = "linear",
        head_lr: float | None = None,
        loss: str = "cross_entropy",
        focal_gamma: float = 2.0,
        fast_cpu_kernels: bool = True,
        compile: bool = False,
        compile_backend: str = "inductor",
        init_adapter: str | None = None,
    ) -> None:
        super().__init__()
        if num_labels < 1:
            raise ValueError(f"model.num_labels must be >= 1, got {num_labels}")
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling must be one of {POOLINGS}, got {pooling!r}")
        if lr_schedule not in ("linear", "constant"):
            raise ValueError(f"model.lr_schedule must be 'linear' or 'constant', got {lr_schedule!r}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"model.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if head_lr is not None and not head_lr > 0:
            raise ValueError(f"model.head_lr must be > 0 (or null for the optimiser's lr), got {head_lr}")
        if loss not in LOSSES:
            raise ValueError(f"model.loss must be one of {LOSSES}, got {loss!r}")
        if not focal_gamma >= 0:
            raise ValueError(f"model.focal_gamma must be >= 0, got {focal_gamma}")
        if label_names is not None and len(label_names) != num_labels:
            raise ValueError(f"model.label_names has {len(label_names)} names but num_labels is {num_labels}")
        self.save_hyperparameters(ignore=["optimizer"])
        self.backbone_name = backbone
        self.task_type = task_type
        self.label_names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
        self.optimizer_factory = optimizer
        self.warmup_fraction = warmup_fraction
        self.lr_schedule = lr_schedule
        self.head_lr = head_lr
        self.loss_name = loss
        self.focal_gamma = float(focal_gamma)
        self.compile = bool(compile)
        if compile:
            backends = torch._dynamo.list_backends(exclude_tags=())
            if compile_backend not in backends:
                raise ValueError(f"model.compile_backend must be one of {sorted(backends)}, got {compile_backend!r}")
        self.compile_backend = compile_backend
        self._compiled_forward = None

        self.backbone, _ = load_backbone(backbone)
        self.backbone.train()  # from_pretrained returns eval mode; fine-tuning keeps its dropout on
        self.family = family_of(self.backbone)
        if pooling == "auto":
            pooling = "last" if self.family in CAUSAL_FAMILIES else "mean"
        self.pooling = pooling
        self.head_dropout = nn.Dropout(head_dropout)
        self.head = nn.Linear(hidden_size(self.backbone), num_labels)
        self.val_metrics = build_metrics(task_type, num_labels, self.label_names).clone(prefix="val/")
        self.test_metrics = build_metrics(task_type, num_labels, self.label_names).clone(prefix="test/")
        # token tasks: entity F1 per type at test time, logged as test/entity_f1/<type>
        self.test_entity_types = EntityTypeF1(self.label_names) if task_type == "token_classification" else None

        self.backbone.requires_grad_(False)  # the host is frozen; a method's adapters train
        # Checkpoints carry only trainable tensors; the frozen backbone comes from `backbone`.
        self.strict_loading = False
        self._fast_cpu_kernels = bool(fast_cpu_kernels)
        self._init_adapter = init_adapter

    def adapters_ready(self, trainable: Iterable[nn.Parameter] | None = None) -> None:
        """End of a method's ``__init__``, once its adapters are in ``self.backbone``: set their
        CPU kernels, make exactly the adapters (or ``trainable``, for a method whose trained
        tensors are not pefthub adapter layers) and the head trainable, then load
        ``model.init_adapter`` (its tensors need the adapters to exist)."""
        for module in self.backbone.modules():
            if hasattr(module, "fast_cpu_kernels"):
                module.fast_cpu_kernels = self._fast_cpu_kernels
        if trainable is None:
            mark_only_adapters_trainable(self.backbone)
        else:
            chosen = list(trainable)  # read before freezing: it may be a requires_grad filter
            self.backbone.requires_grad_(False)
            for param in chosen:
                param.requires_grad_(True)
        self.head.requires_grad_(True)
        if self._init_adapter is not None:
            self.load_init_adapter(self._init_adapter)

    # ------------------------------------------------------------------ method hooks

    def regularization(self) -> torch.Tensor | None:
        """Extra loss term added to the task loss during training (none by default)."""
        return None

    def penalty_gradients(self) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]] | None:
        """A penalty on the adapter parameters whose gradient the method computes itself:
        ``(value, [params], [∂value/∂param])``, or ``None`` (the default).

        Used instead of :meth:`regularization` for penalties that are a function of the
        parameters alone (AdaLoRA's orthogonality term, FW/IW-LoRA's weighted ‖ΔW‖²): written
        as batched closed-form products, they cost a few dozen ops per step, where autograd
        through the same penalty costs ~10 ops per matrix plus a second gradient path into
        every parameter (on a GPU the step is launch-bound). :meth:`on_after_backward` adds
        the gradients to ``.grad``; the value is logged as ``train/regularization``.
        """
        return None

    @torch.no_grad()
    def apply_penalty_gradients(self, scale: float | torch.Tensor = 1.0) -> torch.Tensor | None:
        """Add ``scale`` · the gradient of :meth:`penalty_gradients` to the parameters' ``.grad``
        (as if the penalty had been in the loss that was back-propagated); return its value."""
        penalty = self.penalty_gradients()
        if penalty is None:
            return None
        value, params, grads = penalty
        if not isinstance(scale, float) or scale != 1.0:
            torch._foreach_mul_(grads, scale)
        present = [(p.grad, g) for p, g in zip(params, grads, strict=True) if p.grad is not None]
        for param, grad in zip(params, grads, strict=True):
            if param.grad is None:
                param.grad = grad.clone()
        if present:
            torch._foreach_add_([p for p, _ in present], [g for _, g in present])
        return value

    def on_after_backward(self) -> None:
        """Closed-form penalty gradients (:meth:`penalty_gradients`), scaled as Lightning scales
        the loss: by 1 / ``accumulate_grad_batches`` and, under fp16, by the loss scale. Under
        DDP this runs after the all-reduce; the penalty's gradient is the same on every rank, so
        adding it there equals all-reducing it."""
        if type(self).penalty_gradients is PEFTModule.penalty_gradients:
            return
        scale: float | torch.Tensor = 1.0 / max(1, self.trainer.accumulate_grad_batches)
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None and getattr(scaler, "_scale", None) is not None:
            scale = scaler._scale * scale  # a device tensor: no host sync
        value = self.apply_penalty_gradients(scale)
        if value is not None:
            self.log("train/regularization", value, on_step=True, on_epoch=False)

    def configure_callbacks(self) -> list:
        return [StepTimer(), SaveAdapter(), RNGState()]

    # ------------------------------------------------------------------ forward / steps

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits, shape (batch, num_labels); (batch, seq, num_labels) for token tasks."""
        if self.compile:
            if self._compiled_forward is None:
                # dynamic=False: one graph per shape (bounded by data.pad_to_multiple_of)
                self._compiled_forward = torch.compile(self._forward, backend=self.compile_backend, dynamic=False)
            return self._compiled_forward(input_ids, attention_mask, token_type_ids)
        return self._forward(input_ids, attention_mask, token_type_ids)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        hidden = self.backbone(**kwargs).last_hidden_state
        if self.task_type == "token_classification":
            return self.head(self.head_dropout(hidden))
        return self.head(self.head_dropout(self.pool(hidden, attention_mask)))

    def pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            # index of the last non-padding token (works for left and right padding)
            positions = torch.arange(attention_mask.shape[1], device=hidden.device)
            last = (attention_mask.long() * positions).argmax(dim=1)
            return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)

    def task_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean loss over every labelled position (labels == -100 are ignored): cross-entropy,
        or the focal loss −(1 − p_y)^γ log p_y (``loss: focal``)."""
        logits, labels = logits.flatten(0, -2), labels.flatten()
        if self.loss_name == "focal":
            return focal_loss(logits, labels, self.focal_gamma)
        return F.cross_entropy(logits, labels, ignore_index=-100)

    def _logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self._logits(batch)
        task_loss = self.task_loss(logits, batch["labels"])
        loss = task_loss
        extra = self.regularization()
        if extra is not None:
            loss = loss + extra
            self.log("train/regularization", extra.detach(), on_step=True, on_epoch=False)
        # not on the progress bar: Lightning reads every progress-bar value back to the host
        # after each batch, a sync that stalls a GPU's launch queue (TensorBoard has the loss)
        self.log("train/loss", task_loss.detach(), on_step=True, on_epoch=True, batch_size=logits.shape[0])
        if self._trainer is not None and self.trainer.optimizers:
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)
        if self._check_loss_now() and not torch.isfinite(loss):
            self._stop_on_non_finite(loss)
        return loss

    def _check_loss_now(self) -> bool:
        """Whether this step reads the loss back to test it for NaN/inf. On the CPU that is free;
        on an accelerator it is a host sync (the launch queue drains), so it happens on logging
        steps only (``trainer.log_every_n_steps``, when Lightning reads the loss anyway): a
        non-finite loss is then caught within that many steps."""
        if self._trainer is None or self.device.type == "cpu":
            return True
        return is_logging_step(self.trainer)

    def _stop_on_non_finite(self, loss: torch.Tensor) -> None:
        """Stop before backward/optimiser step so the weights and checkpoints stay good."""
        last = getattr(self._trainer.checkpoint_callback, "last_model_path", "") if self._trainer is not None else ""
        raise NonFiniteLossError(
            f"training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); stopped before "
            f"the optimiser step. Last good checkpoint: {last or 'none written yet'}. "
            "Lower model.optimizer's lr, or check the data for empty/degenerate examples."
        )

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str, metrics) -> None:
        logits = self._logits(batch)
        if "labels" not in batch:
            return
        loss = self.task_loss(logits, batch["labels"])
        predicted = logits.argmax(-1)
        metrics.update(predicted, batch["labels"])
        if stage == "test" and self.test_entity_types is not None:
            self.test_entity_types.update(predicted, batch["labels"])
        self.log(f"{stage}/loss", loss, on_epoch=True, batch_size=logits.shape[0], sync_dist=True)
        self.log_dict(metrics, on_epoch=True, prog_bar=stage == "val")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def on_test_epoch_end(self) -> None:
        if self.test_entity_types is not None and self.test_entity_types.update_count:
            per_type = self.test_entity_types.compute()
            self.log_dict({f"test/entity_f1/{name}": value for name, value in per_type.items()}, sync_dist=False)
            self.test_entity_types.reset()

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        probabilities = self._logits(batch).softmax(-1)
        predicted = probabilities.argmax(-1)
        if self.task_type == "token_classification":
            # per example: the labelled positions (first subwords) where labels exist, else every real token
            keep = batch["labels"] != -100 if "labels" in batch else batch["attention_mask"].bool()
            rows = [(p[k].tolist(), q.max(-1).values[k].tolist()) for p, q, k in zip(predicted, probabilities, keep, strict=True)]
            return {
                "prediction": [ids for ids, _ in rows],
                "label": [[self.label_names[i] for i in ids] for ids, _ in rows],
                "probability": [probs for _, probs in rows],
            }
        return {
            "prediction": predicted.tolist(),
            "label": [self.label_names[i] for i in predicted.tolist()],
            "probability": probabilities.max(-1).values.tolist(),
            "probabilities": probabilities.float().tolist(),  # every class, in label-id order
        }

    # ------------------------------------------------------------------ optimisation

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_groups(self) -> list[dict[str, Any]] | list[nn.Parameter]:
        """What the optimiser factory receives: the trainable parameters, or, with ``head_lr``,
        two groups (everything but the head; the head at ``head_lr``)."""
        params = self.trainable_parameters()
        if self.head_lr is None:
            return params
        head = {id(p) for p in self.head.parameters()}
        return [
            {"params": [p for p in params if id(p) not in head]},
            {"params": [p for p in params if id(p) in head], "lr": self.head_lr},
        ]

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameter_groups())
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.warmup_fraction * total)
        decay = self.lr_schedule == "linear"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if not decay:
                return 1.0
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    # ------------------------------------------------------------------ logging

    def on_train_start(self) -> None:
        figures = {
            "budget/trainable_params": float(sum(p.numel() for p in self.trainable_parameters())),
            "budget/adapter_params": float(sum(p.numel() for p in adapter_state(self.backbone).values())),
            "budget/adapter_bytes": float(self.adapter_file_bytes()),
        }
        for logger in self.loggers:
            logger.log_metrics(figures, step=self.global_step)

    def setup(self, stage: str) -> None:
        """Refuse a data module whose tokenizer does not belong to this backbone (token ids
        beyond the embedding table would otherwise fail deep inside the forward pass)."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        data_backbone = getattr(datamodule, "backbone", None)
        if data_backbone is not None and data_backbone != self.backbone_name:
            raise ValueError(
                f"data.backbone {data_backbone!r} (the tokenizer) differs from model.backbone {self.backbone_name!r}; "
                "set only model.backbone (the CLI links it to the data module)"
            )
        tokenizer = getattr(datamodule, "_tokenizer", None)
        embeddings = self.backbone.get_input_embeddings()
        if tokenizer is not None and embeddings is not None and len(tokenizer) > embeddings.num_embeddings:
            raise ValueError(
                f"the data module's tokenizer has {len(tokenizer)} tokens but model.backbone {self.backbone_name!r} "
                f"embeds only {embeddings.num_embeddings}: tokenizer and backbone do not belong together"
            )
