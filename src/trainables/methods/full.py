"""Full fine-tuning: the null method; every parameter trains."""

from trainables.methods._base import Method

METHOD = Method(
    name="full",
    apply=lambda model, knobs: model,
    help="every parameter trains",
    export="transformers",
)
