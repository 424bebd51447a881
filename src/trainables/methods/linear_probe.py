"""Linear probe: a new head on the frozen encoder."""

from trainables.methods._base import Method, freeze_base

METHOD = Method(
    name="linear_probe",
    apply=lambda model, knobs: freeze_base(model),
    help="only the new classification head trains; the encoder is frozen",
)
