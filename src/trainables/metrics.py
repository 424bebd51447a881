"""The task metrics: what a search can rank by, how each is computed, and the task's loss.

``experiment.metric`` names one of :data:`METRICS`; its validation value
(``val_<metric>``) is the search's ranking value. Classification metrics come
from a confusion matrix accumulated on the device during an evaluation
(:class:`Tally`): no host sync per batch, one transfer and one computation per
evaluation. Regression keeps its predictions on the device and concatenates
them at the end of the evaluation. Sequence-to-sequence metrics compare
generated texts with the references (:func:`generation_scores`: ROUGE from
``rouge-score``, BLEU and chrF from ``sacrebleu``, each on a 0..100 scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

CLASSIFICATION, REGRESSION, SEQ2SEQ = "classification", "regression", "seq2seq"
TASKS = (CLASSIFICATION, REGRESSION, SEQ2SEQ)


@dataclass(frozen=True)
class Metric:
    """A ranking metric: the tasks it applies to and its direction."""

    name: str
    tasks: tuple[str, ...]
    mode: str = "max"
    help: str = ""


METRICS = {
    m.name: m
    for m in (
        Metric("accuracy", (CLASSIFICATION,), help="share of correct labels"),
        Metric("f1_macro", (CLASSIFICATION,), help="F1 per label, averaged (imbalanced tasks)"),
        Metric("f1_micro", (CLASSIFICATION,), help="F1 over all decisions (= accuracy here)"),
        Metric("f1", (CLASSIFICATION,), help="F1 of the positive label (binary tasks)"),
        Metric("mcc", (CLASSIFICATION,), help="Matthews correlation (CoLA), multi-class too"),
        Metric("pearson", (REGRESSION,), help="Pearson correlation (STS-B)"),
        Metric("spearman", (REGRESSION,), help="Spearman rank correlation"),
        Metric("rouge1", (SEQ2SEQ,), help="ROUGE-1 F-measure x 100 (unigram overlap)"),
        Metric("rouge2", (SEQ2SEQ,), help="ROUGE-2 F-measure x 100 (bigram overlap)"),
        Metric("rougeL", (SEQ2SEQ,), help="ROUGE-L F-measure x 100 (longest common subsequence)"),
        Metric("rougeLsum", (SEQ2SEQ,), help="ROUGE-L over newline-split sentences, x 100"),
        Metric("bleu", (SEQ2SEQ,), help="corpus BLEU (sacrebleu; translation)"),
        Metric("chrf", (SEQ2SEQ,), help="corpus chrF (sacrebleu; character n-grams)"),
        Metric("loss", TASKS, mode="min", help="the validation loss (lower is better)"),
    )
}
DEFAULT_METRIC = {CLASSIFICATION: "accuracy", REGRESSION: "pearson", SEQ2SEQ: "rougeL"}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
GENERATION_METRICS = (*ROUGE_TYPES, "bleu", "chrf")


def key(metric: str) -> str:
    """The result and column name of a metric's validation value: ``mcc`` -> ``val_mcc``."""
    return f"val_{metric}"


def mode_of(result_key: str) -> str:
    """``max`` or ``min`` for a result key (``val_mcc``, ``val_loss``)."""
    return METRICS[result_key.removeprefix("val_")].mode


def task_problems(
    metric: str, task: str, where: str = "experiment.metric"
) -> list[tuple[str, str]]:
    """A metric that does not fit the task (mcc on regression, rougeL on classification), with
    the fix."""
    if metric not in METRICS or task not in METRICS[metric].tasks:
        fits = [m for m, spec in METRICS.items() if task in spec.tasks]
        hint = ""
        if metric in METRICS and SEQ2SEQ in METRICS[metric].tasks:
            hint = " (generation metrics need experiment.task: seq2seq)"
        elif metric in METRICS and task == SEQ2SEQ:
            hint = " (a seq2seq task generates text: rank by a generation metric or loss)"
        return [(where, f"{metric!r} does not fit a {task} task{hint}: use one of {fits}")]
    return []


def label_problems(
    metric: str, label_names: list[str], positive_label
) -> tuple[list[tuple[str, str]], int | None]:
    """(problems, the positive label's index) for a classification metric on these labels.

    ``f1`` is binary: on more than two labels it needs an averaging choice.
    Its positive label is ``positive_label``, else the second label in order
    (``1`` of ``0``/``1``).
    """
    if metric != "f1":
        return [], None
    if len(label_names) > 2:
        return [
            (
                "experiment.metric",
                f"f1 is binary, but the label column has {len(label_names)} labels: choose how to "
                "average, experiment.metric: f1_macro (each label counts the same) or f1_micro "
                "(each example counts the same)",
            )
        ], None
    if positive_label is None:
        return [], len(label_names) - 1
    names = [str(n) for n in label_names]
    if str(positive_label) not in names:
        return [
            (
                "experiment.positive_label",
                f"{positive_label!r} is not a label; the labels are {names}",
            )
        ], None
    return [], names.index(str(positive_label))


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on class ids; mean squared error on float targets (one output, regression).

    As transformers computes it for ``num_labels`` 1 and > 1: the one loss of the
    code paths that compute their own (the feature cache's head, linear_probe's DistilBERT).
    """
    if labels.is_floating_point():
        return nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
    return nn.functional.cross_entropy(logits, labels)


class Tally:
    """What an evaluation accumulates on the device: loss sum, and a confusion matrix
    (classification) or the predictions (regression). :meth:`scores` reads it once."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=device)
        self.n = 0
        self.confusion: torch.Tensor | None = None
        self.preds: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch: nothing here waits for the device."""
        self.loss_sum += loss.float() * len(labels)
        self.n += len(labels)
        if labels.is_floating_point():
            self.preds.append(logits.detach().squeeze(-1).float())
            self.targets.append(labels.float())
            return
        classes = logits.shape[-1]  # a shape: no sync
        if self.confusion is None:
            self.confusion = torch.zeros(classes * classes, dtype=torch.int64, device=self.device)
        # index_add_, not bincount: bincount on a GPU reads the largest index back to size its output.
        cells = labels * classes + logits.detach().argmax(-1)
        self.confusion.index_add_(0, cells, torch.ones_like(cells))

    def scores(self, metric: str, positive: int | None = None, details: bool = False) -> dict:
        """``val_loss``, ``val_accuracy`` (classification) and ``val_<metric>``; with
        ``details``, ``confusion`` and ``per_class`` too (classification)."""
        out = {"val_loss": self.loss_sum.item() / max(1, self.n)}
        if self.confusion is not None:
            classes = int(round(len(self.confusion) ** 0.5))
            cm = self.confusion.view(classes, classes).cpu().numpy()
            out.update(classification_scores(cm, metric, positive))
            if details:
                out["confusion"] = cm.tolist()
                out["per_class"] = per_class(cm)
        elif self.preds:
            pred = torch.cat(self.preds).cpu().numpy()
            target = torch.cat(self.targets).cpu().numpy()
            if metric in ("pearson", "spearman"):
                out[key(metric)] = regression_score(pred, target, metric)
        return out


def classification_scores(cm: np.ndarray, metric: str, positive: int | None) -> dict[str, float]:
    """Accuracy and the ranking metric from a confusion matrix (rows: true, columns: predicted)."""
    cm = cm.astype(np.float64)
    total = cm.sum()
    out = {"val_accuracy": float(np.trace(cm) / total) if total else 0.0}
    if metric == "f1_macro":
        out[key(metric)] = f1_macro(cm)
    elif metric == "f1_micro":
        out[key(metric)] = out["val_accuracy"]  # one label per example: micro-F1 is accuracy
    elif metric == "f1":
        out[key(metric)] = float(_f1(cm)[len(cm) - 1 if positive is None else positive])
    elif metric == "mcc":
        out[key(metric)] = mcc(cm)
    return out


def _prf(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label: precision, recall, F1 (0 where undefined, as scikit-learn's zero_division)."""
    tp = np.diag(cm)
    predicted, actual = cm.sum(axis=0), cm.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(actual > 0, tp / actual, 0.0)
        denom = predicted + actual
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return precision, recall, f1


def _f1(cm: np.ndarray) -> np.ndarray:
    return _prf(cm)[2]


def f1_macro(cm: np.ndarray) -> float:
    """F1 averaged over the labels that occur (true or predicted), as scikit-learn does."""
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    return float(_f1(cm)[present].mean()) if present.any() else 0.0


def mcc(cm: np.ndarray) -> float:
    """Matthews correlation for any number of labels (Gorodkin's R_K); 0 where undefined."""
    s, c = cm.sum(), np.trace(cm)
    t, p = cm.sum(axis=1), cm.sum(axis=0)
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - t @ p) / denom) if denom > 0 else 0.0


def per_class(cm: np.ndarray) -> dict[str, list[float]]:
    """Precision, recall, F1 and support per label (in label order)."""
    precision, recall, f1 = _prf(cm.astype(np.float64))
    return {
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": cm.sum(axis=1).astype(int).tolist(),
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (what Spearman's correlation ranks by)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def regression_score(pred: np.ndarray, target: np.ndarray, metric: str) -> float:
    """Pearson or Spearman correlation; 0 for constant predictions (no correlation to speak of)."""
    pred, target = pred.astype(np.float64), target.astype(np.float64)
    if metric == "spearman":
        pred, target = _ranks(pred), _ranks(target)
    x, y = pred - pred.mean(), target - target.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float((x @ y) / denom) if denom > 0 else 0.0


def generation_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L/Lsum, BLEU and chrF of generated texts against their references, x 100.

    ROUGE is ``rouge-score``'s F-measure with the Porter stemmer, averaged over the
    examples; ROUGE-Lsum splits each text into sentences at its newlines. BLEU and chrF
    are ``sacrebleu``'s corpus scores. Empty predictions score 0; no examples: all 0.
    Keys: ``val_rouge1`` ... ``val_chrf`` (:data:`GENERATION_METRICS`).
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {key(m): 0.0 for m in GENERATION_METRICS}
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    sums = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)  # (target, prediction)
        for name in ROUGE_TYPES:
            sums[name] += scores[name].fmeasure
    out = {key(name): 100.0 * total / len(predictions) for name, total in sums.items()}
    refs = [list(references)]
    # Clamped: sacrebleu's BLEU of identical texts can come out a hair above 100.
    out[key("bleu")] = _percent(sacrebleu.corpus_bleu(list(predictions), refs).score)
    out[key("chrf")] = _percent(sacrebleu.corpus_chrf(list(predictions), refs).score)
    return out


def _percent(score: float) -> float:
    return float(min(100.0, max(0.0, score)))
