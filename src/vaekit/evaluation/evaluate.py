"""Held-out evaluation in nats per example: the training loss terms, and the
importance-sampled log-likelihood with active units (the numbers papers report)."""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from pathlib import Path

import torch

from ..accel.graph_rewrites import compile_for_evaluation
from ..config.schema import NLL_PRECISIONS, TrainConfig, options_of
from ..data.dataset import Dataset, batches, load_run_data, shard_batches
from ..distributed import ALONE, World
from ..errors import ConfigError
from ..models.distributions import batch_shard
from ..models.family import MODELS
from ..models.objectives import LossContext, get_loss, log_weights_at, posterior
from ..runtime import autocast, keep_freed_memory, resolve_device, resolve_precision
from ..store.checkpoint import load_model
from .eta import TimeLeft

IMAGES_PER_CALL = 4   # log_likelihood's chunks hold samples of at least this many images


@torch.no_grad()
def evaluate(model, ds: Dataset, train_cfg: TrainConfig, batch_size: int = 1000, epoch: float = math.inf,
             precision: str | None = None, dataset_size: int = 0, world: World = ALONE) -> dict[str, float]:
    """Mean of the training loss terms over `ds` (z sampled, as in training), in nats/example: 'loss' is the
    objective at the schedule's weight after `epoch` epochs (inf: the end of every schedule), 'neg_elbo' the
    plain -ELBO, recon + KL, whatever the weights. With several processes (`world`), each scores its rows of every
    batch with the noise one process would draw for them, and the sums are added up: the same numbers."""
    loss_fn = get_loss(train_cfg.loss, model)
    ctx = LossContext(train_cfg, epoch, dataset_size)
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    for xb, yb, shard in shard_batches(ds, batch_size, world):
        with autocast(xb.device, precision or train_cfg.precision), batch_shard(*shard):
            terms = loss_fn(model.given(yb), xb, ctx)
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v.double().sum()
    model.train(was_training)
    keys = sorted(totals)
    summed = world.sum(torch.stack([totals[k] for k in keys])).tolist() if keys else []
    means = {k: v / len(ds) for k, v in zip(keys, summed, strict=True)}
    return {**means, "neg_elbo": means["recon"] + means["kl"]}


MAX_K = 1_000_000   # importance samples per example: 200x the papers' 5,000, a day of CPU for MNIST's test set


@torch.no_grad()
def log_likelihood(model, ds: Dataset, k: int = 5000, chunk_size: int | None = None, batch_size: int | None = None,
                   precision: str = "fp32", max_rows: int = 2_500, compile: bool | None = None, progress=None) -> dict:
    """Importance-sampled log p(x) with the encoder as proposal (Burda et al. 2016, eq. 8):

        log p(x) ~= logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k,  z_i ~ q(z|x).

    Vectorised over images and samples; samples come in chunks of `chunk_size` per image and
    about `max_rows` decoder rows at a time (2,500 keeps a chunk's activations in cache: on this
    project's CPU 20% faster than 10,000, 4x faster than 50,000), so memory is bounded whatever k; the log-sum-exp
    is accumulated across chunks in float64. By default a chunk holds at least IMAGES_PER_CALL images (k = 5,000:
    625 samples of 4 images), so the encoder and the per-image work run once per 4 images: measured on this
    project's 2-core AMD EPYC, 0.16 ms per 2,500 rows outside the compiled chunk, against 0.33 ms with one image.
    With `compile` (default: when N * k >= 1e7, or int8) the decoder and log-density are fused by torch.compile (the
    noise eps is drawn outside it, by torch.randn, which is 6x faster than the generator torch.compile would inline).
    Returns nats per example (mean and standard error of -log p(x)), bits/dim, the ELBO terms from the same samples (closed-form
    KL), the active units (Cov_x E_q[z_u] > 0.01, Burda et al. sec. 5.2) and the precision used.

    precision: fp32; bf16 (autocast); auto: bf16 where this machine runs it faster, else fp32 (as training's auto);
    int8, opt-in only: bf16, and the compiled graph's bf16 products on a CPU in int8 (graph_rewrites.int8_products),
    faster on CPUs with VNNI or AMX. Measured with the mnist-fast preset's weights, the same samples: bf16 moved
    -log p(x) by +0.001 nats and int8 by +0.02 on 200 test images, where the standard error over the 10,000 is 0.25.
    """
    if k < 1:
        raise ConfigError(f"k={k} is impossible: use at least one importance sample")
    if k > MAX_K:
        raise ConfigError(f"k={k:,} (--nll-k) is impossible: use at most {MAX_K:,} importance samples per example (papers "
                          "use 5,000)" if k < 10**15 else f"k (--nll-k) of {k.bit_length()} bits is impossible: use at most {MAX_K:,}")
    if len(ds) == 0:
        raise ConfigError("there are no examples to estimate log p(x) on")
    chunk = min(k, chunk_size or max(1, max_rows // IMAGES_PER_CALL))
    batch_size = batch_size or max(1, max_rows // chunk)
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"chunk_size={chunk_size} (--chunk-size) is impossible: hold at least one sample per image at a time")
    was_training, t0 = model.training, time.perf_counter()   # the time includes compiling
    model.eval()
    compiled = (len(ds) * k >= 10**7 or precision == "int8") if compile is None else compile
    used = estimate_precision(precision, ds.device, compiled)
    keep_freed_memory()   # the chunks' buffers, reused instead of page-faulted in again at every call
    chunk_fn, used = _chunk_function(compiled, model, ds, used, min(batch_size, len(ds)), chunk)
    precision = _autocast_precision(used)
    prior = model.prior()
    # Results go into tensors allocated up front: small tensors kept from each batch would sit between
    # the chunks' large freed buffers and fragment glibc's heap (fp32 grew by 0.1 GB/s before this).
    n = len(ds)
    log_px, recon, kl = (torch.empty(n, dtype=torch.float64, device=ds.device) for _ in range(3))
    mu = None   # (n, numbers per code), once the first code says how many
    for start_row, (xb, yb) in zip(range(0, n, batch_size), batches(ds, batch_size)):
        rows = slice(start_row, start_row + len(xb))
        bound = model.given(yb)  # a conditional model: log p(x|y)
        with autocast(xb.device, precision):
            q = posterior(bound, xb)
        lse = torch.full((len(xb),), -math.inf, dtype=torch.float64, device=xb.device)
        sum_log_px_z = torch.zeros(len(xb), dtype=torch.float64, device=xb.device)
        sum_log_w = torch.zeros(len(xb), dtype=torch.float64, device=xb.device)
        for start in range(0, k, chunk):
            with autocast(xb.device, precision):
                # eps drawn eagerly: torch.randn is 6x faster than the generator torch.compile inlines
                eps = torch.randn((min(chunk, k - start), *q.noise_shape), device=xb.device)   # (chunk, B, D)
                chunk_lse, chunk_log_px_z, chunk_log_w = chunk_fn(bound, q, xb, eps)   # (B,) each
            lse = torch.logaddexp(lse, chunk_lse)
            sum_log_px_z += chunk_log_px_z
            sum_log_w += chunk_log_w
        log_px[rows] = lse - math.log(k)
        recon[rows] = -sum_log_px_z / k
        closed = prior.kl(q)   # else the Monte Carlo KL from the same samples: log q - log p = log p(x|z) - log w
        kl[rows] = closed.double() if closed is not None else (sum_log_px_z - sum_log_w) / k
        code = q.mode.float()
        if mu is None:
            mu = torch.empty(n, code.shape[-1], device=ds.device)
        mu[rows] = code
        if progress is not None:
            progress(len(xb))
    model.train(was_training)
    nll = -log_px
    n_dims = math.prod(ds.shape)
    return {"k": k, "n": len(nll), "nll": nll.mean().item(), "nll_se": (nll.std() / math.sqrt(len(nll))).item() if len(nll) > 1 else 0.0,
            "bits_per_dim": nll.mean().item() / (n_dims * math.log(2)), "neg_elbo": (recon + kl).mean().item(),
            "recon": recon.mean().item(), "kl": kl.mean().item(), "active_units": active_units(mu),
            "latent_dim": mu.shape[1], "precision": used, "seconds": time.perf_counter() - t0, "per_example_nll": nll}


def estimate_precision(precision: str, device: torch.device, compiled: bool) -> str:
    """fp32, bf16 or int8 for log_likelihood's `precision` (see there)."""
    if precision not in NLL_PRECISIONS:
        raise ConfigError(f"precision {precision!r} is unknown for the estimate; use {', '.join(NLL_PRECISIONS)}")
    if precision == "int8" and not (compiled and device.type == "cpu"):
        raise ConfigError("int8 products are a rewrite of the compiled estimate on a CPU: estimate on the CPU with "
                          "compile on, or use precision bf16")
    return resolve_precision(precision, device)


def _log_w(model, q, x: torch.Tensor, eps: torch.Tensor):
    """log w = log p(x|z) + log p(z) - log q(z|x) and log p(x|z) at the samples of q with noise eps (k, B, D):
    (k, B) each."""
    log_px_z, log_pz, log_qz = log_weights_at(model, x, *q.reparameterise_with_log_prob(eps))
    return log_px_z + log_pz - log_qz, log_px_z


def _autocast_precision(precision: str) -> str:
    """The autocast of an estimate precision: int8 is bf16 autocast plus the compiled graph's int8 products."""
    return "bf16" if precision == "int8" else precision


def _chunk_sums(model, q, x: torch.Tensor, eps: torch.Tensor):
    """A chunk's sums over its samples, (B,) each in float64: the log-sum-exp of log w, the sum of log p(x|z) and
    the sum of log w. Reduced inside the compiled graph: reduced eagerly, a 2,500 x 1 chunk cost 0.5 ms more (the
    eager log-sum-exp of a column alone 0.17 ms)."""
    log_w, log_px_z = _log_w(model, q, x, eps)
    log_w = log_w.double()
    return torch.logsumexp(log_w, 0), log_px_z.double().sum(0), log_w.sum(0)


def _chunk_function(compiled: bool, model, ds: Dataset, precision: str, batch_size: int, chunk: int):
    """The compiled chunk function (_chunk_sums) if asked for and it works here (tried once, before the loop, on the
    shapes of its first chunk, so the compilation is not wasted), else the eager one (the same numbers; bf16 for
    int8, which only the compiled graph has); and the precision it computes in."""
    if not compiled:
        return _chunk_sums, precision
    fn = _compiled_chunk_sums(precision == "int8")
    x = ds.head(batch_size)
    y = None if ds.y is None else ds.y[:batch_size]
    try:
        with autocast(x.device, _autocast_precision(precision)):
            q = posterior(model.given(y), x)
            fn(model.given(y), q, x, torch.zeros(chunk, *q.noise_shape, device=x.device))
    except Exception as e:  # no C++ compiler, unsupported backend...: same numbers, eager speed
        warnings.warn(f"torch.compile failed ({type(e).__name__}); estimating log p(x) without it", stacklevel=2)
        return _chunk_sums, _autocast_precision(precision)
    return fn, precision


@functools.cache
def _compiled_chunk_sums(int8: bool):
    # Model weights are graph inputs, not constants: the compiled function follows later updates (int8
    # quantises them in the graph, at every call).
    # (Freezing them into constants measured no faster here: 135 vs 140 s for k=5,000 x 10,000.)
    return compile_for_evaluation(_chunk_sums, int8)


def active_units(mu: torch.Tensor, threshold: float = 0.01) -> int:
    """Latent dimensions u with Cov_x(E_q[z_u | x]) > threshold; mu is (N, D) posterior means."""
    return int((mu.var(dim=0) > threshold).sum()) if len(mu) > 1 else 0


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """What evaluate_run (`vaekit eval RUN`) takes besides the run; each field is the flag of the same name."""

    split: str = "test"                # the split to score: test or val
    mc_samples: int | None = None      # samples of z per example (None: as trained)
    device: str = "auto"
    data_dir: str | None = None        # the dataset cache, if not where the run found it
    seed: int = 0                      # of the samples of z
    nll_k: int | None = None           # importance samples of the log p(x) estimate (None: no estimate)
    chunk_size: int | None = None      # samples per image held in memory at once (log_likelihood)
    precision: str | None = None       # of the loss terms (None: as trained)
    nll_precision: str | None = None   # of the estimate (None: precision, else auto)
    checkpoint: str = "last"           # the weights: last or best
    allow_changed_data: bool = False   # score the run's data even if its files changed since training
    limit: int | None = None           # score the first N examples of the split only (None: all)
    limit_random: bool = False         # limit: a random N of the split instead, drawn with `seed`
    progress: bool | None = None       # the estimate's progress: a bar (True), a line per 10% (False), None: a bar on a terminal


def evaluate_run(run_dir: str | Path, options: EvalOptions | None = None, **fields) -> dict:
    """`vaekit eval RUN`: the training loss terms on the test (or validation) split and, with
    nll_k, the importance-sampled negative log-likelihood with that many samples. options: an EvalOptions, or its
    fields as keywords (evaluate_run(run, nll_k=5000)). `precision` defaults to the training precision for the loss
    terms; the NLL's is nll_precision, else precision, else auto (log_likelihood)."""
    o = options_of(EvalOptions, options, fields)
    split, mc_samples, seed, nll_k, checkpoint = o.split, o.mc_samples, o.seed, o.nll_k, o.checkpoint
    precision = o.precision
    dev = resolve_device(o.device)
    model, config, epoch = load_model(run_dir, dev, checkpoint)
    if nll_k is not None and not model.stochastic:
        raise ConfigError(f"nll_k (--nll-k) estimates log p(x) by importance sampling from q(z|x); model {config.model.model!r} "
                          f"has no stochastic encoder{model.nll_hint}; use it on a run of a model with one ("
                          + ", ".join(name for name, cls in MODELS.items() if cls.stochastic) + ")")
    if split not in ("test", "val"):
        raise ConfigError(f"split {split!r} is unknown; use test or val")
    ds = getattr(load_run_data(config.data, o.data_dir, o.allow_changed_data), split)
    if ds is None:
        raise ConfigError(f"the run {run_dir} was trained with --val-size 0: it has no validation split")
    total = len(ds)
    if o.limit is not None:
        if o.limit < 1:
            raise ConfigError(f"limit={o.limit} (--limit) is impossible: score at least one example")
        idx = (torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:o.limit].sort().values
               if o.limit_random else torch.arange(min(o.limit, total)))
        ds = ds.subset(idx)
    ds = ds.to(dev)
    train_cfg = dataclasses.replace(config.train, **{k: v for k, v in (("mc_samples", mc_samples), ("precision", precision)) if v is not None})
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    terms = evaluate(model, ds, train_cfg)
    if not all(math.isfinite(v) for v in terms.values()):
        raise ConfigError(f"the {split} loss of {run_dir} is not finite ({terms}); the model or the data hold values it "
                          "cannot score: check the data, or retrain")
    result = {"run": str(run_dir), "checkpoint": checkpoint, "split": split, "epoch": epoch, "n": len(ds), "split_size": total,
              "model": config.model.model, "loss_name": train_cfg.loss, "mc_samples": train_cfg.mc_samples,
              "objective": terms.pop("loss"), **terms, "seconds": time.perf_counter() - t0,
              **model.evaluation_extras(ds)}
    if not model.has_elbo:   # recon + kl is no bound on anything for this model: not reported as one
        result.pop("neg_elbo", None)
    if nll_k is not None:
        torch.manual_seed(seed)
        # auto whatever the training precision: bf16 moves the NLL by < 0.01 nats, int8 by about 0.02
        shown = TimeLeft(len(ds), f"log p(x), k={nll_k:,}", o.progress)
        try:
            ll = log_likelihood(model, ds, nll_k, chunk_size=o.chunk_size, precision=o.nll_precision or precision or "auto",
                                progress=shown.update)
        finally:
            shown.close()
        ll.pop("per_example_nll")
        result["likelihood"] = ll
    return result
