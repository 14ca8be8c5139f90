"""`vaekit list`: every registered component, each with one line from its own docstring."""

from vaekit import LIKELIHOODS, LOSSES, MODELS, POSTERIORS, PRIORS, SOURCES, list_components
from vaekit.cli.main import main
from vaekit.models.nets import ACTIVATIONS, ARCHITECTURES
from vaekit.registry import describe
from vaekit.training.schedules import LR_SCHEDULES


def test_every_entry_of_every_registry_is_listed_with_a_one_line_description():
    rows = list_components()
    listed = {kind: [name for k, name, _ in rows if k == kind] for kind, _, _ in rows}
    assert listed == {"models": list(MODELS), "losses": list(LOSSES), "priors": list(PRIORS), "posteriors": list(POSTERIORS),
                      "architectures": list(ARCHITECTURES), "activations": list(ACTIVATIONS),
                      "likelihoods": list(LIKELIHOODS), "data sources": list(SOURCES),
                      "learning-rate schedules": list(LR_SCHEDULES)}
    for _, name, about in rows:
        assert about and "\n" not in about, name
    about = {name: text for _, name, text in rows}
    assert about["gaussian-learned"] != about["gaussian"] and "learned=True" in about["gaussian-learned"]  # a partial
    assert about["mnist"] != about["fashion-mnist"]                   # two instances of one class, each its own line
    assert about["vae"] == " ".join(MODELS["vae"].__doc__.split())


def test_describe_takes_the_first_paragraph_of_a_docstring():
    def f():
        """First line
        continues here:

        Details."""
    assert describe(f) == "First line continues here"


def test_vaekit_list_prints_every_registry(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for kind, name, about in list_components():
        assert f"{kind}:" in out and any(line.split(None, 1) == [name, about] for line in out.splitlines())
