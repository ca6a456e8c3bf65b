"""Tests for d2r.protos: wire compatibility with the DELF reference and shipped gencode."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import text_format

from d2r.protos import aggregation_config_pb2, box_pb2, datum_pb2, delf_config_pb2, feature_pb2

REPO = Path(__file__).resolve().parents[1]
FD = pb_descriptor.FieldDescriptor
OPT, REP = "optional", "repeated"

# The reference's research/delf/delf/protos, field by field:
# name -> (number, type, label, default (None: no explicit default), packed).
REFERENCE = {
    datum_pb2.DatumShape: {"dim": (1, FD.TYPE_INT64, REP, None, True)},
    datum_pb2.FloatList: {"value": (1, FD.TYPE_FLOAT, REP, None, True)},
    datum_pb2.Uint32List: {"value": (1, FD.TYPE_UINT32, REP, None, True)},
    datum_pb2.DatumProto: {
        "shape": (1, FD.TYPE_MESSAGE, OPT, None, False),
        "float_list": (2, FD.TYPE_MESSAGE, OPT, None, False),
        "uint32_list": (3, FD.TYPE_MESSAGE, OPT, None, False),
    },
    datum_pb2.DatumPairProto: {
        "first": (1, FD.TYPE_MESSAGE, OPT, None, False),
        "second": (2, FD.TYPE_MESSAGE, OPT, None, False),
    },
    feature_pb2.DelfFeature: {
        "descriptor": (1, FD.TYPE_MESSAGE, OPT, None, False),
        "x": (2, FD.TYPE_FLOAT, OPT, None, False),
        "y": (3, FD.TYPE_FLOAT, OPT, None, False),
        "scale": (4, FD.TYPE_FLOAT, OPT, None, False),
        "orientation": (5, FD.TYPE_FLOAT, OPT, None, False),
        "strength": (6, FD.TYPE_FLOAT, OPT, None, False),
    },
    feature_pb2.DelfFeatures: {"feature": (1, FD.TYPE_MESSAGE, REP, None, False)},
    box_pb2.Box: {
        "ymin": (1, FD.TYPE_FLOAT, OPT, None, False),
        "xmin": (2, FD.TYPE_FLOAT, OPT, None, False),
        "ymax": (3, FD.TYPE_FLOAT, OPT, None, False),
        "xmax": (4, FD.TYPE_FLOAT, OPT, None, False),
        "score": (5, FD.TYPE_FLOAT, OPT, None, False),
        "class_index": (6, FD.TYPE_INT32, OPT, None, False),
    },
    box_pb2.Boxes: {"box": (1, FD.TYPE_MESSAGE, REP, None, False)},
    aggregation_config_pb2.AggregationConfig: {
        "codebook_size": (1, FD.TYPE_INT32, OPT, 65536, False),
        "feature_dimensionality": (2, FD.TYPE_INT32, OPT, 128, False),
        "aggregation_type": (3, FD.TYPE_ENUM, OPT, 3, False),
        "use_l2_normalization": (4, FD.TYPE_BOOL, OPT, True, False),
        "codebook_path": (5, FD.TYPE_STRING, OPT, None, False),
        "num_assignments": (6, FD.TYPE_INT32, OPT, 1, False),
        "use_regional_aggregation": (7, FD.TYPE_BOOL, OPT, False, False),
        "feature_batch_size": (10, FD.TYPE_INT32, OPT, 100, False),
        "alpha": (8, FD.TYPE_FLOAT, OPT, 3.0, False),
        "tau": (9, FD.TYPE_FLOAT, OPT, 0.0, False),
    },
    delf_config_pb2.DelfPcaParameters: {
        "mean_path": (1, FD.TYPE_STRING, OPT, None, False),
        "projection_matrix_path": (2, FD.TYPE_STRING, OPT, None, False),
        "pca_dim": (3, FD.TYPE_INT32, OPT, None, False),
        "use_whitening": (4, FD.TYPE_BOOL, OPT, False, False),
        "pca_variances_path": (5, FD.TYPE_STRING, OPT, None, False),
    },
    delf_config_pb2.DelfLocalFeatureConfig: {
        "use_pca": (1, FD.TYPE_BOOL, OPT, True, False),
        "layer_name": (2, FD.TYPE_STRING, OPT, "", False),
        "iou_threshold": (3, FD.TYPE_FLOAT, OPT, 1.0, False),
        "max_feature_num": (4, FD.TYPE_INT32, OPT, 1000, False),
        "score_threshold": (5, FD.TYPE_FLOAT, OPT, 100.0, False),
        "pca_parameters": (6, FD.TYPE_MESSAGE, OPT, None, False),
        "use_resized_coordinates": (7, FD.TYPE_BOOL, OPT, False, False),
    },
    delf_config_pb2.DelfGlobalFeatureConfig: {
        "use_pca": (1, FD.TYPE_BOOL, OPT, True, False),
        "pca_parameters": (2, FD.TYPE_MESSAGE, OPT, None, False),
        "image_scales_ind": (3, FD.TYPE_INT32, REP, None, False),
    },
    delf_config_pb2.DelfConfig: {
        "use_local_features": (7, FD.TYPE_BOOL, OPT, True, False),
        "delf_local_config": (3, FD.TYPE_MESSAGE, OPT, None, False),
        "use_global_features": (8, FD.TYPE_BOOL, OPT, False, False),
        "delf_global_config": (9, FD.TYPE_MESSAGE, OPT, None, False),
        "model_path": (1, FD.TYPE_STRING, OPT, None, False),
        "is_tf2_exported": (10, FD.TYPE_BOOL, OPT, False, False),
        "image_scales": (2, FD.TYPE_FLOAT, REP, None, False),
        "max_image_size": (4, FD.TYPE_INT32, OPT, -1, False),
        "min_image_size": (5, FD.TYPE_INT32, OPT, -1, False),
        "use_square_images": (6, FD.TYPE_BOOL, OPT, False, False),
    },
}


def _label(field) -> str:
    # FieldDescriptor.label is deprecated in recent runtimes; is_repeated is newer.
    repeated = getattr(field, "is_repeated", None)
    if repeated is None:
        repeated = field.label == FD.LABEL_REPEATED
    return REP if repeated else OPT


def _packed(field) -> bool:
    return bool(field.GetOptions().packed)


@pytest.mark.parametrize("cls", list(REFERENCE), ids=lambda c: c.DESCRIPTOR.name)
def test_fields_match_reference(cls):
    desc = cls.DESCRIPTOR
    assert desc.full_name == f"d2r.protos.{desc.name}"
    assert [f.name for f in desc.fields] == list(REFERENCE[cls])
    for name, (number, ftype, label, default, packed) in REFERENCE[cls].items():
        field = desc.fields_by_name[name]
        assert (field.number, field.type, _label(field), _packed(field)) == (
            number,
            ftype,
            label,
            packed,
        ), name
        if label == OPT:
            assert field.has_presence, f"{name} must keep proto2 presence"
        if default is not None:
            assert field.has_default_value and field.default_value == pytest.approx(default), name
        elif label == OPT and field.type != FD.TYPE_MESSAGE:
            assert not field.has_default_value, name


def test_oneof_and_enum_match_reference():
    oneof = datum_pb2.DatumProto.DESCRIPTOR.oneofs_by_name["kind_oneof"]
    assert [f.name for f in oneof.fields] == ["float_list", "uint32_list"]
    enum = aggregation_config_pb2.AggregationConfig.AggregationType
    assert dict(enum.items()) == {"INVALID": 0, "VLAD": 1, "ASMK": 2, "ASMK_STAR": 3}
    assert aggregation_config_pb2.AggregationConfig().aggregation_type == enum.Value("ASMK_STAR")


def test_feature_proto_imports_datum_by_package_path():
    file_desc = feature_pb2.DESCRIPTOR
    assert file_desc.name == "d2r/protos/feature.proto"
    assert [d.name for d in file_desc.dependencies] == ["d2r/protos/datum.proto"]
    assert feature_pb2.DelfFeature.DESCRIPTOR.fields_by_name["descriptor"].message_type is (
        datum_pb2.DatumProto.DESCRIPTOR
    )


def test_known_bytes_of_a_delf_feature():
    """Hand-assembled wire bytes of one feature with a 2-d descriptor."""
    msg = feature_pb2.DelfFeatures()
    f = msg.feature.add(x=1.0, y=2.0, scale=0.5, orientation=0.0, strength=-1.0)
    f.descriptor.shape.dim.append(2)
    f.descriptor.float_list.value.extend([1.0, 2.0])
    expected = bytes.fromhex(
        "0a2c"  # feature, 44 bytes
        "0a11"  # descriptor, 17 bytes
        "0a03" "0a0102"  # shape { dim: [2] } packed
        "120a" "0a08" "0000803f" "00000040"  # float_list { value: [1, 2] } packed
        "15" "0000803f"  # x
        "1d" "00000040"  # y
        "25" "0000003f"  # scale
        "2d" "00000000"  # orientation (explicitly set zero is written: proto2)
        "35" "000080bf"  # strength
    )
    assert msg.SerializeToString() == expected
    assert feature_pb2.DelfFeatures.FromString(expected) == msg


def test_reference_text_configs_parse():
    delg = text_format.Parse(
        """
        use_local_features: true
        use_global_features: true
        model_path: "parameters/r50delg_gldv2clean_20200914"
        image_scales: 0.25
        image_scales: 0.5
        delf_local_config { use_pca: false max_feature_num: 1000 score_threshold: 454.6 }
        delf_global_config { use_pca: false image_scales_ind: 3 image_scales_ind: 4 }
        max_image_size: 1024
        """,
        delf_config_pb2.DelfConfig(),
    )
    assert list(delg.delf_global_config.image_scales_ind) == [3, 4]
    assert delg.delf_local_config.iou_threshold == 1.0  # default
    assert delg.min_image_size == -1 and not delg.is_tf2_exported
    agg = text_format.Parse(
        "codebook_size: 65536 aggregation_type: ASMK_STAR use_l2_normalization: false "
        "use_regional_aggregation: true alpha: 3.0 tau: 0.0",
        aggregation_config_pb2.AggregationConfig(),
    )
    assert agg.use_regional_aggregation and not agg.use_l2_normalization
    assert agg.feature_batch_size == 100 and agg.HasField("tau")
    with pytest.raises(text_format.ParseError):
        text_format.Parse("no_such_field: 1", aggregation_config_pb2.AggregationConfig())


def _load_generator():
    path = REPO / "protos" / "generate.py"
    spec = importlib.util.spec_from_file_location("d2r_protos_generate", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_gencode_declares_the_runtime_floor():
    gen = _load_generator()
    floor = ", ".join(str(v) for v in gen.MIN_PROTOBUF_RUNTIME)
    modules = sorted((REPO / "d2r" / "protos").glob("*_pb2.py"))
    assert [m.stem[:-4] for m in modules] == [p.stem for p in gen.proto_sources()]
    for module in modules:
        code = module.read_text()
        stamp = re.search(r"Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+),", code)
        assert stamp and ", ".join(stamp.groups()) == floor, module.name
        assert not re.search(r"^import \w+_pb2|^from (?!d2r\.protos |google\.protobuf)", code, re.M)
    assert "from d2r.protos import datum_pb2" in (REPO / "d2r/protos/feature_pb2.py").read_text()


def test_generator_refuses_code_without_a_version_check():
    gen = _load_generator()
    with pytest.raises(RuntimeError, match="version check"):
        gen._lower_runtime_floor("# source: x.proto\nDESCRIPTOR = None\n", "x.proto")


def test_shipped_gencode_is_up_to_date():
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to regenerate protos")
    problems = _load_generator().stale_files()
    assert not problems, "run `python protos/generate.py`:\n" + "\n".join(problems)


def test_importing_protos_and_io_does_not_import_tensorflow():
    code = (
        "import sys, d2r.protos.feature_pb2, d2r.protos.delf_config_pb2, d2r.io.delf_files; "
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert out.stdout.strip() == "False"


def test_staleness_check_detects_changes(tmp_path):
    pytest.importorskip("grpc_tools", reason="grpcio-tools is needed to regenerate protos")
    gen = _load_generator()
    shipped = sorted((REPO / "d2r" / "protos").glob("*_pb2.py"))
    for module in shipped:
        (tmp_path / module.name).write_text(module.read_text())
    box = tmp_path / "box_pb2.py"
    original = box.read_text()
    # Another protoc version, same compiled content: up to date.
    box.write_text(original.replace("# Protobuf Python Version: ", "# Protobuf Python Version: 0.0.0-"))
    assert gen.stale_files(tmp_path) == []
    # Another protoc version and a different message: stale.
    renamed = original.replace("# Protobuf Python Version: ", "# Protobuf Python Version: 0.0.0-")
    other = gen._SERIALIZED_FILE.search((tmp_path / "datum_pb2.py").read_text()).group(0)
    box.write_text(gen._SERIALIZED_FILE.sub(lambda _: other, renamed))
    assert [p.split(":")[0] for p in gen.stale_files(tmp_path)] == [str(box)]
    # Same protoc version, any text change: stale, with a diff.
    box.write_text(original + "# edited\n")
    (problem,) = gen.stale_files(tmp_path)
    assert "-# edited" in problem
    box.unlink()
    assert gen.stale_files(tmp_path) == [f"{box}: missing"]
