"""Per-sample gradient dot products with a validation gradient, inside one forward and backward.

The first-order term of in-run data Shapley (Wang et al., "Data Shapley in One Training Run",
ICLR 2025) needs, at every step and for every training sample i, ``<grad l(w, z_i), G_val>``
where ``G_val`` is the gradient of a validation batch's loss. The validation rows are appended
to the training batch, so one forward and one backward of ``[training rows; validation rows]``
leave, at every supported module, its input ``a`` and its output gradient ``b`` for every row.
A row's gradient of a weight is a sum over its tokens of outer products ``b_t (x) a_t``, so its
dot with ``G_val`` never needs the row's gradient itself. Exact for any validation batch size,
and a parameter used by several modules (a head tied to the embedding, a module called twice)
gets the sum of all its uses, per row and in ``G_val``, so the dots contain the cross terms.

Use (one optimizer step, ``A`` micro-steps)::

    engine = GradDot(model)
    with engine.step(n_train, n_val):      # micro-step 1: rows 0..n_train-1 train, the rest validation
        loss = loss_train + loss_val         # forward of the concatenated batch
    loss.backward()                        # once: a second backward in one step raises
    dots, val_sq_norm = engine.finish()    # .grad now holds the training rows' gradient only
    with engine.step(n_train, 0):          # micro-steps 2..A: training rows only,
        ...                                  # dotted with micro-step 1's G_val
    clip, optimizer.step(), zero_grad

Contract:

- Per-sample gradients are of each row's term *as it appears in the caller's loss*, with the
  caller's scaling: with ``loss_train = mean over the training rows' tokens``, row i's gradient
  is that of ``(1 / n_train) * mean over its tokens``; ``G_val`` is the gradient of ``loss_val``
  as written (divide both by ``grad_accum`` or not, as the loop does). Rescale the dots after.
- Rows do not interact in the forward (no batch norm, no attention across rows), and the first
  dimension of every hooked module's input is the row. One exception, for position tables: an
  ``nn.Embedding`` called with 1-D indices, or indices whose first dimension is 1, is shared by
  all rows (``x + wpe(arange(T))``); its output is expanded over the rows so that each row's
  gradient is seen, which assumes the caller broadcasts it against the batch.
- Supported: ``nn.Linear`` (weight, bias), ``nn.Embedding`` (not sparse, no
  ``scale_grad_by_freq``), ``nn.LayerNorm`` (weight, bias), exactly those classes. Any other
  trainable parameter raises at construction, naming it. A supported parameter also used
  outside its module (``x @ wte.weight.T``) is caught on the first ``verify_steps`` steps: the
  gradient rebuilt from the hooks is compared with the one autograd delivers to the parameter.
  Not under ``torch.compile``, activation checkpointing or FSDP (sharded parameters raise).
- Gradient accumulation: validation rows only in the first micro-step of an optimizer step;
  later micro-steps (``n_val=0``) use the ``G_val`` kept from it, and refuse to if a parameter
  was changed in place since (an optimizer step without new validation rows).
- Data parallel (DDP): ``reduce_val_gradient(list_of_tensors) -> list_of_tensors`` is applied
  to ``G_val`` (every trainable parameter, in a fixed order, the same on every rank) before the
  dots and the subtraction; pass a mean all-reduce. Subtracting the mean ``G_val`` is right
  whether or not this backward synchronised the gradients: the final all-reduce averages the
  local ``train + val - mean(val)``. The Gram route uses the local validation rows only, so it is
  off when a reduction is given.
- Precision: the dots and ``G_val`` are computed in the parameter's dtype promoted to at least
  float32. Under autocast the saved inputs are cast as autocast casts them, so the hooks see
  the operands autograd used; ``.grad - G_val`` then carries the low precision's rounding.

When the dots are taken: in steady state (after the ``verify_steps`` steps, and without
``reduce_val_gradient`` in a step with validation rows) a parameter's ``G_val`` and dots are
computed in backward, by the hook of the last of its uses to get its output gradient (a tied
head waits for the embedding, the last use in backward). Its tensors are let go there, so the
engine holds little beyond what backward holds anyway, and ``finish()`` only subtracts
``G_val`` and sums ``|G_val|^2``. While verifying, or when ``G_val`` must first be reduced
across ranks, everything waits for ``finish()``.

Memory: the hooked inputs (those autograd saves anyway) and the output gradients are held
from the forward until their parameter's dots are taken (above); ``G_val``, a copy of the
parameters in at least float32, is kept until the next step with validation rows. Holding
every output gradient to ``finish()`` costs more than memory: on a CPU, backward then gets
fresh pages instead of reused ones, page faults that were about a sixth of the engine's time
at d=128, T=256.

Routes for a weight use with shape (o, i), n training rows of T tokens and m validation rows
of S tokens (``G_val`` itself always costs ``2 m S o i``: it is subtracted from ``.grad``):

- ``"materialised"``: ``sum_t b_t . (G_val a_t)``, one GEMM of the training rows with ``G_val``:
  ``2 n T o i`` (an embedding: a gather of ``G_val`` rows, ``2 n T i``).
- ``"gram"``: ``sum_{t,s} (a_t . a'_s)(b_t . b'_s)`` over the validation rows of every use of
  the parameter: ``2 n T m S (o + i)`` per pair of uses. Cheaper when ``m S (o + i) < o i``:
  short validation rows and wide layers.

``route="auto"`` takes the cheaper per use; both are exact. Vectors (biases, norm weights) are
cheap: their per-row gradients are formed and dotted.
"""

from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

ROUTES = ("auto", "materialised", "gram")
SUPPORTED = (nn.Linear, nn.Embedding, nn.LayerNorm)


class StepDots(NamedTuple):
    dots: torch.Tensor         # (n_train,): <grad of row i's loss term, G_val>
    val_sq_norm: torch.Tensor  # (): |G_val|^2 over all trainable parameters


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


class _Matrix:
    """One use of a matrix W (o, i): row r's gradient is ``sum_t rows[r, t] (x) cols[r, t]``.
    ``rows`` is dense (B, T, o) or, for an embedding, token ids (B, T) standing for one-hot rows."""

    def __init__(self, rows, cols, o, dtype):
        self.rows, self.cols, self.o, self.dtype = rows, cols, o, dtype
        self.one_hot = not rows.is_floating_point()
        self.eps = max(torch.finfo(t.dtype).eps for t in ([cols] if self.one_hot else [rows, cols]))

    def _r(self, start, stop):
        rows = self.rows[start:stop]
        return rows.reshape(-1) if self.one_hot else rows.reshape(-1, self.o).to(self.dtype)

    def _c(self, start, stop):
        return self.cols[start:stop].reshape(-1, self.cols.shape[-1]).to(self.dtype)

    def row_sum(self, start, stop):
        """The gradient summed over rows start..stop-1."""
        rows, cols = self._r(start, stop), self._c(start, stop)
        if self.one_hot:
            return cols.new_zeros(self.o, cols.shape[-1]).index_add_(0, rows, cols)
        return rows.T @ cols

    def dot(self, G, n):
        """(n,): each of the first n rows' gradient dotted with G, without forming it."""
        cols = self._c(0, n)
        if self.one_hot and self.rows.stride(0) == 0:  # ids shared by all rows (positions): no gather
            return cols.reshape(n, -1) @ G[self.rows[0]].reshape(-1)
        rows = self._r(0, n)
        if self.one_hot:
            products = G[rows].mul_(cols)  # in place: every left operand here is new
        elif self.o >= cols.shape[-1]:  # the same FLOPs either way; the smaller intermediate
            products = (rows @ G).mul_(cols)
        else:
            products = (cols @ G.T).mul_(rows)
        return products.reshape(n, -1).sum(1)

    def gram_dot(self, val, n, m):
        """(n,): the first n rows of this use dotted with rows n..n+m-1 of ``val``, a use of the
        same parameter, as ``sum_{t,s} (rows_t . rows'_s)(cols_t . cols'_s)``."""
        cols = self._c(0, n) @ val._c(n, n + m).T  # (n T, m S)
        r, rv = self._r(0, n), val._r(n, n + m)
        if self.one_hot and val.one_hot:
            rows = (r[:, None] == rv[None, :]).to(cols.dtype)
        elif self.one_hot:
            rows = rv[:, r].T
        elif val.one_hot:
            rows = r[:, rv]
        else:
            rows = r @ rv.T
        return cols.mul_(rows).reshape(n, -1).sum(1)

    def materialised_flops(self, n):
        T, i = self.cols.shape[1:]
        return 2 * n * T * i * (1 if self.one_hot else self.o)

    def gram_flops(self, vals, n, m):
        T, i = self.cols.shape[1:]
        return sum(n * T * m * val.cols.shape[1] * (2 * i + (0 if self.one_hot or val.one_hot else 2 * self.o) + 1)
                   for val in vals)


class _Vector:
    """One use of a vector parameter: the rows' gradients themselves, (B, numel)."""

    def __init__(self, per_row, dtype, eps):
        self.per_row, self.eps = per_row.to(dtype), eps

    def row_sum(self, start, stop):
        return self.per_row[start:stop].sum(0)

    def dot(self, G, n):
        return self.per_row[:n] @ G.reshape(-1)


class _Call:
    """One call of a hooked module: what its forward saved and, after backward, its output gradient."""

    __slots__ = ("module", "saved", "grad", "step", "spent")

    def __init__(self, module, saved, step):
        self.module, self.saved, self.grad, self.step = module, saved, None, step
        self.spent = False  # its uses were taken in backward


class GradDot:
    """Hooks ``model``'s Linear, Embedding and LayerNorm modules; see the module docstring.

    ``route``: "auto", "materialised" or "gram" (forced wherever validation rows are in the step;
    steps without them have only the materialised route). ``verify_steps``: how many first steps
    check that the hooks saw every use of every parameter (costs one extra weight gradient, and
    those steps keep every output gradient to ``finish()``).
    """

    def __init__(self, model: nn.Module, *, route: str = "auto",
                 reduce_val_gradient: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
                 verify_steps: int = 1):
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}; known: {', '.join(ROUTES)}")
        if route == "gram" and reduce_val_gradient is not None:
            raise ValueError("route 'gram' sees only this rank's validation rows; with "
                             "reduce_val_gradient use 'materialised' or 'auto'")
        self.route, self._reduce, self.verify_steps = route, reduce_val_gradient, verify_steps
        names: dict[nn.Parameter, list[str]] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            names.setdefault(p, []).append(name)
        self._names = {p: " = ".join(n) for p, n in names.items()}
        self._params = [p for p in names if p.requires_grad]
        self._check_supported(model)
        hooks = {nn.Linear: self._save_linear, nn.Embedding: self._save_embedding,
                 nn.LayerNorm: self._save_layer_norm}
        self._handles = [m.register_forward_hook(hooks[type(m)]) for m in model.modules()
                         if type(m) in hooks and any(p.requires_grad for p in m.parameters(recurse=False))]
        self._calls: list[_Call] | None = None
        self._recording = self._eager = False
        self._batch = self._n_train = self._n_val = 0
        self._pending: dict[nn.Parameter, int] = {}  # uses recorded in the forward whose gradient is due
        self._arrived: dict[nn.Parameter, list] = {}  # uses whose gradient came, not yet dotted
        self._step_val: dict[nn.Parameter, torch.Tensor] = {}  # G_val of the parameters dotted in backward
        self._dots: torch.Tensor | None = None
        self._dots_dtype = torch.float64 if any(p.dtype == torch.float64 for p in self._params) else torch.float32
        self._val: dict[nn.Parameter, torch.Tensor] | None = None
        self._val_sq_norm = self._versions = None
        self._steps = 0
        self._captured: dict[nn.Parameter, torch.Tensor] = {}
        self._capture_handles: list = []
        self.last_routes: list[tuple[str, str]] = []  # (parameter, route) per matrix use, last step

    def _check_supported(self, model):
        bad = []
        for module_name, module in model.named_modules():
            for key, p in module.named_parameters(recurse=False):
                if not p.requires_grad:
                    continue
                where = f"{module_name}.{key}" if module_name else key
                if hasattr(p, "full_tensor"):
                    bad.append(f"'{where}' (a sharded DTensor: FSDP is not supported)")
                elif type(module) not in SUPPORTED:
                    bad.append(f"'{where}' (in a {type(module).__name__})")
                elif isinstance(module, nn.Embedding) and (module.sparse or module.scale_grad_by_freq):
                    bad.append(f"'{where}' (an Embedding with sparse or scale_grad_by_freq)")
        if bad:
            raise ValueError("GradDot cannot form per-sample gradients of " + ", ".join(bad)
                             + "; supported: trainable parameters of nn.Linear, nn.Embedding and "
                               "nn.LayerNorm (exactly these classes)")

    # ------------------------------------------------------------------ forward hooks
    def _record(self, module, saved, output):
        call = _Call(module, saved, self._steps)
        self._calls.append(call)
        for p in (getattr(module, "weight", None), getattr(module, "bias", None)):
            if p is not None and p.requires_grad:  # the parameters _uses() yields for this call
                self._pending[p] = self._pending.get(p, 0) + 1
        output.register_hook(lambda grad: self._take_grad(call, grad))

    def _take_grad(self, call, grad):
        """A call's output gradient, in backward. In steady state a parameter is dotted as soon as
        the gradients of all its uses are in, and its tensors are let go."""
        if self._calls is None or call.step != self._steps:
            return  # a graph from a finished step: nothing waits for it
        if call.grad is not None or call.spent:
            raise RuntimeError("a second gradient reached the output of a module in one GradDot step: "
                               "call backward once between step() and finish()")
        call.grad = grad.detach()
        if not self._eager:
            return
        n, m = self._n_train, self._n_val
        for p, use in self._uses(call):
            self._arrived.setdefault(p, []).append(use)
            self._pending[p] -= 1
            if self._pending[p] == 0:
                uses = self._arrived.pop(p)
                if m:
                    G = self._step_val[p] = self._row_sum(p, uses, n, n + m)
                else:
                    G = self._val[p]
                for u in uses:
                    self._dots += self._dot(p, u, G, uses, n, m).to(self._dots.dtype)
        call.saved, call.grad, call.spent = None, None, True  # its memory goes back during backward

    def _check_rows(self, module, x):
        if x.dim() < 2 or x.shape[0] != self._batch:
            raise ValueError(f"a {type(module).__name__} got an input of shape {tuple(x.shape)}; GradDot "
                             f"needs the step's {self._batch} rows as its first dimension")

    def _save_linear(self, module, args, output):
        if not self._recording or not output.requires_grad:
            return
        a = args[0].detach()
        self._check_rows(module, a)
        device_type = a.device.type
        if torch.is_autocast_enabled(device_type) and a.is_floating_point() and a.dtype != torch.float64:
            a = a.to(torch.get_autocast_dtype(device_type))  # the operand autograd saved
        self._record(module, (a,), output)

    def _save_embedding(self, module, args, output):
        if not self._recording or not output.requires_grad:
            return
        ids, B = args[0].detach(), self._batch
        if ids.dim() == 1:  # shared by all rows (positions): expanded so that each row's gradient shows
            ids, output = ids.expand(B, *ids.shape), output.expand(B, *output.shape)
        elif ids.shape[0] == 1 and B > 1:
            ids, output = ids.expand(B, *ids.shape[1:]), output.expand(B, *output.shape[1:])
        elif ids.shape[0] != B:
            raise ValueError(f"an Embedding got indices of shape {tuple(ids.shape)}; GradDot needs the "
                             f"step's {B} rows as their first dimension (or 1-D indices shared by all rows)")
        self._record(module, (ids,), output)
        return output

    def _save_layer_norm(self, module, args, output):
        if not self._recording or not output.requires_grad:
            return
        x = args[0].detach()
        self._check_rows(module, x)
        # the input, which autograd keeps anyway: normalised only when its gradient comes
        self._record(module, (x if module.weight is not None and module.weight.requires_grad else None,), output)

    # ------------------------------------------------------------------ per-use gradients
    def _uses(self, call):
        """(parameter, use) pairs of one module call."""
        m, B, b = call.module, self._batch, call.grad
        eps = torch.finfo(b.dtype).eps

        def trainable(p):
            return p is not None and p.requires_grad

        def dtype(p):
            return _compute_dtype(p.dtype)

        if isinstance(m, nn.Linear):
            a, b = call.saved[0], b.reshape(B, -1, b.shape[-1])
            if trainable(m.weight):
                yield m.weight, _Matrix(b, a.reshape(B, -1, a.shape[-1]), m.out_features, dtype(m.weight))
            if trainable(m.bias):
                yield m.bias, _Vector(b.to(dtype(m.bias)).sum(1), dtype(m.bias), eps)
        elif isinstance(m, nn.Embedding):
            ids = call.saved[0].reshape(B, -1)
            b = b.reshape(B, ids.shape[1], -1)
            if m.padding_idx is not None:  # the padding row gets no gradient
                b = b.masked_fill((ids == m.padding_idx)[..., None], 0)
            yield m.weight, _Matrix(ids, b, m.num_embeddings, dtype(m.weight))
        else:  # LayerNorm
            width = m.weight.numel() if m.weight is not None else m.bias.numel()
            b = b.reshape(B, -1, width)
            if trainable(m.weight):
                w, x = dtype(m.weight), call.saved[0]
                # one fused kernel with the module's mean and 1/std (var_mean and arithmetic cost 8x);
                # in float32 at least, as layer_norm runs under autocast
                x_hat = F.layer_norm(x.to(_compute_dtype(x.dtype)), m.normalized_shape, None, None, m.eps)
                yield m.weight, _Vector((b.to(w) * x_hat.reshape(B, -1, width).to(w)).sum(1), w, eps)
            if trainable(m.bias):
                yield m.bias, _Vector(b.to(dtype(m.bias)).sum(1), dtype(m.bias), eps)

    # ------------------------------------------------------------------ the protocol
    @contextlib.contextmanager
    def step(self, n_train: int, n_val: int):
        """Record the forward of ``n_train`` training rows followed by ``n_val`` validation rows."""
        if self._calls is not None:
            raise RuntimeError("GradDot.step() again before finish() of the previous step")
        if n_train < 1 or n_val < 0:
            raise ValueError(f"n_train must be >= 1 and n_val >= 0, got {n_train} and {n_val}")
        if n_val == 0:
            if self._val is None:
                raise RuntimeError("no validation gradient yet: the first micro-step of an optimizer "
                                   "step must include validation rows (n_val > 0)")
            if [p._version for p in self._params] != self._versions:
                raise RuntimeError("the parameters changed since the validation gradient was computed: "
                                   "each optimizer step's first micro-step must include validation rows")
        self._n_train, self._n_val, self._batch = n_train, n_val, n_train + n_val
        self._calls, self._pending, self._arrived, self._step_val = [], {}, {}, {}
        self._dots = torch.zeros(n_train, dtype=self._dots_dtype, device=self._params[0].device)
        self.last_routes = []
        verifying = self._steps < self.verify_steps
        # G_val of a step with validation rows is complete in backward unless it must be reduced first
        self._eager = not verifying and (n_val == 0 or self._reduce is None)
        if verifying:
            self._captured = {}
            self._capture_handles = [p.register_hook(self._capture(p)) for p in self._params]
        self._recording = True
        try:
            yield self
        except BaseException:
            self._calls = None
            self._remove_capture()
            raise
        finally:  # the forward is recorded; the output gradients arrive in backward, inside or after
            self._recording = False

    def _capture(self, p):
        def hook(grad):  # this backward's gradient of p, all uses, before accumulation and DDP
            self._captured[p] = grad.detach().clone()
        return hook

    def _remove_capture(self):
        for handle in self._capture_handles:
            handle.remove()
        self._capture_handles = []

    def finish(self) -> StepDots:
        """After backward: the dots, ``|G_val|^2``, and ``.grad`` left with the training rows' part."""
        if self._calls is None:
            raise RuntimeError("GradDot.finish() without a step")
        calls, self._calls, self._recording = self._calls, None, False
        self._remove_capture()
        n, m = self._n_train, self._n_val
        uses = self._arrived  # what backward did not dot: everything, or uses of a parameter still due
        for call in calls:
            if call.grad is not None:
                for p, use in self._uses(call):
                    uses.setdefault(p, []).append(use)
        if m:
            val = [self._step_val[p] if p in self._step_val else self._row_sum(p, uses.get(p, []), n, n + m)
                   for p in self._params]
            if self._reduce is not None:
                val = list(self._reduce(val))
            self._val = dict(zip(self._params, val))
            self._val_sq_norm = sum(torch.dot(g.reshape(-1), g.reshape(-1)).double() for g in val)
        dots = self._dots
        for p, us in uses.items():
            G = self._val[p]
            for use in us:
                dots += self._dot(p, use, G, us, n, m).to(dots.dtype)
        if self._steps < self.verify_steps:
            self._verify(uses)
        if m:
            for p in self._params:
                if p.grad is not None:
                    p.grad.sub_(self._val[p].to(p.grad.dtype).view_as(p.grad))
            # after the subtraction: .grad is not a parameter, so its version does not count
            self._versions = [p._version for p in self._params]
        self._arrived, self._step_val, self._pending, self._dots = {}, {}, {}, None
        self._steps += 1
        return StepDots(dots, self._val_sq_norm.to(dots.dtype))

    def _row_sum(self, p, uses, start, stop):
        if len(uses) == 1:
            return uses[0].row_sum(start, stop).view(p.shape)
        total = torch.zeros(p.shape, dtype=_compute_dtype(p.dtype), device=p.device)
        for use in uses:
            total += use.row_sum(start, stop).view(p.shape)
        return total

    def _dot(self, p, use, G, uses, n, m):
        if isinstance(use, _Vector):
            return use.dot(G, n)
        gram = m > 0 and (self.route == "gram" or (
            self.route == "auto" and self._reduce is None
            and use.gram_flops(uses, n, m) < use.materialised_flops(n)))
        self.last_routes.append((self._names[p], "gram" if gram else "materialised"))
        if gram:
            return sum(use.gram_dot(val, n, m) for val in uses)
        return use.dot(G.view(use.o, -1), n)

    def _verify(self, uses):
        """Every parameter's gradient from the hooks equals autograd's: no use went unseen."""
        for p in self._params:
            got = self._captured.get(p)
            if got is None:  # no gradient reached p in this backward
                continue
            rebuilt = self._row_sum(p, uses.get(p, []), 0, self._batch)
            tol = max([torch.finfo(got.dtype).eps] + [u.eps for u in uses.get(p, [])]) ** 0.5
            error = (rebuilt - got.to(rebuilt.dtype)).norm()
            scale = max(got.norm().item(), rebuilt.norm().item())
            if error.item() > tol * scale:
                raise RuntimeError(f"parameter '{self._names[p]}' gets gradient that the GradDot hooks do not "
                                   f"see (relative difference {error.item() / scale:.3g}): is it used outside "
                                   f"its module, e.g. F.linear(x, weight) or x @ weight.T? Only calls of "
                                   f"nn.Linear, nn.Embedding and nn.LayerNorm modules are seen")

    def close(self):
        """Remove the hooks and drop everything saved."""
        for handle in self._handles:
            handle.remove()
        self._remove_capture()
        self._handles, self._calls, self._val, self._captured = [], None, None, {}
        self._arrived, self._step_val, self._pending = {}, {}, {}
