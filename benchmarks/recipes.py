"""Recipes for the least time to test -ELBO <= 105.6 on MNIST, interleaved: each a `vaekit train --preset
mnist-fast` command with extra flags (a fresh process, clocked from its start), then its test -ELBO from
evaluate_run (not clocked). Rounds alternate the recipes, so each round sees the same machine load.

    VAEKIT_DATA=../shared/datasets python benchmarks/recipes.py --rounds 3 \\
        "preset=" "batch 256 throughout=--batch-size-from 5 256" "1024 from epoch 3=--epochs 7 --batch-size-from 3 1024"

Each recipe is NAME=FLAGS (FLAGS may be empty: the preset itself). Writes results/recipes.{json,md}: per recipe
the command times, the test -ELBO of each round, and the median images/s over epochs, by batch size (--name: another
file name, so that a run does not replace the one a text quotes).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write  # noqa: E402
from speed import run_vaekit  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipes", nargs="+", help="NAME=FLAGS, e.g. 'last epoch at 1024=--batch-size-from 4 1024'")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--name", default="recipes", help="results/NAME.{json,md} (default: recipes)")
    args = p.parse_args()
    recipes = {}
    for item in args.recipes:
        name, sep, flags = item.partition("=")
        if not sep or not name:
            p.error(f"{item!r} is not NAME=FLAGS")
        recipes[name] = shlex.split(flags)
    results = {name: [] for name in recipes}
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            for i, (name, flags) in enumerate(recipes.items()):
                results[name].append(run_vaekit(Path(d) / f"{r}-{i}", flags))
                last = results[name][-1]
                print(f"round {r + 1} {name:30s} {last['wall']:5.2f} s  test {last['test_neg_elbo']:.2f}  "
                      f"{last['images_per_s']:,.0f} images/s", flush=True)
    table = [{"recipe": name, "flags": " ".join(recipes[name]) or "(the preset)",
              "command s (each round)": ", ".join(f"{x['wall']:.2f}" for x in runs),
              "median s": statistics.median(x["wall"] for x in runs),
              "test -ELBO": ", ".join(sorted({f"{x['test_neg_elbo']:.2f}" for x in runs})),
              "images/s by batch size": ", ".join(
                  f"{b}: {statistics.median(x['images_per_s_by_batch_size'][b] for x in runs):,.0f}"
                  for b in runs[0]["images_per_s_by_batch_size"])}
             for name, runs in results.items()]
    out = write(args.name, {"rounds": args.rounds, "runs": results}, table,
          ["recipe", "flags", "command s (each round)", "median s", "test -ELBO", "images/s by batch size"])
    print(out.read_text())


if __name__ == "__main__":
    main()
