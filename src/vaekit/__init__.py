"""vaekit: variational auto-encoders on PyTorch.

    from vaekit import RunConfig, fit, evaluate_run, sample_run
"""

from .checkpoint import load_model, save_checkpoint
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig
from .data import DataSplits, Dataset, batches, data_root, load_data
from .demo import run_demo
from .distributions import Bernoulli, DiagonalGaussian, PointMass, gaussian_kl
from .errors import CheckpointError, ConfigError, DataError, VaekitError
from .evaluate import evaluate, evaluate_run
from .export import export_onnx
from .explore import explore, explore_server
from .sources import SOURCES, default_likelihood, read_idx
from .images import image_grid, save_png
from .likelihoods import LIKELIHOODS
from .models import MODELS, VAE, AutoEncoder, build_model
from .objectives import LOSSES, LossContext, ae_loss, elbo
from .posteriors import POSTERIORS
from .priors import PRIORS
from .resolve import resolve
from . import plots
from .plots import PlotOptions, compare_runs, plot_run
from .pretrained import from_pretrained, push_to_hub, save_pretrained
from .registry import list_components
from .report import write_report
from .sampling import sample_run
from .tensorboard import TensorBoard
from .train import FitResult, fit

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
