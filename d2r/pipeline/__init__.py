"""The library behind the command lines: extraction into a feature store
(:mod:`~d2r.pipeline.extraction`), building an index (:mod:`~d2r.pipeline.build`),
an opened index that answers queries (:mod:`~d2r.pipeline.searcher`) and running
queries and benchmarks (:mod:`~d2r.pipeline.run`).  These are drivers: they look the
extractor, the retrieval method and the index kind up in their registries and never
branch on their names.
"""
