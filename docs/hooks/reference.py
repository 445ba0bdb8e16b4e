"""MkDocs hook: the configuration reference, generated from the schema at build time.

docs/configuration.md holds the prose and markers such as ``<!-- reference: group=model -->``.
This hook replaces each marker with tables built from

- the dataclasses of ``bslrun.config`` (``dataclasses.fields``): each field's name, type
  and default, and as its help the ``#`` comment lines directly above the field (read from
  the class source with ``inspect.getsource`` + ``ast`` + ``tokenize``); Enum members'
  comments describe the choices;
- the YAML files under ``configs/``: the options of each config group (their first comment
  line describes them), which schema each option extends (``/schema/<group>/<name>``, as
  bslrun's own ``register()`` stores them in Hydra's ConfigStore), and the values they set,
  so that a default is the value a run actually gets (``optim=adamw`` sets its own ``lr``);
  ``configs/config.yaml`` supplies top-level values (``name``).

Markers (one per line):

- ``<!-- reference: groups -->``: every config group and its options;
- ``<!-- reference: top -->``: the top-level keys (``name``, ``seed``);
- ``<!-- reference: group=NAME -->``: the options of a group and a table per schema;
- ``<!-- reference: modules -->``: the modules of ``src/bslrun`` and the first paragraph of
  their docstrings (read with ``ast``, nothing imported).

The hook only reads: the repository is never written to.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import inspect
import io
import re
import sys
import textwrap
import tokenize
import types
import typing
from pathlib import Path

MARKER = re.compile(r"^<!--[ \t]*reference:[ \t]*(?P<what>[^>]*?)[ \t]*-->[ \t]*$", re.MULTILINE)
SCHEMA_REF = re.compile(r"^/?schema/(?P<group>[^/@]+)/(?P<name>[^@]+)@_here_$")

_state: dict = {}


# --------------------------------------------------------------------------- sources


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _config_module(root: Path):
    """bslrun.config of this checkout (src/ first on the path, so it is the one documented),
    imported afresh on every build so that `mkdocs serve` shows an edited schema."""
    src = str(root / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    for name in [m for m in sys.modules if m == "bslrun" or m.startswith("bslrun.")]:
        del sys.modules[name]
    return importlib.import_module("bslrun.config")


def _register():
    """bslrun's own ``register()``, which stores the schemas in Hydra's ConfigStore."""
    for name in ("bslrun.registry", "bslrun.config"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        if hasattr(module, "register"):
            return module.register
    raise RuntimeError("no register() in bslrun.registry or bslrun.config: cannot map schemas")


def _schemas() -> dict[tuple[str, str], type]:
    """(group, name) -> dataclass, as bslrun registers them in Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    _register()()
    store = ConfigStore.instance()
    found = {}
    for group in store.list("schema"):
        if not group.endswith(".yaml"):
            for name in store.list(f"schema/{group}"):
                node = store.load(f"schema/{group}/{name}").node
                found[(group, name.removesuffix(".yaml"))] = OmegaConf.get_type(node)
    return found


def _comment_lines(source: str) -> dict[int, str]:
    """Line number -> comment text, for lines whose only token is a comment."""
    out = {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            row = tok.start[0]
            if lines[row - 1].strip().startswith("#"):
                out[row] = tok.string.lstrip("#").strip()
    return out


def _trailing_comments(source: str) -> dict[int, str]:
    """Line number -> comment text, for comments that follow code on their line."""
    out = {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and not lines[tok.start[0] - 1].strip().startswith("#"):
            out[tok.start[0]] = tok.string.lstrip("#").strip()
    return out


def _class_help(cls: type) -> tuple[str, dict[str, str]]:
    """A class's docstring and, per attribute, the comment lines directly above it (or, when
    there are none, the comment on its own line)."""
    if cls in _state.setdefault("help", {}):
        return _state["help"][cls]
    source = textwrap.dedent(inspect.getsource(cls))
    tree = ast.parse(source).body[0]
    above, trailing = _comment_lines(source), _trailing_comments(source)
    helps = {}
    for node in tree.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        elif (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            name = node.targets[0].id
        else:
            continue
        block, row = [], node.lineno - 1
        while row in above:
            block.insert(0, above[row])
            row -= 1
        text = " ".join(block) or trailing.get(node.lineno, "")
        if text:
            helps[name] = text
    _state["help"][cls] = (ast.get_docstring(tree) or "", helps)
    return _state["help"][cls]


def _field_help(cls: type, name: str) -> str:
    """The comment above a field, read from the class that declares it (base classes too)."""
    for owner in cls.__mro__:
        if name in owner.__dict__.get("__annotations__", {}):
            return _class_help(owner)[1].get(name, "")
    return ""


def _doc(cls: type) -> str:
    return _class_help(cls)[0]


def _yaml(path: Path) -> dict:
    """A YAML file as plain data, read as Hydra reads it (OmegaConf: ``3e-4`` is a float),
    interpolations such as ``${model.family}`` left as written."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(path), resolve=False) or {}


def _describe(path: Path) -> str:
    """The first comment line of a YAML file, as ``bslrun --help`` shows it."""
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("#") and not line.startswith("# @package"):
            return line.lstrip("# ").strip()
    return ""


def _groups(configs: Path) -> dict[str, dict[str, Path]]:
    """Config group -> {option as written on the command line: its YAML file}."""
    groups = {}
    for top in sorted(p for p in configs.iterdir() if p.is_dir()):
        dirs = [d for d in sorted(top.iterdir()) if d.is_dir()] if top.name == "hydra" else [top]
        for d in dirs:
            options = {
                p.relative_to(d).with_suffix("").as_posix(): p for p in sorted(d.rglob("*.yaml"))
            }
            if options:
                groups[d.relative_to(configs).as_posix()] = options
    return groups


# --------------------------------------------------------------------------- rendering


def _escape(text: str) -> str:
    """Plain text for a Markdown table cell."""
    text = text.replace("\\", "\\\\")
    for ch in "`*_[]|":
        text = text.replace(ch, "\\" + ch)
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return str(value) if not isinstance(value, float) else repr(value)


def _code(value) -> str:
    return f"`{_value(value)}`"


def _unwrap_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]), True
    return tp, False


def _type(tp) -> tuple[str, type | None]:
    """The type cell, and the Enum whose choices it lists (if any)."""
    inner, optional = _unwrap_optional(tp)
    enum_cls = inner if isinstance(inner, type) and issubclass(inner, enum.Enum) else None
    if enum_cls is not None:
        text = " · ".join(f"`{m.value}`" for m in enum_cls)
    elif typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner) or (typing.Any,)
        text = f"list of `{getattr(item, '__name__', str(item))}`"
    else:
        text = f"`{getattr(inner, '__name__', str(inner))}`"
    return (text + (" or `null`" if optional else "")), enum_cls


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _normal(value):
    """Schema and YAML values in one form (Enum members as their values), for comparing."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return list(value)
    return value


def _defaults_cell(per_option: dict[str, object]) -> str:
    """One value, or the value each option gives (``0.003 (adam), 0.001 (adamw, rmsprop)``)."""
    if len(per_option) > 1 and all(_normal(v) == o for o, v in per_option.items()):
        return "the option's name"
    by_value: dict[str, list[str]] = {}
    for option, value in per_option.items():
        by_value.setdefault(_code(_normal(value)), []).append(option)
    if len(by_value) == 1:
        return next(iter(by_value))
    return ", ".join(f"{v} ({', '.join(opts)})" for v, opts in by_value.items())


def _choices_help(enum_cls: type) -> str:
    helps = _class_help(enum_cls)[1]
    parts = [f"`{m.value}`: {_escape(helps[m.name])}" for m in enum_cls if m.name in helps]
    return "<br>".join(parts)


def _table(cls: type, prefix: str, values: dict[str, dict]) -> str:
    """A table of the fields of ``cls``; ``values`` maps each option to the keys it sets."""
    hints = typing.get_type_hints(cls)
    rows = ["| key | type | default | help |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if hints.get(f.name) is typing.Any or _sub_schema(hints.get(f.name)) is not None:
            continue  # a config group, or an option's section, of its own
        type_cell, enum_cls = _type(hints[f.name])
        default = _default_of(f)
        per_option = {o: given.get(f.name, default) for o, given in values.items()}
        help_cell = _escape(_field_help(cls, f.name))
        if enum_cls is not None:
            choices = _choices_help(enum_cls)
            help_cell = "<br>".join(p for p in (help_cell, choices) if p)
        key = f"{prefix}.{f.name}" if prefix else f.name
        rows.append(f"| `{key}` | {type_cell} | {_defaults_cell(per_option)} | {help_cell} |")
    return "\n".join(rows)


def _sub_schema(tp) -> type | None:
    """The dataclass a field holds (``LoggerConfig.mlflow: MlflowConfig | None``), if any."""
    inner, _ = _unwrap_optional(tp)
    return inner if dataclasses.is_dataclass(inner) else None


def _sections(cls: type, group: str) -> list[str]:
    """For a group whose options each fill a section of its schema (``logger``): each
    section's keys, e.g. ``logger.mlflow.tracking_uri`` under ``logger=mlflow``."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = _sub_schema(hints[f.name])
        if sub is not None:
            help_text = _escape(_field_help(cls, f.name) or _doc(sub))
            out.append(" ".join(p for p in (f"**Keys of `{group}={f.name}`.**", help_text) if p))
            out.append(_table(sub, f"{group}.{f.name}", {"": {}}))
    return out


def _options_table(options: dict[str, Path], group: str) -> str:
    rows = ["| option | what it is |", "|---|---|"]
    rows += [f"| `{group}={o}` | {_escape(_describe(p))} |" for o, p in options.items()]
    return "\n".join(rows)


def _group_section(group: str, ctx: dict) -> str:
    schema, schemas, groups, root_values = ctx["schema"], ctx["schemas"], ctx["groups"], ctx["root"]
    options = groups.get(group, {})
    base = root_values.get(group) if isinstance(root_values.get(group), dict) else {}
    # Which schema each option extends, and the values it sets.
    by_schema: dict[type, dict[str, dict]] = {}
    for option, path in options.items():
        content = _yaml(path)
        cls = None
        for entry in content.get("defaults") or []:
            match = SCHEMA_REF.match(entry) if isinstance(entry, str) else None
            if match:
                cls = schemas[(match["group"], match["name"])]
        if cls is not None:
            given = {k: v for k, v in content.items() if k != "defaults"}
            by_schema.setdefault(cls, {})[option] = {**base, **given}
    if not by_schema:  # a group without options of its own (eval): the Config field's type
        field = {f.name: f for f in dataclasses.fields(schema.Config)}.get(group)
        hints = typing.get_type_hints(schema.Config)
        if field is not None and dataclasses.is_dataclass(hints.get(group)):
            by_schema[hints[group]] = {"": dict(base)}
    out = [_options_table(options, group)] if options else []
    # Schemas in the order config.py defines them (tables, images, toys, files).
    for cls in sorted(by_schema, key=lambda c: inspect.getsourcelines(c)[1]):
        values = by_schema[cls]
        names = ", ".join(f"`{group}={o}`" for o in values if o)
        doc = _escape(_doc(cls))
        lead = " ".join(p for p in (f"**Keys of {names}.**" if names else "", doc) if p)
        if lead:
            out.append(lead)
        table = _table(cls, group, values)
        if table.count("\n") > 1:  # rows besides the header
            out.append(table)
        out.extend(_sections(cls, group))
    return "\n\n".join(out)


def _groups_table(ctx: dict) -> str:
    rows = ["| group | options |", "|---|---|"]
    for group, options in ctx["groups"].items():
        rows.append(f"| `{group}` | {', '.join(f'`{o}`' for o in options)} |")
    return "\n".join(rows)


def _top_table(ctx: dict) -> str:
    root = {k: v for k, v in ctx["root"].items() if not isinstance(v, dict)}
    return _table(ctx["schema"].Config, "", {"": root})


def _docstring_cell(text: str) -> str:
    """A docstring paragraph for a table cell: ``literals`` become code, the rest is escaped."""
    parts = re.split(r"``(.+?)``", " ".join(text.split()))
    return "".join(f"`{p}`" if i % 2 else _escape(p) for i, p in enumerate(parts))


def _modules_table(root: Path) -> str:
    package = root / "src" / "bslrun"
    rows = ["| module | what it does |", "|---|---|"]
    for path in sorted(package.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if doc:
            first = doc.split("\n\n")[0]
            rows.append(f"| `{path.relative_to(package).as_posix()}` | {_docstring_cell(first)} |")
    return "\n".join(rows)


def _context(config) -> dict:
    if "ctx" not in _state:
        root = _root(config)
        schema = _config_module(root)
        configs = root / "configs"
        root_yaml = _yaml(configs / "config.yaml")
        _state["ctx"] = {
            "schema": schema,
            "schemas": _schemas(),
            "groups": _groups(configs),
            "root": {k: v for k, v in root_yaml.items() if k not in ("defaults", "hydra")},
        }
    return _state["ctx"]


def render(what: str, config) -> str:
    if what == "modules":
        return _modules_table(_root(config))
    ctx = _context(config)
    if what == "groups":
        return _groups_table(ctx)
    if what == "top":
        return _top_table(ctx)
    if what.startswith("group="):
        return _group_section(what.removeprefix("group="), ctx)
    raise ValueError(f"unknown reference marker {what!r}")


# --------------------------------------------------------------------------- MkDocs events


def on_pre_build(config, **kwargs):
    _state.clear()  # `mkdocs serve` rebuilds: read the schema and configs/ again


def on_page_markdown(markdown, page, config, files, **kwargs):
    if MARKER.search(markdown) is None:
        return markdown
    return MARKER.sub(lambda m: render(m["what"], config), markdown)


def on_serve(server, config, builder, **kwargs):
    root = _root(config)
    server.watch(str(root / "src" / "bslrun" / "config.py"))
    server.watch(str(root / "configs"))
    return server
