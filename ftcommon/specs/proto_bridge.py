"""Spec <-> proto message, by walking the message's descriptor: no field is listed by hand.

The rules, the same for every spec:
- A spec field has the proto field's name. Nested messages are nested specs, repeated fields lists, maps dicts.
- Enums are spelled by their short name: the value's name without the enum's prefix (the part before
  UNSPECIFIED), lower case: `lora` <-> TRAINING_METHOD_LORA.
- A spec field is written to the message only when it was set explicitly (pydantic's `model_fields_set`),
  so a field left to its default stays unset on the wire and the receiver applies the same default; a
  proto3 `optional` field keeps "unset" apart from 0 end to end. `include_defaults=True` writes every
  value that is not None (a reply "with defaults filled in").
- Reading a message, a field counts as given when it has presence and is present, or, without presence,
  when it differs from its zero value. Values are then validated by the spec once, so an error names the
  field's full path (`hyperparameters.epochs`) as `InvalidArgument`.
"""

from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from ftcommon.errors import InvalidArgument

SpecT = TypeVar("SpecT", bound=BaseModel)
MessageT = TypeVar("MessageT", bound=Message)

_UNSPECIFIED = "UNSPECIFIED"


class SpecFieldError(ValueError):
    """A check across fields, raised in a spec's model validator and blamed on one field of that spec."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def enum_prefix(enum: EnumDescriptor) -> str:
    """`TRAINING_METHOD_` for TrainingMethod: the zero value's name without UNSPECIFIED."""
    zero = enum.values_by_number[0].name
    if not zero.endswith(_UNSPECIFIED):
        raise TypeError(f"{enum.full_name}: its zero value {zero} does not end in {_UNSPECIFIED}")
    return zero.removesuffix(_UNSPECIFIED)


def enum_short_names(enum: EnumDescriptor) -> list[str]:
    """Every value's short name but the zero value's ("unset": the spec's default applies)."""
    prefix = enum_prefix(enum)
    return [value.name.removeprefix(prefix).lower() for value in enum.values if value.number != 0]


def to_message(spec: BaseModel, message_type: type[MessageT], *, include_defaults: bool = False) -> MessageT:
    message = message_type()
    _fill(message, spec, include_defaults)
    return message


def from_message(message: Message, spec_type: type[SpecT], *, field_prefix: str = "") -> SpecT:
    """The spec the message asks for, defaults applied; InvalidArgument naming the first bad field."""
    return validate_spec(spec_type, message_values(message, field_prefix), field_prefix=field_prefix)


def validate_spec(spec_type: type[SpecT], values: Any, *, field_prefix: str = "") -> SpecT:
    """`spec_type.model_validate(values)` with pydantic's errors as InvalidArgument naming the field."""
    try:
        return spec_type.model_validate(values)
    except ValidationError as exc:
        raise spec_error(exc, field_prefix) from None


def spec_error(exc: ValidationError, field_prefix: str = "") -> InvalidArgument:
    """The first of a ValidationError's problems, naming its field by dotted path from `field_prefix`."""
    error = exc.errors()[0]
    path = [str(part) for part in error["loc"] if not isinstance(part, int)]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, SpecFieldError):
        path.append(cause.field)
        message = cause.message
    else:
        message = str(error["msg"]).removeprefix("Value error, ")
    field = ".".join([field_prefix, *path] if field_prefix else path)
    return InvalidArgument(message, field=field)


def message_values(message: Message, field_prefix: str = "") -> dict[str, Any]:
    """The fields the message gives, as plain values in the spec's spelling (not yet validated)."""
    values: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        path = f"{field_prefix}.{field.name}" if field_prefix else field.name
        value = getattr(message, field.name)
        if _is_map(field):
            if value:
                value_field = field.message_type.fields_by_name["value"]
                values[field.name] = {key: _read_one(value_field, item, path) for key, item in value.items()}
        elif _is_repeated(field):
            if value:
                values[field.name] = [_read_one(field, item, f"{path}[{i}]") for i, item in enumerate(value)]
        elif field.has_presence:
            if message.HasField(field.name):
                values[field.name] = _read_one(field, value, path)
        elif value != field.default_value:
            values[field.name] = _read_one(field, value, path)
    return values


def spec_fields_mismatch(spec_type: type[BaseModel], descriptor: Descriptor, path: str = "") -> list[str]:
    """Every difference between a spec and its message, recursively: fields present on one side only,
    nested messages without a nested spec, enum values the spec's Literal does not spell the same."""
    problems: list[str] = []
    where = path or descriptor.full_name
    spec_fields = spec_type.model_fields
    proto_names = {field.name for field in descriptor.fields}
    problems += [
        f"{where}.{name}: in the proto, not in {spec_type.__name__}"
        for name in proto_names - set(spec_fields)
    ]
    problems += [
        f"{where}.{name}: in {spec_type.__name__}, not in the proto"
        for name in set(spec_fields) - proto_names
    ]
    for field in descriptor.fields:
        if field.name not in spec_fields:
            continue
        annotation = spec_fields[field.name].annotation
        target = field.message_type.fields_by_name["value"] if _is_map(field) else field
        if target.message_type is not None:
            nested = _nested_spec(annotation)
            if nested is None:
                problems.append(f"{where}.{field.name}: a message, but the spec's type has no nested spec")
            else:
                problems += spec_fields_mismatch(nested, target.message_type, f"{where}.{field.name}")
        elif target.enum_type is not None:
            spelled = sorted(_literal_values(annotation))
            expected = sorted(enum_short_names(target.enum_type))
            if spelled != expected:
                problems.append(f"{where}.{field.name}: the spec spells {spelled}, the enum {expected}")
    return problems


# Internals


def _fill(message: Message, spec: BaseModel, include_defaults: bool) -> None:
    chosen = spec.model_fields_set
    for field in message.DESCRIPTOR.fields:
        if field.name not in type(spec).model_fields:
            raise TypeError(
                f"{type(spec).__name__} has no field {field.name} of {message.DESCRIPTOR.full_name}"
            )
        value = getattr(spec, field.name)
        if value is None or not (include_defaults or field.name in chosen):
            continue
        target = getattr(message, field.name)
        if _is_map(field):
            value_field = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if value_field.message_type is not None:
                    _fill(target[key], item, include_defaults)
                else:
                    target[key] = _write_one(value_field, item)
        elif _is_repeated(field):
            for item in value:
                if field.message_type is not None:
                    _fill(target.add(), item, include_defaults)
                else:
                    target.append(_write_one(field, item))
        elif field.message_type is not None:
            target.SetInParent()  # present even when every nested field is left to its default
            _fill(target, value, include_defaults)
        else:
            setattr(message, field.name, _write_one(field, value))


def _write_one(field: FieldDescriptor, value: Any) -> Any:
    if field.enum_type is None:
        return value
    name = enum_prefix(field.enum_type) + str(value).upper()
    if name not in field.enum_type.values_by_name:
        raise ValueError(f"{field.name}: {value!r} is not one of {enum_short_names(field.enum_type)}")
    return field.enum_type.values_by_name[name].number


def _read_one(field: FieldDescriptor, value: Any, path: str) -> Any:
    if field.message_type is not None:
        return message_values(value, path)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        if known is None:
            raise InvalidArgument(f"unknown value {value}", field=path)
        return known.name.removeprefix(enum_prefix(field.enum_type)).lower()
    return value


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _is_map(field: FieldDescriptor) -> bool:
    return (
        _is_repeated(field) and field.message_type is not None and field.message_type.GetOptions().map_entry
    )


def _nested_spec(annotation: Any) -> type[BaseModel] | None:
    """The spec class inside `Spec`, `Spec | None`, `list[Spec]` or `dict[str, Spec]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in getattr(annotation, "__args__", ()):
        found = _nested_spec(argument)
        if found is not None:
            return found
    return None


def _literal_values(annotation: Any) -> set[str]:
    """The strings of a Literal, also inside `Literal[...] | None`."""
    values: set[str] = set()
    for argument in getattr(annotation, "__args__", ()):
        if isinstance(argument, str):
            values.add(argument)
        else:
            values |= _literal_values(argument)
    return values
