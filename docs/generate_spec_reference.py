"""Regenerate the okrs.yaml field reference (docs/okrs-yaml.md) from the spec's JSON Schema.

    python docs/generate_spec_reference.py          # rewrites docs/okrs-yaml.md between the markers
    python docs/generate_spec_reference.py --check  # exit 1 if docs/okrs-yaml.md is out of date

The schema is `mlflow-okr schema`'s (mlflow_okr.spec.json_schema, built from the pydantic models),
so the reference lists exactly the keys validation accepts.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from mlflow_okr.spec import json_schema

sys.path.insert(0, str(Path(__file__).resolve().parent))  # generated_section, a sibling
from generated_section import GeneratedSection  # noqa: E402

PAGE = Path(__file__).resolve().parent / "okrs-yaml.md"
SECTION = GeneratedSection(PAGE, "spec-reference", "docs/generate_spec_reference.py", lambda: reference())
START, END = SECTION.start, SECTION.end

# Sections in reading order: the file, then what it contains.
SECTIONS = (
    ("the file (top level)", None),
    ("a cycle given as a mapping (`cycle: {name, start, end}`)", "Cycle"),
    ("`status_thresholds`", "StatusThresholds"),
    ("an objective (`objectives[]`)", "Objective"),
    ("a key result (`key_results[]`)", "KeyResult"),
    ("a guardrail (`guardrails[]`)", "Guardrail"),
    ("bounds (`maintain`)", "Bounds"),
    ("a baseline read from MLflow (`baseline: {...}`)", "BaselineRef"),
    ("a registry alias (`model`)", "ModelRef"),
    ("an evaluation dataset (`dataset`)", "DatasetRef"),
    ("`notify`", "Notify"),
)


def anchor(title: str) -> str:
    """The anchor of a `###` heading, as the site (MkDocs' toc) and GitHub both make it."""
    text = re.sub(r"[^\w\- ]", "", title.lower())
    return re.sub(r"\s", "-", text.strip())


# A model's name -> the link to its section.
LINKS = {name: f"[{name}](#{anchor(title[0].upper() + title[1:])})" for title, name in SECTIONS if name}


def type_text(schema: dict[str, Any]) -> str:
    """A JSON Schema type in a few words: `number`, `list of string`, `one of: a, b`."""
    if "$ref" in schema:
        return f"mapping ({LINKS[schema['$ref'].rsplit('/', 1)[1]]})"
    if "anyOf" in schema:
        kinds = [LINKS["Cycle"] if option.get("title") == "Cycle" else type_text(option)
                 for option in schema["anyOf"] if option.get("type") != "null"]
        return " or ".join(dict.fromkeys(kinds))
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    if "enum" in schema:
        return "one of: " + ", ".join(f"`{value}`" for value in schema["enum"])
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {type_text(schema.get('items', {}))}"
    if kind == "object":
        return "mapping"
    if schema.get("format") == "date":
        return "date"
    return kind


def constraints(schema: dict[str, Any]) -> list[str]:
    """Bounds and patterns a value must satisfy, from the schema (or the non-null branch of it)."""
    options = [option for option in schema.get("anyOf", [schema]) if option.get("type") != "null"]
    found = []
    for option in options:
        for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                          ("exclusiveMaximum", "<")):
            if key in option:
                found.append(f"{word} {option[key]}")
        if "pattern" in option:
            found.append(f"matches `{option['pattern']}`")
        if "maxLength" in option:
            found.append(f"at most {option['maxLength']} characters")
        if option.get("minItems"):
            found.append(f"at least {option['minItems']} item(s)")
    return found


def cell(text: str) -> str:
    """Text for a table cell: pipes escaped, and `<` outside code spans, which HTML would swallow."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(part if index % 2 else part.replace("<", "&lt;") for index, part in enumerate(parts))


def table(model: dict[str, Any]) -> str:
    required = set(model.get("required", []))
    rows = ["| Key | Type | Required | Default | Description |", "| --- | --- | --- | --- | --- |"]
    for key, schema in model["properties"].items():
        default = schema.get("default")
        default = "" if default is None else f"`{json.dumps(default)}`"
        description = schema.get("description", "")
        if "anyOf" in schema and not description:
            description = next((o["description"] for o in schema["anyOf"] if "description" in o), "")
        extra = constraints(schema)
        if extra:
            description = (description + " " if description else "") + "(" + "; ".join(extra) + ")"
        rows.append(f"| `{key}` | {cell(type_text(schema))} | {'yes' if key in required else 'no'} | "
                    f"{cell(default)} | {cell(description)} |")
    return "\n".join(rows)


def reference() -> str:
    """The Markdown field reference: one table per model of the schema."""
    schema = json_schema()
    definitions = schema["$defs"]
    parts = [START]
    # The cycle mapping is inlined in `cycle`'s schema (it is also given as a name such as 2026-Q4).
    definitions = {**definitions, "Cycle": next(
        option for option in schema["properties"]["cycle"]["anyOf"] if option.get("type") == "object"
    )}
    for title, name in SECTIONS:
        model = schema if name is None else definitions[name]
        parts.append(f"### {title[0].upper()}{title[1:]}\n\n{model.get('description', '')}\n\n{table(model)}")
    missing = set(definitions) - {name for _, name in SECTIONS}
    if missing:
        raise SystemExit(f"generate_spec_reference.py: add a section for {sorted(missing)}")
    parts.append(END)
    return "\n\n".join(parts)


updated_page = SECTION.updated


def main() -> None:
    SECTION.main(__doc__.splitlines()[0])


if __name__ == "__main__":
    main()
