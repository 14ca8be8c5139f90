"""Latent-variable models: small nn.Modules whose encode/decode return distributions.

A variant that differs only in its objective (beta-VAE, IWAE, ...) is a loss in
vaekit.models.objectives, not a new class here.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..config.schema import ModelConfig, TrainConfig, unknown
from ..data.dataset import Dataset, batches
from ..errors import ConfigError
from ..torch_private import is_fake
from .distributions import DiagonalGaussian, PointMass
from .hierarchy import HierarchicalPosterior, build_hierarchy
from .likelihoods import get_likelihood
from .nets import ARCHITECTURES, grid_size
from .posteriors import GaussianPosterior, build_posterior
from .priors import build_prior
from .vq import CodePrior, Quantised, VectorQuantiser, codebook_usage, fit_code_prior


class LatentModel(nn.Module):
    """Shared body: an encoder x -> (encoder_outputs * latent_dim) and a decoder z -> p(x|z), both built by
    the config's architecture (vaekit.models.nets.ARCHITECTURES), and a prior p(z) from vaekit.models.priors.PRIORS.

    What is special about a model lives here, in hooks that do nothing by default and that the
    training loop, the evaluation and the figures call without asking which model it is:
    validation_extras (numbers logged each epoch), after_training (a fit once the weights are
    final), evaluation_extras (numbers `vaekit eval` adds)."""

    encoder_outputs = 1  # numbers per latent dimension the encoder emits
    default_loss = "ae"
    conditional = False  # True: encoder and decoder take the label y too (bind it with given(y))
    stochastic = False   # True: encode(x) is a density q(z|x) (the ELBO, IWAE and log p(x) estimates apply)
    discrete = False     # True: z is codebook entries with a fitted prior over their indices (the VQ-VAE)
    reads = ("prior",)   # the ModelConfig / TrainConfig fields only some models read (vaekit.training.resolve refuses the rest)
    nll_hint = ""        # why --nll-k does not apply, for a model that is not stochastic
    no_one_graph = ""    # why the compiled step cannot hold forward, backward and Adam in one graph ("": it can)
    has_elbo = True      # False: the model bounds no likelihood (the AE), and eval reports no -ELBO for it

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch not in ARCHITECTURES:
            raise unknown(ModelConfig, "arch", config.arch, ARCHITECTURES)
        self.config = config
        self.likelihood = get_likelihood(config.likelihood)(config)
        self.q_head = self.build_posterior(config)   # before the nets: it says how many numbers the encoder emits
        self.encoder, self.decoder = ARCHITECTURES[config.arch](
            config, self.encoder_size, self.likelihood.params_per_feature,
            z_size=self.z_size, cond_dim=config.num_classes if self.conditional else 0, grid_dim=self.grid_dim)
        self.latent_prior = self.build_prior(config)

    def build_prior(self, config: ModelConfig) -> nn.Module | None:
        return build_prior(config, self)

    def build_posterior(self, config: ModelConfig) -> nn.Module | None:
        """The head that turns the encoder's output into q(z|x) (vaekit.models.posteriors); None: the encoder's output is the code."""
        return None

    # ---- hooks: nothing by default
    def validation_extras(self, val: Dataset) -> dict[str, float]:
        """Numbers to log each epoch beside the validation loss (as val_NAME in metrics.jsonl)."""
        return {}

    def after_training(self, train: Dataset, cfg: TrainConfig, log=print) -> bool:
        """Work once the weights are final (this call trained); True if it changed what must be saved."""
        return False

    def needs_after_training(self, cfg: TrainConfig) -> bool:
        """Whether after_training has work to do with these settings: until it is saved, the run's checkpoints say so,
        and eval, sample and the rest refuse them."""
        return False

    def evaluation_extras(self, ds: Dataset) -> dict:
        """Numbers `vaekit eval` reports besides the loss terms."""
        return {}

    def describe_latent(self) -> str:
        return f"latent_dim={self.config.latent_dim}"

    @property
    def shown_latent_dim(self) -> int:
        """The size of the codes figures show (and decode: grids, traversals): latent_dim."""
        return self.config.latent_dim

    def shown(self, z: torch.Tensor) -> torch.Tensor:
        """The part of a code (..., all latent numbers) that figures show: all of it."""
        return z

    grid_dim = 0  # > 0: a conv encoder/decoder with grid_dim numbers per position of the last feature map (VQ-VAE)

    @property
    def encoder_size(self) -> int:
        """Numbers per example that the encoder emits."""
        return self.encoder_outputs * self.config.latent_dim

    def encoder_parameters(self):
        """phi, the parameters of q(z|x): what an E-step of the alternating schedule updates."""
        return self.encoder.parameters()

    @property
    def z_size(self) -> int:
        """Numbers per example that the decoder takes: latent_dim (VQ-VAE: latent_dim codes x code_dim)."""
        return self.config.latent_dim

    def given(self, y: torch.Tensor | int | None):
        """The model with labels y bound, for losses and figures that only call encode(x) / decode(z);
        an unconditional model ignores y."""
        return self

    def prior(self):
        """p(z): the config's entry of vaekit.models.priors.PRIORS."""
        return self.latent_prior

    def decode(self, z: torch.Tensor):
        """z (..., D) -> p(x|z) over (..., C, H, W)."""
        return self.likelihood(self.decoder(z))

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def generate(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        """Decode z ~ p(z) (temperature scales its spread): (n, C, H, W), the mean of p(x|z) in [0, 1]."""
        z = self.prior().sample(n, temperature)
        return self.decode(z).mean.clamp(0, 1)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decode the posterior mode of each x: (B, C, H, W) -> (B, C, H, W)."""
        return self.decode(self.encode(x).mode).mean.clamp(0, 1)


def label_code(y: torch.Tensor | int, num_classes: int, lead: torch.Size, device) -> torch.Tensor:
    """One-hot codes of labels y ((B,) or one int) broadcast to (*lead, num_classes), e.g. lead (k, B) for k samples."""
    # a comparison with 0..K-1, not F.one_hot: the same codes, and no check of the labels' values that tracing with
    # fake tensors cannot make (the step built ahead of time); given() has checked them (check_labels)
    y = torch.as_tensor(y, device=device).long()
    return (y.unsqueeze(-1) == torch.arange(num_classes, device=device)).float().expand(*lead, num_classes)


def check_labels(y, num_classes: int) -> None:
    if y is None:
        raise ConfigError("the conditional VAE needs a label: pass one (--label N) or data with labels")
    y = torch.as_tensor(y)
    if torch.compiler.is_compiling() or torch.compiler.is_exporting() or is_fake(y):   # traced: values are not known
        return
    if y.dtype.is_floating_point or (y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes)):
        raise ConfigError(f"labels must be integers in 0..{num_classes - 1} (the classes this model was trained on); "
                          f"got {y.unique()[:5].tolist()}")


def check_label(model: LatentModel, label: int | None, name) -> None:
    """A --label for run `name`: refused for an unconditional model or outside its trained classes."""
    if label is None:
        return
    if not model.conditional:
        raise ConfigError(f"label={label} (--label): {name} is not a conditional model (train one with --model cvae)")
    if not 0 <= label < model.config.num_classes:
        raise ConfigError(f"label={label} (--label): {name} knows labels 0..{model.config.num_classes - 1}")


class Conditioned:
    """A conditional model with its labels bound: encode(x) and decode(z) as an unconditional
    model's, so every loss, the likelihood estimate and the figures apply unchanged."""

    def __init__(self, model: LatentModel, y: torch.Tensor | int):
        self.model, self.y = model, y

    def __getattr__(self, name):  # config, prior, likelihood, device, parameters ... of the model
        return getattr(self.model, name)

    def encode(self, x: torch.Tensor):
        return self.model.encode(x, self.y)

    def decode(self, z: torch.Tensor):
        return self.model.decode(z, self.y)

    def given(self, y):
        return self.model.given(y)

    generate = LatentModel.generate
    reconstruct = LatentModel.reconstruct


class AutoEncoder(LatentModel):
    """Deterministic baseline: z = f(x), trained on reconstruction alone."""

    has_elbo = False

    def encode(self, x: torch.Tensor) -> PointMass:
        return PointMass(self.encoder(x))


class VAE(LatentModel):
    """q(z|x) from the posterior registry (N(mu(x), diag(exp(logvar(x)))) by default), p(z) from the prior registry
    (N(0, I) by default) (Kingma & Welling 2014)."""

    stochastic = True
    default_loss = "elbo"
    reads = ("prior", "posterior")

    def build_posterior(self, config: ModelConfig) -> nn.Module:
        return build_posterior(config)

    @property
    def encoder_outputs(self) -> int:
        return self.q_head.outputs_per_dim

    def encode(self, x: torch.Tensor):
        return self.q_head(self.encoder(x))

    def gaussian_posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        """The diagonal Gaussian part of q(z|x) (before any flow): what the VampPrior mixes."""
        q = self.encode(x)
        return getattr(q, "base", q)


class HierarchicalVAE(VAE):
    """Two or more stochastic layers (Burda et al. 2016): p(x|z_1) p(z_1|z_2) ... p(z_L), q(z_1|x) q(z_2|z_1) ...;
    latent_dim is z_1, --upper-latent the sizes above it, --upper-hidden the widths between them; figures show z_L."""

    reads = ("prior", "upper_latent_dims", "upper_hidden_dims")

    def build_posterior(self, config: ModelConfig) -> nn.Module:
        return GaussianPosterior(config)   # q(z_1|x); the layers above it come with the prior

    def build_prior(self, config: ModelConfig) -> nn.Module:
        self.up, prior = build_hierarchy(self, config, build_prior)
        return prior

    def describe_latent(self) -> str:
        return "stochastic layers " + " -> ".join(map(str, self.latent_prior.sizes))

    def encode(self, x: torch.Tensor) -> HierarchicalPosterior:
        return HierarchicalPosterior(self.q_head(self.encoder(x)), self.up, self.latent_prior.sizes)

    def gaussian_posterior(self, x: torch.Tensor) -> DiagonalGaussian:
        return self.encode(x).top()

    def decode(self, z: torch.Tensor):
        """z: all layers [z_1, ..., z_L], or a top-layer code z_L alone (figures), decoded through the means below."""
        if z.shape[-1] == self.shown_latent_dim:
            z = self.latent_prior.descend(z)
        return self.likelihood(self.decoder(z[..., :self.config.latent_dim]))

    @property
    def shown_latent_dim(self) -> int:
        return self.latent_prior.sizes[-1]

    def shown(self, z: torch.Tensor) -> torch.Tensor:
        return z[..., -self.shown_latent_dim:]


class ConditionalVAE(VAE):
    """Conditional VAE (Sohn et al. 2015): q(z|x, y), p(x|z, y), p(z); the one-hot label
    joins the encoder's features and z. `vaekit sample RUN --label 7` draws that class."""

    conditional = True

    def __init__(self, config: ModelConfig):
        if config.num_classes < 1:
            raise ConfigError("the conditional VAE needs labelled data (num_classes >= 1): train it on data with labels "
                              "(MNIST, an image folder with sub-folders, a CSV with --label-column)")
        super().__init__(config)

    def code(self, y, lead: torch.Size) -> torch.Tensor:
        if y is None:
            check_labels(y, self.config.num_classes)   # says that a label is needed
        return label_code(y, self.config.num_classes, lead, self.device)

    def encode(self, x: torch.Tensor, y=None):
        return self.q_head(self.encoder(x, self.code(y, x.shape[:1])))

    def decode(self, z: torch.Tensor, y=None):
        c = self.code(y, z.shape[:-1])                   # (..., K): z may carry a leading sample dimension
        return self.likelihood(self.decoder(torch.cat([z, c.to(z.dtype)], dim=-1)))

    def given(self, y) -> Conditioned:
        check_labels(y, self.config.num_classes)
        return Conditioned(self, y)

    def classes_in_turn(self, n: int) -> torch.Tensor:
        """Labels 0, 1, ..., K-1, 0, ... for n draws: (n,)."""
        return torch.arange(n, device=self.device) % self.config.num_classes

    def generate(self, n: int, temperature: float = 1.0, label=None) -> torch.Tensor:
        """n draws; with no label, the classes in turn (0, 1, ..., K-1, 0, ...)."""
        return self.given(self.classes_in_turn(n) if label is None else label).generate(n, temperature)

    def reconstruct(self, x: torch.Tensor, y=None) -> torch.Tensor:
        return self.given(y).reconstruct(x)


class VQVAE(LatentModel):
    """VQ-VAE (van den Oord et al. 2017): the encoder emits vectors z_e of code_dim numbers, each
    replaced by its nearest of codebook_size codes; the decoder sees the codes. arch conv: one code per
    position of the last feature map (a 7 x 7 grid for 28 x 28 images and two stride-2 convs); mlp:
    latent_dim codes. After training an autoregressive prior over the code indices (raster order) is
    fitted (TrainConfig.prior_epochs), and generation decodes codes drawn from it."""

    default_loss = "vq"
    discrete = True
    reads = ("codebook_size", "code_dim", "codebook_ema", "prior_epochs")
    nll_hint = " (a vqvae's eval reports `codes.nll_bound`, which bounds it)"
    no_one_graph = "its code prior is a GRU, which Dynamo does not trace (torch 2.13)"

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.quantiser = VectorQuantiser(config.codebook_size, config.code_dim, ema=config.codebook_ema)
        self.code_prior = CodePrior(config.codebook_size, self.code_positions)

    def build_prior(self, config: ModelConfig) -> None:
        return None  # p(z) is the code prior over indices, fitted after training (prior() below)

    def describe_latent(self) -> str:
        return f"{self.code_positions} codes of {self.config.code_dim}"

    @property
    def grid_dim(self) -> int:
        return self.config.code_dim if self.config.arch == "conv" else 0

    @property
    def code_grid(self) -> tuple[int, int]:
        """How the codes lie: the conv encoder's last feature map (rows, columns), or one row of latent_dim
        for the MLP."""
        return grid_size(self.config) if self.grid_dim else (1, self.config.latent_dim)

    @property
    def code_positions(self) -> int:
        """Codes per example, in raster order over code_grid."""
        rows, columns = self.code_grid
        return rows * columns

    @property
    def encoder_size(self) -> int:
        return self.code_positions * self.config.code_dim

    z_size = encoder_size

    def encoder_parameters(self):
        return [*self.encoder.parameters(), *self.quantiser.parameters()]

    def encode(self, x: torch.Tensor) -> Quantised:
        return self.quantiser(self.encoder(x).unflatten(-1, (self.code_positions, self.config.code_dim)))

    def prior(self, device=None) -> CodeSampler:
        """The fitted prior over codes: .sample(n, temperature) -> decoder inputs (n, latent_dim * code_dim)."""
        return CodeSampler(self)

    @torch.no_grad()
    def code_indices(self, ds: Dataset, batch_size: int = 1000) -> torch.Tensor:
        """The code indices of every example of a Dataset, (N, code_positions), in eval mode."""
        was_training = self.training
        self.eval()
        indices = torch.cat([self.encode(xb).indices for xb, _ in batches(ds, batch_size)])
        self.train(was_training)
        return indices

    def fit_prior(self, train: Dataset, epochs: int, log=print) -> list[float]:
        """Fit the code prior to the training set's code indices (maximum likelihood)."""
        return fit_code_prior(self.code_prior, self.code_indices(train), epochs, log=log)

    def validation_extras(self, val: Dataset) -> dict[str, float]:
        """How much of its codebook the validation set uses: perplexity and dead codes."""
        usage = codebook_usage(self.code_indices(val), self.config.codebook_size)
        return {"perplexity": usage["perplexity"], "dead_codes": usage["dead_codes"]}

    def needs_after_training(self, cfg: TrainConfig) -> bool:
        return bool(cfg.prior_epochs)

    def after_training(self, train: Dataset, cfg: TrainConfig, log=print) -> bool:
        """The autoregressive prior over code indices, fitted once the codes are final."""
        if not cfg.prior_epochs:
            return False
        self.fit_prior(train, cfg.prior_epochs, log=log)
        return True

    def evaluation_extras(self, ds: Dataset) -> dict:
        return {"codes": self.code_report(ds)}

    @torch.no_grad()
    def code_report(self, ds: Dataset, batch_size: int = 1000) -> dict[str, float]:
        """Codebook usage on `ds` (perplexity, dead codes) and the bound -log p(x) <= -log p(x|z_q) - log p(codes)
        (the ELBO with a one-hot q), in nats per example."""
        indices = self.code_indices(ds, batch_size)
        was_training = self.training
        self.eval()
        recon = torch.cat([-self.decode(self.quantiser.lookup(i).flatten(-2)).log_prob(xb).double()
                           for (xb, _), i in zip(batches(ds, batch_size), indices.split(batch_size), strict=True)])
        prior_nll = torch.cat([-self.code_prior.log_prob(i).double() for i in indices.split(batch_size)])
        self.train(was_training)
        return {**codebook_usage(indices, self.config.codebook_size), "recon": recon.mean().item(),
                "prior_nll": prior_nll.mean().item(), "nll_bound": (recon + prior_nll).mean().item()}


class CodeSampler:
    """p(z) of a VQ-VAE, as generation uses it: code indices from the prior, looked up in the codebook."""

    name = "codes from the fitted autoregressive prior"
    unit_sd = None

    def __init__(self, model: VQVAE):
        self.model = model

    def kl(self, q) -> None:
        return None

    def kl_per_dim(self, q) -> None:
        return None

    def sample(self, n: int, temperature: float = 1.0) -> torch.Tensor:
        return self.model.quantiser.lookup(self.model.code_prior.sample(n, temperature)).flatten(-2)


MODELS = {
    "ae": AutoEncoder,
    "vae": VAE,
    "cvae": ConditionalVAE,
    "hvae": HierarchicalVAE,
    "vqvae": VQVAE,
}


def model_class(name: str) -> type[LatentModel]:
    try:
        return MODELS[name]
    except KeyError:
        raise unknown(ModelConfig, "model", name, MODELS) from None


MAX_PARAMETERS = 1_000_000_000   # 4 GB of fp32 weights, 16 GB to train with Adam: what a large workstation holds
LIMIT_VARIABLE = "VAEKIT_MAX_PARAMETERS"   # the limit, where a user raises it (--max-parameters sets it)


def parameter_limit() -> int:
    """The most numbers (weights and buffers) a model may hold: $VAEKIT_MAX_PARAMETERS, else MAX_PARAMETERS."""
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return MAX_PARAMETERS
    if not text.isdigit() or len(text) > 18 or int(text) < 1:
        raise ConfigError(f"{LIMIT_VARIABLE}={text[:30]!r} is impossible: give a whole number of parameters, e.g. 2000000000")
    return int(text)


def parameter_count(config: ModelConfig) -> int:
    """The numbers (weights and buffers) the model of `config` holds, counted on torch's meta device: nothing is
    allocated and nothing computed, so a config asking for billions of weights is priced before it is built."""
    with torch.device("meta"):
        model = model_class(config.model)(config)
    return sum(t.numel() for t in (*model.parameters(), *model.buffers()))


def build_model(config: ModelConfig) -> LatentModel:
    """The model of `config`, refused in one line when it would hold more than parameter_limit() numbers (a config
    from an untrusted run or model folder must not take the machine's memory, or hours, before it is refused)."""
    count, limit = parameter_count(config), parameter_limit()
    if count > limit:
        raise ConfigError(f"this {config.model} would hold {count:,} parameters ({count * 4 / 1e9:,.1f} GB in fp32), more "
                          f"than the limit of {limit:,}: check its sizes (--hidden, --latent-dim, the input shape), or "
                          f"raise the limit with --max-parameters N (Python: ${LIMIT_VARIABLE})")
    return model_class(config.model)(config)
