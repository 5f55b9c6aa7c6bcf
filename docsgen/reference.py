"""Reference pages generated from the code, so they cannot drift from it.

- the CLI: the click command tree behind the typer app, walked command by command;
- the line YAML keys: the fields of the config dataclasses with the descriptions of their
  docstrings' ``Attributes`` sections (a field without one is reported, so a new key is documented);
- the REST API: the OpenAPI schema of the FastAPI app, built offline and rendered as tables.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def cell(value: object) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|")


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------- CLI

# typer 0.29 ships its own copy of click (``typer._click``): the tree is walked by duck typing, so it
# works with that copy and with click itself.


def _walk(command: Any, context: Any) -> Iterator[tuple[Any, Any]]:
    yield command, context
    if hasattr(command, "list_commands"):
        for name in command.list_commands(context):
            child = command.get_command(context, name)
            if child is not None and not getattr(child, "hidden", False):
                yield from _walk(child, type(context)(child, info_name=name, parent=context))


def _is_option(param: Any) -> bool:
    return any(str(opt).startswith("-") for opt in getattr(param, "opts", []))


def _type_name(param: Any) -> str:
    if _is_option(param) and getattr(param, "is_flag", False):
        return "flag"
    descriptor = getattr(param, "type_descriptor", None)
    annotation = getattr(descriptor, "annotation", None)
    if annotation is None:
        return str(getattr(getattr(param, "type", None), "name", "text"))
    inner = getattr(annotation, "__args__", None)
    if inner and getattr(annotation, "__origin__", None) in (list, tuple):
        annotation = inner[0]
    names = {str: "text", int: "integer", float: "number", bool: "boolean", Path: "path"}
    return names.get(annotation, getattr(annotation, "__name__", str(annotation)))


def _default(param: Any) -> str:
    default = getattr(param, "default", None)
    if param.required or default is None or callable(default):
        return ""
    if _is_option(param) and getattr(param, "is_flag", False):
        return "on" if default else "off"
    if isinstance(default, list | tuple):
        return ", ".join(map(str, default)) if default else ""
    return f"`{default}`"


def _usage(command: Any, context: Any) -> str:
    pieces = [
        re.sub(r"\{(\w+)\}", lambda match: match.group(1).upper(), piece)
        for piece in command.collect_usage_pieces(context)
    ]
    return " ".join([context.command_path, *pieces])


def cli_reference() -> str:
    """Every ``normadd`` command: usage, help and a table of its arguments and options."""
    import typer
    from typer.main import get_command

    from normadd.cli import app

    root = get_command(app)
    sections = []
    for command, context in _walk(root, typer.Context(root, info_name="normadd")):
        path = context.command_path
        parts = [f"## `{path}`", "", (command.help or "").strip(), "", "```text", _usage(command, context), "```"]
        rows = []
        for param in command.get_params(context):
            if param.name == "help":
                continue
            if _is_option(param):
                names = ", ".join(f"`{name}`" for name in [*param.opts, *param.secondary_opts])
            else:
                names = f"`{(param.name or '').upper()}`"
            kind = _type_name(param) if _is_option(param) else f"argument ({_type_name(param)})"
            if param.multiple or param.nargs == -1:
                kind += ", repeatable"
            help_text = getattr(param, "help", "") or ""
            rows.append([names, cell(kind), "yes" if param.required else "", cell(_default(param)), cell(help_text)])
        if rows:
            parts += ["", table(["name", "type", "required", "default", "description"], rows)]
        if hasattr(command, "list_commands"):
            subcommands = [
                f"[`{path} {name}`](#{'-'.join([*path.split(), name]).lower()})"
                for name in command.list_commands(context)
            ]
            parts += ["", "Commands: " + ", ".join(subcommands) + "."]
        sections.append("\n".join(parts))
    return "\n\n".join(sections)


# ------------------------------------------------------------------------------- config keys


def attribute_docs(cls: type) -> dict[str, str]:
    """Field name -> description, from the ``Attributes`` section of the class docstring (Google style)."""
    from griffe import Docstring, DocstringSectionKind

    sections = Docstring(cls.__doc__ or "", parser="google").parse()
    return {
        attribute.name: attribute.description
        for section in sections
        if section.kind is DocstringSectionKind.attributes
        for attribute in section.value
    }


def _field_default(item: dataclasses.Field[Any]) -> str:
    if item.default is not dataclasses.MISSING:
        return "" if item.default is None else f"`{item.default}`"
    if item.default_factory is not dataclasses.MISSING:
        value = item.default_factory()
        return f"`{value}`" if value not in ([], {}) else "none"
    return "**required**"


def dataclass_table(cls: type, skip: tuple[str, ...] = (), missing: list[str] | None = None) -> str:
    """One row per field of the dataclass ``cls``: key, type, default, description.

    Fields without a description are appended to ``missing`` (the hook reports them).
    """
    docs = attribute_docs(cls)
    rows = []
    for item in dataclasses.fields(cls):
        if item.name in skip:
            continue
        description = docs.get(item.name, "")
        if not description and missing is not None:
            missing.append(f"{cls.__name__}.{item.name}")
        kind = item.type if isinstance(item.type, str) else getattr(item.type, "__name__", str(item.type))
        rows.append([f"`{item.name}`", cell(kind), cell(_field_default(item)), cell(description)])
    return table(["key", "type", "default", "description"], rows)


def config_tables(missing: list[str]) -> dict[str, str]:
    """The tables of the line YAML keys, by marker name."""
    from normadd.config import ExampleSetting, LineConfig, NormalitySetting
    from normadd.serve.settings import ServiceConfig

    return {
        "LineConfig": dataclass_table(LineConfig, missing=missing),
        "NormalitySetting": dataclass_table(NormalitySetting, missing=missing),
        "ExampleSetting": dataclass_table(ExampleSetting, missing=missing),
        "ServiceConfig": dataclass_table(ServiceConfig, skip=("line_config", "database"), missing=missing),
    }


# ---------------------------------------------------------------------------------- REST API


def openapi_schema() -> dict[str, Any]:
    """The service's OpenAPI schema, from an app built on a throw-away registry (no model is loaded)."""
    from normadd.config import LineConfig
    from normadd.serve.app import create_app
    from normadd.serve.settings import ServiceConfig

    with tempfile.TemporaryDirectory() as folder:
        settings = ServiceConfig(
            line="bottle",
            line_config=LineConfig(class_name="bottle", backbone="tiny-random"),
            database=Path(folder) / "docs.db",
            api_keys={"docs": {"secret": "docs-only-secret", "scopes": ["inspect"]}},
        )
        return create_app(settings).openapi()


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        return " or ".join(_type(option) for option in schema["anyOf"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        values = schema["additionalProperties"]
        return f"object of {_type(values)}" if isinstance(values, dict) and values else "object"
    if schema.get("format") == "binary" or "contentMediaType" in schema:
        return "file"
    return str(kind)


def _limits(schema: dict[str, Any]) -> str:
    words = []
    for key, label in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("maxLength", "length ≤")):
        if key in schema:
            words.append(f"{label} {schema[key]}")
    if "default" in schema and schema["default"] not in (None, ""):
        words.append(f"default `{schema['default']}`")
    return "; ".join(words)


def _describe(description: str, schema: dict[str, Any]) -> str:
    limits = _limits(schema)
    return f"{description} ({limits})" if description and limits else description or limits


def _properties(schema: dict[str, Any]) -> list[list[str]]:
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema.get("properties", {}).items():
        notes = _describe(prop.get("description", ""), prop)
        rows.append([f"`{name}`", cell(_type(prop)), "yes" if name in required else "", cell(notes)])
    return rows


def rest_reference(schema: dict[str, Any] | None = None) -> str:
    """Every endpoint (parameters, body, responses) and every schema of the service, as Markdown."""
    schema = schema or openapi_schema()
    components = schema.get("components", {}).get("schemas", {})
    parts = []
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            summary = operation.get("description") or operation.get("summary", "")
            parts += [f"### `{method.upper()} {path}`", "", summary]
            parts += ["", "Needs an `X-API-Key` header." if operation.get("security") else "Needs no API key."]
            params = [
                [
                    f"`{p['name']}`",
                    p["in"],
                    cell(_type(p.get("schema", {}))),
                    "yes" if p.get("required") else "",
                    cell(_describe(p.get("description", ""), p.get("schema", {}))),
                ]
                for p in operation.get("parameters", [])
            ]
            if params:
                parts += ["", table(["parameter", "in", "type", "required", "description"], params)]
            body = operation.get("requestBody")
            if body:
                for media, content in body["content"].items():
                    body_schema = content.get("schema", {})
                    resolved = components.get(body_schema.get("$ref", "").rsplit("/", 1)[-1], body_schema)
                    parts += ["", f"Request body (`{media}`, {_type(body_schema)}):", ""]
                    parts += [table(["field", "type", "required", "description"], _properties(resolved))]
            responses = []
            for code, response in operation.get("responses", {}).items():
                content = response.get("content", {}).get("application/json", {})
                responses.append([f"`{code}`", cell(response.get("description", "")), _type(content.get("schema", {}))])
            parts += ["", table(["status", "meaning", "body"], responses), ""]
    parts += ["## Schemas", ""]
    for name, component in components.items():
        parts += [f"### {name}", "", cell(component.get("description", ""))]
        rows = _properties(component)
        parts += ["", table(["field", "type", "required", "description"], rows) if rows else "", ""]
    return "\n".join(parts)
