"""Prompt templates: files users edit, checked when the graph loads, rendered per ticket.

A template is a Markdown file with ``{{ name }}`` placeholders. An optional line reading
exactly ``<!-- user -->`` splits it into a system part and a user part. Each role (``triage`` for
every tier but the last, ``escalate`` for the last, ``answer`` for a tier's draft) offers a
fixed set of variables; a placeholder outside that set is a :class:`ConfigError` at load
time (with file, line and the variable), not a surprise in production.

Ticket text is untrusted. It is only ever placed in the user message, inside
``<ticket>...</ticket>`` delimiters that the text itself cannot close or reopen. So is the
conversation before it (``Ticket.messages``): the ``ticket`` variable carries it first, inside
``<history>...</history>``, one turn per paragraph, under the same rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from triagegate.errors import ConfigError
from triagegate.types import Ticket, Turn

if TYPE_CHECKING:
    from triagegate.knowledge import Hit
    from triagegate.spec import LoadedSpec

PLACEHOLDER = re.compile(r"\{\{[ \t]*([A-Za-z_][A-Za-z0-9_]*)[ \t]*\}\}")
"""The one placeholder form: a variable name in double braces, on one line."""
_OPENERS = re.compile(r"\{\{|\{%|\{#")
"""Where template syntax starts: a placeholder, or a Jinja tag or comment (not supported)."""
_SYNTAX = "templates support only {{ name }} placeholders (no filters, expressions, tags or comments)"
"""What the error for any other template syntax says."""
USER_MARKER = "<!-- user -->"

NODE_VARIABLES: dict[str, frozenset[str]] = {
    "triage": frozenset({"ticket", "categories", "priorities", "attachments", "articles"}),
    "answer": frozenset(
        {"ticket", "category", "category_description", "priority", "attachments", "articles"}
    ),
    "escalate": frozenset({"ticket", "categories", "priorities", "attachments", "mini_triage", "articles"}),
}
"""Every role offers ``articles``: the knowledge-base articles found for the ticket (:func:`articles_block`)."""
UNTRUSTED = "ticket"
USER_ONLY = frozenset({UNTRUSTED, "mini_triage"})
"""Variables derived from customer text (the mini tier's notes can echo it): user message only."""


@dataclass(frozen=True, slots=True)
class Template:
    name: str
    path: str
    system: str
    user: str

    @property
    def text(self) -> str:
        return f"{self.system}\n{USER_MARKER}\n{self.user}"

    def render(self, values: dict[str, str]) -> tuple[str, str]:
        """Return ``(system, user)`` with every placeholder replaced."""

        def sub(match: re.Match[str]) -> str:
            return values[match.group(1)]

        return PLACEHOLDER.sub(sub, self.system).strip(), PLACEHOLDER.sub(sub, self.user).strip()


def _check_syntax(text: str, *, node: str, path: str) -> None:
    """Refuse anything that looks like template syntax but is not a ``{{ name }}`` placeholder.

    Without this, ``{{ ticket | upper }}``, ``{% for %}`` or an unclosed ``{{ ticket`` would
    load and reach the model as literal text. Each ``{{`` must open a valid placeholder;
    ``{%`` and ``{#`` (Jinja tags and comments) are refused outright.
    """
    allowed = NODE_VARIABLES[node]
    position = 0
    while (opener := _OPENERS.search(text, position)) is not None:
        start = opener.start()
        lineno = text.count("\n", 0, start) + 1
        match = PLACEHOLDER.match(text, start)
        if match is not None:
            name = match.group(1)
            if name not in allowed:
                raise ConfigError(
                    f"unknown variable {{{{{name}}}}} in the {node!r} prompt; available: {', '.join(sorted(allowed))}",
                    file=path,
                    line=lineno,
                    key=name,
                )
            position = match.end()
            continue
        line_end = text.find("\n", start)
        rest = text[start : len(text) if line_end < 0 else line_end]
        where = f"in the {node!r} prompt"
        names = ", ".join(sorted(allowed))
        if opener.group() != "{{":
            problem = f"unsupported template syntax {_excerpt(rest)} {where}: {_SYNTAX}"
        elif (close := rest.find("}}")) < 0:
            problem = f"unclosed placeholder {_excerpt(rest)} {where}: close it with '}}}}' on the same line"
        elif not rest[2:close].strip():
            problem = f"empty placeholder '{{{{ }}}}' {where}: put one of its variables inside ({names})"
        else:
            problem = (
                f"unsupported placeholder {_excerpt(rest[: close + 2])} {where}: {_SYNTAX}, "
                f"where name is one of {names}"
            )
        raise ConfigError(problem, file=path, line=lineno)


def _excerpt(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def parse_template(text: str, *, node: str, path: str) -> Template:
    """Check a template against what ``node`` provides; raises :class:`ConfigError` naming file and line.

    The only syntax is ``{{ name }}`` with ``name`` one of the node's variables; anything else
    that opens with ``{{``, ``{%`` or ``{#`` is an error rather than literal text for the model.
    """
    _check_syntax(text, node=node, path=path)
    system, marker, user = text.partition("\n" + USER_MARKER + "\n")
    if not marker:
        system, user = text, ""
    in_system = sorted(USER_ONLY & {m.group(1) for m in PLACEHOLDER.finditer(system)})
    if in_system:
        name = in_system[0]
        raise ConfigError(
            f"{{{{{name}}}}} must only appear after the '{USER_MARKER}' line: it carries untrusted ticket "
            "text and must not be placed in the system message",
            file=path,
            key=name,
        )
    if UNTRUSTED not in {m.group(1) for m in PLACEHOLDER.finditer(user)}:
        raise ConfigError(
            f"the {node!r} prompt never uses {{{{{UNTRUSTED}}}}}; add it after a '{USER_MARKER}' line",
            file=path,
            key=UNTRUSTED,
        )
    return Template(name=node, path=path, system=system, user=user)


def load_template(prompts_dir: Path, filename: str, *, node: str, key: str | None = None) -> Template:
    """Read and check one template for role ``node``; ``key`` is the graph-file key naming the file."""
    path = prompts_dir / filename
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"prompt file not found (looked in {prompts_dir})",
            file=str(path),
            key=key or f"nodes.{node}.prompt",
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read prompt file: {exc}", file=str(path)) from None
    return parse_template(text, node=node, path=str(path))


DRAFT = ":draft"
"""Suffix of a tier's drafting template key: ``"mini:draft"``."""


def template_roles(loaded: LoadedSpec) -> dict[str, tuple[str, str, str]]:
    """``{key: (role, filename, graph-file key)}`` for every template a graph uses, in tier order.

    Keys are tier names, plus ``"<tier>:draft"`` for a tier's ``draft``. The role fixes the
    variables a template may use: ``triage`` for every tier but the last, ``escalate`` for the
    last, ``answer`` for drafts.
    """
    spec = loaded.spec
    out: dict[str, tuple[str, str, str]] = {}
    for i, tier in enumerate(spec.tiers):
        out[tier.name] = (spec.role(tier.name), tier.prompt, loaded.key(("tiers", i, "prompt")))
        if tier.draft is not None:
            out[tier.name + DRAFT] = (
                "answer",
                tier.draft.prompt,
                loaded.key(("tiers", i, "draft", "prompt")),
            )
    return out


def load_graph_templates(loaded: LoadedSpec, keys: Iterable[str] | None = None) -> dict[str, Template]:
    """The templates of a graph's tiers, read from its prompts folder and checked.

    Keyed by tier name, plus ``"<tier>:draft"`` for a tier's drafting template (see
    :func:`template_roles`); ``keys`` limits the result to some of them. Everything that
    renders or measures a graph's prompts (the pipeline, ``graph check``, the dry-run
    estimate, scoring) loads them here, so they all read the same files the same way.
    """
    roles = template_roles(loaded)
    wanted = list(roles) if keys is None else list(keys)
    unknown = [k for k in wanted if k not in roles]
    if unknown:
        raise KeyError(f"no template {unknown[0]!r} in this graph (has: {', '.join(roles)})")
    out: dict[str, Template] = {}
    for name in wanted:
        role, filename, key = roles[name]
        template = load_template(loaded.prompts_dir, filename, node=role, key=key)
        out[name] = Template(name=name, path=template.path, system=template.system, user=template.user)
    return out


_DELIMITER_START = re.compile(r"<(?=\s*/?\s*(?:ticket|history)\b)", re.IGNORECASE)
"""The '<' of anything that reads as an opening or closing ticket or history tag, closed by '>' or not."""

_SPEAKERS = {"customer": "Customer", "agent": "Agent"}


def delimit_history(turns: Sequence[Turn]) -> str:
    """The conversation before a ticket, oldest first, for a prompt: ``""`` when there is none.

    Each turn is a paragraph ``Customer: ...`` or ``Agent: ...`` inside ``<history>`` delimiters
    that no turn's text can close or reopen (an agent turn may quote the customer).
    """
    if not turns:
        return ""
    body = "\n\n".join(f"{_SPEAKERS[t.role]}: {_DELIMITER_START.sub('‹', t.content)}" for t in turns)
    return "<history>\n" + body + "\n</history>"


def delimit_ticket(ticket: Ticket) -> str:
    """Wrap the ticket for a prompt so that its text cannot break out of the delimiters; the
    conversation before it, if any, comes first (:func:`delimit_history`)."""
    body = f"Subject: {ticket.subject}\n{ticket.text}" if ticket.subject else ticket.text
    block = "<ticket>\n" + _DELIMITER_START.sub("‹", body) + "\n</ticket>"
    return f"{delimit_history(ticket.messages)}\n\n{block}" if ticket.messages else block


_ARTICLE_TAG = re.compile(r"<(?=\s*/?\s*articles?\b)", re.IGNORECASE)
ARTICLES_NOTE = (
    "Reference articles from the team's knowledge base, between <articles> and </articles>. "
    "Take the facts of your answer from them and follow their steps; where they do not cover "
    "the question, say what happens next instead of guessing."
)
NO_ARTICLES = "No article of the knowledge base covers this ticket."
"""What the ``{{articles}}`` block says when the search found nothing."""


def articles_block(hits: Iterable[Hit] | None, *, max_chars: int = 2000) -> str:
    """The ``{{articles}}`` text: each article found for the ticket, delimited, best first.

    The block opens with its own instruction (:data:`ARTICLES_NOTE`), so a template grounds
    its answers by placing ``{{articles}}`` alone; ``None`` (a graph without a knowledge
    base) renders as nothing, so the same templates read as before there. An empty search
    says so inside the delimiters, so the model knows it has no reference to follow.

    Articles are the team's own text, not the customer's, but an article quoting markup
    still cannot close its delimiter or open another. A body longer than ``max_chars`` is
    cut at a word and marked, so one long article cannot push a small model's context out.
    """
    if hits is None:
        return ""
    parts = []
    for hit in hits:
        article = hit.article
        body = article.body
        if len(body) > max_chars:
            body = body[:max_chars].rsplit(None, 1)[0] + " [...]"
        title = article.title.replace('"', "'")
        parts.append(
            f'<article id="{article.id}" title="{_ARTICLE_TAG.sub("‹", title)}">\n'
            f"{_ARTICLE_TAG.sub('‹', body)}\n</article>"
        )
    body = "\n".join(parts) if parts else NO_ARTICLES
    return f"{ARTICLES_NOTE}\n<articles>\n{body}\n</articles>"
