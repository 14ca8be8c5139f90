"""vaekit: variational auto-encoders on PyTorch.

    from vaekit import RunConfig, fit, evaluate_run, sample_run

The names below are the public API (the docs' API reference lists them, and a test imports every name the docs
use); the subpackages are the rooms behind them (docs/architecture.md).
"""

from .config.schema import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data.dataset import Dataset, DataSplits, batches, data_root, load_data
from .data.sources import SOURCES, default_likelihood, read_idx
from .data.sources.prepared import prepare
from .errors import CheckpointError, ConfigError, DataError, VaekitError
from .evaluation.evaluate import EvalOptions, evaluate, evaluate_run, log_likelihood
from .explore import explore, explore_server
from .integrations.export import export_onnx
from .integrations.pretrained import from_pretrained, push_to_hub, save_pretrained
from .integrations.tensorboard import TensorBoard
from .models.distributions import Bernoulli, DiagonalGaussian, PointMass, gaussian_kl
from .models.family import MODELS, VAE, AutoEncoder, build_model
from .models.likelihoods import LIKELIHOODS
from .models.objectives import LOSSES, LossContext, ae_loss, elbo
from .models.posteriors import POSTERIORS
from .models.priors import PRIORS
from .outputs import plots
from .outputs.demo import run_demo
from .outputs.images import image_grid, save_png
from .outputs.plots import PlotOptions, compare_runs, plot_run
from .outputs.report import write_report
from .outputs.sampling import SampleOptions, sample_run
from .registry import list_components
from .store.checkpoint import load_model, save_checkpoint
from .training.fit import FitResult, fit
from .training.resolve import resolve

__version__ = "0.1.0"

__all__ = [
    # configuration
    "RunConfig", "ModelConfig", "DataConfig", "TrainConfig", "resolve",
    # training, evaluation, generation
    "fit", "FitResult", "evaluate", "evaluate_run", "EvalOptions", "log_likelihood", "sample_run", "SampleOptions",
    "run_demo",
    # models and their parts
    "build_model", "VAE", "AutoEncoder", "DiagonalGaussian", "Bernoulli", "PointMass", "gaussian_kl",
    "elbo", "ae_loss", "LossContext",
    # the registries
    "MODELS", "LOSSES", "PRIORS", "POSTERIORS", "LIKELIHOODS", "SOURCES", "list_components",
    # data
    "load_data", "Dataset", "DataSplits", "batches", "data_root", "read_idx", "default_likelihood", "prepare",
    # runs on disk
    "load_model", "save_checkpoint",
    # figures, report, images, the explorer
    "plots", "plot_run", "compare_runs", "PlotOptions", "write_report", "image_grid", "save_png", "explore",
    "explore_server",
    # integrations
    "export_onnx", "save_pretrained", "from_pretrained", "push_to_hub", "TensorBoard",
    # errors
    "VaekitError", "ConfigError", "DataError", "CheckpointError",
]

# Installed plugins (entry points of the group vaekit.plugins) register their components now that every registry
# exists: the command line and every later command on a run that uses them find them (vaekit.plugins).
from .plugins import load_entry_points as _load_entry_points  # noqa: E402

_load_entry_points()
