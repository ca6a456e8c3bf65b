"""Protocol buffer messages wire-compatible with the DELF reference.

Generated from ``protos/*.proto`` by ``protos/generate.py`` and shipped with
the package, so no ``protoc`` step is needed.  Import the modules directly::

    from d2r.protos import feature_pb2, box_pb2, datum_pb2
    from d2r.protos import delf_config_pb2, aggregation_config_pb2

Message names, field numbers, types, packed options, enums and defaults
match tensorflow/models ``research/delf/delf/protos``; only the proto package
(``d2r.protos`` instead of ``delf.protos``) differs, which leaves the binary
and text formats unchanged.  Reading and writing ``.delf``, ``.boxes`` and
datum files goes through :mod:`d2r.io.delf_files`.
"""
