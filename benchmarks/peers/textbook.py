"""The textbook loop: the pytorch/examples VAE recipe (784-400-20 ReLU MLP, sigmoid decoder, BCE summed over
pixels + closed-form KL, Adam 1e-3, batch 128, a shuffling DataLoader, the test set scored after every epoch),
written here without torchvision. Prints one JSON line per epoch: the wall-clock time (time.time) at the end of
its training, with the test scoring left out of the clock, its images/s and the test -ELBO.

    python benchmarks/peers/textbook.py --epochs 20 --target 105.6
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
from mnist import load
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def neg_elbo(recon, mu, logvar, x):
    bce = F.binary_cross_entropy(recon, x, reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--target", type=float, default=None, help="stop at the first epoch whose test -ELBO is at most this")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    args = p.parse_args()
    torch.manual_seed(1)
    train, test = load()
    loader = DataLoader(TensorDataset(torch.from_numpy(train)), batch_size=args.batch_size, shuffle=True)
    model = VAE()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    paused = 0.0
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        for (x,) in loader:
            opt.zero_grad()
            loss = neg_elbo(*model(x), x)
            loss.backward()
            opt.step()
        t_train = time.perf_counter() - t0
        t_end = time.time() - paused
        t1 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            test_loss = sum(neg_elbo(*model(x), x).item() for (x,) in DataLoader(TensorDataset(torch.from_numpy(test)), batch_size=128))
        paused += time.perf_counter() - t1
        print(json.dumps({"epoch": epoch, "t_end": t_end, "images_per_s": len(train) / t_train,
                          "test_neg_elbo": test_loss / len(test)}), flush=True)
        if args.target is not None and test_loss / len(test) <= args.target:
            break


if __name__ == "__main__":
    main()
