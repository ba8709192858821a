"""The contract file: written as commented YAML, read back through the pydantic schema.

A bad file is refused with a :class:`~flywheel.errors.ConfigError` that names the file,
the line, the key (``columns.age.max``) and the rule; when a file breaks several rules, the
first (by line) is in the message and all of them are in ``details["problems"]``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flywheel.data.contract.schema import (
    ColumnRule,
    Contract,
    ContractSpec,
    contract_version,
    describe_error,
)
from flywheel.errors import ConfigError, NotFound

__all__ = ["load_contract", "save_contract"]

logger = logging.getLogger("flywheel.data.contract")

_HEADER = """\
# flywheel data contract for dataset {dataset!r}.
# Inferred from the first snapshot: review it and edit it. Every later snapshot is
# validated against these rules; a snapshot that breaks one is rejected with a report
# naming the column, the rule, how many values broke it and a few examples.
#
# Top-level keys:
#   dataset              the dataset these rules belong to
#   version              short hash of the rules below; recomputed on load, so editing a
#                        rule changes it (the value written here is informational)
#   target               the label column, or null
#   key_columns          columns whose combination must be unique in every snapshot
#   allow_extra_columns  false: a column not listed under `columns` is a violation
#   columns              one entry per column:
#     dtype      int | float | string | bool | datetime
#     nullable   false: a null value is a violation
#     min, max   inclusive bounds: numbers, or ISO 8601 strings for datetime columns
#                (inferred: 10% of the range below the minimum, 100% above the maximum;
#                datetimes and key columns get no max); delete to drop the rule
#     allowed    the only values a string column may take; delete to allow any value
#     unique     true: no value may repeat in that column
# Full reference: docs/contracts.md
"""


def save_contract(contract: Contract, path: Path) -> None:
    """Write the contract as commented YAML, atomically (temp file + ``os.replace``)."""
    contract.version = contract_version(contract)
    text = _HEADER.format(dataset=contract.dataset) + yaml.dump(
        _to_mapping(contract), Dumper=_Dumper, sort_keys=False, allow_unicode=True
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.info("saved contract %s for dataset %s to %s", contract.version, contract.dataset, path)


class _Dumper(yaml.SafeDumper):
    """Block style for mappings (one rule per line), flow style for lists (``[a, b]``)."""

    def represent_flow_list(self, data: list[Any]) -> yaml.SequenceNode:
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _Dumper.represent_flow_list)


def _to_mapping(contract: Contract) -> dict[str, Any]:
    return {
        "dataset": contract.dataset,
        "version": contract.version,
        "target": contract.target,
        "key_columns": list(contract.key_columns),
        "allow_extra_columns": contract.allow_extra_columns,
        "columns": {name: _rule_mapping(rule) for name, rule in contract.columns.items()},
    }


def _rule_mapping(rule: ColumnRule) -> dict[str, Any]:
    out: dict[str, Any] = {"dtype": rule.dtype, "nullable": rule.nullable}
    for key in ("min", "max", "allowed"):
        if getattr(rule, key) is not None:
            out[key] = getattr(rule, key)
    if rule.unique:
        out["unique"] = True
    return out


def load_contract(path: Path) -> Contract:
    """Read and check a contract YAML; the version is recomputed from the rules."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise NotFound(
            f"no data contract at {path}; ingest the dataset once to infer one, or write it",
            path=str(path),
        ) from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"contract {path} is not valid YAML ({exc}); fix the syntax, or delete the file "
            "to infer a new contract on the next ingest",
            path=str(path),
        ) from exc
    try:
        spec = ContractSpec.model_validate(data)
    except ValidationError as exc:
        raise _invalid(path, text, exc) from exc
    contract = spec.to_contract()
    if spec.version is not None and spec.version != contract.version:
        logger.info(
            "contract %s was edited: version %s is now %s", path, spec.version, contract.version
        )
    return contract


def _invalid(path: Path, text: str, exc: ValidationError) -> ConfigError:
    """One error for every rule the file breaks, the first (by line) in the message."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    problems: list[dict[str, Any]] = []
    for error in exc.errors():
        where, key, rule, value = describe_error(error)
        line = _line(root, where)
        problems.append({"key": key, "rule": rule, "value": repr(value), "line": line})
    problems.sort(key=lambda p: (p["line"] is None, p["line"] or 0))
    first = problems[0]
    at = f", line {first['line']}" if first["line"] is not None else ""
    more = ", ".join(
        f"{p['key']}" + (f" (line {p['line']})" if p["line"] is not None else "")
        for p in problems[1:]
    )
    return ConfigError(
        f"contract {path}{at}: {first['key']} {first['rule']}, got {first['value']}; "
        "edit the file to fix it" + (f" (also: {more})" if more else ""),
        path=str(path),
        key=first["key"],
        value=first["value"],
        line=first["line"],
        problems=problems,
    )


def _line(root: yaml.Node | None, path: tuple[str | int, ...]) -> int | None:
    """The 1-based line of the key at ``path``; for a key that is missing, the line of the
    nearest key above it that is there (None for the document itself)."""
    node, line = root, None
    for part in path:
        if isinstance(node, yaml.MappingNode):
            found = next(
                (
                    (k, v)
                    for k, v in node.value
                    if isinstance(k, yaml.ScalarNode) and k.value == str(part)
                ),
                None,
            )
            if found is None:
                break
            line, node = found[0].start_mark.line + 1, found[1]
        elif (
            isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
