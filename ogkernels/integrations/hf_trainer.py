"""``OGLlavaTrainer``: ``transformers.Trainer`` whose training batches hold at most a token budget.

``OGLlavaTrainer(model=…, args=…, train_dataset=…, data_collator=OGLlavaCollator…,
token_budget=16384)`` trains on batches from :class:`~ogkernels.batch_sampler.TokenBudgetSampler`
(``per_device_train_batch_size`` is then unused): each packed row holds at most
``token_budget`` tokens, every sample once per epoch, equal batch counts on every rank. Without
``token_budget`` it is ``Trainer`` unchanged.

Each sample's packed length comes from, in this order: ``lengths`` (one int per sample of
``train_dataset``), ``length_column`` (a column of a ``datasets.Dataset``, or a key of each
sample), or the collator's :meth:`OGLlavaCollator.sample_length` on every sample (encodes the
whole dataset once, at the first ``get_train_dataloader``).

From ``args``: ``seed`` (``data_seed`` when set), ``world_size`` / ``process_index`` (the ranks),
``dataloader_drop_last`` (the sampler's ``drop_last``) and the loader's workers / pinning. The
sampler is rank-aware, so the ``BatchSamplerShard`` that ``accelerate`` wraps around a batch
sampler is made a pass-through (as ``Trainer`` does for its own ``BatchRebalanceSampler``);
``Trainer`` calls ``set_epoch`` on the sampler each epoch.

``loss_normalization="sample"`` trains on the mean over samples of each sample's token mean
(:func:`ogkernels.loss.packed_causal_lm_loss`) instead of the model's per-token loss; with
gradient accumulation ``Trainer`` then averages the micro-batches' losses
(``loss_is_scaled_for_ga = False``), so each micro-batch weighs the same.

``Trainer`` reads the number of batches per epoch once, before training; a token-budget plan's
count can differ by a batch or two between epochs (large datasets, several windows), so every
epoch is given the largest count of the epochs the run will go through, shorter epochs
repeating their first batches (:class:`EpochLengthBatches`).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any, Iterator, Sequence

from torch.utils.data import DataLoader, IterableDataset
from transformers import Trainer
from transformers.trainer_utils import seed_worker

import torch

from .._validation import check_choice, fail
from ..loss import NORMALIZATIONS, packed_causal_lm_loss
from ..batch_sampler import OVERSIZE, TokenBudgetSampler


class EpochLengthBatches:
    """A :class:`TokenBudgetSampler` with the same batch count in every one of ``epochs``
    epochs: the largest; an epoch with fewer batches repeats its first ones (on every rank
    alike). From epoch ``epochs`` on, batches are those of the sampler, padded or cut to that
    count."""

    def __init__(self, sampler: TokenBudgetSampler, epochs: int) -> None:
        if not isinstance(sampler, TokenBudgetSampler):
            fail("sampler", "a TokenBudgetSampler", sampler, error=TypeError)
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            fail("epochs", "an int >= 1", epochs)
        self.sampler = sampler
        self.num_batches = max(len(sampler.batches(e)) for e in range(epochs))

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.sampler.batches()
        if batches:
            batches = (batches * math.ceil(self.num_batches / len(batches)))[: self.num_batches]
        yield from batches


class OGLlavaTrainer(Trainer):
    """``Trainer`` with token-budget batches (module docstring).

    Args:
        *args, **kwargs: ``Trainer``'s.
        token_budget: the most tokens of one training batch (``>= 1``), or None (``Trainer``'s
            own batching).
        lengths: None, or each training sample's packed length (text + OG tokens).
        length_column: None, or where each sample holds its length.
        oversize: ``"error"`` or ``"drop"``: a sample longer than ``token_budget``
            (:class:`TokenBudgetSampler`).
        loss_normalization: ``"token"`` (the model's own loss, transformers' convention) or
            ``"sample"`` (module docstring).
    """

    def __init__(
        self,
        *args: Any,
        token_budget: int | None = None,
        lengths: Sequence[int] | Any = None,
        length_column: str | None = None,
        oversize: str = "error",
        loss_normalization: str = "token",
        **kwargs: Any,
    ) -> None:
        check_choice("loss_normalization", loss_normalization, NORMALIZATIONS)
        if token_budget is not None and (isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1):
            fail("token_budget", "None or an int >= 1", token_budget)
        if lengths is not None and length_column is not None:
            fail("length_column", "None when lengths is given (one source of lengths)", length_column, error=TypeError)
        if length_column is not None and not isinstance(length_column, str):
            fail("length_column", "None or a str", length_column, error=TypeError)
        if oversize not in OVERSIZE:
            fail("oversize", "one of " + ", ".join(map(repr, OVERSIZE)), oversize)
        super().__init__(*args, **kwargs)
        self.token_budget = token_budget
        self.train_lengths = lengths
        self.length_column = length_column
        self.oversize = oversize
        self.token_budget_sampler: TokenBudgetSampler | None = None
        self.loss_normalization = loss_normalization
        if loss_normalization == "sample":
            self.loss_is_scaled_for_ga = False  # a per-micro-batch mean: Trainer divides by the steps

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if self.loss_normalization == "token" or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        cu_seqlens = inputs.get("cu_seq_lens_q")
        if cu_seqlens is None:  # a padded (B, T) batch: each row is a sample
            rows, length = labels.shape
            cu_seqlens = torch.arange(rows + 1, device=labels.device, dtype=torch.int32) * length
            logits, labels = logits.reshape(1, rows * length, -1), labels.reshape(1, -1)
        loss = packed_causal_lm_loss(logits, labels, cu_seqlens, normalization="sample")
        return (loss, outputs) if return_outputs else loss

    def get_train_dataloader(self) -> DataLoader:
        if self.token_budget is None:
            return super().get_train_dataloader()
        dataset = self.train_dataset
        if dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
            fail("train_dataset", "a map-style dataset with __len__ (token_budget needs every length up front)", dataset, error=TypeError)
        sampler = self._token_budget_sampler(dataset)
        batches = EpochLengthBatches(sampler, self._epochs_to_plan(len(sampler)))

        collator = self.data_collator
        if _is_hf_dataset(dataset):
            dataset = self._remove_unused_columns(dataset, description="Training")
        else:
            collator = self._get_collator_with_removed_columns(collator, description="Training")
        args = self.args
        params: dict[str, Any] = {
            "batch_sampler": batches,
            "collate_fn": collator,
            "num_workers": args.dataloader_num_workers,
            "pin_memory": args.dataloader_pin_memory,
            "persistent_workers": args.dataloader_persistent_workers,
            "worker_init_fn": partial(seed_worker, num_workers=args.dataloader_num_workers, rank=args.process_index),
        }
        if args.dataloader_num_workers > 0:
            params["prefetch_factor"] = args.dataloader_prefetch_factor
            params["multiprocessing_context"] = args.dataloader_multiprocessing_context
        loader = self.accelerator.prepare(DataLoader(dataset, **params))
        shard = getattr(loader, "batch_sampler", None)
        if shard is not None and getattr(shard, "batch_sampler", None) is batches:
            shard.num_processes, shard.process_index = 1, 0  # the sampler is rank-aware already
        return loader

    # ------------------------------------------------------------------------------------------
    def _token_budget_sampler(self, dataset: Any) -> TokenBudgetSampler:
        args = self.args
        if self.token_budget_sampler is None:
            world = max(1, args.world_size)
            self.token_budget_sampler = TokenBudgetSampler(
                self._lengths(dataset),
                self.token_budget,
                seed=args.data_seed if args.data_seed is not None else args.seed,
                num_replicas=world,
                rank=args.process_index if world > 1 else 0,
                drop_last=args.dataloader_drop_last,
                oversize=self.oversize,
            )
        return self.token_budget_sampler

    def _lengths(self, dataset: Any) -> Any:
        if self.train_lengths is not None:
            lengths = self.train_lengths
        elif self.length_column is not None:
            column = self.length_column
            if _is_hf_dataset(dataset):
                if column not in dataset.column_names:
                    fail("length_column", f"a column of train_dataset ({', '.join(dataset.column_names)})", column)
                lengths = dataset[column]
            else:
                lengths = []
                for i in range(len(dataset)):
                    sample = dataset[i]
                    if column not in sample:
                        fail("length_column", f"a key of every sample (train_dataset[{i}] has {sorted(sample)})", column)
                    lengths.append(sample[column])
        else:
            measure = getattr(self.data_collator, "sample_length", None)
            if not callable(measure):
                fail(
                    "lengths",
                    "each sample's packed length (lengths=, length_column=, or a collator with sample_length such as "
                    "OGLlavaCollator)",
                    "none of them",
                )
            lengths = [measure(dataset[i], index=i) for i in range(len(dataset))]
        if hasattr(lengths, "__len__") and len(lengths) != len(dataset):
            fail("lengths", f"{len(dataset)} lengths (one per sample of train_dataset)", f"{len(lengths)} lengths")
        return lengths

    def _epochs_to_plan(self, first_epoch_batches: int) -> int:
        """The epochs this run may start (an upper bound): from ``max_steps`` or
        ``num_train_epochs``."""
        args = self.args
        if args.max_steps > 0:
            steps_per_epoch = max(1, math.ceil(first_epoch_batches / args.gradient_accumulation_steps))
            return math.ceil(args.max_steps / steps_per_epoch) + 1
        return max(1, math.ceil(args.num_train_epochs))


def _is_hf_dataset(dataset: Any) -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(dataset, datasets.Dataset)
