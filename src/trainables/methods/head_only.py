"""The model's own classification head on the frozen encoder.

What trains is the architecture's native head: BERT's classifier (on its
frozen pooler), RoBERTa's dense + tanh + out_proj, DistilBERT's
pre_classifier + ReLU + classifier, DeBERTa's context pooler + classifier,
ModernBERT's dense + activation + norm + classifier.
"""

from trainables.methods._base import HEAD, Method, freeze_base

METHOD = Method(
    name="head_only",
    apply=lambda model, knobs: freeze_base(model),
    help="the model's own classification head (its dense layers included) trains; encoder frozen",
    frozen=lambda knobs, config: HEAD,
    export="transformers",
)
