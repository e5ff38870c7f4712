"""A request's params, from what the client sent to the method's params model.

Checked once here, for every method alike, so that no part meets bad input as an internal error:
strings and numbers first (:mod:`engram.server.boundary`), then the model, then the integers the
model declares.

A large request is validated in a worker thread, where one long call into pydantic's compiled
core would still hold the interpreter (and with it the event loop) from start to end: its long
lists of models are validated a slice at a time, which lets other threads run in between.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from engram.deadlines import RequestDeadline
from engram.errors import InvalidParams
from engram.server.boundary import check_integers, check_values
from engram.server.methods import Method

__all__ = ["MAX_DEADLINE_MS", "RequestMeta", "params_error", "parse_meta", "validate_meta", "validate_params"]

SLICE = 256  # models validated per call into pydantic, for large requests
MAX_DEADLINE_MS = 86_400_000  # a day: no request runs longer (server.request_timeout is at most that)
# W3C Trace Context (https://www.w3.org/TR/trace-context/#traceparent-header): version, trace id,
# parent span id, flags, lower-case hex; a later version may add fields after a dash.
TRACEPARENT = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(-[0-9a-zA-Z._-]*)?$"


class RequestMeta(BaseModel):
    """``params._meta``: what a request tells the daemon about itself, for every method alike."""

    model_config = ConfigDict(extra="forbid", strict=True, title="RequestMeta")

    deadline_ms: int | None = Field(
        default=None,
        ge=1,
        le=MAX_DEADLINE_MS,
        description="Milliseconds from when the daemon reads the request within which it must be answered; "
        "past it the request is answered -32004 (deadline_missed if it never ran, deadline if it was running).",
    )
    traceparent: str | None = Field(
        default=None,
        max_length=512,
        pattern=TRACEPARENT,
        description="The client's W3C trace context (00-<32 hex trace id>-<16 hex span id>-<2 hex flags>): "
        "the request's span is a child of that span, and its trace id is the request's trace_id "
        "(events, provider calls' traceparent header).",
    )

    @field_validator("traceparent")
    @classmethod
    def _valid_ids(cls, value: str | None) -> str | None:
        # The pattern admits what the specification then forbids: version ff, all-zero ids.
        if value is not None:
            version, trace_id, span_id = value.split("-")[:3]
            if version == "ff" or trace_id == "0" * 32 or span_id == "0" * 16:
                raise ValueError("version ff and all-zero trace or span ids are invalid")
            if version == "00" and len(value) != 55:
                raise ValueError("version 00 has exactly four fields")
        return value

    @property
    def trace_id(self) -> str | None:
        """The trace id of ``traceparent`` (32 hex digits), None without one."""
        return self.traceparent.split("-")[1] if self.traceparent is not None else None

    def deadline(self, received: float) -> RequestDeadline | None:
        return None if self.deadline_ms is None else RequestDeadline.after(self.deadline_ms, received)


def parse_meta(raw: Any) -> RequestMeta:
    """``params._meta`` validated; -32602 naming ``_meta.<field>``."""
    try:
        return RequestMeta.model_validate(raw)
    except ValidationError as exc:
        raise _invalid(exc.errors(include_url=False, include_input=False), ("_meta",)) from None


def validate_meta(raw: Any, received: float) -> RequestDeadline | None:
    """The request's deadline from its ``params._meta``; -32602 naming ``_meta.<field>``."""
    return parse_meta(raw).deadline(received)


def params_error(exc: ValidationError) -> InvalidParams:
    """Name the first wrong field (dotted path) and keep every problem in ``data.errors``."""
    return _invalid(exc.errors(include_url=False, include_input=False))


def _invalid(errors: list[Any], prefix: tuple[str | int, ...] = ()) -> InvalidParams:
    def dotted(loc: tuple[str | int, ...]) -> str:
        return ".".join(str(part) for part in (*prefix, *loc))

    first = errors[0]
    field = dotted(first["loc"]) or None
    message = f"{field}: {first['msg']}" if field else first["msg"]
    if first["type"] == "extra_forbidden":
        message = f"{field}: unknown parameter"
    problems = [{"field": dotted(e["loc"]), "message": e["msg"], "type": e["type"]} for e in errors]
    # A validator of ours names its reason in the error's context (see FreeJson); pydantic's own
    # errors are invalid_params, their type in data.errors.
    reason = (first.get("ctx") or {}).get("reason", "invalid_params")
    return InvalidParams(message, field=field, errors=problems, reason=reason)


@functools.cache
def _model_lists(params: type[BaseModel]) -> dict[str, TypeAdapter[list[Any]]]:
    """The fields of ``params`` that hold a list of models, each with an adapter for slices."""
    lists = {}
    for name, field in params.model_fields.items():
        annotation = field.annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # list[Model] | None
            options = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            annotation = options[0] if len(options) == 1 else None
        if typing.get_origin(annotation) is list:
            (item,) = typing.get_args(annotation)
            if isinstance(item, type) and issubclass(item, BaseModel):
                lists[field.alias or name] = TypeAdapter(list[item])  # type: ignore[valid-type]
    return lists


def _validate_lists_in_slices(params: type[BaseModel], raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with its long lists of models validated into model instances, a slice at a time;
    the params model then takes the instances as they are (pydantic does not validate them again)."""
    done = dict(raw)
    for name, adapter in _model_lists(params).items():
        value = raw.get(name)
        if not isinstance(value, list) or len(value) <= SLICE:
            continue
        items: list[Any] = []
        for start in range(0, len(value), SLICE):
            try:
                items += adapter.validate_python(value[start : start + SLICE])
            except ValidationError as exc:
                # Renumbered: index 0 of the slice is index ``start`` of the list.
                errors = [
                    {**e, "loc": (start + e["loc"][0], *e["loc"][1:])}
                    for e in exc.errors(include_url=False, include_input=False)
                ]
                raise _invalid(errors, (name,)) from None
        done[name] = items
    return done


def validate_params(method: Method, raw: dict[str, Any] | list[Any] | None, large: bool = False) -> BaseModel:
    if isinstance(raw, list):
        names = list(method.params.model_fields)
        if len(raw) > len(names):
            raise InvalidParams(
                f"{method.name} takes at most {len(names)} positional parameter(s), got {len(raw)}",
                reason="too_many_params",
                field=None,
            )
        raw = dict(zip(names, raw, strict=False))  # fewer positional params than fields is fine
    if raw:  # no params: nothing to check but the model's defaults
        check_values(raw)
    else:
        raw = {}
    if large:
        raw = _validate_lists_in_slices(method.params, raw)
    try:
        # The model's core validator, as model_validate calls it, without the half of a small
        # request's validation time that model_validate spends in Python around the call (a
        # deferred model builds its validator on first use either way).
        params = method.params.__pydantic_validator__.validate_python(raw)
    except ValidationError as exc:
        raise params_error(exc) from None
    check_integers(params)
    return params
