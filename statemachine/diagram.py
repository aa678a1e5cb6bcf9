"""Render the state machine as a Mermaid flowchart into docs/architecture.md.

The picture is drawn from statemachine/ingest.asl.json, the file that deploys, so it
cannot drift from it: `make diagram` rewrites the document, `--check` fails when the
checked-in document is not what the definition draws (tests/infra/test_diagram.py).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFINITION = ROOT / "statemachine" / "ingest.asl.json"
DOCUMENT = ROOT / "docs" / "architecture.md"

State = dict[str, Any]

# Longest suffix first: "GreaterThanEquals" must not read as "Equals".
_OPERATORS = {
    "GreaterThanEquals": "#gt;=",
    "LessThanEquals": "#lt;=",
    "GreaterThan": "#gt;",
    "LessThan": "#lt;",
    "Equals": "==",
    "Matches": "matches",
}
_PLACEHOLDER = re.compile(r"\$\{(\w+?)(?:Arn)?\}")


def node_id(name: str) -> str:
    """A Mermaid id for a state name (prefixed: bare words like `end` are keywords)."""
    return "s_" + re.sub(r"\W", "_", name)


def label(text: str) -> str:
    return '"' + text.replace('"', "#quot;") + '"'


def function_of(state: State) -> str | None:
    """The function a Lambda task invokes, named by its DefinitionSubstitutions key."""
    name = state.get("Parameters", {}).get("FunctionName") or state.get("Arguments", {}).get(
        "FunctionName"
    )
    if not isinstance(name, str):
        return None
    match = _PLACEHOLDER.fullmatch(name)
    return match.group(1) if match else name


def rule_text(rule: State) -> str:
    """`$.rows > 0` for a Choice rule; the JSONata condition or `rule` otherwise."""
    if "Condition" in rule:
        return str(rule["Condition"])
    if "Variable" not in rule:
        return "rule"
    for key, value in rule.items():
        if key in ("Variable", "Next"):
            continue
        if key.startswith("Is"):
            return f"{rule['Variable']} {key[2:].lower()}: {json.dumps(value)}"
        for suffix, symbol in _OPERATORS.items():
            if key.removesuffix("Path").endswith(suffix):
                shown = value if key.endswith("Path") else json.dumps(value)
                return f"{rule['Variable']} {symbol} {shown}"
    return "rule"


def errors_text(errors: list[str]) -> str:
    return "any error" if errors == ["States.ALL"] else ", ".join(errors)


def shape(name: str, state: State) -> str:
    kind = state["Type"]
    if kind == "Task":
        function = function_of(state)
        runs = f"λ {function}" if function else str(state["Resource"])
        return f"{node_id(name)}[{label(f'{name}<br/><small>{runs}</small>')}]"
    if kind == "Choice":
        return f"{node_id(name)}{{{label(name)}}}"
    if kind == "Fail":
        return f"{node_id(name)}[[{label(f'{name}<br/><small>Fail</small>')}]]"
    if kind == "Succeed":
        return f"{node_id(name)}([{label(name)}])"
    return f"{node_id(name)}({label(f'{name}<br/><small>{kind}</small>')})"


def edges(name: str, state: State, end: str) -> Iterator[str]:
    source = node_id(name)
    if "Next" in state:
        yield f"{source} --> {node_id(state['Next'])}"
    if state.get("End"):
        yield f"{source} --> {end}"
    for rule in state.get("Choices", []):
        yield f"{source} -- {label(rule_text(rule))} --> {node_id(rule['Next'])}"
    if "Default" in state:
        yield f"{source} -- {label('otherwise')} --> {node_id(state['Default'])}"
    for catcher in state.get("Catch", []):
        caught = errors_text(catcher["ErrorEquals"])
        yield f"{source} -. {label(caught)} .-> {node_id(catcher['Next'])}"


def flowchart(machine: State, start: str, end: str, indent: str = "    ") -> Iterator[str]:
    """Lines of one (sub)machine: its states, nested Maps and Parallels as subgraphs."""
    yield f"{indent}{start} --> {node_id(machine['StartAt'])}"
    for name, state in machine["States"].items():
        inner = state.get("ItemProcessor") or state.get("Iterator")
        branches = [inner] if inner else state.get("Branches", [])
        if branches:
            yield f"{indent}subgraph {node_id(name)}[{label(subgraph_title(name, state))}]"
            yield f"{indent}    direction TB"
            for number, branch in enumerate(branches):
                tag = f"{node_id(name)}_{number}"
                yield f"{indent}    {tag}_start(({label('each item')}))"
                yield f"{indent}    {tag}_end(({label('item done')}))"
                yield from flowchart(branch, f"{tag}_start", f"{tag}_end", indent + "    ")
            yield f"{indent}end"
        else:
            yield f"{indent}{shape(name, state)}"
        for edge in edges(name, state, end):
            yield f"{indent}{edge}"


def subgraph_title(name: str, state: State) -> str:
    if state["Type"] != "Map":
        return f"{name}: Parallel"
    items = state.get("ItemsPath") or state.get("Items") or "$"
    concurrency = state.get("MaxConcurrencyPath") or state.get("MaxConcurrency", "unbounded")
    return f"{name}: Map, one iteration per item of {items}, at most {concurrency} at once"


def all_states(machine: State) -> Iterator[tuple[str, State]]:
    for name, state in machine["States"].items():
        yield name, state
        inner = state.get("ItemProcessor") or state.get("Iterator")
        for branch in [inner] if inner else state.get("Branches", []):
            yield from all_states(branch)


_LAMBDA_SERVICE_ERRORS = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
}


def retried_errors(errors: list[str]) -> str:
    if set(errors) >= _LAMBDA_SERVICE_ERRORS:
        errors = [e for e in errors if e not in _LAMBDA_SERVICE_ERRORS] + ["Lambda service errors"]
    return errors_text(errors)


def retries_text(state: State) -> str:
    return "; ".join(
        f"{retried_errors(r['ErrorEquals'])}: {r.get('MaxAttempts', 3)} retries, "
        f"{r.get('IntervalSeconds', 1)} s then x{r.get('BackoffRate', 2.0):g}"
        + (f" up to {r['MaxDelaySeconds']} s" if "MaxDelaySeconds" in r else "")
        for r in state.get("Retry", [])
    )


def state_table(machine: State) -> Iterator[str]:
    yield "| State | Type | Runs | Retries | Errors caught → next state | Note |"
    yield "|---|---|---|---|---|---|"
    for name, state in all_states(machine):
        runs = function_of(state) or ""
        catches = "; ".join(
            f"{errors_text(c['ErrorEquals'])} → {c['Next']}" for c in state.get("Catch", [])
        )
        note = str(state.get("Comment", "")).replace("|", "\\|")
        cells = [f"`{name}`", state["Type"], runs, retries_text(state), catches, note]
        yield "| " + " | ".join(cells) + " |"


def render(machine: State) -> str:
    """docs/architecture.md for the state machine ``machine``."""
    lines = [
        "# Architecture",
        "",
        "<!-- Generated by `make diagram` (statemachine/diagram.py) from",
        "     statemachine/ingest.asl.json: edit those, not this file. -->",
        "",
        str(machine.get("Comment", "")),
        "",
        "An EventBridge Scheduler schedule (or a person, from the console or the CLI) starts",
        'an execution with `{"tables_to_query": [...]}`. Every task is a Lambda function of',
        "template.yaml (λ, named by its `DefinitionSubstitutions` key); solid arrows are the",
        "normal path, dotted arrows the errors a state catches after its retries.",
        "",
        mermaid(machine),
        "",
        "## States",
        "",
        *state_table(machine),
        "",
        "Step inputs and outputs: docs/CONTRACTS.md. Deployment and runbook: docs/deploy.md.",
        "",
    ]
    return "\n".join(lines)


README = ROOT / "README.md"
README_START = "<!-- diagram:start (generated by `make diagram`) -->"
README_END = "<!-- diagram:end -->"


def mermaid(machine: State) -> str:
    """The flowchart alone, as a fenced Mermaid block."""
    lines = ["```mermaid", "flowchart TD"]
    lines += flowchart(machine, 'start(("start"))', 'finish(("end"))')
    return "\n".join([*lines, "```"])


def readme_with_diagram(readme: str, machine: State) -> str:
    """``readme`` with the block between the diagram markers replaced by the flowchart."""
    start, end = readme.index(README_START), readme.index(README_END)
    block = f"{README_START}\n{mermaid(machine)}\n"
    return readme[:start] + block + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="fail if docs/architecture.md is out of date"
    )
    args = parser.parse_args(argv)
    machine = json.loads(DEFINITION.read_text())
    outputs = {
        DOCUMENT: render(machine),
        README: readme_with_diagram(README.read_text(), machine),
    }
    for path, text in outputs.items():
        current = path.read_text() if path.exists() else ""
        if args.check and current != text:
            print(f"{path.relative_to(ROOT)} is out of date: run `make diagram`")
            return 1
        if not args.check and current != text:
            path.write_text(text)
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
