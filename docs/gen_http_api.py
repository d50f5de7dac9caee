"""The HTTP API reference (reference/http-api.md and reference/openapi.json), generated
at build time from the OpenAPI document of the FastAPI app that `pix2pixhd serve` runs.

The document describes routes, fields, statuses and headers; none of it depends on the
model, so the app is made without one (``ModelHolder(None)``: no request is served) and
with a token set, so that the bearer authentication and the 401 answers are documented
(they apply only when the server runs with ``--token-file``). Static Markdown, no
JavaScript and nothing fetched, so the page works offline. Run by mkdocs-gen-files
(mkdocs.yml); ``python docs/gen_http_api.py`` prints the page.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PAGE = "reference/http-api.md"
DOCUMENT = "reference/openapi.json"


def openapi() -> dict[str, Any]:
    from components.serve.app import ModelHolder, ServeConfig, create_app

    app = create_app(ModelHolder(None), ServeConfig(token="documented"))  # type: ignore[arg-type]
    return app.openapi()


def _escape(text: str) -> str:
    """Text as Markdown: code spans kept, ``<``/``>`` escaped outside them."""
    parts = str(text).split("`")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("|", "\\|")
    return "`".join(parts)


def _cell(text: str) -> str:
    return _escape(" ".join(str(text).split()))


def _type(schema: dict[str, Any], doc: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{name.lower()})"
    if "anyOf" in schema:
        kinds = [_type(s, doc) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(kinds) + " (optional)"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"array of {_type(schema.get('items', {}), doc)}"
    if kind == "string" and "contentMediaType" in schema:
        return "file"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    return kind


def _resolve(schema: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _fields(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    schema = _resolve(schema, doc)
    required = set(schema.get("required", []))
    rows = ["| field | type | required | default | description |", "|---|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        default = f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        if "minimum" in prop:
            default += f" (min {prop['minimum']:g})"
        rows.append(
            f"| `{name}` | {_type(prop, doc)} | {'yes' if name in required else 'no'} | "
            f"{default.strip()} | {_cell(prop.get('description', ''))} |"
        )
    return rows


def _responses(op: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    rows = ["| status | meaning | body | headers |", "|---|---|---|---|"]
    for status, answer in sorted(op.get("responses", {}).items()):
        content = answer.get("content", {})
        body = ", ".join(
            f"`{kind}`" + (f" {_type(c['schema'], doc)}" if c.get("schema") else "")
            for kind, c in content.items()
        )
        headers = ", ".join(f"`{h}`" for h in answer.get("headers", {}))
        rows.append(f"| {status} | {_cell(answer.get('description', ''))} | {body} | {headers} |")
    return rows


def render(doc: dict[str, Any] | None = None) -> str:
    doc = doc or openapi()
    info = doc["info"]
    out = [
        "# HTTP API",
        "",
        f"Generated from the OpenAPI {doc['openapi']} document of `pix2pixhd serve` "
        "(`components.serve.app.create_app`) when the site is built; the same document is "
        "served at `/openapi.json` (and browsable at `/docs`) by a running server, and is "
        f"here as [openapi.json](openapi.json). API version {info['version']}.",
        "",
        _escape(info.get("description", "")),
        "",
    ]
    headers: dict[str, str] = {}
    for ops in doc["paths"].values():
        for op in ops.values():
            for answer in op.get("responses", {}).values():
                for name, h in answer.get("headers", {}).items():
                    headers.setdefault(name, h.get("description", ""))
    if headers:
        out += ["## Response headers", ""]
        out += [
            f"- `{name}`" + (f": {_cell(text)}" if text else "") for name, text in headers.items()
        ]
        out.append("")
    if doc.get("components", {}).get("securitySchemes"):
        out += [
            "Routes marked *bearer token* need `Authorization: Bearer TOKEN` when the "
            "server runs with `--token-file`, and answer 401 without it; otherwise they "
            "are open.",
            "",
        ]
    out += ["## Routes", "", "| method | path | summary |", "|---|---|---|"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            anchor = f"{method}-{path}".lower().replace("/", "").replace("{", "").replace("}", "")
            out.append(
                f"| {method.upper()} | [`{path}`](#{anchor}) | {_cell(op.get('summary', ''))} |"
            )
    out.append("")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            anchor = f"{method}-{path}".lower().replace("/", "").replace("{", "").replace("}", "")
            out += [f"### {method.upper()} `{path}` {{#{anchor}}}", ""]
            out += [_escape(op.get("summary", "")) + ".", ""]
            if op.get("description"):
                out += [_escape(op["description"]), ""]
            if op.get("security"):
                out += ["Authentication: *bearer token* (with `--token-file`).", ""]
            params = op.get("parameters", [])
            if params:
                out += [
                    "| parameter | in | type | required | description |",
                    "|---|---|---|---|---|",
                ]
                for p in params:
                    required = "yes" if p.get("required") else "no"
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {_type(p.get('schema', {}), doc)} | "
                        f"{required} | {_cell(p.get('description', ''))} |"
                    )
                out.append("")
            body = op.get("requestBody")
            if body:
                for kind, content in body.get("content", {}).items():
                    out += [f"Request body: `{kind}`", ""]
                    out += _fields(content.get("schema", {}), doc)
                    out.append("")
            out += ["Responses:", ""]
            out += _responses(op, doc)
            out.append("")
    schemas = doc.get("components", {}).get("schemas", {})
    if schemas:
        out += ["## Schemas", ""]
        for name, schema in schemas.items():
            out += [f"### {name}", ""]
            if schema.get("description"):
                out += [_escape(schema["description"]), ""]
            out += _fields(schema, doc)
            out.append("")
            if schema.get("examples"):
                out += ["Example:", "", "```json", json.dumps(schema["examples"][0]), "```", ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
elif __name__ == "<run_path>":  # run by mkdocs-gen-files (runpy.run_path)
    import mkdocs_gen_files

    document = openapi()
    with mkdocs_gen_files.open(DOCUMENT, "w") as f:
        json.dump(document, f, indent=2)
    with mkdocs_gen_files.open(PAGE, "w") as f:
        f.write(render(document))
