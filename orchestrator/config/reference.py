"""The config reference (docs/CONFIG.md), generated from the config dataclasses.

``python -m orchestrator.config.reference > docs/CONFIG.md`` prints every key of
:class:`orchestrator.config.schema.Config` (the ``distill.<term>`` knob sections and the ensemble
pipeline's ``pipeline`` section included) with its type, its default and one line, taken from
the source: a field's ``metadata["doc"]``, else its trailing comment, else the comment lines just
above it. ``tests/test_config_reference.py`` regenerates it and compares it with the committed file.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from orchestrator.config.schema import Config
from orchestrator.config.pipeline_section import PIPELINE_DEFAULTS, PipelineSection

COMMAND = "python -m orchestrator.config.reference > docs/CONFIG.md"


@dataclass
class KeyDoc:
    """One config key: dotted name, type as written in the source, default as YAML, one line."""

    key: str
    type: str
    default: str
    doc: str
    where: str  # module.Class.field: where to add the line when it is missing


def _comments(source: str) -> dict[int, str]:
    """Line number (1-based) -> the text of the comment on that line."""
    out: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _class_field_comments(cls: type) -> dict[str, str]:
    """Field name -> its comment in ``cls``'s own source (trailing, else the comment block just above)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # built by make_dataclass: its fields carry metadata["doc"]
        return {}
    comments, lines = _comments(source), source.splitlines()
    docs: dict[str, str] = {}
    (node,) = ast.parse(source).body
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        trailing = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments]
        above, n = [], stmt.lineno - 1
        while n >= 1 and lines[n - 1].strip().startswith("#"):
            above.insert(0, comments[n])
            n -= 1
        text = " ".join(trailing or above)
        if text:
            docs[stmt.target.id] = text
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> its one line: ``metadata["doc"]``, else its comment in the source (base classes too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_class_field_comments(klass))
    docs.update({f.name: f.metadata["doc"] for f in dataclasses.fields(cls) if "doc" in f.metadata})
    return docs


def _type_text(tp: Any) -> str:
    """A field's type as the source writes it (``str | None``, ``list[int]``)."""
    if isinstance(tp, str):
        return tp
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "").replace("NoneType", "None")


def _yaml_text(value: Any) -> str:
    """A default as it would be written in YAML (``null``, ``true``, ``[onnx]``); list items drop null keys."""
    if isinstance(value, list):
        value = [{k: v for k, v in item.items() if v is not None} if isinstance(item, dict) else item
                 for item in value]
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text.removesuffix("...").strip()


def _default(f: dataclasses.Field) -> Any:
    """A field's default as plain data (a list of dataclasses as a list of dicts)."""
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if isinstance(value, list):
        return [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value]
    return value


def _item_dataclass(tp: Any) -> type | None:
    """``X`` for a field typed ``list[X]`` (X a dataclass), else None."""
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        return item if dataclasses.is_dataclass(item) else None
    return None


def _section_of(cls: type, name: str, tp: Any) -> type | None:
    """The config section a field holds: its dataclass, ``PipelineSection`` for ``Config.pipeline`` (None in a
    sweep, set by the pipeline CLIs), else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    return PipelineSection if cls is Config and name == "pipeline" else None


def keys(cls: type, prefix: str = "") -> Iterator[KeyDoc]:
    """Every key of config class ``cls`` under ``prefix``, nested sections after their parent's own keys."""
    hints, docs = typing.get_type_hints(cls), field_docs(cls)
    nested: list[tuple[str, type]] = []
    for f in dataclasses.fields(cls):
        key, tp = prefix + f.name, hints[f.name]
        section = _section_of(cls, f.name, tp)
        if section is not None:
            nested.append((key, section))
            continue
        yield KeyDoc(key, _type_text(f.type), _yaml_text(_default(f)), docs.get(f.name, ""),
                     f"{cls.__module__}.{cls.__qualname__}.{f.name}")
        if _item_dataclass(tp) is not None:
            nested.append((f"{key}.<i>", _item_dataclass(tp)))
    for key, section in nested:
        yield from keys(section, key + ".")


def _summary(cls: type) -> str:
    """The first paragraph of a class's own docstring, on one line ('' for dataclass' generated one)."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(f"{cls.__name__}("):
        return ""
    return re.sub(r":\w+:`", "`", " ".join(inspect.cleandoc(doc).split("\n\n")[0].split()))


def _sections(cls: type, prefix: str = "") -> Iterator[tuple[str, type]]:
    """(prefix, class) of ``cls`` and every section below it, depth first."""
    yield prefix, cls
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        section, item = _section_of(cls, f.name, hints[f.name]), _item_dataclass(hints[f.name])
        if section is not None:
            yield from _sections(section, f"{prefix}{f.name}.")
        elif item is not None:
            yield from _sections(item, f"{prefix}{f.name}.<i>.")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """docs/CONFIG.md: one table per section."""
    all_keys = list(keys(Config))
    out = [
        "# Config reference",
        "",
        f"Generated from the config dataclasses by `{COMMAND}`: do not edit by hand",
        "(`tests/test_config_reference.py` fails when it is out of date). The line of each key is the",
        "comment beside its field in the source (`orchestrator/config/schema.py`, `orchestrator/config/pipeline_section.py`,",
        "the `*Knobs` class of each term under `orchestrator/distill/`).",
        "",
        "Set any key in a YAML file (`--config my.yaml`) or as `key.sub=value` on the command line;",
        "`python -m orchestrator.sweep --print-config` prints the resolved values. A bad value stops the",
        "command before any work, naming the key and what is allowed (exit code 2).",
        "",
    ]
    for prefix, cls in _sections(Config):
        rows = [k for k in all_keys if k.key.startswith(prefix) and "." not in k.key[len(prefix):]]
        if not rows:
            continue
        title = f"`{prefix.rstrip('.')}`" if prefix else "top level"
        out += [f"## {title}", ""]
        summary = _summary(cls)
        if summary:
            out += [summary, ""]
        if prefix == "pipeline.":
            out += _pipeline_note()
        out += ["| key | type | default | what it sets |", "| --- | --- | --- | --- |"]
        out += [f"| `{k.key}` | `{_cell(k.type)}` | `{_cell(k.default)}` | {_cell(k.doc)} |" for k in rows]
        out.append("")
    return "\n".join(out)


def _pipeline_note() -> list[str]:
    """The ensemble pipeline's CLIs start from other defaults: listed from PIPELINE_DEFAULTS."""
    changed = [f"`{key}={_yaml_text(value)}`" for key, value in PIPELINE_DEFAULTS.items() if key != "pipeline"]
    return ["Only the ensemble pipeline's commands (`python -m pipelines.ensemble`, `python -m pipelines.teachers`)",
            "have this section (a sweep's config has none). They also start from other defaults for these keys",
            "(`PIPELINE_DEFAULTS`):", ", ".join(changed) + ".", ""]


def main() -> None:
    print(render())


if __name__ == "__main__":
    main()
