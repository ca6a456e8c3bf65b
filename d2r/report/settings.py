"""The "How this was produced" rows of a report, in plain words.

:func:`run_settings` reads a run's resolved configuration and its index's manifest and
says which preset built the index (recorded, or the shipped preset whose settings match,
or the closest one and what differs), what was changed for this run, and the features,
regions, codebook, similarity, re-ranking, sizes, date and software version.  The rows
are plain text; :func:`d2r.report.tables.settings_table` renders them.
"""

from __future__ import annotations

import datetime
from typing import Any, Mapping, Optional

from d2r.spatial.decision import error_rate, rest_order, rule, verified_order

__all__ = ["run_settings"]


def _get(values: Mapping, dotted: str) -> Any:
    node: Any = values
    for part in dotted.split("."):
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _changed_keys(expected: Mapping, actual: Mapping) -> list[str]:
    """``key=value`` (the value in ``actual``) of every dotted key that differs."""
    from d2r.config import diff_configs

    keys = [d.split(": ", 1)[0] for d in diff_configs(expected, actual)]
    return [f"{k}={_get(actual, k)!r}".replace("'", "") for k in keys]


def _preset_of(built: Mapping, recorded: Optional[str]) -> str:
    """The preset an index was built with: recorded, or the shipped preset whose settings
    are the build's, or the closest one and what differs."""
    if recorded:
        return str(recorded)
    from d2r.config import available_presets, load_config, to_dict

    found = []
    for name in available_presets():
        try:
            found.append((_changed_keys(to_dict(load_config(name)), built), name))
        except Exception:  # noqa: BLE001 - a preset that no longer loads is just no match
            continue
    exact = [name for changed, name in found if not changed]
    if exact:
        names = [n for n in exact if n != "base"] or exact
        return " / ".join(names) + " (the settings match this preset)"
    if not found:
        return "not recorded"
    changed, name = min(found, key=lambda item: (len(item[0]), item[1] == "base"))
    if len(changed) <= 4:
        return f"{name}, changed: {', '.join(changed)}"
    return "custom settings (no shipped preset is close)"


def _features_words(config: Any) -> str:
    features = config.features
    if features.backend == "rootsift":
        rs = features.rootsift
        text = f"RootSIFT local features, up to {rs.max_features} per image"
        if rs.pca_path:
            text += f", PCA to {rs.pca_dim or 'all'} dimensions ({rs.pca_path})"
        return text
    if features.backend == "delf":
        delf = features.delf
        return (f"DELF local features, up to {delf.max_features} per image, "
                f"{len(delf.scales)} image scales, model {delf.model_path or 'none'}")
    if features.backend == "cnn":
        cnn = features.cnn
        return (f"one CNN descriptor per image: {cnn.method} on {cnn.backbone} "
                f"({cnn.weights_path or 'random weights: for testing only'})")
    return str(features.backend)


_RANSAC_WORDS = {"opencv": "OpenCV", "skimage": "scikit-image"}
_KERNEL_WORDS = {"asmk_star": "ASMK* (aggregated selective match kernel, binary)",
                 "asmk": "ASMK (aggregated selective match kernel)",
                 "vlad": "VLAD (vectors of locally aggregated descriptors)"}


def run_settings(
    config: Any,
    manifest: Optional[Mapping[str, Any]] = None,
    *,
    index: Any = None,
    num_queries: Optional[int] = None,
    num_db: Optional[int] = None,
    when: Optional[datetime.datetime] = None,
) -> list[tuple[str, str]]:
    """The "How this was produced" rows of a report, in plain words.

    Args:
        config: the resolved :class:`d2r.config.Config` of the run (query-time settings
            included).
        manifest: the index's ``index.json`` (:func:`d2r.index.layout.read_manifest`):
            the build's settings, its codebook record and the number of indexed images.
        index: the index directory.
        num_queries, num_db: queries run and database images of the benchmark.
        when: date of the run (default: now).

    Returns:
        ``[(label, text)]``, plain text (the report escapes it).
    """
    from d2r import __version__
    from d2r.config import to_dict, upgrade_record

    manifest = manifest or {}
    current = to_dict(config)
    built = upgrade_record(manifest["config"]) if "config" in manifest else current
    rows: list[tuple[str, str]] = []
    if index is not None:
        rows.append(("Index", str(index)))
    rows.append(("Preset", _preset_of(built, manifest.get("preset"))))
    at_query = _changed_keys(built, current)
    if at_query:
        rows.append(("Changed for this run", ", ".join(at_query)))
    rows.append(("Image features", _features_words(config)))
    if config.regions.source != "none":
        text = f"{config.regions.source}, up to {config.regions.max_boxes} per image"
        if config.aggregation.regional_search:
            text += "; each region is searched on its own"
        rows.append(("Regions", text))
    codebook = manifest.get("codebook")
    if codebook:
        rows.append(("Visual words (codebook)",
                     f"{codebook.get('num_words')} words of {codebook.get('dim')} dimensions, "
                     f"sha256 {str(codebook.get('sha256', ''))[:12]}, "
                     f"{codebook.get('path')} in the index"))
    elif config.features.backend != "cnn":
        rows.append(("Visual words (codebook)", f"{config.codebook.num_words} words"
                     + (f", from {config.codebook.path}" if config.codebook.path else "")))
    if config.features.backend != "cnn":
        agg = config.aggregation
        rows.append(("Image similarity", f"{_KERNEL_WORDS.get(agg.method, agg.method)}, "
                     f"alpha {agg.alpha:g}, threshold tau {agg.tau:g}"))
    verification = config.verification
    if config.features.backend == "cnn":
        search = config.search
        words = []
        if search.query_expansion:
            words.append(f"query expansion with the top {search.query_expansion}")
        if search.aml_rerank:
            words.append(f"AML re-ranking of the top {search.aml_rerank} (the query is "
                         f"located in each database image)")
        rows.append(("Re-ranking", "; ".join(words) or "none (initial ranking only)"))
    elif verification.rerank > 0:
        rows.append(("Re-ranking", f"the top {verification.rerank} results of each query are "
                     f"checked by spatial verification "
                     f"({_RANSAC_WORDS.get(verification.method, verification.method)} RANSAC); "
                     f"the verified ones ({rule(verification)}: {error_rate(verification)}) "
                     f"move up, {verified_order(verification)}; "
                     f"{rest_order(verification)}"))
    else:
        rows.append(("Re-ranking", "none (initial ranking only)"))
    if num_queries is not None:
        rows.append(("Queries", str(num_queries)))
    if num_db is not None:
        indexed = manifest.get("num_images")
        rows.append(("Database images", str(num_db) if indexed in (None, num_db)
                     else f"{num_db} ({indexed} in the index)"))
    when = when or datetime.datetime.now().astimezone()
    rows.append(("Date", when.strftime("%Y-%m-%d %H:%M %Z").strip()))
    version = f"d2r {__version__}"
    if manifest.get("d2r_version") and manifest["d2r_version"] != __version__:
        version += f" (index built with d2r {manifest['d2r_version']})"
    rows.append(("Software", version))
    return rows
