"""What every retrieval method provides: the hooks the drivers call.

A method is built from the whole (validated) config and reads its own section
from it.  The build driver calls, per batch of database images,
``entries = [method.encode_database(regions, codebook) for each image]`` then
``method.add(index, entries, names)`` on the index ``method.new_index(...)`` made;
the searcher calls ``method.search(index, queries, codebook, k=k)`` and
``method.rerank(database, queries, result, workers=...)``.  Nothing outside a
method's own module branches on its name.

A method reads an opened index only through :class:`Database` (the searcher of
:mod:`d2r.pipeline.searcher` is one) and its queries as :class:`Query` values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional, Protocol, Sequence

from d2r.config import Config
from d2r.encoding.codebook import Codebook
from d2r.types import ActivationMap, SearchResult

__all__ = ["Database", "Query", "RetrievalMethod"]


@dataclass(frozen=True)
class Query:
    """One query: its features and, when the method re-ranks with maps, its activation map.

    Attributes:
        features: what the method searches with (:class:`~d2r.types.LocalFeatures`, or
            :class:`~d2r.types.GlobalDescriptors` of a CNN baseline).
        activation_map: the query (crop)'s :class:`~d2r.types.ActivationMap`; None unless
            the method uses maps (AML re-ranking).
    """

    features: Any
    activation_map: Optional[ActivationMap] = None


class Database(Protocol):
    """What a retrieval method may read of an opened index when it re-ranks or expands.

    Attributes:
        names: (N,) database image names by id.
        codebook: the index's visual codebook (None for CNN methods).
        index: the search structure (:class:`d2r.index.registry.Index`).
        extractor: the index's extractor (the CNN re-ranking describes regions with it).
    """

    names: Sequence[str]
    codebook: Optional[Codebook]
    index: Any
    extractor: Any

    def database_features(self, image_id: int) -> Any:
        """Whole-image features of database image ``image_id`` (of the method's ``input_type``)."""

    def database_maps(self) -> Sequence[Any]:
        """The stored (H', W', C) activation maps by image id (lazy)."""


class RetrievalMethod:
    """Base class of registered methods (subclass, set the class attributes, decorate
    with :func:`d2r.methods.register_method`).

    Class attributes:
        name: the config value that selects the method.
        input_type: what the extractor must produce (:class:`~d2r.types.LocalFeatures`
            or :class:`~d2r.types.GlobalDescriptors`).
        uses_codebook: whether the build trains / loads a visual codebook.
    """

    name: ClassVar[str]
    input_type: ClassVar[type]
    uses_codebook: ClassVar[bool] = True

    def __init__(self, config: Config) -> None:
        self.config = config

    def validate(self) -> None:
        """Refuse settings of ``self.config`` that this method cannot honour (ConfigError)."""

    @property
    def keeps_maps(self) -> bool:
        """Whether the build stores each image's activation map (for query-time re-ranking)."""
        return False

    @property
    def uses_maps(self) -> bool:
        """Whether queries need their activation map and the stored database maps."""
        return False

    def new_index(self, codebook: Optional[Codebook], dim: int):
        """An empty index for this method's entries (``dim``: the stored features' dimension)."""
        raise NotImplementedError

    def encode_database(self, regions: Sequence[Any], codebook: Optional[Codebook]) -> Any:
        """The index entry of one image from its regions' features (whole image first)."""
        raise NotImplementedError

    def add(self, index, entries: Sequence[Any], names: Sequence[str]) -> None:
        """Add the entries of a batch of images to ``index``."""
        index.add(list(entries), names=list(names))

    def search(self, index, queries: Sequence[Any], codebook: Optional[Codebook], *,
               k: int) -> SearchResult:
        """Top ``k`` database images per query (a features value of ``input_type``)."""
        raise NotImplementedError

    def rerank(self, database: Database, queries: Sequence[Query], result: SearchResult, *,
               workers: int = 1) -> tuple[SearchResult, Optional[list]]:
        """``result`` with its head re-ranked, and per-query details (or None).

        ``database`` gives the database features / maps.  Default: unchanged.
        """
        return result, None
