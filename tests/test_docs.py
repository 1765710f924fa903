"""The README and the documentation site: the site builds strictly, the README's links resolve, the
generated references match the code, the troubleshooting page quotes real messages, and every shell
and Python example either runs here or is marked as not runnable (docs/contributing.md)."""

from __future__ import annotations

import ast
import os
import re
import runpy
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from mlflow_okr.cli import cli

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
RUN_LANGUAGES = {"bash": "bash", "sh": "bash", "python": "python"}
NOT_RUNNABLE = re.compile(r"^<!-- not-runnable: (?P<reason>\S.*?) -->$")
SLOW = "<!-- slow -->"
FENCE = re.compile(r"^(?P<fence>```+)(?P<info>[^`]*)$")
BLOCK_TIMEOUT = 300


def page_name(page: Path) -> str:
    return str(page.relative_to(ROOT))


# ---------------------------------------------------------------------------------------------
# The site and the README


def test_the_site_builds_strictly(tmp_path: Path):
    """A broken link, a missing anchor or a page outside the nav fails the build (mkdocs.yml)."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "troubleshooting" / "index.html").exists()
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="mlflow_okr.api.apply_spec"' in api  # mkdocstrings rendered the docstrings


def test_the_readme_is_short():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 200


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (outside code blocks)."""
    anchors, in_code = set(), False
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text)))
    return anchors


def markdown_links(markdown: str) -> list[str]:
    """Targets of inline links and images, outside code blocks and code spans."""
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    prose = re.sub(r"`[^`\n]*`", "", prose)
    return re.findall(r"\]\(([^)\s]+)\)", prose)


def test_every_readme_link_resolves_in_a_clean_clone():
    text = README.read_text(encoding="utf-8")
    links = markdown_links(text)
    assert "docs/getting-started.md" in links and "docs/board-wide.png" in links
    problems = []
    for link in links:
        if re.match(r"^[a-z]+:", link):
            continue  # http(s), mailto: not checked offline
        path, _, anchor = link.partition("#")
        target = (ROOT / path).resolve() if path else README
        if not target.exists():
            problems.append(f"{link}: no such file")
            continue
        relative = str(target.relative_to(ROOT))
        ignored = subprocess.run(["git", "check-ignore", "-q", relative], cwd=ROOT).returncode == 0
        if ignored:
            problems.append(f"{link}: ignored by git, so missing from a clean clone")
        if anchor and anchor not in github_anchors(target.read_text(encoding="utf-8")):
            problems.append(f"{link}: no heading with anchor #{anchor} in {relative}")
    assert not problems, problems


def test_the_readme_links_every_page_of_the_site():
    links = {link.partition("#")[0] for link in markdown_links(README.read_text(encoding="utf-8"))}
    pages = {f"docs/{page.name}" for page in DOCS.glob("*.md")} - {"docs/index.md", "docs/sync-scale.md"}
    assert not pages - links, f"README.md does not link {sorted(pages - links)}"


# ---------------------------------------------------------------------------------------------
# Generated references


def test_the_cli_reference_is_generated_from_help():
    """docs/cli.md is `--help` verbatim; after changing a command, run docs/generate_cli_reference.py."""
    generator = runpy.run_path(str(DOCS / "generate_cli_reference.py"))
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert text == generator["updated_page"](text), (
        "docs/cli.md is out of date: run python docs/generate_cli_reference.py"
    )
    for option in ("--dry-run", "--check", "--format", "--as-of", "--note", "--dir", "--force"):
        assert option in text


def all_commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> list[str]:
    found = []
    for name, command in group.commands.items():
        found.append(" ".join((*path, name)))
        if isinstance(command, click.Group):
            found += all_commands(command, (*path, name))
    return found


def test_the_cli_reference_documents_every_command():
    text = (DOCS / "cli.md").read_text(encoding="utf-8")
    missing = [name for name in all_commands() if f"`mlflow-okr {name}`" not in text]
    assert not missing, f"docs/cli.md does not document: {missing}"


def test_the_field_reference_is_generated_from_the_spec():
    """The okrs.yaml field reference is the JSON Schema of the pydantic models, rendered."""
    generator = runpy.run_path(str(DOCS / "generate_spec_reference.py"))
    text = (DOCS / "okrs-yaml.md").read_text(encoding="utf-8")
    assert text == generator["updated_page"](text), (
        "docs/okrs-yaml.md's field reference is out of date: run python docs/generate_spec_reference.py"
    )
    reference = text.split(generator["START"], 1)[1]
    for key in ("`aggregate`", "`guardrails`", "`aligns_to`", "`trace_metric`", "`webhooks`", "`digest`"):
        assert key in reference


# ---------------------------------------------------------------------------------------------
# okrs.yaml examples are valid

# A spec around a page's KR snippet (`- id: ...`) or top-level section (`notify:`).
KR_SNIPPET = """version: 1
cycle: 2026-Q4
objectives:
  - id: docs
    title: The documentation's example
    category: product
    key_results:
"""
SECTION_SNIPPET = KR_SNIPPET + "      - {id: docs-kr, source: manual, target: 1}\n"


def test_the_okrs_yaml_examples_are_valid():
    """Every YAML example that is a whole okrs.yaml, a KR or a top-level section passes validation."""
    from mlflow_okr.spec import parse_spec

    checked = 0
    for page in PAGES:
        for example in examples(page):
            text = textwrap.dedent(example.code)
            if example.language != "yaml":
                continue
            if text.startswith("version: 1"):
                spec_text = text
            elif text.startswith("- id:"):
                spec_text = KR_SNIPPET + textwrap.indent(text, " " * 6)
            elif text.startswith("notify:"):
                spec_text = SECTION_SNIPPET + text
            else:
                continue
            parse_spec(spec_text, f"{page_name(page)}:{example.line}")
            checked += 1
    assert checked >= 5


# ---------------------------------------------------------------------------------------------
# Troubleshooting quotes the messages the code raises


def message_literals() -> list[str]:
    """Every string literal in mlflow_okr/, an f-string's fields as NUL; adjacent literals joined."""
    found = []
    for path in (ROOT / "mlflow_okr").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.JoinedStr):
                found.append("".join(
                    part.value if isinstance(part, ast.Constant) else "\0" for part in node.values
                ))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.append(node.value)
    return found


def documented_messages() -> list[str]:
    """The messages troubleshooting.md explains: its `###` headings that are one code span, up to
    the section on messages that come from MLflow itself."""
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8").split("## Messages from MLflow")[0]
    return [match.group(2) for match in re.finditer(r"^### (`+) ?(.+?) ?\1$", text, flags=re.MULTILINE)]


def test_troubleshooting_quotes_messages_that_the_code_raises():
    """Each documented message, `<...>` standing for what varies, occurs in mlflow_okr/'s source."""
    messages = documented_messages()
    assert len(messages) >= 40
    literals = message_literals()
    stale = []
    for message in messages:
        pieces = [piece for piece in re.split(r"<[a-z][a-z ]*>", message)]
        pattern = re.compile(".*?".join(re.escape(piece) for piece in pieces), re.DOTALL)
        if not any(pattern.search(literal) for literal in literals):
            stale.append(message)
    assert not stale, f"docs/troubleshooting.md quotes messages no longer in mlflow_okr/: {stale}"


# The error classes whose messages reach users, and spec.py's ValueErrors (pydantic reports them as
# spec problems); elsewhere a ValueError is an internal invariant, not a message for users.
USER_ERRORS = {"InputError", "NotPublishedError", "CheckFailed", "ConcurrentChange", "SpecError",
               "CommandError", "UnsupportedStoreUri", "_invalid"}


def raised_messages() -> list[tuple[str, str]]:
    """(where, message) of every user error raised in mlflow_okr/ with a literal message, an
    f-string's fields as NUL; messages with less than 8 characters of their own are left out."""
    found = []
    for path in sorted((ROOT / "mlflow_okr").rglob("*.py")):
        user_errors = USER_ERRORS | ({"ValueError"} if path.name == "spec.py" else set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            name = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
            message = node.args[0]
            if isinstance(message, ast.List) and message.elts:
                message = message.elts[0]  # SpecError([problem])
            text = literal_text(message)
            if name in user_errors and text is not None and len(text.replace("\0", "").strip(" :")) >= 8:
                found.append((f"{path.relative_to(ROOT)}:{node.lineno}", text))
    return found


def literal_text(node: ast.AST) -> str | None:
    if isinstance(node, ast.JoinedStr):
        return "".join(part.value if isinstance(part, ast.Constant) else "\0" for part in node.values)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def test_troubleshooting_explains_every_message_the_code_raises():
    """Each user error raised with a literal message matches a message troubleshooting.md explains
    (a new error message needs its entry there: what it means, what to do)."""
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    patterns = [
        re.compile(".*?".join(re.escape(piece) for piece in re.split(r"<[a-z][a-z ]*>", match.group(2))),
                   re.DOTALL)
        for match in re.finditer(r"^### (`+) ?(.+?) ?\1$", text, flags=re.MULTILINE)
    ]
    raised = raised_messages()
    assert len(raised) >= 80
    unexplained = [f"{where}: {message}" for where, message in raised
                   if not any(pattern.search(message) for pattern in patterns)]
    assert not unexplained, "docs/troubleshooting.md does not explain:\n" + "\n".join(unexplained)


def test_troubleshooting_explains_every_error_class():
    text = (DOCS / "troubleshooting.md").read_text(encoding="utf-8")
    for name in ("SpecError", "InputError", "NotPublishedError", "CheckFailed"):
        assert f"`{name}`" in text


# ---------------------------------------------------------------------------------------------
# Examples: run, or marked as not runnable


@dataclass(frozen=True)
class Example:
    page: Path
    line: int
    language: str
    code: str
    marker: str | None  # the HTML comment on the line before the fence, if any


def examples(page: Path) -> list[Example]:
    """Every fenced block of a page with its language and the marker line before it."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, index = [], 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if not match:
            index += 1
            continue
        end = index + 1
        while not lines[end].startswith(match.group("fence")):
            end += 1
        previous = lines[index - 1] if index else ""
        marker = previous if previous.startswith("<!--") else None
        language = match.group("info").strip().split(" ")[0]
        found.append(Example(page, index + 1, language, "\n".join(lines[index + 1:end]) + "\n", marker))
        index = end + 1
    return found


def test_every_marker_is_well_formed_and_stands_before_an_example():
    problems = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        blocks = examples(page)
        marked_lines = {e.line - 1 for e in blocks if e.marker}
        inside = {e.line + 1 + offset for e in blocks for offset in range(e.code.count("\n"))}
        for number, line in enumerate(lines, 1):
            if number in inside:
                continue
            if line.startswith("<!-- not-runnable") or line.startswith("<!-- slow"):
                if not (NOT_RUNNABLE.match(line) or line == SLOW):
                    problems.append(f"{page_name(page)}:{number}: write `<!-- not-runnable: <why> -->`")
                elif number not in marked_lines:
                    problems.append(f"{page_name(page)}:{number}: a marker must be right before a fence")
    for page in PAGES:
        for example in examples(page):
            if example.marker and example.language not in RUN_LANGUAGES:
                problems.append(f"{page_name(page)}:{example.line}: only bash, sh and python blocks run")
    assert not problems, problems


def example_pages(slow: bool) -> list[Path]:
    """Pages with examples to run: with a `<!-- slow -->` block (slow) or without (not slow)."""
    chosen = []
    for page in PAGES:
        blocks = [e for e in examples(page) if e.language in RUN_LANGUAGES and not is_not_runnable(e)]
        if blocks and any(e.marker == SLOW for e in blocks) == slow:
            chosen.append(page)
    return chosen


def is_not_runnable(example: Example) -> bool:
    return bool(example.marker and NOT_RUNNABLE.match(example.marker))


def run_examples(page: Path, directory: Path) -> None:
    """Run the page's runnable blocks in order in `directory`, against a SQLite store there."""
    (directory / "examples").symlink_to(ROOT / "examples")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{directory / 'mlflow.db'}",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "NO_COLOR": "1"}
    env.pop("MLFLOW_OKR_UI_URL", None)
    for example in examples(page):
        if example.language not in RUN_LANGUAGES or is_not_runnable(example):
            continue
        if RUN_LANGUAGES[example.language] == "bash":
            command = ["bash", "-e", "-o", "pipefail", "-c", example.code]
        else:
            script = directory / f"example_{example.line}.py"
            script.write_text(example.code, encoding="utf-8")
            command = [sys.executable, str(script)]
        result = subprocess.run(command, cwd=directory, env=env, capture_output=True, text=True,
                                timeout=BLOCK_TIMEOUT)
        assert result.returncode == 0, (
            f"{page_name(page)}:{example.line}: the example failed (exit {result.returncode}); fix it, or "
            f"mark it `<!-- not-runnable: <why> -->`\n{example.code}\n--- stdout\n{result.stdout[-3000:]}"
            f"\n--- stderr\n{result.stderr[-3000:]}"
        )


@pytest.mark.parametrize("page", example_pages(slow=False), ids=page_name)
def test_the_examples_run(page: Path, tmp_path: Path):
    run_examples(page, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("page", example_pages(slow=True), ids=page_name)
def test_the_slow_examples_run(page: Path, tmp_path: Path):
    run_examples(page, tmp_path)
