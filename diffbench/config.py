"""Hydra composition of run configs, expansion of sweep grids, and validation of one run point.

Configs ship in the package (``diffbench/configs``, or ``$DIFFBENCH_CONFIG_DIR``) in the
lightning-hydra-template layout; user folders (``--config-dir``) add or override options. Solvers and
step grids have no YAML: each registered one is a typed config node built from its function's
signature (the one source of its defaults); model kinds without a YAML file get their factory's defaults.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, make_dataclass
from functools import cache
from pathlib import Path
from types import UnionType
from typing import Any, Union, cast, get_args, get_origin, get_type_hints

import torch
import yaml
from hydra import compose as hydra_compose
from hydra import version
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Glob, Override
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from diffbench import schema
from diffbench.batching import resolve_batch_size
from diffbench.columns import RENAMED_GROUP
from diffbench.errors import UsageError, check, warn

CONFIG_ENV = "DIFFBENCH_CONFIG_DIR"  # a whole configs folder used instead of the packaged one
CONFIG_PATH_ENV = "DIFFBENCH_CONFIG_PATH"  # user config folders that add or override options (--config-dir)
PACKAGE_CONFIGS = Path(__file__).resolve().parent / "configs"
# Fields that never change a point's samples or metric values: left out of the resume key.
NOT_HASHED = ("out", "batch_size", "device", "cache_dir", "sweep")
# Groups left out of the resume key while off, so points that predate them keep their hash.
OFF: dict[str, Any] = {"name": "none"}
HASHED_UNLESS = {"conditions": OFF, "guidance": OFF}
# Metrics whose options are a metrics sub-node of their name: hashed only while the metric is in metrics.names.
# Metrics-group fields -> the metric that reads them: hashed only while that metric is in metrics.names.
OPTIONAL_METRICS = {"clip_score": "clip_score", "fd_dinov2": "fd_dinov2", "cmmd": "cmmd",
                    "classifier": "class_accuracy", "class_labels": "fd_per_class"}
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def config_dir() -> Path:
    """The base configs folder: $DIFFBENCH_CONFIG_DIR (a whole configs folder), else the one in the package."""
    env = os.environ.get(CONFIG_ENV)
    if env:
        check((Path(env) / "config.yaml").is_file(),
              f"{CONFIG_ENV}={env} holds no config.yaml; point it at a diffbench configs folder")
        return Path(env).resolve()
    check((PACKAGE_CONFIGS / "config.yaml").is_file(),
          f"this diffbench installation has no configs ({PACKAGE_CONFIGS}); reinstall it or set {CONFIG_ENV}")
    return PACKAGE_CONFIGS


def config_dirs() -> list[Path]:
    """Where config files are looked up, the first match winning: user folders, then config_dir().

    User folders ($DIFFBENCH_CONFIG_PATH, os.pathsep-separated, or `diffbench --config-dir DIR`) add
    options (e.g. `model/my_model.yaml`) or replace packaged ones of the same name.
    """
    users = [Path(p).expanduser().resolve() for p in os.environ.get(CONFIG_PATH_ENV, "").split(os.pathsep) if p]
    for folder in users:
        check(folder.is_dir(), f"config folder {folder} ({CONFIG_PATH_ENV} / --config-dir) is not a folder")
    return [*users, config_dir()]


def config_file(group: str, name: str) -> Path | None:
    """The YAML file that option `group=name` composes from, if any (a typed registry node otherwise)."""
    return next((p for d in config_dirs() if (p := d / group / f"{name}.yaml").is_file()), None)


def _field_type(annotation: Any) -> Any:
    """An annotation as a type OmegaConf validates: scalars, their optionals and lists; anything else is Any."""
    if annotation in (int, float, bool, str):
        return annotation
    args = [a for a in get_args(annotation) if a is not type(None) and a is not Ellipsis]
    origin = get_origin(annotation)
    if origin in (Union, UnionType) and len(args) == 1:
        inner = _field_type(args[0])
        return Any if inner is Any else inner | None
    if origin in (list, tuple, Sequence) and len(args) == 1:
        return list[_field_type(args[0])]  # type: ignore[misc]
    return Any


def _field(name: str, annotation: Any, default: Any) -> tuple[str, Any, Any]:
    value = _plain(default)
    if isinstance(value, list):
        return name, _field_type(annotation), field(default_factory=lambda: json.loads(json.dumps(value)))
    return name, _field_type(annotation), field(default=value)


def _options(fn: Any, defaults: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """Typed fields of `defaults`, annotated from fn's signature."""
    hints = get_type_hints(fn)
    return [_field(k, hints.get(k, Any), v) for k, v in defaults.items()]


def typed_nodes() -> dict[str, dict[str, type]]:
    """Group -> option -> dataclass of its typed config node, built from the solver and step-grid registries.

    The registered function's signature (with a solver's register(..., **defaults) over it) is the one
    source of defaults: no YAML restates them. OmegaConf rejects values of the wrong type. Built once
    per registry state: a solver registered later (a plugin, a test) gets its node too.
    """
    from diffbench.models import MODELS
    from diffbench.models.conditions import CONDITIONS
    from diffbench.models.guidance import GUIDANCE
    from diffbench.solvers import SOLVERS
    from diffbench.steps import STEP_GRIDS

    key = tuple(tuple((n, id(f)) for n, f in registry.items())
                for registry in (SOLVERS, STEP_GRIDS, CONDITIONS, GUIDANCE, MODELS))
    return _typed_nodes(key)


@cache
def _typed_nodes(registries: tuple[tuple[tuple[str, int], ...], ...]) -> dict[str, dict[str, type]]:
    """typed_nodes for one state of the registries (`registries` is only the cache key)."""
    from diffbench.models import MODELS
    from diffbench.models.conditions import CONDITIONS
    from diffbench.models.guidance import GUIDANCE
    from diffbench.solvers import SOLVERS
    from diffbench.steps import STEP_GRIDS

    span = [("sigma_min", float | None, field(default=None)), ("sigma_max", float | None, field(default=None)),
            ("final_zero", bool, field(default=True))]
    solvers = {n: _node_class("solver", n, _options(s.fn, s.options())) for n, s in SOLVERS.items()}
    grids = {n: _node_class("steps", n, [*_options(fn, _signature_defaults(fn, 3)), *span])
             for n, fn in STEP_GRIDS.items()}
    inputs = {group: {n: _node_class(group, n, _options(fn, _signature_defaults(fn, 0))) for n, fn in registry.items()}
              for group, registry in (("conditions", CONDITIONS), ("guidance", GUIDANCE))}
    models = {k: _node_class("model", k, _options(fn, _signature_defaults(fn, 0)), key="kind")
              for k, fn in MODELS.items()}
    return {"solver": solvers, "steps": grids, "model": models, **inputs}


def _node_class(group: str, name: str, fields: list[tuple[str, Any, Any]], key: str = "name") -> type:
    """A dataclass `<group>_<name>`, its `key` field (name; a model's kind) first, pickled as NODES.<group>_<name>."""
    cls = make_dataclass(f"{group}_{name}", [(key, str, field(default=name)), *fields])
    cls.__module__, cls.__qualname__ = __name__, f"NODES.{cls.__name__}"
    return cls


class _Nodes:
    """The typed node classes as attributes: launchers pickle configs (cloudpickle), and a class found by
    reference is neither copied into jobs nor overwritten when results are unpickled."""

    def __getattr__(self, attr: str) -> type:
        group, _, name = attr.partition("_")
        try:
            return typed_nodes()[group][name]
        except KeyError:
            raise AttributeError(attr) from None


NODES = _Nodes()


def typed_options(group: str, name: str, options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Options checked against the typed node of a solver or step grid (a wrong type is a one-line UsageError)."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(typed_nodes()[group][name]), dict(options))
    except OmegaConfBaseException as e:
        raise UsageError(f"{where}: {_one_line(e)}") from None
    return {k: v for k, v in to_dict(cast(DictConfig, merged)).items() if k != "name"}


def node_defaults(group: str, name: str) -> dict[str, Any]:
    """The typed config node's default options of a solver or step grid (its name left out)."""
    node = to_dict(OmegaConf.structured(typed_nodes()[group][name]))
    return {k: v for k, v in node.items() if k != "name"}


def _signature_defaults(fn: Any, skip: int) -> dict[str, Any]:
    """Keyword parameters of fn with defaults, after the first `skip`."""
    params = list(inspect.signature(fn).parameters.values())[skip:]
    return {p.name: p.default for p in params
            if p.default is not p.empty and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _plain(value: Any) -> Any:
    """A registry default as a config value (tuples become lists)."""
    return [_plain(v) for v in value] if isinstance(value, tuple | list) else value


def _register_nodes() -> None:
    """Store the schema nodes and the typed solver/step-grid/input/model-kind nodes (a YAML preset of a model kind's
    name replaces its node)."""
    store = ConfigStore.instance()
    for (group, name), node in schema.NODES.items():
        store.store(group=group, name=name, node=node)
    for group, nodes in typed_nodes().items():
        for name, node in nodes.items():
            if group != "model" or config_file(group, name) is None:
                store.store(group=group, name=name, node=node)


def group_options(group: str) -> list[str]:
    """Every option of a config group: YAML files in every config folder plus registry nodes."""
    names = {p.stem for d in config_dirs() for p in (d / group).glob("*.yaml")}
    names |= set(typed_nodes().get(group, {}))
    names |= {name for g, name in schema.NODES if g == group}
    return sorted(names)


def raw_node(group: str, name: str) -> dict[str, Any]:
    """One option's own fields as written (a YAML preset's with `defaults` naming what it inherits; unvalidated)."""
    path = config_file(group, name)
    node = OmegaConf.load(path) if path else OmegaConf.structured(schema.NODES[(group, name)])
    return cast(dict[str, Any], OmegaConf.to_container(node))


def group_config(group: str, name: str) -> dict[str, Any]:
    """The composed config of one group option (defaults lists applied)."""
    return to_dict(compose([f"{group}={name}"])[group])


@contextmanager
def _hydra() -> Iterator[None]:
    """A Hydra session whose search path is the user config folders, the base folder, then the typed nodes."""
    dirs = config_dirs()
    _register_nodes()
    search = create_config_search_path(None)
    for folder in reversed(dirs):
        search.prepend("main", f"file://{folder}")
    GlobalHydra.instance().clear()
    version.setbase("1.3")
    Hydra.create_main_hydra2(task_name="diffbench", config_search_path=search)
    try:
        yield
    finally:
        GlobalHydra.instance().clear()


def _one_line(e: Exception) -> str:
    """Hydra's multi-line messages as one line (a typed field's rejection names the field)."""
    merging = "Error merging override "
    if isinstance(e.__cause__, ValidationError) and str(e).startswith(merging):
        return f"{str(e).removeprefix(merging).strip()}: {str(e.__cause__).splitlines()[0]}"
    if isinstance(e, MissingConfigException) and e.missing_cfg_file and "/" in e.missing_cfg_file:
        group, name = e.missing_cfg_file.rsplit("/", 1)
        opts = ", ".join(e.options or group_options(group))
        return (f"{group}={name} is not an option; choose one of: {opts} "
                f"(or add {group}/{name}.yaml to a --config-dir folder)")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and not ln.startswith("See https")]
    text = "; ".join(lines[:2]) if lines else type(e).__name__
    if text.startswith("Could not override"):
        key = text.split("'")[1]
        return f"{key}: no such config field; check the spelling (`diffbench list` shows groups and options)"
    return text


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Parse Hydra override strings; a syntax error is a UsageError."""
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        bad = next((o for o in overrides if "=" in o and _needs_quotes(o.split("=", 1)[1])), None)
        if bad is not None:
            key, value = bad.split("=", 1)
            raise UsageError(f"cannot parse override {bad}: quote a value with spaces or special characters, "
                             f"e.g. \"{key}='{value}'\"") from None
        raise UsageError(f"cannot parse override: {_one_line(e)}") from None
    for o in parsed:
        check(o.key_or_group.split(".")[0] != RENAMED_GROUP,
              f"{o.input_line}: the step-grid group is now `steps` (e.g. steps=karras steps.rho=5); "
              f"`schedule` is the model's noise schedule (model.schedule)")
        if o.is_add():
            _warn_added(o.input_line)
    return parsed


@cache
def _warn_added(line: str) -> None:
    """Warn once per process about a `+key=value` addition (overrides are parsed several times a command)."""
    warn(f"{line}: adds a field diffbench does not read (a typo of an existing field?)")


def _needs_quotes(value: str) -> bool:
    """Whether Hydra needs `value` quoted: spaces or characters outside its plain-value set."""
    return not (value.startswith(("'", '"')) or re.fullmatch(r"[\w./:@*~+-]*", value, flags=re.ASCII))


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose config.yaml with overrides (no sweeps), resolved, with `choices` recording group picks."""
    for o in parse_overrides(overrides):
        check(not o.is_sweep_override(),
              f"{o.input_line}: a sweep over several values; use `diffbench sweep` or give one value")
    with _hydra():
        return _compose(list(overrides))


def _compose(overrides: list[str], complete: bool = True) -> DictConfig:
    """The composed config; complete=False lets `???` fields stay unset (a sweep's base, read for sweep.params)."""
    try:
        cfg = hydra_compose("config", overrides=overrides, return_hydra_config=True)
        choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/") and v}
        _check_mappings(choices)
        with _open(cfg):
            del cfg["hydra"]
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise UsageError(_one_line(e)) from None
    except yaml.YAMLError as e:
        raise UsageError(f"malformed config file: {_one_line(e)}") from None
    missing = sorted(OmegaConf.missing_keys(cfg)) if complete else []
    if missing:
        raise UsageError(f"{', '.join(missing)} has no value; set it on the command line ({missing[0]}=...)")
    with _open(cfg):
        cfg.choices = choices
    return cfg


def _check_mappings(choices: Mapping[str, str]) -> None:
    """Each chosen group file holds a mapping (Hydra silently ignores a file that is a bare scalar or list)."""
    for group, name in choices.items():
        path = config_file(group, name)
        if path is not None:
            data = yaml.safe_load(path.read_text())
            check(data is None or isinstance(data, dict),
                  f"malformed config file: {path} holds a {type(data).__name__}, not a mapping of fields")


@contextmanager
def _open(cfg: DictConfig) -> Iterator[None]:
    OmegaConf.set_struct(cfg, False)
    yield
    OmegaConf.set_struct(cfg, True)


def _axis_values(o: Override) -> list[str]:
    """The values one override stands for (one for a plain value; several for a sweep)."""
    if not o.is_sweep_override():
        value = o.value()
        if isinstance(value, list):  # key=[a,b] on a grid axis lists the axis values
            return [Override._get_value_element_as_str(v) for v in value]
        return [o.get_value_element_as_str()]
    check(o.is_discrete_sweep(), f"{o.input_line}: only lists, range() and glob() sweeps can be expanded")
    value = o.value()
    if isinstance(value, Glob):
        return value.filter(group_options(o.key_or_group))
    return list(o.sweep_string_iterator())


def _axis_override(key: str, value: Any) -> str:
    """A sweep-file axis (a list or an override value string) as one override string."""
    if OmegaConf.is_list(value) or isinstance(value, list):
        return f"{key}={','.join(str(v) for v in value)}"
    return f"{key}={value}"


def _lists_axis(o: Override) -> bool:
    """Whether a plain `key=[a,b]` may list a sweep axis (a typed field such as nfe cannot hold the list itself)."""
    return isinstance(o.value(), list) and not o.key_or_group.startswith("sweep.")


def expand_grid(overrides: Sequence[str] = ()) -> list[list[str]]:
    """Expand sweep.params and command-line sweeps into one override list per grid point.

    A command-line override of a key that sweep.params lists replaces that axis; other plain
    overrides apply to every point. The base config that holds sweep.params is composed without group
    options (`guidance.scale=2`): their group may be an axis (`guidance=cfg,interval`) whose option the
    base does not choose; each point's composition checks them.
    """
    parsed = parse_overrides(overrides)
    shaping = [cast(str, o.input_line) for o in parsed
               if not (o.is_sweep_override() or _group_option(o) or _lists_axis(o))]
    with _hydra():
        base = _compose(shaping, complete=False)  # group options (dataset.path=...) are each point's
        axes: dict[str, tuple[str, list[str]]] = {}
        for key, value in (base.sweep.get("params") or {}).items():
            o = parse_overrides([_axis_override(key, value)])[0]
            axes[o.key_or_group] = (o.get_key_element(), _axis_values(o))
        for o in parsed:
            if o.is_sweep_override() or o.key_or_group in axes:
                axes[o.key_or_group] = (o.get_key_element(), _axis_values(o))
    for key, (_, values) in axes.items():
        check(len(values) > 0, f"{key}: the sweep list is empty; give at least one value")
    fixed = [cast(str, o.input_line) for o in parsed if o.key_or_group not in axes]
    names = [element for element, _ in axes.values()]
    return [fixed + [f"{n}={v}" for n, v in zip(names, combo)]
            for combo in itertools.product(*(values for _, values in axes.values()))]


def _group_option(o: Override) -> bool:
    """Whether `o` sets an option inside a config group (`guidance.scale=2`), not `sweep.*` or a top-level field."""
    head, dot, _ = o.key_or_group.partition(".")
    return bool(dot) and head != "sweep"


def compose_grid(overrides: Sequence[str] = ()) -> list[DictConfig]:
    """Every grid point's composed config, in grid order."""
    return compose_points(expand_grid(overrides))


def compose_points(points: Sequence[Sequence[str]]) -> list[DictConfig]:
    """The composed config of each override list (one per grid point), in one Hydra session."""
    common = set.intersection(*(set(p) for p in points)) if points else set()
    with _hydra():
        return [_compose_point(list(p), [o for o in p if o not in common]) for p in points]


def _compose_point(overrides: list[str], axes: list[str]) -> DictConfig:
    """One grid point's config; an error names the point by its axis values (`guidance=cfg`)."""
    try:
        return _compose(overrides)
    except UsageError as e:
        if not axes:
            raise
        raise UsageError(f"grid point {' '.join(axes)}: {e}") from None


def to_dict(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """A resolved plain-dict copy of a config."""
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return json.loads(json.dumps(cfg))


def inputs_of(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """A point's conditions and guidance nodes (OFF when absent), autoguidance's guide model resolved
    (with_guide_model): reference-solution and fitted-grid keys change with the guide's config, not only its name."""
    return to_dict(cfg.get("conditions") or OFF), with_guide_model(to_dict(cfg.get("guidance") or OFF))


def with_guide_model(guidance: dict[str, Any]) -> dict[str, Any]:
    """The guidance node plus `guide_model`, the model config autoguidance's `guide` names (configs/model/<guide>)."""
    if not guidance.get("guide"):
        return guidance
    return {**guidance, "guide_model": group_config("model", str(guidance["guide"]))}


def config_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """The resume key: a hash of every field that changes a point's samples or metrics."""
    from diffbench.solvers.registry import UNHASHED_DEFAULTS

    data = {k: v for k, v in to_dict(cfg).items() if k not in (*NOT_HASHED, "choices") and HASHED_UNLESS.get(k) != v}
    if "steps" in data:  # hashed under the group's old name, so runs and baselines from before the rename resume
        data[RENAMED_GROUP] = data.pop("steps")
    if isinstance(data.get("metrics"), Mapping):  # options of metrics the point does not compute change nothing
        names = data["metrics"].get("names") or []
        data["metrics"] = {k: v for k, v in data["metrics"].items()
                           if k not in OPTIONAL_METRICS or OPTIONAL_METRICS[k] in names}
    if isinstance(data.get("solver"), Mapping):  # options at their pre-existing behaviour keep old keys
        data["solver"] = {k: v for k, v in data["solver"].items()
                          if k not in UNHASHED_DEFAULTS or v != UNHASHED_DEFAULTS[k]}
    text = json.dumps(data, sort_keys=True, default=str, allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def point_hash(cfg: DictConfig | Mapping[str, Any]) -> str:
    """config_hash without the seed: the same benchmark point on any noise stream (`diffbench check` matches it)."""
    return config_hash({k: v for k, v in to_dict(cfg).items() if k != "seed"})


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> {'solver.name': ..., 'model.shape': '[3, 16, 16]'} (lists as JSON text)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            flat[name] = json.dumps(list(value))
        else:
            flat[name] = value
    return flat


@dataclass(frozen=True)
class RunSettings:
    """The validated top-level fields of one point."""

    nfe: int
    seed: int
    n_samples: int
    batch_size: int
    device: torch.device
    dtype: torch.dtype


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; asking for an absent CUDA device is a UsageError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    check(device is not None and device.type in ("cpu", "cuda"),
          f"device={name} is not a device diffbench runs on; use auto, cpu, cuda or cuda:N")
    assert device is not None  # check() raised otherwise
    check(device.type != "cuda" or torch.cuda.is_available(),
          f"device={name} but no CUDA device is visible; use device=cpu or device=auto")
    check(device.type != "cuda" or device.index is None or device.index < torch.cuda.device_count(),
          f"device={name}: there are only {torch.cuda.device_count()} CUDA devices; use cuda:0 .. cuda:N-1")
    return device


# Upper bounds checked in O(1) before anything runs: larger values are typos (nfe=1e9 would build a
# billion-step grid, n_samples=1e12 would be killed for memory after creating the output folder).
MAX_NFE, MAX_SAMPLES = 100_000, 100_000_000


def _positive_int(cfg: DictConfig, key: str, minimum: int = 1, maximum: int | None = None) -> int:
    value = cfg.get(key)
    check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
          f"{key} must be an integer >= {minimum} (got {value!r})")
    check(maximum is None or value <= maximum, f"{key}={value} is above diffbench's limit of {maximum}; "
                                               "check the value (a typo?)")
    return int(value)


# Counts in the metrics group: their minimum, and which may be null (ref_n: the whole dataset).
METRIC_COUNTS = {"n_boot": 0, "kid_n_boot": 0, "error_n_boot": 0, "kid_subsets": 1, "kid_subset_size": 2, "ref_n": 2,
                 "error_samples": 1, "is_splits": 1, "prdc_k": 1, "prdc_max": 2}
NULLABLE_METRICS = ("ref_n", "error_samples")


def check_metric_numbers(metrics: Mapping[str, Any]) -> None:
    """The metrics group's counts are integers >= their minimum (n_boot 0 or >= 2) and ci_level is in (0, 1)."""
    for key, minimum in METRIC_COUNTS.items():
        value = metrics.get(key)
        if key in metrics and not (value is None and key in NULLABLE_METRICS):
            check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
                  f"metrics.{key} must be an integer >= {minimum} (got {value!r})")
    for key in ("n_boot", "kid_n_boot"):
        check(metrics.get(key) != 1, f"metrics.{key} must be 0 (no intervals) or >= 2 (got 1)")
    check(isinstance(metrics.get("ci_includes_reference", False), bool),
          f"metrics.ci_includes_reference must be true or false (got {metrics.get('ci_includes_reference')!r})")
    level = metrics["ci_level"]
    check(isinstance(level, int | float) and not isinstance(level, bool) and 0 < level < 1,
          f"metrics.ci_level must be a number in (0, 1) (got {level!r})")


def settings(cfg: DictConfig) -> RunSettings:
    """Validate the top-level fields of a composed config and the metrics group's numbers."""
    check_metric_numbers(cfg.get("metrics") or {})
    seed = cfg.get("seed")
    check(isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63,
          f"seed must be a non-negative integer (got {seed!r})")
    dtype = str(cfg.get("dtype"))
    check(dtype in DTYPES, f"dtype={dtype} is not supported; use {' or '.join(DTYPES)}")
    sched = cfg.steps
    for end in ("sigma_min", "sigma_max"):
        value = sched.get(end)
        check(value is None or (isinstance(value, int | float) and math.isfinite(value) and value > 0),
              f"steps.{end} must be a positive number or null (got {value!r})")
    if sched.get("sigma_min") is not None and sched.get("sigma_max") is not None:
        check(sched.sigma_min < sched.sigma_max,
              f"steps.sigma_min ({sched.sigma_min}) must be below steps.sigma_max ({sched.sigma_max})")
    if sched.name == "explicit":
        check(sched.get("sigma_min") is None and sched.get("sigma_max") is None,
              "steps.sigmas fixes the grid: leave steps.sigma_min and steps.sigma_max null")
        ends_at_zero = len(sched.sigmas) > 0 and float(sched.sigmas[-1]) == 0
        check(ends_at_zero == bool(sched.final_zero),
              f"steps.final_zero={sched.final_zero} conflicts with steps.sigmas "
              f"{'ending' if ends_at_zero else 'not ending'} in 0; make them agree")
    check(bool(str(cfg.get("out") or "").strip()), "out is empty; give a results folder (out=runs/mine)")
    n_samples, device = _positive_int(cfg, "n_samples", maximum=MAX_SAMPLES), resolve_device(str(cfg.device))
    return RunSettings(_positive_int(cfg, "nfe", maximum=MAX_NFE), int(seed), n_samples,
                       resolve_batch_size(cfg.get("batch_size"), n_samples, device), device, DTYPES[dtype])
