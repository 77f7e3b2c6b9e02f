"""GradDotProd in the shared training loop: in-run data attribution at no second backward.

With ``method="graddotprod"`` every micro-step's forward and backward go through the
``GradDot`` engine (``workloads/graddot.py``): the first micro-step of an optimizer step carries
this rank's share of ``val_batch_size`` validation rows after its training rows; the engine
gives each training sample's ``<grad l_i, G_val>`` and leaves the training rows' gradient in
``.grad``, so clipping, AdamW, DDP and accumulation then run as in regular training.

- Validation rows: step t takes rows ``(t-1) V .. t V - 1`` of ``attribution_dataset``'s
  validation stream (``TokenData.val_stream``: the whole held-out split, a permutation per pass,
  from the seed), rank r the r-th equal share. With DDP, ``G_val`` is all-reduced (mean) before
  the dots, so every rank's samples are dotted with the same gradient of all ``V`` rows.
- Scale: the loop's loss is ``mean over the training rows / grad_accum``, so the engine's dot of
  row i is ``<grad l_i, G_val> / (rows * grad_accum)``; it is logged unscaled, as ``dotlog``
  defines it.
- Log: kept on the device until a save (every ``dot_prod_save_interval`` steps, before each
  checkpoint, on divergence and at the end; every rank at the same steps, as the per-step
  validation loss is averaged over the ranks then), then one chunk per rank. A resumed run first
  drops what the log holds past its checkpoint. At the end rank 0 writes the value table.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from workloads import dotlog
from workloads.data import TokenData, get_tokenizer, load_tokens
from workloads.graddot import GradDot


def load_attribution_data(spec, cache=None) -> TokenData:
    """``attribution_dataset`` as token windows (its held-out split gives the validation rows)."""
    return TokenData(load_tokens(spec.attribution_dataset, get_tokenizer(spec), cache), spec.seq_length, spec.seed)


def _mean_all_reduce(world: int):
    def reduce(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        flat /= world
        return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
    return reduce


class Attribution:
    """One run's GradDotProd: the engine, the validation rows and the dot-product log."""

    def __init__(self, spec, model, paths, data, val_data: TokenData, rank: int, world: int, device,
                 start_step: int):
        self.spec, self.data, self.val_data = spec, data, val_data
        self.rank, self.world, self.device = rank, world, device
        self.val_rows = spec.val_batch_size // world
        self.engine = GradDot(model, reduce_val_gradient=_mean_all_reduce(world) if world > 1 else None)
        self.directory = paths.grad_dotprods_dir
        if rank == 0:  # before any rank can write: the others write only after step 1's collectives
            self.directory.mkdir(parents=True, exist_ok=True)
            dotlog.truncate_after(self.directory, start_step)
        self._steps: list[dict] = []
        self._micro: dict = {}

    def backward(self, forward, autocast, inputs: tuple, first_sample: int, micro: int, grad_accum: int):
        """Forward and backward of one micro-step (with validation rows in the first); returns
        the training rows' loss / grad_accum, detached, as the regular loop's ``loss``."""
        n = inputs[0].shape[0]
        m = self.val_rows if micro == 0 else 0
        if m:
            step_index = first_sample // (n * grad_accum * self.world)  # 0-based optimizer step
            first_val = step_index * self.spec.val_batch_size + self.rank * m
            val = self.val_data.inputs(self.val_data.val_stream(first_val, m), self.device)
            inputs = tuple(torch.cat([a, b]) for a, b in zip(inputs, val))
        with self.engine.step(n, m):
            with autocast:
                rows = forward(*inputs, per_row=True)
        train_loss = rows[:n].mean() / grad_accum
        (train_loss + rows[n:].mean() if m else train_loss).backward()
        dots, val_sq_norm = self.engine.finish()
        record = self._micro
        if m:
            record.update(val_loss=rows[n:].detach().mean(), val_sq_norm=val_sq_norm, dots=[], losses=[], samples=[], examples=[])
        record["dots"].append(dots * (n * grad_accum))
        record["losses"].append(rows[:n].detach())
        record["samples"].append(np.arange(first_sample, first_sample + n, dtype=np.int64))
        record["examples"].append(self.data.example_ids(first_sample, n))
        return train_loss.detach()

    def end_step(self, step: int, lr: float) -> None:
        self._steps.append({**self._micro, "step": step, "lr": lr})
        self._micro = {}
        if step % self.spec.dot_prod_save_interval == 0:
            self.flush()

    def flush(self) -> None:
        """Write the steps since the last save, one chunk for this rank (every rank calls it)."""
        if not self._steps:
            return
        steps, self._steps = self._steps, []
        val_loss = torch.stack([s["val_loss"].double() for s in steps])
        if self.world > 1:
            dist.all_reduce(val_loss)
            val_loss /= self.world
        val_loss = val_loss.tolist()
        columns = {name: [] for name in dotlog.COLUMNS}
        for s, loss_val in zip(steps, val_loss):
            samples = np.concatenate(s["samples"])
            count = len(samples)
            columns["step"].append(np.full(count, s["step"]))
            columns["sample"].append(samples)
            columns["example"].append(np.concatenate(s["examples"]))
            columns["rank"].append(np.full(count, self.rank))
            columns["dot"].append(torch.cat(s["dots"]).double().cpu().numpy())
            columns["loss"].append(torch.cat(s["losses"]).double().cpu().numpy())
            columns["lr"].append(np.full(count, s["lr"]))
            columns["val_loss"].append(np.full(count, loss_val))
            columns["val_grad_sq_norm"].append(np.full(count, float(s["val_sq_norm"])))
        dotlog.write_chunk(self.directory, self.rank, {k: np.concatenate(v) for k, v in columns.items()})

    def close(self, completed: bool) -> None:
        """Save what is left; at the end of a completed run rank 0 writes the value table."""
        self.flush()
        self.engine.close()
        if not completed:
            return
        if self.world > 1:
            dist.barrier()  # every rank's last chunk is on disk
        if self.rank == 0:
            dotlog.write_values(self.directory, dotlog.sample_values(dotlog.read_dots(self.directory)))
