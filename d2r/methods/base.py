"""What every retrieval method provides: the hooks the drivers call.

A method is built from the whole (validated) config and reads its own section
from it.  The build driver calls, per batch of database images,
``entries = [method.encode_database(regions, codebook) for each image]`` then
``method.add(index, entries, names)`` on the index ``method.new_index(...)`` made;
the searcher calls ``method.search(index, queries, codebook, k=k)`` and
``method.rerank(searcher, queries, result, workers=...)``.  Nothing outside a
method's own module branches on its name.
"""

from __future__ import annotations

from typing import Any, ClassVar, Optional, Sequence

from d2r.codebook import Codebook
from d2r.config import Config
from d2r.types import SearchResult

__all__ = ["RetrievalMethod"]


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

    def rerank(self, searcher, queries: Sequence[Any], result: SearchResult, *,
               workers: int = 1) -> tuple[SearchResult, Optional[list]]:
        """``result`` with its head re-ranked, and per-query details (or None).

        ``queries`` are :class:`~d2r.pipeline.searcher.Query` values; ``searcher`` gives
        access to the database features / maps.  Default: unchanged.
        """
        return result, None
