"""pythae's VAE on MNIST, run in the benchmark's own venv (pythae is not a vaekit dependency).

train: pythae's BaseTrainer on the pytorch/examples network (784-400-20 ReLU encoder and decoder, sigmoid output,
BCE), the test set as its eval set; prints one JSON line per epoch with the wall-clock time (time.time) at the end
of its training (its eval pass left out of the clock), images/s and its eval loss (the test -ELBO).
nll: pythae's own get_nll (k importance samples per image) on the first N test images, with weights taken from a
vaekit run (saved by benchmarks/speed.py), timed.

    python pythae_vae.py train --epochs 20 --target 105.6 --batch-size 256 --lr 2e-3
    python pythae_vae.py nll --weights w.pt --n 100 --k 5000
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

import torch
import torch.nn.functional as F
from mnist import load
from pythae.data.datasets import BaseDataset
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.trainers import BaseTrainer, BaseTrainerConfig
from pythae.trainers.training_callbacks import TrainingCallback
from torch import nn


class Encoder(BaseEncoder):
    def __init__(self):
        super().__init__()
        self.fc1, self.mu, self.logvar = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)

    def forward(self, x):
        h = F.relu(self.fc1(x.reshape(len(x), -1)))
        return ModelOutput(embedding=self.mu(h), log_covariance=self.logvar(h))


class Decoder(BaseDecoder):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, z):
        return ModelOutput(reconstruction=torch.sigmoid(self.fc2(F.relu(self.fc1(z)))).reshape(len(z), 1, 28, 28))


def model() -> VAE:
    return VAE(VAEConfig(input_dim=(1, 28, 28), latent_dim=20, reconstruction_loss="bce"), encoder=Encoder(), decoder=Decoder())


class Clock(TrainingCallback):
    """Prints each epoch's end of training, eval loss and images/s; the eval pass is left out of the clock."""

    def __init__(self, n_train: int, target: float | None):
        self.n, self.target, self.paused = n_train, target, 0.0

    def on_epoch_begin(self, training_config, **kwargs):
        self.t0, self.eval_start = time.perf_counter(), None

    def on_eval_step_begin(self, training_config, **kwargs):
        if self.eval_start is None:
            self.eval_start, self.t_end = time.perf_counter(), time.time() - self.paused

    def on_log(self, training_config, logs, **kwargs):
        now = time.perf_counter()
        self.paused += now - self.eval_start
        row = {"epoch": kwargs.get("global_step"), "t_end": self.t_end, "images_per_s": self.n / (self.eval_start - self.t0),
               "test_neg_elbo": logs["eval_epoch_loss"]}
        print(json.dumps(row), flush=True)
        if self.target is not None and row["test_neg_elbo"] <= self.target:
            raise SystemExit(0)   # pythae has no early stop on a target: the process ends here


def train(args) -> None:
    torch.manual_seed(1)
    x_train, x_test = load()
    x_train, x_test = torch.from_numpy(x_train).reshape(-1, 1, 28, 28), torch.from_numpy(x_test).reshape(-1, 1, 28, 28)
    with tempfile.TemporaryDirectory() as out:
        cfg = BaseTrainerConfig(output_dir=out, num_epochs=args.epochs, learning_rate=args.lr,
                                per_device_train_batch_size=args.batch_size, per_device_eval_batch_size=1000,
                                steps_saving=None, no_cuda=True, train_dataloader_num_workers=0)
        train_set, test_set = BaseDataset(x_train, torch.zeros(len(x_train))), BaseDataset(x_test, torch.zeros(len(x_test)))
        trainer = BaseTrainer(model(), train_set, test_set, training_config=cfg, callbacks=[Clock(len(x_train), args.target)])
        trainer.train()


def nll(args) -> None:
    torch.manual_seed(0)
    vae = model()
    state = torch.load(args.weights)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.copy_(state[name])
    vae.eval()
    _, x_test = load()
    x = torch.from_numpy(x_test[: args.n]).reshape(-1, 1, 28, 28)
    t0 = time.perf_counter()
    with torch.no_grad():
        log_p = vae.get_nll(x, n_samples=args.k, batch_size=100)   # pythae's default batch_size
    print(json.dumps({"n": args.n, "k": args.k, "seconds": time.perf_counter() - t0, "nll": -float(log_p)}), flush=True)


def main() -> None:
    logging.getLogger("pythae").setLevel(logging.WARNING)
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--target", type=float, default=None)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    n = sub.add_parser("nll")
    n.add_argument("--weights", required=True)
    n.add_argument("--n", type=int, default=100)
    n.add_argument("--k", type=int, default=5000)
    args = p.parse_args()
    train(args) if args.command == "train" else nll(args)


if __name__ == "__main__":
    main()
