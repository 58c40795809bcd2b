"""TaskDataModule: the shared LightningDataModule of every task family.

It resolves the backbone's tokenizer (``backbone`` is linked from ``model.backbone``),
loads splits as ``datasets`` Datasets, tokenises them with a cached ``datasets.map`` and
batches with dynamic padding. A task family supplies :meth:`load_splits` and
:meth:`tokenize_batch`.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch
from datasets import DatasetDict
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader
from transformers import DataCollatorWithPadding, PreTrainedTokenizerBase

from pefthub.backbones import load_tokenizer
from pefthub.data.resumable import ResumableDataLoader, SkippingSampler

SUBSET_SEED = 0
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "labels")


class TaskDataModule(LightningDataModule):
    """Shared data plumbing.

    Args:
        backbone: backbone name or path whose tokenizer is used; linked from
            ``model.backbone`` (set it there, not here).
        max_length: longest tokenised input; longer inputs are truncated.
        batch_size: training batch size.
        eval_batch_size: validation/test/predict batch size (default ``2 * batch_size``).
        num_workers: DataLoader worker processes.
        train_limit: use only ``train_limit`` training examples, drawn at random with the
            fixed seed 0 (the same subset whatever ``shuffle_seed`` is; builtin files keep
            their source order, which can be sorted by label), for quick runs; ``null`` uses all.
        eval_limit: likewise for validation and test.
        shuffle_seed: the training order of epoch e is a permutation drawn from seed
            ``shuffle_seed + e`` alone, so resumed runs see the same batches; ``null`` (the
            default) takes the run's ``seed_everything`` value (0 when none is set), so
            "3 seeds" also means 3 data orders.
        pad_to_multiple_of: pad each batch's length up to a multiple of this (``null``: to the
            batch's longest input). With ``model.compile: true`` it bounds the number of
            distinct shapes, hence recompilations (``max_length`` pads every batch to
            ``max_length``: one shape).
    """

    task_type = "sequence_classification"

    def __init__(
        self,
        backbone: str = "tiny-bert",
        max_length: int = 128,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        train_limit: int | None = None,
        eval_limit: int | None = None,
        shuffle_seed: int | None = None,
        pad_to_multiple_of: int | None = None,
    ) -> None:
        super().__init__()
        for key, value in (("max_length", max_length), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"data.{key} must be >= 1, got {value}")
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"data.pad_to_multiple_of must be >= 1 or null, got {pad_to_multiple_of}")
        self.pad_to_multiple_of = pad_to_multiple_of
        self.backbone = backbone
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers
        self.train_limit = train_limit
        self.eval_limit = eval_limit
        self.shuffle_seed = shuffle_seed
        if shuffle_seed is None:
            # seed_everything (LightningCLI's `seed_everything` key) records its seed here
            self.shuffle_seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self.datasets: DatasetDict | None = None
        self.inputs: dict[str, Any] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._train_position: dict[str, int] | None = None

    # ------------------------------------------------------------------ family hooks

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def label_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def primary_metric(self) -> str:
        """The metric checkpointing and early stopping should monitor (``val/<name>``)."""
        return "accuracy"

    def load_splits(self) -> DatasetDict:
        """Raw splits (``train``/``validation``/``test``) as a DatasetDict."""
        raise NotImplementedError

    def tokenize_batch(self, batch: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
        raise NotImplementedError

    def fingerprint_parts(self) -> tuple:
        """Everything besides the raw data that determines the tokenised result."""
        return (type(self).__name__, self.backbone, self.max_length)

    # ------------------------------------------------------------------ plumbing

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.backbone)
        return self._tokenizer

    def setup(self, stage: str | None = None) -> None:
        if self.datasets is not None:
            return
        raw = self.load_splits()
        tokenizer = self.tokenizer
        vocab_digest = hashlib.sha256(repr(sorted(tokenizer.get_vocab().items())).encode()).hexdigest()[:16]
        tokenized = {}
        self.inputs = {}
        for split, dataset in raw.items():
            limit = self.train_limit if split == "train" else None if split == "predict" else self.eval_limit
            if limit is not None and limit < len(dataset):
                # a seeded random subset: the first rows of a file may all share a label
                dataset = dataset.shuffle(seed=SUBSET_SEED).select(range(limit)).flatten_indices()
            self.inputs[split] = dataset  # the rows before tokenising, in loader order (predictions files)
            key = repr((dataset._fingerprint, self.fingerprint_parts(), vocab_digest))
            fingerprint = hashlib.sha256(key.encode()).hexdigest()[:16]
            dataset = dataset.map(
                self.tokenize_batch,
                fn_kwargs={"tokenizer": tokenizer},
                batched=True,
                remove_columns=dataset.column_names,
                new_fingerprint=fingerprint,
                desc=f"tokenising {split}",
            )
            tokenized[split] = dataset.with_format(columns=[c for c in MODEL_INPUTS if c in dataset.column_names])
        self.datasets = DatasetDict(tokenized)

    def collator(self):
        """Batch collation: dynamic padding (token tasks override it to pad labels with -100)."""
        return DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=self.pad_to_multiple_of, return_tensors="pt")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if self.datasets is None:
            self.setup()
        if split not in self.datasets:
            raise ValueError(f"this task has no {split!r} split (it has {list(self.datasets)})")
        dataset = self.datasets[split]
        # training: resumable mid-epoch (Lightning saves and restores its position)
        return (ResumableDataLoader if shuffle else DataLoader)(
            dataset,
            batch_size=self.batch_size if shuffle else self.eval_batch_size,
            sampler=self._training_sampler(dataset) if shuffle else None,
            num_workers=self.num_workers,
            collate_fn=self.collator(),
            persistent_workers=self.num_workers > 0,
            # each new iterator draws its worker base seed from this generator: from the global
            # RNG it would shift the dropout stream by one draw per loader pass, and a resumed
            # run builds its loaders at other points of that stream than the uninterrupted run
            generator=torch.Generator().manual_seed(self.shuffle_seed),
        )

    def _training_sampler(self, dataset) -> SkippingSampler:
        """Shuffled order drawn from ``shuffle_seed + epoch`` only (Lightning calls
        ``set_epoch``), so a resumed run sees the uninterrupted run's batches, also from a
        mid-epoch checkpoint (:mod:`pefthub.data.resumable`); ``RandomSampler``
        would draw its seed from the global RNG. Under DDP rank r takes positions r, r+W, ...
        of the same permutation, so W ranks with batch b see exactly the batches one process
        with batch W*b sees (Lightning keeps a DistributedSampler it is given)."""
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return SkippingSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.shuffle_seed)

    def train_dataloader(self) -> DataLoader:
        loader = self._loader("train", shuffle=True)
        if self._train_position:
            loader.load_state_dict(self._train_position)
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints: where the training loader stands in its epoch.

        Lightning has its own slot for a loader's state, but it restores it only when the train
        loader is first built after the loops are restored; pefthub's ``configure_optimizers``
        reads ``estimated_stepping_batches``, which builds the loader earlier, so that slot is
        never read back. The data module's state is restored before any loader is built."""
        return {"train_position": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # kept for every train loader built later in this run: the position only applies to a
        # pass over the checkpoint's epoch, so later loaders (reload_dataloaders_every_n_epochs) ignore it
        self._train_position = state_dict.get("train_position")
        if self._train_position and self._train_loader is not None:
            self._train_loader.load_state_dict(self._train_position)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_split(), shuffle=False)

    def predict_split(self) -> str:
        """The split ``predict`` reads: ``predict`` (``data.predict_file``) when set, else ``test``."""
        if self.datasets is None:
            self.setup()
        return "predict" if "predict" in self.datasets else "test"
