"""The method registry: one table, name -> :class:`Method`.

Adding a method = one module with a ``METHOD`` and one line below.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from trainables.methods import (
    adalora,
    adapter,
    bitfit,
    boft,
    fourierft,
    freeze,
    full,
    head_only,
    hra,
    ia3,
    linear_probe,
    ln_tuning,
    loha,
    lokr,
    lora,
    mam,
    oft,
    p_tuning,
    prefix,
    prompt_tuning,
    unipelt,
    vera,
)
from trainables.methods._base import Knob, Method, freeze_base

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        full.METHOD,
        linear_probe.METHOD,
        head_only.METHOD,
        freeze.METHOD,
        bitfit.METHOD,
        adapter.METHOD,
        lora.METHOD,
        ia3.METHOD,
        adalora.METHOD,
        vera.METHOD,
        loha.METHOD,
        lokr.METHOD,
        oft.METHOD,
        boft.METHOD,
        hra.METHOD,
        fourierft.METHOD,
        ln_tuning.METHOD,
        prompt_tuning.METHOD,
        p_tuning.METHOD,
        prefix.METHOD,
        mam.METHOD,
        unipelt.METHOD,
    )
}


def get_method(name: str) -> Method:
    """The registered method called ``name``; unknown names list the valid ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; known methods: {sorted(METHODS)}") from None


def apply_method(model: nn.Module, name: str, knobs: dict[str, Any] | None = None) -> nn.Module:
    """Apply a method with its defaults overridden by ``knobs`` (unknown knobs rejected)."""
    method = get_method(name)
    given = dict(knobs or {})
    unknown = sorted(set(given) - {k.name for k in method.knobs})
    if unknown:
        raise ValueError(
            f"method {name!r} has no knob(s) {unknown}; its knobs: {[k.name for k in method.knobs]}"
        )
    resolved = {**method.defaults(), **given}
    for knob in method.knobs:
        problem = knob.check(resolved[knob.name])
        if problem:
            raise ValueError(f"{name}.{knob.name}={resolved[knob.name]!r} {problem}")
    try:
        return method.apply(model, resolved)
    except ValueError as e:
        if str(e).startswith(f"{name}:"):
            raise
        raise ValueError(f"{name}: {(str(e).splitlines() or [''])[0]}") from e
    except (TypeError, NotImplementedError, RuntimeError, AttributeError, KeyError) as e:
        # Whatever an architecture trips on is a refusal with its reason, before any trial.
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        first = (str(e).splitlines() or [""])[0][:200]
        raise ValueError(f"{name}: cannot apply to {kind}: {type(e).__name__}: {first}") from e


__all__ = ["METHODS", "Knob", "Method", "apply_method", "freeze_base", "get_method"]
