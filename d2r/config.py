"""One configuration system: dataclass defaults, YAML presets, user YAML, overrides.

Resolution order (later wins): dataclass defaults → preset chain (a preset may
``extends:`` another) → user YAML files → ``--set a.b=c`` overrides.  Unknown
keys and values of the wrong type are errors that name the dotted key.  The
resolved :class:`Config` converts to a plain dict (``to_dict``) which every
artifact records, and back (``from_dict``).

Each extractor's section ``features.<name>`` is defined beside the extractor and
registered with :func:`feature_section` (with its ranges and legacy values); the
sections of the built-in extractors are imported on first use, a plugin's when its
module is (``D2R_PLUGINS``).  The other sections are here.

Over 500 lines, one job: what a setting is (the sections, their ranges), how a config is
resolved (presets, the safe reading of YAML files and overrides) and how a record of an
older release reads today; every stage imports it, and the parts use one another.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional

import yaml

from d2r.checks import MAX_SHOWN, shown
from d2r.errors import InputError

__all__ = [
    "RANGES",
    "check_ranges",
    "ConfigError",
    "ImagesConfig",
    "FeaturesConfig",
    "BUILTIN_EXTRACTORS",
    "feature_section",
    "feature_sections",
    "features_class",
    "setting_ranges",
    "legacy_values",
    "RegionsConfig",
    "CodebookConfig",
    "AggregationConfig",
    "SearchConfig",
    "VerificationConfig",
    "Config",
    "PRESET_DIR",
    "available_presets",
    "load_config",
    "from_dict",
    "to_dict",
    "parse_override",
    "diff_configs",
    "LEGACY_VALUES",
    "upgrade_record",
    "merge_values",
    "build_dataclass",
    "read_yaml",
    "load_yaml",
    "MAX_YAML_VALUES",
]

PRESET_DIR = Path(__file__).with_name("presets")


class ConfigError(InputError):
    """A configuration key or value is invalid; the message names the dotted key."""


@dataclass
class ImagesConfig:
    """How images are decoded before feature extraction."""

    max_side: Optional[int] = 1024
    """Downscale so the longer side is at most this many pixels (None: keep size)."""
    max_pixels: int = 178_956_970
    """Refuse images with more pixels than this (decompression-bomb guard)."""
    on_error: Literal["skip", "raise"] = "skip"
    """Batch runs: skip unreadable images and list them, or stop at the first."""


BUILTIN_EXTRACTORS: dict[str, str] = {
    "rootsift": "d2r.features.rootsift",
    "delf": "d2r.features.delf",
    "xfeat": "d2r.features.xfeat",
    "disk": "d2r.features.disk",
    "cnn": "d2r.cnn.extractor",
}
"""The built-in extractors (``features.backend``) and the module that defines each one's
class and its config section ``features.<name>``; imported when first needed."""

_SECTIONS: dict[str, type] = {}
_SECTIONS_LOADED = False


def feature_section(name: str):
    """Class decorator: the dataclass is the config section ``features.<name>``.

    The section may declare two class attributes: ``RANGES`` (key -> interval, as
    :data:`RANGES`) and ``LEGACY`` (key -> the value that reproduces a record written
    before the key existed, as :data:`LEGACY_VALUES`).  Registering another class
    under a taken name is an error.
    """
    def register(cls: type) -> type:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"config section features.{name}: {cls.__name__} is not a dataclass")
        if _SECTIONS.get(name, cls) is not cls:
            raise ValueError(f"config section features.{name} is already "
                             f"{_SECTIONS[name].__name__}")
        _SECTIONS[name] = cls
        _features_class.cache_clear()
        return cls
    return register


def feature_sections() -> dict[str, type]:
    """Every ``features.<name>`` section class by name: the built-in extractors' (their
    modules imported once, which loads no model) and the plugins' (``D2R_PLUGINS``)."""
    global _SECTIONS_LOADED
    if not _SECTIONS_LOADED:
        from d2r.registry import load_plugins

        for module in BUILTIN_EXTRACTORS.values():
            importlib.import_module(module)
        load_plugins()
        _SECTIONS_LOADED = True
    return dict(sorted(_SECTIONS.items()))


@dataclass
class FeaturesConfig:
    """Which feature backend runs, and how its output is stored; each extractor's section
    ``features.<name>`` is defined beside the extractor (:func:`feature_section`), so a
    resolved config is of a subclass with one field per section (:func:`features_class`)."""

    backend: str = "rootsift"
    """Local features (rootsift, delf, xfeat, disk) or one CNN global descriptor per image (cnn)."""
    store_dtype: Literal["float32", "float16"] = "float16"

    def __reduce__(self):
        return (_features_from_dict, (to_dict(self),))


def _features_from_dict(values: Mapping[str, Any]) -> FeaturesConfig:
    """Unpickle: the sections' classes are looked up again in this process."""
    return build_dataclass(features_class(), values, "features")


@functools.lru_cache(maxsize=None)
def _features_class() -> type:
    order = [*BUILTIN_EXTRACTORS, *sorted(set(_SECTIONS) - set(BUILTIN_EXTRACTORS))]
    fields = [(name, _SECTIONS[name], field(default_factory=_SECTIONS[name]))
              for name in order if name in _SECTIONS]
    cls = dataclasses.make_dataclass("FeaturesConfig", fields, bases=(FeaturesConfig,))
    cls.__module__ = __name__
    return cls


def features_class() -> type:
    """The :class:`FeaturesConfig` subclass with a field for every registered section: the
    built-in ones in :data:`BUILTIN_EXTRACTORS` order, then the plugins' by name (so records
    keep one key order whatever was imported first)."""
    feature_sections()
    return _features_class()


@dataclass
class RegionsConfig:
    """Image regions whose features are aggregated (regional aggregation / search)."""

    source: Literal["none", "detector", "grid", "selective_search"] = "none"
    detector_path: Optional[str] = None
    score_threshold: float = 0.1
    """Detector boxes kept above this score (the paper's indexing threshold)."""
    max_boxes: int = 100
    grid_levels: int = 3
    """R-MAC grid levels when ``source == "grid"``."""
    features: Literal["crop", "select"] = "crop"
    """Region features: extracted from each region's crop (the paper), or the
    whole-image features whose keypoints fall inside the region (cheaper)."""
    selective_search_mode: Literal["single", "fast", "quality"] = "fast"
    """Selective search (``source == "selective_search"``, Uijlings et al., IJCV
    2013): ``single`` = one strategy (RGB, one segmentation scale, one
    similarity); ``fast`` = the paper's 8 strategies (HSV, Lab x k 50, 100 x two
    similarity combinations); ``quality`` = its 80 strategies (HSV, Lab, rgI, H,
    I x k 50, 100, 150, 300 x four combinations), slower and more proposals.
    See :func:`d2r.regions.selective_search.selective_search`."""
    selective_search_max_side: int = 256
    """Selective search runs on the image downscaled to this longer side
    (pixels); boxes are mapped back to the full image."""


AUTO_APPROXIMATE_WORDS = 16384
"""Codebook size from which ``codebook.quantization: auto`` quantizes approximately."""

HNSW_KEYS = ("hnsw_m", "ef_construction", "ef_search")
"""The ``codebook`` keys of the HNSW quantizer (they do not change the codebook)."""


@dataclass
class CodebookConfig:
    """Visual-word codebook: trained on the indexed images or loaded."""

    path: Optional[str] = None
    """Load this codebook instead of training one."""
    num_words: int = 1024
    seed: int = 0
    max_points_per_word: int = 256
    """k-means trains on at most ``num_words * max_points_per_word`` descriptors."""
    niter: int = 20
    quantization: Literal["auto", "exact", "approximate"] = "auto"
    """How descriptors find their words: ``exact`` (all K centroids), ``approximate`` (an HNSW
    graph over the centroids, stored in the index), ``auto``: approximate from 16384 words
    (:mod:`d2r.index.quantizer`).  An index records the resolved choice."""
    hnsw_m: int = 32
    """Approximate quantization: the HNSW graph's degree."""
    ef_construction: int = 200
    """Approximate quantization: the HNSW graph's build breadth."""
    ef_search: int = 24
    """Approximate quantization: the HNSW search breadth (at least the assignments wanted);
    24 gives the exact word to 99.5% of RootSIFT descriptors with 16k and 65k words
    (``benchmarks/quantize_agreement.py``)."""

    def quantizer_mode(self, num_words: Optional[int] = None) -> str:
        """``"exact"`` or ``"approximate"``: what ``quantization`` means for a codebook of
        ``num_words`` (default ``self.num_words``) words."""
        if self.quantization != "auto":
            return self.quantization
        words = self.num_words if num_words is None else num_words
        return "approximate" if words >= AUTO_APPROXIMATE_WORDS else "exact"


@dataclass
class AggregationConfig:
    """Aggregation kernel and its similarity (the D2R paper's names)."""

    method: str = "asmk_star"
    num_assignments_db: int = 1
    num_assignments_query: int = 1
    alpha: float = 3.0
    tau: float = 0.0
    database_normalization: bool = True
    """Divide by the database image's self-similarity too (False: the paper's Eq. 9)."""
    regional_search: bool = False
    """Index each region as its own item (D2R regional search)."""
    pooling: Literal["max", "avg"] = "max"
    """Regional search: image score from its regions' scores (Eq. 3 max, Eq. 4 average)."""


@dataclass
class SearchConfig:
    top_k: int = 100
    query_expansion: int = 0
    """Query expansion with this many images (0: off): global descriptors average the top
    this many; local features (VLAD / ASMK / ASMK*, with ``verification.rerank``) use up
    to this many spatially verified images (:mod:`d2r.encoding.expansion`)."""
    qe_alpha: float = 0.0
    """Local verified expansion: weight of a verified image, ``(inliers / most inliers) **
    qe_alpha`` (0: a plain average)."""
    qe_features: Literal["all", "region", "inliers"] = "region"
    """Local verified expansion: each verified image contributes all its features, those
    inside the bounding box of its inliers (``region``, the default: the best of the three on
    the synthetic benchmark), or only its inliers."""
    aml_rerank: int = 0
    """Global ``mac`` / ``rmac`` / ``gem``: localize the query (AML) in the top N and re-rank
    them by the localized region's descriptor (0: off; needs ``features.cnn.store_maps``)."""
    aml_levels: Optional[int] = None
    """AML: quantize activations to this many levels (the integral-image lookup table)."""


@dataclass
class VerificationConfig:
    """RANSAC spatial verification re-ranking of the top of the initial ranking."""

    rerank: int = 0
    """Re-rank the top N (0: off)."""
    descriptor_threshold: float = 0.8
    ratio_test: Optional[float] = None
    mutual: bool = False
    ransac_threshold: float = 20.0
    max_trials: int = 1000
    min_inliers: int = 8
    method: Literal["opencv", "skimage", "usac"] = "opencv"
    """Robust estimator: OpenCV RANSAC (fast), scikit-image RANSAC (the DELF reference's
    procedure) or OpenCV's USAC MAGSAC++."""
    model: Literal["affine", "similarity", "homography"] = "affine"
    """Geometric model fitted (similarity: OpenCV RANSAC only; skimage: affine only)."""
    relative_threshold: Optional[float] = None
    """Inlier threshold as a fraction of the query image's diagonal (None: ``ransac_threshold``
    pixels)."""
    decision: Literal["nfa", "inliers"] = "nfa"
    """When a pair counts as verified: ``nfa`` (the default), the a-contrario test
    (one-to-one inliers, ``-log10`` of the number of false alarms >= ``min_score``, a sane
    transform and inlier spread, at least ``min_inliers`` inliers;
    :mod:`d2r.spatial.score`); ``inliers``, the earlier rule, RANSAC's inlier count >=
    ``min_inliers`` (about 2 false verifications per 100 unrelated pairs; indexes that
    recorded it keep it).  Measured in docs/benchmarks.md (issue 26)."""
    min_score: float = 3.0
    """``nfa``: the least score ``-log10 NFA``: 3 expects at most one false verification per
    1,000 unrelated pairs under the score's chance model, and none was seen among the
    calibration's unrelated real-photo pairs (docs/benchmarks.md); two halves of a repeated
    texture can still score above it."""
    max_scale_ratio: float = 10.0
    """``nfa``: refuse a transform that scales by more than this, either way."""
    max_anisotropy: float = 6.0
    """``nfa``: refuse a transform whose singular values differ by more than this factor
    (strong shear or squash)."""
    allow_reflection: bool = False
    """``nfa``: accept mirrored matches (a transform with a negative determinant)."""
    min_spread: float = 0.5
    """``nfa``: refuse inliers whose query locations spread less than this many inlier
    tolerances along their minor axis (all on one line, or in one small patch)."""


@dataclass
class Config:
    """The resolved configuration of a pipeline run."""

    images: ImagesConfig = field(default_factory=ImagesConfig)
    features: FeaturesConfig = field(default_factory=lambda: features_class()())
    regions: RegionsConfig = field(default_factory=RegionsConfig)
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)


def to_dict(config: Any) -> dict:
    """Plain nested dict (tuples become lists) of a config dataclass."""
    def plain(value):
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation and convert it (list → tuple, int → float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: invalid value {shown(value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {shown(value)} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {shown(value)}")
        item_type = args[0]
        return tuple(_coerce(v, item_type, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {shown(value)}")
        return build_dataclass(annotation, value, key)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {shown(value)}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {shown(value)}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {shown(value)}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {shown(value)}")
        return value
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def build_dataclass(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types
    (:class:`FeaturesConfig` is built with every registered section)."""
    if cls is FeaturesConfig:
        cls = features_class()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            hint = (" (no extractor of that name is registered here: is the module that "
                    "defines it listed in D2R_PLUGINS?)" if prefix == "features" else "")
            raise ConfigError(f"unknown config key {shown(dotted)}{hint}; known keys here: "
                              f"{', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def merge_values(base: Mapping, update: Mapping) -> dict:
    """Recursive dict merge: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_values(out[key], value)
        else:
            out[key] = value
    return out


MAX_YAML_VALUES = 10_000
"""Most values (scalars, lists and mappings, every use of an alias counted again) a YAML
config file or ``--set`` value may expand to; a whole d2r config holds about 150."""


def _expands_beyond(root: yaml.Node, limit: int) -> bool:
    """Whether the composed YAML ``root`` holds more than ``limit`` nodes once every alias
    is copied out (a recursive alias never ends: it is beyond any limit).  Visits at most
    ``limit + 1`` nodes."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend(item for pair in node.value for item in pair)
    return False


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """One line of at most :data:`~d2r.checks.MAX_SHOWN` characters saying what is wrong
    with a YAML text and where."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem:
        mark = exc.problem_mark
        text = (f"line {mark.line + 1}, column {mark.column + 1}: " if mark else "") + exc.problem
    else:
        text = str(exc)
    text = " ".join(text.split())
    return text if len(text) <= MAX_SHOWN else f"{text[:MAX_SHOWN - 3]}..."


def load_yaml(text: str, where: str) -> Any:
    """The value YAML ``text`` holds (standard tags only: nothing is executed or imported).

    Refused with a one-line :class:`ConfigError` naming ``where`` (``"config file X"``):
    invalid YAML, values nested too deeply, and aliases that expand the text beyond
    :data:`MAX_YAML_VALUES` values (a "billion laughs" bomb is refused after reading at
    most that many nodes, before any value is built).
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expands_beyond(node, MAX_YAML_VALUES):
            raise ConfigError(f"{where} expands to more than {MAX_YAML_VALUES} values (YAML "
                              f"aliases repeating values); a d2r config holds a few hundred")
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where} is not valid YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{where} nests values too deeply to be a d2r config") from None
    finally:
        loader.dispose()


def read_yaml(path: Path) -> dict:
    """The mapping a YAML config file holds (``{}`` when empty), read with :func:`load_yaml`;
    errors name the file."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    data = load_yaml(text, f"config file {path}")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def available_presets() -> list[str]:
    """Names of the presets shipped in ``d2r/presets``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _preset_values(name: str, seen: tuple[str, ...] = ()) -> dict:
    """Values of preset ``name`` with its ``extends`` chain resolved."""
    if name in seen:
        raise ConfigError(f"preset {shown(name)} extends itself through {' -> '.join(seen)}")
    if name not in available_presets():
        raise ConfigError(
            f"unknown preset {shown(name)}; available: {', '.join(available_presets())}"
        )
    data = read_yaml(PRESET_DIR / f"{name}.yaml")
    parent = data.pop("extends", None)
    if parent is None:
        return data
    return merge_values(_preset_values(str(parent), seen + (name,)), data)


def parse_override(text: str) -> dict:
    """``"a.b=c"`` → ``{"a": {"b": c}}`` with ``c`` parsed as a YAML scalar or list."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {shown(text)} must look like section.key=value")
    value = load_yaml(raw, f"override {shown(text)}") if raw.strip() else None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def from_dict(values: Mapping[str, Any]) -> Config:
    """Build a :class:`Config` from a (possibly partial) nested mapping."""
    return build_dataclass(Config, values)


def load_config(
    preset: Optional[str] = None,
    files: Iterable[str | Path] = (),
    overrides: Iterable[str] = (),
) -> Config:
    """Resolve defaults → preset → YAML ``files`` → ``overrides`` (``"a.b=c"`` strings)."""
    values: dict = {}
    if preset:
        values = _preset_values(preset)
    for path in files:
        data = read_yaml(Path(path))
        parent = data.pop("extends", None)
        if parent is not None:
            values = merge_values(values, _preset_values(str(parent)))
        values = merge_values(values, data)
    for text in overrides:
        values = merge_values(values, parse_override(text))
    return from_dict(values)


LEGACY_VALUES: dict[str, Any] = {
    "search.aml_rerank": 0,
    "search.aml_levels": None,
    "codebook.hnsw_m": 32,
    "codebook.ef_construction": 200,
    "codebook.ef_search": 128,
    "regions.selective_search_mode": "single",
    "regions.selective_search_max_side": 256,
    "verification.decision": "inliers",
    "verification.min_score": 12.0,
    "verification.max_scale_ratio": 10.0,
    "verification.max_anisotropy": 6.0,
    "verification.allow_reflection": False,
    "verification.min_spread": 0.5,
}
"""Keys added after d2r 0.1.0 and the value that reproduces what a record without them
did (the extractors' sections declare theirs: :func:`legacy_values`)."""


def _with_sections(table: Mapping[str, Any], attribute: str) -> dict[str, Any]:
    """``table`` and every extractor section's class attribute ``attribute`` (a mapping of
    its keys), the section's keys dotted as ``features.<name>.<key>``."""
    out = dict(table)
    for name, cls in feature_sections().items():
        out.update({f"features.{name}.{key}": value
                    for key, value in getattr(cls, attribute, {}).items()})
    return out


def legacy_values() -> dict[str, Any]:
    """:data:`LEGACY_VALUES` and every extractor section's ``LEGACY`` keys, dotted."""
    return _with_sections(LEGACY_VALUES, "LEGACY")


def upgrade_record(record: Mapping, prefix: str = "") -> dict:
    """A recorded config (or its section at dotted ``prefix``, e.g. ``"features.cnn"``) with
    every key of :data:`LEGACY_VALUES` it lacks added, so records written by an older d2r
    compare equal to the same settings today.  Sections the record lacks stay absent,
    except the extractor sections of a recorded ``features``: one missing there was written
    before that extractor existed (or its plugin was loaded), and its settings cannot have
    mattered to the record, so it gets today's defaults; for the same reason the section of
    an extractor not registered here (a plugin's) is dropped unless it is the recorded
    ``features.backend``."""
    out = copy.deepcopy(dict(record))
    features = out.get("features") if not prefix else out if prefix == "features" else None
    if isinstance(features, dict):
        sections = feature_sections()
        for name in [k for k, v in features.items() if isinstance(v, dict)]:
            if name not in sections and name != features.get("backend"):
                del features[name]
        for name, cls in sections.items():
            features.setdefault(name, to_dict(cls()))
    start = f"{prefix}." if prefix else ""
    for dotted, value in legacy_values().items():
        if not dotted.startswith(start):
            continue
        *parents, leaf = dotted[len(start):].split(".")
        node = out
        for part in parents:
            node = node.get(part)
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(leaf, value)
    return out


def diff_configs(expected: Mapping, actual: Mapping, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (for refusal messages)."""
    keys = sorted(set(expected) | set(actual))
    out = []
    for key in keys:
        dotted = f"{prefix}.{key}" if prefix else str(key)
        a, b = expected.get(key), actual.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(diff_configs(a, b, dotted))
        elif a != b:
            out.append(f"{dotted}: {shown(a)} != {shown(b)}")
    return out


RANGES: dict[str, str] = {
    "images.max_side": "[16, inf)",
    "images.max_pixels": "[1, inf)",
    "regions.score_threshold": "[0, 1]",
    "regions.max_boxes": "[0, inf)",
    "regions.grid_levels": "[1, 8]",
    "regions.selective_search_max_side": "[16, inf)",
    "codebook.num_words": "[1, inf)",
    "codebook.seed": "[0, inf)",
    "codebook.max_points_per_word": "[1, inf)",
    "codebook.niter": "[1, inf)",
    "codebook.hnsw_m": "[2, inf)",
    "codebook.ef_construction": "[1, inf)",
    "codebook.ef_search": "[1, inf)",
    "aggregation.num_assignments_db": "[1, inf)",
    "aggregation.num_assignments_query": "[1, inf)",
    "aggregation.alpha": "(0, inf)",
    "aggregation.tau": "[-1, 1)",
    "search.top_k": "[1, inf)",
    "search.query_expansion": "[0, inf)",
    "search.qe_alpha": "[0, inf)",
    "search.aml_rerank": "[0, inf)",
    "search.aml_levels": "[2, inf)",
    "verification.rerank": "[0, inf)",
    "verification.relative_threshold": "(0, 1)",
    "verification.descriptor_threshold": "(0, inf)",
    "verification.ratio_test": "(0, 1]",
    "verification.ransac_threshold": "(0, inf)",
    "verification.max_trials": "[1, inf)",
    "verification.min_inliers": "[0, inf)",
    "verification.min_score": "[0, inf)",
    "verification.max_scale_ratio": "[1, inf)",
    "verification.max_anisotropy": "[1, inf)",
    "verification.min_spread": "[0, inf)",
}
"""The declared range of every numeric setting, in interval notation (``[`` / ``]``
inclusive, ``(`` / ``)`` exclusive); a null optional value is not checked, a tuple
value is checked element by element; the extractors' sections declare theirs
(:func:`setting_ranges`).  :func:`check_ranges` applies them."""


def setting_ranges() -> dict[str, str]:
    """:data:`RANGES` and every extractor section's ``RANGES`` keys, dotted."""
    return _with_sections(RANGES, "RANGES")


def _in_range(value: float, spec: str) -> bool:
    low, high = (float(v) for v in spec[1:-1].split(","))
    above = value >= low if spec[0] == "[" else value > low
    below = value <= high if spec[-1] == "]" else value < high
    return above and below


def check_ranges(config: Config) -> None:
    """Refuse a numeric setting outside its declared range (:func:`setting_ranges`), naming
    the key."""
    for key, spec in setting_ranges().items():
        node: Any = config
        for part in key.split("."):
            node = getattr(node, part)
        values = node if isinstance(node, tuple) else () if node is None else (node,)
        bad = [v for v in values if not _in_range(float(v), spec)]
        if bad:
            raise ConfigError(f"{key}={shown(node)} is out of range: it must be in {spec}")
