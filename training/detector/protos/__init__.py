"""Generated protobuf modules for the Object Detection API ``pipeline.config`` subset.

``pipeline_pb2`` is generated from ``protos/object_detection/pipeline.proto`` by
``training/detector/generate_protos.py`` and shipped, so no ``protoc`` step is needed.
"""
