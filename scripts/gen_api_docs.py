"""Writes docs/api.md: the gRPC API from the generated finetune.v1 descriptors (with the .proto comments)
and the gateway's HTTP API from its OpenAPI schema.

`--check` fails when docs/api.md differs from what would be generated, so CI proves the reference is current.
"""

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import grpc_tools
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
OUTPUT = ROOT / "docs" / "api.md"
PROTO_MODULES = ("common", "data", "trainer", "registry", "eval", "inference")

# FileDescriptorProto field numbers, for source-code-info paths.
MESSAGE_TYPE, ENUM_TYPE, SERVICE = 4, 5, 6
FIELD, NESTED_TYPE, NESTED_ENUM, ENUM_VALUE, METHOD = 2, 3, 4, 2, 2

SCALAR_NAMES = {
    value: name[len("TYPE_") :].lower()
    for name, value in vars(FieldDescriptor).items()
    if name.startswith("TYPE_") and isinstance(value, int)
}


def _walk_message(
    message: descriptor_pb2.DescriptorProto,
    path: tuple[int, ...],
    prefix: str,
    names: dict[tuple[int, ...], str],
) -> None:
    """Maps the source-info path of a message, its fields and nested types to their full names."""
    full = f"{prefix}.{message.name}"
    names[path] = full
    for i, field in enumerate(message.field):
        names[(*path, FIELD, i)] = f"{full}.{field.name}"
    for i, nested in enumerate(message.nested_type):
        _walk_message(nested, (*path, NESTED_TYPE, i), full, names)
    for i, enum in enumerate(message.enum_type):
        _walk_enum(enum, (*path, NESTED_ENUM, i), full, names)


def _walk_enum(
    enum: descriptor_pb2.EnumDescriptorProto,
    path: tuple[int, ...],
    prefix: str,
    names: dict[tuple[int, ...], str],
) -> None:
    names[path] = f"{prefix}.{enum.name}"
    for i, value in enumerate(enum.value):
        names[(*path, ENUM_VALUE, i)] = f"{prefix}.{enum.name}.{value.name}"


def proto_comments() -> dict[str, str]:
    """Full name -> the leading or trailing comment in the .proto file (runtime descriptors drop them)."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = ["protoc", f"-I{PROTO_ROOT}", f"-I{well_known}", "--include_source_info"]
        if protoc.main([*args, f"--descriptor_set_out={out}", *protos]) != 0:
            sys.exit("protoc failed")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    comments: dict[str, str] = {}
    for file in files.file:
        names: dict[tuple[int, ...], str] = {}
        for i, message in enumerate(file.message_type):
            _walk_message(message, (MESSAGE_TYPE, i), file.package, names)
        for i, enum in enumerate(file.enum_type):
            _walk_enum(enum, (ENUM_TYPE, i), file.package, names)
        for i, service in enumerate(file.service):
            names[(SERVICE, i)] = f"{file.package}.{service.name}"
            for j, method in enumerate(service.method):
                names[(SERVICE, i, METHOD, j)] = f"{file.package}.{service.name}.{method.name}"
        for location in file.source_code_info.location:
            text = (location.leading_comments or location.trailing_comments).strip()
            name = names.get(tuple(location.path))
            if name and text:
                comments[name] = " ".join(line.strip() for line in text.splitlines())
    return comments


def field_type(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        if field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            return f"map<{field_type(key)}, {field_type(value)}>"
        name = field.message_type.full_name
    elif field.enum_type is not None:
        name = field.enum_type.full_name
    else:
        return SCALAR_NAMES[field.type]
    return f"[{name}](#{anchor(name)})" if name.startswith("finetune.") else name


def anchor(full_name: str) -> str:
    return full_name.lower().replace(".", "")


def render_message(message: Descriptor, comments: dict[str, str], lines: list[str]) -> None:
    if message.GetOptions().map_entry:
        return
    lines += [f"### {message.full_name}", ""]
    if message.full_name in comments:
        lines += [comments[message.full_name], ""]
    if message.fields:
        lines += ["| # | field | type | notes |", "|---|---|---|---|"]
        for field in sorted(message.fields, key=lambda f: f.number):
            repeated = field.is_repeated and not (
                field.message_type and field.message_type.GetOptions().map_entry
            )
            kind = f"repeated {field_type(field)}" if repeated else field_type(field)
            synthetic_oneof = field.containing_oneof is not None and field.containing_oneof.name.startswith(
                "_"
            )
            if (
                field.has_presence
                and field.message_type is None
                and (field.containing_oneof is None or synthetic_oneof)
            ):
                kind = f"optional {kind}"
            notes = comments.get(field.full_name, "")
            if field.containing_oneof is not None and not field.containing_oneof.name.startswith("_"):
                notes = f"oneof `{field.containing_oneof.name}`. {notes}".strip()
            lines.append(f"| {field.number} | `{field.name}` | {kind} | {notes.replace('|', '/')} |")
        lines.append("")
    for nested in message.nested_types:
        render_message(nested, comments, lines)
    for enum in message.enum_types:
        render_enum(enum, comments, lines)


def render_enum(enum: EnumDescriptor, comments: dict[str, str], lines: list[str]) -> None:
    lines += [f"### {enum.full_name}", ""]
    if enum.full_name in comments:
        lines += [comments[enum.full_name], ""]
    lines += ["| value | number | notes |", "|---|---|---|"]
    for value in enum.values:
        note = comments.get(f"{enum.full_name}.{value.name}", "")
        lines.append(f"| `{value.name}` | {value.number} | {note} |")
    lines.append("")


def render_grpc(files: list[FileDescriptor], comments: dict[str, str]) -> list[str]:
    lines = ["## gRPC services (package `finetune.v1`)", ""]
    for file in files:
        for service in file.services_by_name.values():
            lines += [f"### {service.full_name}", "", f"Defined in `protos/{file.name}`.", ""]
            if service.full_name in comments:
                lines += [comments[service.full_name], ""]
            lines += ["| method | request | response | notes |", "|---|---|---|---|"]
            for method in service.methods:
                request = f"[{method.input_type.name}](#{anchor(method.input_type.full_name)})"
                response = f"[{method.output_type.name}](#{anchor(method.output_type.full_name)})"
                if method.client_streaming:
                    request = f"stream {request}"
                if method.server_streaming:
                    response = f"stream {response}"
                note = comments.get(f"{service.full_name}.{method.name}", "").replace("|", "/")
                lines.append(f"| `{method.name}` | {request} | {response} | {note} |")
            lines.append("")
    lines += ["## Messages and enums", ""]
    for file in files:
        for message in file.message_types_by_name.values():
            render_message(message, comments, lines)
        for enum in file.enum_types_by_name.values():
            render_enum(enum, comments, lines)
    return lines


def gateway_openapi() -> dict | None:
    """The gateway's OpenAPI schema, or None while the inference service is not importable here."""
    try:
        from services.inference.app import create_app
        from services.inference.config import InferenceSettings
    except ImportError:
        return None
    # Building the app reads only its settings; no model, database or engine is needed for the schema.
    return create_app(SimpleNamespace(settings=InferenceSettings())).openapi()  # type: ignore[arg-type]


def render_http(schema: dict) -> list[str]:
    lines = [f"## HTTP API: {schema['info']['title']}", ""]
    lines += [
        "OpenAI-compatible; the /v1 routes need `Authorization: Bearer <key>` (`ftctl keys create`), the",
        "/admin routes (what `ftctl keys` calls) an admin token (`python -m services.inference.keys bootstrap`",
        "on the gateway's host). The full OpenAPI document follows the table.",
        "",
        "| method | path | summary |",
        "|---|---|---|",
    ]
    for path, operations in sorted(schema["paths"].items()):
        for method, operation in operations.items():
            summary = operation.get("summary") or operation.get("description", "").split("\n")[0]
            lines.append(f"| {method.upper()} | `{path}` | {summary} |")
    lines += ["", "<details><summary>OpenAPI schema</summary>", "", "```json"]
    lines += [json.dumps(schema, indent=1, sort_keys=True), "```", "", "</details>", ""]
    return lines


def generate() -> str:
    files = [importlib.import_module(f"finetune.v1.{name}_pb2").DESCRIPTOR for name in PROTO_MODULES]
    lines = [
        "# API reference",
        "",
        "Generated by `python scripts/gen_api_docs.py` from the finetune.v1 stubs and the gateway's",
        "OpenAPI schema; do not edit by hand. Every gRPC service also serves the standard health",
        "(`grpc.health.v1.Health`) and reflection services, so `grpcurl -plaintext HOST:PORT list` works.",
        "",
    ]
    lines += render_grpc(files, proto_comments())
    schema = gateway_openapi()
    if schema is not None:
        lines += render_http(schema)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if docs/api.md is stale")
    args = parser.parse_args()
    text = generate()
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            sys.exit("docs/api.md is out of date: run `python scripts/gen_api_docs.py`")
        return
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
