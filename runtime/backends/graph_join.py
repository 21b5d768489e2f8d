"""Two ONNX graphs joined into one, the first's outputs feeding the second's inputs of the same names.

Why: on the CPU the local and fusion graphs run back to back for every batch of patches, and ONNX Runtime
maps each run's activations afresh (its arena is off, for bounded memory), so two sessions fault in and
zero two working sets per batch. One session over the joined graph plans one working set for both (measured
in docs/cpu-speed.md, "The local and fusion graphs in one session").

The runtime carries no ``onnx`` package, but ONNX Runtime depends on protobuf, so the models are read with
message classes built here for the few fields of onnx.proto a join looks at (numbers from onnx.proto, the
ONNX IR's wire format); every other field stays unread. The first model (the local graph, 96 MB of weights
in the paper-size bundle) is neither parsed whole nor serialized again (that took 0.1-0.2 s of every
start): its fields are walked in place, weights skipped, and its bytes handed on in slices (JoinedModel),
leaving out the joints among its outputs, with the second graph appended inside its ``graph`` field
(protobuf concatenates repeated fields, nodes, weights and inputs among them, that a message holds more than once).
A pair this cannot join safely raises GraphJoinError, and the caller runs the two graphs as they are.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Sequence

import numpy as np

from runtime.backends.base import TensorMeta
from runtime.errors import GlsnetError

EXTERNAL_DATA = 1  # TensorProto.DataLocation.EXTERNAL
GRAPH_FIELD, OUTPUT_FIELD, INITIALIZER_FIELD = 7, 12, 5  # ModelProto.graph, GraphProto.output, GraphProto.initializer
TENSOR_NAME_FIELD, TENSOR_LOCATION_FIELD = 8, 14  # TensorProto.name, TensorProto.data_location
VARINT, LENGTH_DELIMITED = 0, 2  # protobuf wire types
FIXED_SIZES = {1: 8, 5: 4}  # fixed64, fixed32
RENAMED = "joined/"  # prefix of the second graph's names that the first graph also uses
# TensorProto.DataType -> numpy, for the element types a joint may have
ELEMENT_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64}

# the subset of onnx.proto a join reads: (message, ((field, number, repeated, type, message type), ...))
_BYTES, _INT32, _INT64, _MESSAGE, _STRING = 12, 5, 3, 11, 9
_SUBSET = (
    ("OperatorSetId", (("domain", 1, False, _STRING, ""), ("version", 2, False, _INT64, ""))),
    ("Dimension", (("dim_value", 1, False, _INT64, ""), ("dim_param", 2, False, _STRING, ""))),
    ("Shape", (("dim", 1, True, _MESSAGE, "Dimension"),)),
    ("TensorType", (("elem_type", 1, False, _INT32, ""), ("shape", 2, False, _MESSAGE, "Shape"))),
    ("Type", (("tensor_type", 1, False, _MESSAGE, "TensorType"),)),
    ("ValueInfo", (("name", 1, False, _STRING, ""), ("type", 2, False, _MESSAGE, "Type"))),
    ("Tensor", (("name", 8, False, _STRING, ""), ("data_location", 14, False, _INT32, ""))),
    ("Attribute", (("g", 6, False, _BYTES, ""), ("graphs", 11, True, _BYTES, ""))),
    (
        "Node",
        (("input", 1, True, _STRING, ""), ("output", 2, True, _STRING, ""), ("name", 3, False, _STRING, ""), ("attribute", 5, True, _MESSAGE, "Attribute")),
    ),
    (
        "Graph",
        (
            ("node", 1, True, _MESSAGE, "Node"),
            ("initializer", 5, True, _MESSAGE, "Tensor"),
            ("input", 11, True, _MESSAGE, "ValueInfo"),
            ("output", 12, True, _MESSAGE, "ValueInfo"),
            ("value_info", 13, True, _MESSAGE, "ValueInfo"),
            ("quantization_annotation", 14, True, _BYTES, ""),
            ("sparse_initializer", 15, True, _BYTES, ""),
        ),
    ),
    (
        "Model",
        (
            ("ir_version", 1, False, _INT64, ""),
            ("graph", 7, False, _MESSAGE, "Graph"),
            ("opset_import", 8, True, _MESSAGE, "OperatorSetId"),
            ("functions", 25, True, _BYTES, ""),
        ),
    ),
)
_PACKAGE = "glsnet.onnx_join"


class GraphJoinError(GlsnetError):
    """The two graphs cannot be joined into one (the message says why); run them one after the other instead."""


@dataclass(frozen=True)
class JoinedModel:
    """A serialized joined model, in pieces (slices of the first model among them), and the joints' dtypes and
    shapes as the first graph declares them."""

    pieces: tuple[bytes | memoryview, ...]
    joints: dict[str, TensorMeta]

    @property
    def model(self) -> bytes:
        """The serialized model in one piece."""
        return b"".join(self.pieces)

    def write(self, file: BinaryIO) -> None:
        """Write the serialized model to ``file``, piece by piece (no copy of it in memory)."""
        for piece in self.pieces:
            file.write(piece)


@functools.cache
def _messages() -> dict[str, type]:
    """The subset's message classes by name, from a descriptor pool of their own (not the default one onnx fills)."""
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    except ImportError as exc:  # ONNX Runtime's wheels depend on protobuf; a build without it runs the graphs apart
        raise GraphJoinError(f"joining graphs needs the protobuf package ({exc})") from exc

    file = descriptor_pb2.FileDescriptorProto(name="glsnet_onnx_join.proto", package=_PACKAGE, syntax="proto2")
    for message, fields in _SUBSET:
        described = file.message_type.add(name=message)
        for name, number, repeated, kind, message_type in fields:
            field = described.field.add(name=name, number=number, label=3 if repeated else 1, type=kind)
            if message_type:
                field.type_name = f".{_PACKAGE}.{message_type}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")) for name, _ in _SUBSET}


def join_graphs(first: bytes | memoryview, second: bytes, joints: Sequence[str]) -> JoinedModel:
    """The model that runs the ``first`` model's graph, then the ``second``'s on ``joints``.

    ``joints`` are outputs of the first graph and inputs of the second. The joined graph's inputs are the first's
    and the second's others, its outputs the first's others and the second's. Raises GraphJoinError when unsafe.
    ``first`` may be a memoryview of a mapped file: it is read in place.
    """
    messages = _messages()  # once: two threads' first calls may build two sets of classes, which do not mix
    first = memoryview(first)
    try:
        a = _outline(first, messages)
    except (UnicodeDecodeError, ValueError) as exc:  # a name that is not UTF-8, a number out of its field's range
        raise GraphJoinError(f"the first model could not be read ({exc})") from exc
    b = _parse(messages["Model"], second, "second")
    for model in (a, b):
        _refuse_unjoinable(model)
    ga, gb = a.graph, b.graph
    outputs_a = {v.name: v for v in ga.output}
    inputs_b = {v.name: v for v in gb.input}
    metadata = {}
    for joint in joints:
        if joint not in outputs_a or joint not in inputs_b:
            raise GraphJoinError(f"{joint!r} is not both an output of the first graph and an input of the second")
        metadata[joint] = _tensor_meta(outputs_a[joint])
        if _tensor_meta(inputs_b[joint]) != metadata[joint]:
            raise GraphJoinError(f"{joint!r} has one type where the first graph makes it and another where the second reads it")
    taken = _defined(ga) | {v.name for v in ga.output}
    shared = {v.name for v in gb.input if v.name not in joints} | {v.name for v in gb.output}
    if shared & taken:
        raise GraphJoinError(f"the second graph's inputs or outputs {sorted(shared & taken)[:3]} are names the first graph uses")
    _rename(gb, (_defined(gb) - inputs_b.keys()) & taken, taken)
    _rename_nodes(gb, {n.name for n in ga.node})

    tail = messages["Model"]()
    known = {_domain(o.domain): o.version for o in a.opset_import}
    for opset in b.opset_import:
        domain = _domain(opset.domain)
        if domain in known and known[domain] != opset.version:
            raise GraphJoinError(f"the graphs import opset {domain} at versions {known[domain]} and {opset.version}")
        if domain not in known:
            known[domain] = opset.version
            tail.opset_import.add().CopyFrom(opset)
    if b.ir_version > a.ir_version:
        tail.ir_version = b.ir_version
    graph = messages["Graph"]()
    graph.node.extend(gb.node)
    graph.initializer.extend(gb.initializer)
    graph.input.extend(v for v in gb.input if v.name not in joints)
    graph.output.extend(gb.output)
    graph.value_info.extend(gb.value_info)
    graph.value_info.extend(outputs_a[j] for j in joints)  # the joints' types, now values inside the graph
    pieces = _splice(first, set(joints), graph.SerializeToString(), tail.SerializeToString(), messages["ValueInfo"])
    return JoinedModel(pieces, metadata)


def _parse(message: type, data: bytes | memoryview, which: str):
    from google.protobuf.message import DecodeError

    try:
        return message.FromString(data)
    except DecodeError as exc:
        raise GraphJoinError(f"the {which} model is not a valid ONNX protobuf ({exc})") from exc


def _outline(model: memoryview, messages: dict[str, type]):
    """The model's subset without its weights' data: each weight is read for its name and data location only."""
    outline = messages["Model"]()
    for number, wire, start, value, end in _fields(model):
        if number != GRAPH_FIELD:
            outline.MergeFrom(_parse(messages["Model"], model[start:end], "first"))
            continue
        _expect(wire, LENGTH_DELIMITED, "graph")
        for field, field_wire, field_start, field_value, field_end in _fields(model, value, end):
            if field != INITIALIZER_FIELD:
                outline.graph.MergeFrom(_parse(messages["Graph"], model[field_start:field_end], "first"))
                continue
            _expect(field_wire, LENGTH_DELIMITED, "weight")
            tensor = outline.graph.initializer.add()
            for tensor_field, tensor_wire, _, tensor_value, tensor_end in _fields(model, field_value, field_end):
                if tensor_field == TENSOR_NAME_FIELD:
                    _expect(tensor_wire, LENGTH_DELIMITED, "weight name")
                    tensor.name = str(model[tensor_value:tensor_end], "utf-8")
                elif tensor_field == TENSOR_LOCATION_FIELD:
                    _expect(tensor_wire, VARINT, "weight data location")
                    tensor.data_location = _read_varint(model, tensor_value)[0]
    return outline


def _expect(wire: int, wanted: int, what: str) -> None:
    if wire != wanted:
        raise GraphJoinError(f"the first model's {what} has protobuf wire type {wire}, not {wanted}")


def _domain(domain: str) -> str:
    """ONNX's default operator set is named both "" and "ai.onnx"."""
    return domain or "ai.onnx"


def _refuse_unjoinable(model) -> None:
    if model.functions:
        raise GraphJoinError("a graph holds model-local functions")
    graph = model.graph
    if graph.sparse_initializer or graph.quantization_annotation:
        raise GraphJoinError("a graph holds sparse initializers or quantization annotations")
    if any(t.data_location == EXTERNAL_DATA for t in graph.initializer):
        raise GraphJoinError("a graph keeps its weights in external files")


def _tensor_meta(value) -> TensorMeta:
    tensor = value.type.tensor_type
    dtype = ELEMENT_TYPES.get(tensor.elem_type)
    if dtype is None:
        raise GraphJoinError(f"{value.name!r} has ONNX element type {tensor.elem_type}, which this runtime does not join")
    if not tensor.HasField("shape"):  # unknown rank: not the scalar an empty shape would say
        raise GraphJoinError(f"{value.name!r} has no declared shape")
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
    return TensorMeta(value.name, np.dtype(dtype), shape)


def _defined(graph) -> set[str]:
    """Every value name the graph defines: its inputs, weights and node outputs."""
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    names.update(out for node in graph.node for out in node.output if out)
    return names


def _rename(graph, names: set[str], taken: set[str]) -> None:
    """Give ``names`` (values the graph defines inside) the RENAMED prefix wherever the graph uses them; none of the
    new names may be one the graph or the other graph (``taken``) already uses."""
    if not names:
        return
    if any(a.HasField("g") or a.graphs for node in graph.node for a in node.attribute):
        raise GraphJoinError(f"both graphs define {sorted(names)[:3]}, and the second has subgraphs that may read them")
    new = {name: RENAMED + name for name in names}
    if set(new.values()) & (_defined(graph) | taken):
        raise GraphJoinError(f"both graphs define {sorted(names)[:3]}, and a graph already uses the prefix {RENAMED!r}")
    for node in graph.node:
        node.input[:] = [new.get(n, n) for n in node.input]
        node.output[:] = [new.get(n, n) for n in node.output]
    for value in (*graph.initializer, *graph.value_info):
        value.name = new.get(value.name, value.name)


def _rename_nodes(graph, taken: set[str]) -> None:
    """Node names are labels nothing refers to, but ONNX Runtime refuses a graph where two are the same."""
    if any(node.name in taken for node in graph.node if node.name):
        if any(RENAMED + node.name in taken for node in graph.node if node.name):
            raise GraphJoinError(f"both graphs name nodes alike, and the first already uses the prefix {RENAMED!r}")
        for node in graph.node:
            if node.name:
                node.name = RENAMED + node.name


def _splice(
    first: memoryview, dropped_outputs: set[str], graph_tail: bytes, model_tail: bytes, value_info: type
) -> tuple[bytes | memoryview, ...]:
    """``first`` with ``dropped_outputs`` left out of its graph's outputs and ``graph_tail`` appended to its graph,
    then ``model_tail`` appended to the model, in pieces: the rest of ``first`` is sliced, not copied."""
    pieces: list[bytes | memoryview] = []
    graphs = 0
    for number, _, start, value, end in _fields(first):
        if number != GRAPH_FIELD:
            pieces.append(first[start:end])
            continue
        graphs += 1
        kept = []
        for field, wire, field_start, field_value, field_end in _fields(first, value, end):
            if field == OUTPUT_FIELD:
                _expect(wire, LENGTH_DELIMITED, "graph output")
                if _parse(value_info, first[field_value:field_end], "first").name in dropped_outputs:
                    continue
            kept.append(first[field_start:field_end])
        length = sum(len(k) for k in kept) + len(graph_tail)
        pieces += [_varint(GRAPH_FIELD << 3 | LENGTH_DELIMITED), _varint(length), *kept, graph_tail]
    if graphs != 1:
        raise GraphJoinError(f"the first model holds {graphs} graph fields")
    return (*pieces, model_tail)


def _fields(buffer: memoryview, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, where its tag starts, where its value starts, where it ends) of each field of one message."""
    end = len(buffer) if end is None else end
    at = start
    while at < end:
        tag, value = _read_varint(buffer, at)
        number, wire = tag >> 3, tag & 7
        if wire == VARINT:
            _, after = _read_varint(buffer, value)
        elif wire == LENGTH_DELIMITED:
            length, value = _read_varint(buffer, value)
            after = value + length
        elif wire in FIXED_SIZES:
            after = value + FIXED_SIZES[wire]
        else:
            raise GraphJoinError(f"a model holds a protobuf field of wire type {wire}, which ONNX does not use")
        if after > end:
            raise GraphJoinError("a model's bytes end inside a field")
        yield number, wire, at, value, after
        at = after


def _read_varint(buffer: memoryview, at: int) -> tuple[int, int]:
    """The varint at ``at``, and where what follows it starts."""
    result = shift = 0
    while True:
        if at >= len(buffer):
            raise GraphJoinError("a model's bytes end inside a field")
        if shift > 63:
            raise GraphJoinError("a model holds a varint longer than 10 bytes")
        byte = buffer[at]
        result |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            return result, at
        shift += 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        out.append(value & 0x7F | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)
