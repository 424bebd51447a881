"""Everything checked and prepared before a search's first trial, and Ray's start.

``run``, ``validate``, ``trial``, ``confirm``, the tests and the benchmarks
use these as a library: a bad space is a :class:`search.space.SpaceError`
here, before Ray starts and before anything is written.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from search.rundir import RunDir
from search.space import Space, SpaceError
from trainables.data import DataError, PreparedData, prepare
from trainables.metrics import SEQ2SEQ
from trainables.model import load_tokenizer


def check_fit(space: Space):
    """Apply every method, at every extreme of its knobs, to the model's architecture.

    The model is built from its config on the meta device (no weights, no
    memory), so a method that cannot apply - prefix on DeBERTa-v2, bitfit on
    a model without biases, more frozen layers than the model has - is a
    :class:`SpaceError` before any trial starts, not a crash mid-search.

    First every layer mask (``layers: {mask: true}``) gets the model's layer
    count as its number of bits (:func:`expand_masks`; the space is changed in
    place), so the extremes tried here, the searcher, ``trial`` and the warm
    start all use the model's own. Returns the model's config.

    With ``task: seq2seq`` the model must be an encoder-decoder or an encoder that can be
    warm-started as one (:func:`trainables.model.seq2seq_problem`: a decoder-only model, or
    an encoder transformers cannot run as a decoder, is refused with the reason), and the
    methods are applied to the sequence-to-sequence model (:func:`task_skeleton`).
    """
    import torch

    from trainables.methods import apply_method
    from trainables.model import load_config, seq2seq_problem

    try:
        config = load_config(space.model)
    except (OSError, ValueError) as e:
        raise SpaceError(
            space.source, [("experiment.model", f"cannot load {space.model!r}: {e}")]
        ) from None
    if space.experiment.task == SEQ2SEQ and seq2seq_problem(config):
        why = f"{space.model}: {seq2seq_problem(config)}"
        raise SpaceError(space.source, [("experiment.model", why)])
    problems = max_length_problems(space, config) + expand_masks(space, config)
    for method in space.methods:
        for knobs in space.knob_variants(method):
            try:
                with torch.device("meta"):
                    apply_method(task_skeleton(space, config), method, knobs)
            except (ValueError, TypeError, NotImplementedError) as e:
                problems.append((f"methods.{method}", f"{e} (model {space.model}, knobs {knobs})"))
                break
    if problems:
        raise SpaceError(space.source, problems)
    return config


def task_skeleton(space: Space, config):
    """The model a trial of the space trains, built from ``config`` alone (no weights; on the
    meta device where the caller asks): a sequence classifier, or a seq2seq model."""
    if space.experiment.task == SEQ2SEQ:
        from trainables.methods.support import meta_seq2seq

        return meta_seq2seq(config)
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_config(config)


def expand_masks(space: Space, config) -> list[tuple[str, str]]:
    """Give the space's layer masks the model's layer count; the problem if it has none found.

    The count is the shared layer discovery's (``trainables.methods._arch.layer_groups``),
    the layers the methods place themselves in: ALBERT reuses one layer at every depth, so
    its mask has one bit (a method there is in every depth or in none). An encoder-decoder's
    mask has one bit per layer of each stack (``mask_bits``; stacks of unequal depth: none).
    """
    import torch

    from trainables.methods._arch import layer_groups, mask_bits

    masks = [f"methods.{m}.{k}" for m, ks in space.methods.items() for k, d in ks.items()
             if d.kind == "mask"]  # fmt: skip
    if not masks:
        return []
    with torch.device("meta"):
        model = task_skeleton(space, config)
        n = mask_bits(model) if space.experiment.task == SEQ2SEQ else len(layer_groups(model))
    if n is None:
        why = f"{space.model}'s encoder and decoder differ in depth: a mask has one bit per layer"
        return [(key, f"{why} of each stack; give layers a named value (all, top_K)")
                for key in masks]  # fmt: skip
    if not n:
        kind = getattr(config, "model_type", "?")
        why = f"no encoder layers found in {space.model} ({kind}) to give a layer mask bits"
        return [(key, f"{why}: give layers a fixed value (all)") for key in masks]
    space.set_layer_count(n)
    return []


# Models whose position ids start after the padding index (RoBERTa's scheme):
# max_position_embeddings - pad_token_id - 1 positions are usable.
PADDING_OFFSET_MODELS = (
    "roberta",
    "xlm-roberta",
    "xlm-roberta-xl",
    "camembert",
    "data2vec-text",
    "roberta-prelayernorm",
    "longformer",
    "ibert",
    "mpnet",
)


def max_positions(config) -> int | None:
    """The longest input, in tokens, the model's positions allow; None: no absolute limit.

    RoBERTa-style models lose ``pad_token_id + 1`` positions to the padding
    offset (514 -> 512); rotary models (ModernBERT) take
    ``max_position_embeddings`` as is; DeBERTa with ``position_biased_input``
    false has only relative positions (no absolute embedding table to overrun).
    """
    n = getattr(config, "max_position_embeddings", None)
    kind = getattr(config, "model_type", "")
    if not isinstance(n, int) or n <= 0:
        return None
    if kind in ("deberta", "deberta-v2") and not getattr(config, "position_biased_input", True):
        return None
    if kind in PADDING_OFFSET_MODELS:
        return n - (getattr(config, "pad_token_id", None) or 0) - 1
    return n


def max_length_problems(space: Space, config) -> list[tuple[str, str]]:
    """experiment.max_length beyond the model's positions: a crash after tokenizing, found here.

    seq2seq: the source length, the target length and the tokens generated (decoder positions;
    a warm-started decoder has the encoder's), each against the model's positions.
    """
    limit = max_positions(config)
    exp = space.experiment
    lengths = {"experiment.max_length": exp.max_length}
    if exp.task == SEQ2SEQ:
        lengths = {
            "experiment.max_source_length": exp.max_source_length,
            "experiment.max_target_length": exp.max_target_length,
            "eval.max_new_tokens": space.eval.max_new_tokens,
        }
    if limit is None:
        return []
    return [
        (
            key,
            f"{n} tokens, but the model has {limit} positions "
            f"({getattr(config, 'model_type', '?')}, max_position_embeddings "
            f"{config.max_position_embeddings}): set {key.split('.')[-1]} to {limit} or less",
        )
        for key, n in lengths.items()
        if isinstance(n, int) and n > limit
    ]


def check_storage(space: Space, storage: str, name: str | None = None, key: str = "storage"):
    """The run folder can be made and written: its nearest existing folder is writable.

    Local paths only (a URI such as s3:// is left to Ray); creates nothing.
    """
    problem = RunDir.of(storage, name or "").writable_problem()
    if problem:
        raise SpaceError(
            space.source, [(key, f"{storage}: {problem}: choose another storage (or --storage)")]
        )


def wants_features(space: Space, config) -> bool:
    """Whether any configuration of the space trains only above the frozen encoder (never for
    seq2seq: the cache holds an encoder's sentence vectors for a classification head)."""
    from trainables.features import uses_cache

    if space.experiment.task == SEQ2SEQ:
        return False
    return space.experiment.feature_cache and any(
        uses_cache(method, knobs, config)
        for method in space.methods
        for knobs in space.knob_variants(method)
    )


def layer_depths(space: Space, config) -> tuple[int, ...]:
    """The depths k the layer cache holds the input states of: every k (0 < k < L) below which
    some configuration of the space trains nothing (``Method.frozen``; a layer mask can start
    at any layer); none with ``experiment.layer_cache: off`` or where the architecture does not
    allow it (:func:`trainables.layercache.layer_problem`)."""
    from trainables.layercache import layer_depth, layer_problem

    if space.experiment.task == SEQ2SEQ:
        return ()  # the layer cache holds an encoder's states for a classification head
    n = config.num_hidden_layers
    if space.experiment.layer_storage == "off" or layer_problem(config):
        return ()
    found: set[int] = set()
    for method in space.methods:
        if any(d.kind == "mask" for d in space.methods[method].values()):
            found.update(range(1, n))  # its lowest layer can be any
        for knobs in _knob_values(space, method):
            found.add(layer_depth(method, knobs, config))
    return tuple(sorted(found - {None}))


def _knob_values(space: Space, method: str, most: int = 256) -> list[dict]:
    """The method's own knobs at their centre, then each at each of its values (a range of
    integers in full, up to ``most`` values; a float at its centre: depths are not floats)."""
    from trainables.methods import get_method

    own = {k: d for k, d in space.methods[method].items() if get_method(method).knob(k)}
    center = {k: d.center() for k, d in own.items()}
    out = [center]
    for key, d in own.items():
        values = d.extremes()
        if d.kind in ("int", "log_int") and d.high - d.low < most:
            values = list(range(int(d.low), int(d.high) + 1))
        out += [{**center, key: v} for v in values if d.kind not in ("float", "log", "mask")]
    return out


def prepare_data(space: Space, progress: bool = True, features: bool = False,
                 layers: tuple[int, ...] = ()) -> PreparedData:  # fmt: skip
    """Load, split and tokenize the data: once per search, here in the driver; the feature
    cache (``features``) and the layer cache for the depths ``layers`` (:func:`layer_depths`);
    neither for seq2seq, whose targets are tokenized too and which generates as ``eval`` says."""
    started = time.perf_counter()
    exp = space.experiment
    tokenizer = load_tokenizer(exp.model)
    if exp.task == SEQ2SEQ:
        features, layers = False, ()
    try:
        data = prepare(
            exp.dataset,
            tokenizer,
            exp.max_length,
            validation=exp.split.validation,
            test=exp.split.test,
            seed=exp.seed,
            max_train=exp.max_train_samples,
            max_eval=exp.max_eval_samples,
            max_test=exp.max_test_samples,
            progress=progress,
            task=exp.task,
            metric=exp.ranking_metric,
            positive_label=exp.positive_label,
            seq2seq=seq2seq_settings(space),
            num_beams=space.eval.num_beams,
            max_new_tokens=space.eval.max_new_tokens,
            max_samples=space.eval.max_samples,
        )
    except DataError as e:
        raise SpaceError(space.source, e.problems) from None
    data.meta.update(model=space.model, tokenize_s=round(time.perf_counter() - started, 2))
    if progress:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
        what = f"{data.num_labels} labels"
        if data.task == SEQ2SEQ:
            what = f"{data.meta['source']} -> {data.meta['target']}"
        print(
            f"data: {data.meta['dataset']} ({sizes}; {what}), "
            f"tokenized once in {data.meta['tokenize_s']} s",
            flush=True,
        )
        if data.meta.get("dropped_rows"):
            print(f"data: {dropped_text(data.meta)}", flush=True)
    if features:
        from trainables.features import add_features

        started = time.perf_counter()
        # Never the test split.
        add_features(data, space.model, progress=progress, precision=space.feature_precision)
        data.meta["features_s"] = round(time.perf_counter() - started, 2)
        if progress:
            print(
                f"frozen-encoder features cached once in {data.meta['features_s']} s "
                "(linear probe, top adapter, all layers frozen train on them)",
                flush=True,
            )
    if layers:
        add_layer_cache(space, data, layers, progress)
    return data


def seq2seq_settings(space: Space):
    """How a seq2seq space tokenizes (None for another task): the experiment's prefix and
    lengths; a target's leading [CLS] is stripped exactly when the model is an encoder
    warm-started as an encoder-decoder (its decoder starts from [CLS])."""
    from dataclasses import replace

    from trainables.model import load_config

    if space.experiment.task != SEQ2SEQ:
        return None
    warm = not getattr(load_config(space.model), "is_encoder_decoder", False)
    return replace(space.experiment.seq2seq, strip_start=warm)


def add_layer_cache(space: Space, data: PreparedData, depths: tuple[int, ...], progress: bool):
    """The hidden states entering each layer of ``depths`` (train and validation), after a
    size estimate; a :class:`SpaceError` naming ``experiment.layer_cache`` where they would
    not fit in memory."""
    from trainables import layercache
    from trainables.model import load_config

    storage = space.experiment.layer_storage
    sizes = layercache.cache_bytes(data, depths, storage, load_config(space.model).hidden_size)
    budget, where = layercache.memory_budget()
    if progress:
        print(f"layer cache: {layercache.size_text(sizes, storage)}", flush=True)
    refused = layercache.refusal(sizes, storage, budget, where)
    if refused:
        raise SpaceError(space.source, [("experiment.layer_cache", refused)])
    started = time.perf_counter()
    layercache.add_layer_states(data, space.model, depths, storage, progress=progress,
                                precision=space.feature_precision)  # fmt: skip
    data.meta["layer_cache_s"] = round(time.perf_counter() - started, 2)
    data.meta["layer_cache_mb"] = round(sum(sizes.values()) / 2**20, 1)
    if progress:
        print(f"layer cache: the states entering layers {', '.join(map(str, depths))} computed "
              f"once in {data.meta['layer_cache_s']} s", flush=True)  # fmt: skip


def dropped_text(meta: dict) -> str:
    """What ``drop_invalid`` left out, in words."""
    cols = ", ".join(f"{c!r} {n}" for c, n in meta.get("dropped_empty", {}).items())
    what = "source or target" if meta.get("task") == SEQ2SEQ else "text or label"
    return (
        f"dropped {meta['dropped_rows']} rows with an empty {what} "
        f"(experiment.dataset.drop_invalid; empty cells: {cols})"
    )


def check_resources(space: Space, address: str | None) -> None:
    """Trials that can never be placed hang in PENDING: say so before Ray starts.

    For a local run the machine is the cluster: a GPU request needs a GPU
    here, and a trial's CPUs must fit in this machine's. A remote cluster is
    checked once connected (:func:`check_live_cluster`).
    """
    if address:
        return
    import torch

    gpu, cpu = space.resources.gpu, space.resources.cpu
    problems = []
    if gpu > 0 and torch.cuda.device_count() == 0:
        problems.append(
            (
                "resources.gpu",
                f"{gpu} GPU per trial, but this machine has no GPU (trials would wait in PENDING "
                "for ever): set resources.gpu: 0, or run on a cluster with GPU nodes (--address)",
            )
        )
    elif gpu > torch.cuda.device_count():
        problems.append(
            (
                "resources.gpu",
                f"{gpu} GPUs per trial, but this machine has {torch.cuda.device_count()}",
            )
        )
    if cpu > (os.cpu_count() or 1):
        problems.append(
            (
                "resources.cpu",
                f"{cpu} CPUs per trial, but this machine has {os.cpu_count()}: lower it",
            )
        )
    if problems:
        raise SpaceError(space.source, problems)


def check_live_cluster(space: Space) -> None:
    """On a running cluster: a trial must fit on some node, now or once the autoscaler adds one.

    (:func:`search.cluster.check_cluster_file` checks a cluster-launcher file offline.)
    """
    import ray

    need = {"CPU": space.resources.cpu, "GPU": space.resources.gpu}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if any(all(res.get(k, 0) >= v for k, v in need.items()) for res in nodes):
        return
    if autoscaling():
        print(
            f"no node fits a trial ({need}) yet; waiting for the autoscaler to add one", flush=True
        )
        return
    have = [{k: res.get(k, 0) for k in need} for res in nodes]
    raise SpaceError(
        space.source,
        [
            (
                "resources",
                f"no node of the cluster fits a trial's {need} (nodes have {have}) and no "
                "autoscaler can add one: lower resources.cpu / resources.gpu or add GPU nodes",
            )
        ],
    )


def autoscaling() -> bool:
    """Whether the connected cluster runs an autoscaler that may add nodes."""
    # The (v1) autoscaler publishes its status under this key of the GCS key-value store.
    try:
        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray.experimental.internal_kv import _internal_kv_get

        return bool(_internal_kv_get(DEBUG_AUTOSCALING_STATUS))
    except Exception:  # a private API: when it moves, assume no autoscaler
        return False


def code_dirs() -> list[str]:
    """What trials import of peftsearch (``trainables``), as Ray ``py_modules`` for a cluster."""
    import trainables

    return [str(Path(trainables.__file__).parent)]


def init_ray(address: str | None) -> None:
    """Join the Ray cluster at ``address``, or start a local Ray that only this machine reaches.

    With no address (nor ``RAY_ADDRESS``) every process of the local Ray -
    GCS, raylet, object manager, dashboard and runtime-env agents, metrics
    endpoint, workers - listens on 127.0.0.1 only, never on the machine's
    network interfaces, and a cluster started by ``ray start`` is not joined.
    A Ray already initialized in this process is used as it is.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and address != "local":
        # Ship the code with the job: a worker node needs torch & co., not peftsearch itself.
        ray.init(address=address, log_to_driver=False, runtime_env={"py_modules": code_dirs()})
        return
    _start_loopback_ray()


# Ray 2.60 takes a node's address from the route to the internet (and ray.init's
# _node_ip_address turns 127.0.0.1 back into it); its gRPC and HTTP servers then listen on
# all interfaces. Its single-machine mode (the default on macOS and Windows), switched on by
# this variable, makes the node's address 127.0.0.1 and every server listen on it alone.
_RAY_MULTI_NODE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _start_loopback_ray() -> None:
    """A new local Ray in Ray's single-machine mode: here, and in the processes it starts."""
    import ray
    from ray._private import ray_constants

    env, const = os.environ.get(_RAY_MULTI_NODE), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_RAY_MULTI_NODE] = "0"  # the processes ray.init starts (they read it at import)
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process, which imported ray already
    try:
        # "local": a new Ray, never one that `ray start` left running on this machine.
        ray.init(
            address="local", include_dashboard=False, log_to_driver=False, configure_logging=False
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = const
        if env is None:
            os.environ.pop(_RAY_MULTI_NODE, None)
        else:
            os.environ[_RAY_MULTI_NODE] = env
