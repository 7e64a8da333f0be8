"""The documentation is self-contained: every link, anchor and citation resolves in the repo.

* every relative link of README.md and docs/*.md names a file (or directory)
  of the repository, and its #anchor a heading or an explicit anchor there;
* every rule (R0-R27) and section (§1.2, §7.4, ...) cited in README, docs,
  schemas, sessionizer/ and tests/ has its anchor in docs/rules.md (or, for §7,
  docs/formats.md);
* no document or comment points at files outside the repository;
* every `sessionizer ...` command of the documents' shell examples is a real
  command with real flags, every SESSIONIZER_* variable they name is a
  setting, and every TOML example uses real keys with valid value types.
"""

from __future__ import annotations

import re
import shlex
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from sessionizer import _native
from sessionizer.cli import main as cli
from sessionizer.core.config import ConfigError
from sessionizer.settings import describe_settings, load_settings
from sessionizer.tools import apache_kafka

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RULES = ROOT / "docs" / "rules.md"
FORMATS = ROOT / "docs" / "formats.md"
CITING = [
    *DOCS,
    *sorted((ROOT / "schemas").glob("*.json")),
    *sorted((ROOT / "sessionizer").rglob("*.py")),
    *sorted((ROOT / "tests").rglob("*.py")),
    ROOT / "deploy" / "grafana" / "dashboards" / "sessionizer.json",
]
# Files owned by other work streams that still name the upstream contract; they
# are to be cleaned there. Nothing may be added to this list.
ELSEWHERE = {
    "sessionizer/run/files.py",
    "sessionizer/stream/worker.py",
    "tests/test_properties.py",
    "tests/test_rules.py",
}

FENCE = re.compile(r"^(```+|~~~+)([^\n`]*)\n(.*?)^\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
EXPLICIT_ID = re.compile(r"""<a\s+(?:name|id)=["']([^"']+)["']""")
RULE = re.compile(r"(?<![A-Za-z0-9_])R(\d{1,2})(?![0-9A-Za-z_])")
SECTION = re.compile(r"§\s?(\d+(?:\.\d+)?)")
OUTSIDE = re.compile(r"SPEC\.md|DESIGN\.md|\bSPEC\s*§|\bSPEC rules?\b|\bSPEC \d")


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and inline code (links there are not links)."""
    text = FENCE.sub("", text)
    return re.sub(r"`[^`\n]*`", "", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links: their text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    keep = []
    for ch in text:
        if ch in " -_" or unicodedata.category(ch)[0] in "LN":
            keep.append("-" if ch == " " else ch)
    return "".join(keep)


def anchors(path: Path) -> set[str]:
    text = path.read_text(encoding="utf-8")
    found = set(EXPLICIT_ID.findall(FENCE.sub("", text)))
    seen: dict[str, int] = {}
    for _level, title in HEADING.findall(FENCE.sub("", text)):
        slug = _slug(title)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def links(path: Path) -> Iterator[str]:
    yield from LINK.findall(_prose(path.read_text(encoding="utf-8")))


# --------------------------------------------------------------------------- links


def test_the_slugger_matches_github() -> None:
    assert _slug("Opt-out (R17\u2013R19)") == "opt-out-r17r19"
    assert _slug("`sessions` (§7.2)") == "sessions-72"
    assert _slug("End offsets, and what depends on them") == "end-offsets-and-what-depends-on-them"


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_every_relative_link_resolves(doc: Path) -> None:
    broken = []
    for target in links(doc):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (doc.parent / path_part).resolve() if path_part else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no anchor #{anchor} in {_rel(dest)}")
    assert broken == [], "\n".join(broken)


def test_links_are_found() -> None:
    readme = list(links(ROOT / "README.md"))
    assert "docs/configuration.md" in readme and "docs/rules.md#reference" in readme


# --------------------------------------------------------------------------- citations


def _citations() -> dict[str, set[str]]:
    """Anchor each citation needs -> the files that cite it."""
    cited: dict[str, set[str]] = {}
    for path in CITING:
        text = path.read_text(encoding="utf-8")
        for n in RULE.findall(text):
            cited.setdefault(f"r{int(n)}", set()).add(_rel(path))
        for number in SECTION.findall(text):
            cited.setdefault("s" + number.replace(".", "-"), set()).add(_rel(path))
    return cited


def test_every_rule_and_section_has_a_home() -> None:
    homes = anchors(RULES) | anchors(FORMATS)
    missing = {a: sorted(f) for a, f in _citations().items() if a not in homes}
    assert missing == {}, missing


def test_the_reference_numbers_every_rule_once() -> None:
    text = RULES.read_text(encoding="utf-8")
    for n in range(28):
        assert len(re.findall(rf'<a id="r{n}"></a>\*\*R{n} ', text)) == 1, f"R{n}"
    for s in ("s1", "s1-1", "s1-2", "s1-3", "s1-4", "s2", "s3", "s4", "s5", "s6", "s8", "s9"):
        assert s in anchors(RULES), s
    for s in ("s7", "s7-1", "s7-2", "s7-3", "s7-4"):
        assert s in anchors(FORMATS), s


def test_citations_are_found() -> None:
    cited = _citations()
    assert "tests/test_cli.py" in cited["s9"]
    assert "README.md" in cited["r25"]
    assert "docs/formats.md" in cited["s7-4"]


def test_nothing_points_outside_the_repository() -> None:
    offenders = {_rel(p) for p in CITING if OUTSIDE.search(p.read_text(encoding="utf-8"))}
    new = offenders - ELSEWHERE
    assert new == set(), f"these cite files that are not in the repository: {sorted(new)}"


# --------------------------------------------------------------------------- shell examples


def code_blocks(doc: Path, *langs: str) -> Iterator[str]:
    for _fence, info, body in FENCE.findall(doc.read_text(encoding="utf-8")):
        if info.strip().split(" ")[0] in langs:
            yield body


def shell_commands(body: str, console: bool) -> Iterator[str]:
    """The commands of a ``sh`` block (or the ``$`` lines of a ``console`` block)."""
    lines = body.replace("\\\n", " ").splitlines()
    for line in lines:
        if console:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if line.strip() and not line.lstrip().startswith("#"):
            yield line


def sessionizer_args(command: str) -> list[str] | None:
    """The arguments of a ``sessionizer`` command line, after any VAR=value prefix."""
    try:
        words = shlex.split(command, comments=True)
    except ValueError:
        return None
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        words.pop(0)
    if not words or words[0] != "sessionizer":
        return None
    return words[1:]


def documented_commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        for lang in ("sh", "console", "bash", "shell"):
            for body in code_blocks(doc, lang):
                for command in shell_commands(body, lang == "console"):
                    args = sessionizer_args(command)
                    if args is not None:
                        found.append((f"{_rel(doc)}: {command.strip()}", args))
    return found


def test_the_documents_show_commands() -> None:
    names = {args[0] for _, args in documented_commands() if args}
    assert {"process-file", "worker", "replay", "tail", "broker"} <= names


@pytest.mark.parametrize(("where", "args"), documented_commands(), ids=lambda v: str(v)[:60])
def test_every_documented_command_parses(where: str, args: list[str]) -> None:
    """Real subcommands, real flags, required arguments given (nothing runs)."""
    if not args or args[0] in ("--help", "-h", "--version"):
        return  # the group's own options
    ctx = click.Context(cli, info_name="sessionizer")
    cmd = cli.get_command(ctx, args[0])
    assert cmd is not None, f"{where}: no command {args[0]}"
    try:
        cmd.make_context(args[0], list(args[1:]), parent=ctx)
    except click.exceptions.Exit:
        return  # --help
    except click.UsageError as err:
        pytest.fail(f"{where}: {err.format_message()}")


def _known_env() -> set[str]:
    return {d.env for d in describe_settings()} | {
        "SESSIONIZER_CONFIG",
        _native.PURE_ENV,
        apache_kafka.ENV_LIB,
    }


def test_every_documented_variable_is_a_setting() -> None:
    known = _known_env()
    unknown = set()
    for doc in DOCS:
        for name in re.findall(r"SESSIONIZER_[A-Z0-9_]*", doc.read_text(encoding="utf-8")):
            if name.startswith("SESSIONIZER_TEST_") or name in known:
                continue
            if name.endswith("_") and any(k.startswith(name) for k in known):
                continue  # a prefix such as SESSIONIZER_TOPIC_*
            unknown.add(f"{_rel(doc)}: {name}")
    assert unknown == set()


@pytest.mark.parametrize(
    "body",
    [b for doc in DOCS for b in code_blocks(doc, "toml")],
    ids=lambda b: b.splitlines()[0][:40],
)
def test_every_toml_example_uses_real_keys_and_types(tmp_path: Path, body: str) -> None:
    tomllib.loads(body)
    path = tmp_path / "example.toml"
    path.write_text(body, encoding="utf-8")
    # The documents keep the password in the environment.
    env = {"SESSIONIZER_SASL_PASSWORD": "from-the-environment"} if "sasl_" in body else {}
    try:
        load_settings(path, env=env)
    except ConfigError as err:
        # Files the example names cannot exist here; anything else is the example's fault.
        assert err.problem.startswith("file not found"), str(err)


def test_no_document_asks_to_install_a_pinned_dependency() -> None:
    """Issue 20: configuration.md and operations.md said `rocksdict` must be installed
    by hand (`pip install rocksdict`); it is a pinned dependency of the package."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {re.split(r"[=<>!~; \[]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert "rocksdict" in pinned
    texts = {_rel(doc): doc.read_text(encoding="utf-8") for doc in DOCS}
    texts["settings descriptions"] = "\n".join(d.description for d in describe_settings())
    found = [
        f"{where}: {m.group(0)!r}"
        for where, text in texts.items()
        for m in re.finditer(r"pip install ([\w.-]+)|needs the ([\w.-]+) package", text)
        if (m.group(1) or m.group(2)).lower() in pinned
    ]
    assert found == []


def _flags(command: click.Command) -> list[str]:
    return [o for p in command.params for o in p.opts if o.startswith("--") and o != "--help"]


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_readme_command_table_lists_every_flag(name: str) -> None:
    """Issue 20: the README's command table left flags out (`--integrations`,
    `--app-id`, `--max`, ...); `COMMAND --help` is the home of what each means."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = [r for r in readme.splitlines() if r.startswith(f"| `sessionizer {name} ")]
    assert len(rows) == 1, f"one row for {name}"
    row = re.split(r"(?<!\\)\|", rows[0])[1]  # the first cell; `\|` is inside it
    missing = [f for f in _flags(cli.commands[name]) if not re.search(rf"{f}\b", row)]
    assert missing == [], f"README's row for {name} lacks {missing}"


def test_worker_help_names_every_path_of_its_web_port() -> None:
    """Issue 20: `worker --help` said the web port serves only /health and /metrics."""
    web_port = next(p for p in cli.commands["worker"].params if "--web-port" in p.opts)
    help_ = getattr(web_port, "help", "") or ""
    assert all(path in help_ for path in ("/health", "/metrics", "/sessions")), help_


def test_rate_means_events_per_second_in_produce_and_demo() -> None:
    """Issue 20: `--rate` was records/s in produce and events/s in demo."""
    for name in ("produce", "demo"):
        rate = next(p for p in cli.commands[name].params if "--rate" in p.opts)
        assert re.search(r"\bevents\b", getattr(rate, "help", "") or ""), name
        assert "records" not in (getattr(rate, "help", "") or ""), name
