"""The method contract: a config of knobs and ``apply(model, knobs) -> model``.

After ``apply`` returns, ``requires_grad`` marks exactly the parameters that
train. The head (everything outside the base encoder; on a sequence-to-sequence
model what loading initialised anew, ``trainables.model.head_parameter_names``)
always trains; full fine-tuning is the method that changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from trainables.methods import _layers
from trainables.model import head_parameter_names, recorded_new_parameters


@dataclass(frozen=True)
class Knob:
    """One hyperparameter of a method: its type, default and allowed values."""

    name: str
    kind: str  # "int" | "float" | "choice" | "layers" (a placement: trainables.methods._layers)
    default: Any
    low: float | None = None
    high: float | None = None
    choices: Sequence[Any] | None = None
    help: str = ""
    log: bool = False  # a size or rate: sampled and plotted on a log scale

    def check(self, value: Any) -> str | None:
        """None if ``value`` is allowed, else what is wrong with it."""
        if self.kind == "choice":
            return None if value in self.choices else f"must be one of {list(self.choices)}"
        if self.kind == "layers":
            return _layers.spec_problem(value)
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return "must be an integer"
        if self.kind == "float" and (
            isinstance(value, bool) or not isinstance(value, (int, float))
        ):
            return "must be a number"
        if self.low is not None and value < self.low:
            return f"must be >= {self.low}"
        if self.high is not None and value > self.high:
            return f"must be <= {self.high}"
        return None

    def describe(self) -> str:
        """The allowed values, for ``peftsearch methods`` and error messages."""
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind == "layers":
            return _layers.DESCRIBE
        return f"{self.kind} in [{self.low}, {self.high if self.high is not None else 'inf'}]"


# How much of the encoder a configuration leaves frozen, as the caches need to know
# (Method.frozen): these two, or an int k - the layers below k are frozen and unchanged, so the
# hidden states entering layer k are the pretrained model's (the layer cache serves them).
HEAD = "head"  # everything below the classification head is frozen: only the head trains
LAST_LAYER = "last_layer"  # frozen up to the last layer's output; position-wise modules train on it
# Export formats (trainables.export): a transformers model directory, a peft adapter directory,
# or the trained parameters alone (trainable.safetensors) for in-house modules.
EXPORT_FORMATS = ("transformers", "peft", "peftsearch")


def _nothing_frozen(knobs: dict[str, Any], config) -> str | None:
    return None


@dataclass(frozen=True)
class Method:
    """A fine-tuning method: a name, its knobs, the function that applies it, and its facts.

    ``frozen(knobs, config)``: how far up the encoder a configuration is
    frozen (:data:`HEAD`, :data:`LAST_LAYER`, an int k: nothing below layer k
    trains or changes, or None); the feature cache serves the configurations
    that train only above the frozen encoder, the layer cache those frozen
    below layer k.
    ``export``: its export format, or a function of the model type.
    """

    name: str
    apply: Callable[[nn.Module, dict[str, Any]], nn.Module]
    help: str
    knobs: tuple[Knob, ...] = field(default_factory=tuple)
    frozen: Callable[[dict[str, Any], Any], str | int | None] = _nothing_frozen
    export: str | Callable[[str], str] = "peftsearch"

    def __post_init__(self) -> None:
        if not callable(self.export) and self.export not in EXPORT_FORMATS:
            raise ValueError(f"{self.name}: export {self.export!r} is not one of {EXPORT_FORMATS}")

    def defaults(self) -> dict[str, Any]:
        return {k.name: k.default for k in self.knobs}

    def knob(self, name: str) -> Knob | None:
        return next((k for k in self.knobs if k.name == name), None)

    def export_format(self, model_type: str) -> str:
        """``transformers``, ``peft`` or ``peftsearch`` for a model of ``model_type``."""
        return self.export(model_type) if callable(self.export) else self.export

    def log_knobs(self) -> tuple[str, ...]:
        """The knobs on a log scale."""
        return tuple(k.name for k in self.knobs if k.log)


def layers_knob() -> Knob:
    """The ``layers`` knob of every method that lives in encoder layers (placement)."""
    return Knob("layers", "layers", "all", help=_layers.HELP)


def head_names(model: nn.Module) -> set[str]:
    """The head's parameter names (:func:`trainables.model.head_parameter_names`); none on an
    encoder-decoder that does not record what loading made new (one built from a config)."""
    from trainables.methods._arch import is_encoder_decoder

    if is_encoder_decoder(model) and recorded_new_parameters(model) is None:
        return set()
    return head_parameter_names(model)


def classifier_only(model: nn.Module, method: str) -> None:
    """A ValueError ``"<method>: ..."`` on an encoder-decoder, for a method that trains a
    classification head (there is none: the model generates)."""
    from trainables.methods._arch import is_encoder_decoder

    if is_encoder_decoder(model):
        raise ValueError(
            f"{method}: trains a classification head on the encoder's output; an encoder-decoder "
            "generates text and has none (use freeze with freeze_encoder, or lora)"
        )


def freeze_base(model: nn.Module) -> nn.Module:
    """Freeze every parameter except the task head's."""
    head = head_names(model)
    for name, p in model.named_parameters():
        p.requires_grad_(name in head)
    return model


def head_modules(model: nn.Module) -> list[str]:
    """Top-level names of the head's modules (``classifier``, ``pre_classifier``, ...).

    On an encoder-decoder the head lies inside the model (an ``EncoderDecoderModel``'s
    cross-attention and LM-head transform): :func:`seq2seq_head_modules`."""
    from trainables.methods._arch import is_encoder_decoder

    if is_encoder_decoder(model):
        return seq2seq_head_modules(model)
    return sorted({n.split(".")[0] for n in head_parameter_names(model)})


def seq2seq_head_modules(model: nn.Module) -> list[str]:
    """The largest modules of an encoder-decoder that hold head parameters only (each tensor by
    every name it goes by: a module holding a tied output projection is not one), and the head
    parameters outside them, by full name: what peft's ``modules_to_save`` can copy, and what
    it cannot (an ``EncoderDecoderModel``'s LM-head bias sits beside the tied projection)."""
    head = head_names(model)
    if not head:
        return []
    tensors = {id(p) for n, p in model.named_parameters() if n in head}
    names: list[str] = []
    for name, module in model.named_modules():
        own = list(module.parameters())
        if not name or not own or any(name.startswith(n + ".") for n in names):
            continue
        if all(id(p) in tensors for p in own):
            names.append(name)
    covered = {f"{n}.{p}" for n in names for p, _ in model.get_submodule(n).named_parameters()}
    return names + sorted(head - covered)


def peft_prompt_model(model: nn.Module, config_cls, **kwargs) -> nn.Module:
    """Wrap ``model`` in peft's model for a prompt method (sequence classification, or
    sequence-to-sequence LM on an encoder-decoder).

    peft's prompt methods change the forward (virtual tokens before the
    input), so they need the ``PeftModel`` wrapper; the loop calls it like
    any model. A classifier's whole head trains, through ``modules_to_save``.
    On an encoder-decoder the prompt goes before the encoder's input only (as
    Lester et al. do with T5: ``num_transformer_submodules=1``; peft's default
    for seq2seq also makes a decoder prompt that its forward never reads), and
    the head (new parameters, inside the model) trains in place.
    """
    from trainables.methods._arch import is_encoder_decoder, stack_layers

    c = model.config
    if is_encoder_decoder(model):
        sub = getattr(c, "encoder", c)  # an EncoderDecoderModel's config holds its parts'
        head = head_names(model)
        config = config_cls(
            task_type="SEQ_2_SEQ_LM",
            num_transformer_submodules=1,
            token_dim=model.get_input_embeddings().embedding_dim,
            num_attention_heads=getattr(sub, "num_attention_heads", 1),
            num_layers=len(stack_layers(model)["encoder"]),
            **kwargs,
        )
        wrapped = quiet_get_peft_model(model, config)
        for name, p in model.named_parameters():
            if name in head:
                p.requires_grad_(True)
        return wrapped
    config = config_cls(
        task_type="SEQ_CLS",
        modules_to_save=head_modules(model),
        # peft reads these from the config under their usual names; DistilBERT's differ.
        # The prompt joins the input embeddings, which can be narrower than the hidden
        # states (DeBERTa's and ELECTRA's embedding_size, projected up in the embeddings).
        token_dim=model.get_input_embeddings().embedding_dim,
        # Used by peft for prefix-style prompts only; FNet has no attention heads.
        num_attention_heads=getattr(c, "num_attention_heads", 1),
        num_layers=c.num_hidden_layers,
        **kwargs,
    )
    return quiet_get_peft_model(model, config)


def quiet_get_peft_model(model: nn.Module, config) -> nn.Module:
    """``peft.get_peft_model`` without its FutureWarning about a transformers 5 deprecation."""
    import warnings

    from peft import get_peft_model

    with warnings.catch_warnings():
        # peft 0.21 calls an API transformers 5 deprecated (is_gradient_checkpointing).
        warnings.simplefilter("ignore", FutureWarning)
        return get_peft_model(model, config)


# What a peft tuner adapts (its ``<method>_targets`` knob): attention query and value, or every
# projection the roles name (attention and feed-forward).
TARGETS = ("query_value", "all_linear")


def targets_knob(method: str, default: str = "query_value") -> Knob:
    """The ``<method>_targets`` knob every peft tuner shares."""
    return Knob(
        f"{method}_targets",
        "choice",
        default,
        choices=TARGETS,
        help="attention query/value projections (an encoder-decoder's cross-attention too), or "
        "every linear layer of the layers",
    )


def peft_targets(model: nn.Module, method: str, choice: str) -> str:
    """peft's ``target_modules`` for ``choice`` (:data:`TARGETS`), from the shared role discovery.

    On an encoder-decoder, the decoder's cross-attention counts as attention: ``query_value``
    adapts its query and value too (as peft's defaults for T5 and BART, ``q``/``v`` and
    ``q_proj``/``v_proj``, match both attentions), ``all_linear`` all its projections."""
    from trainables.methods._arch import ALL_ROLES, arch_of

    wanted = ("query", "value", "cross_query", "cross_value")
    wanted = wanted if choice == "query_value" else ALL_ROLES
    roles = arch_of(model, method)
    try:
        return roles.regex(*wanted)
    except ValueError as e:
        raise ValueError(f"{method}: {e}") from None


def inject_peft(model: nn.Module, config, marker: str | None = None) -> nn.Module:
    """Inject a peft tuner in place; only its parameters (named ``*marker*``, default the
    tuner's own prefix: ``lora_``, ``hada_``, ...) and the head train."""
    return inject_tuner(model, config, marker)[0]


def inject_tuner(model: nn.Module, config, marker: str | None = None):
    """:func:`inject_peft`, returning ``(model, tuner)``: the peft tuner object, for a method
    that drives it while training (AdaLoRA's rank allocation).

    The tuner class is built directly, as ``peft.inject_adapter_in_model`` does, which refuses
    tuners with state shared across layers (VeRA's random projections): here the layers keep
    references to that state, so the model alone still holds everything it runs.
    """
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

    freeze_base(model)
    # The head's tensors, not names: a tuner on a head projection (an EncoderDecoderModel's new
    # cross-attention) renames its weight (``...query.base_layer.weight``), which still trains.
    head = {id(p) for p in model.parameters() if p.requires_grad}
    tuner_cls = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type]
    tuner = tuner_cls(model, config, adapter_name="default")
    marker = marker or tuner.prefix
    for name, p in model.named_parameters():
        p.requires_grad_(marker in name or id(p) in head)
    return model, tuner
