"""``engram memory``: remember, recall, get, forget, stats, import, export, working, graph."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from engram.clitools import EXIT_USAGE, Output, call, client_command, errors, fail

__all__ = ["memory"]

_namespace = click.option("--namespace", "-N", help="Memory namespace (default: your own; others: owner only).")


def _params(namespace: str | None, **params: Any) -> dict[str, Any]:
    out = {k: v for k, v in params.items() if v is not None}
    if namespace is not None:
        out["namespace"] = namespace
    return out


def _filter(session: str | None, kinds: tuple[str, ...], tags: tuple[str, ...], since: str | None, until: str | None) -> dict[str, Any] | None:
    flt: dict[str, Any] = {}
    if session is not None:
        flt["session"] = session
    if kinds:
        flt["kinds"] = list(kinds)
    if tags:
        flt["tags"] = list(tags)
    if since is not None:
        flt["time_from"] = since
    if until is not None:
        flt["time_to"] = until
    return flt or None


def _filter_options(func: Any) -> Any:
    for option in reversed(
        [
            click.option("--session", "-s", help="Only this session's episodes."),
            click.option("--kind", "kinds", multiple=True, help="Only episodes of this kind (repeatable)."),
            click.option("--tag", "tags", multiple=True, help="Only episodes with this tag (repeatable: all of them)."),
            click.option("--since", help="Only episodes at or after this time (Unix seconds or ISO 8601)."),
            click.option("--until", help="Only episodes at or before this time (Unix seconds or ISO 8601)."),
        ]
    ):
        func = option(func)
    return func


def _short(text: str, width: int = 72) -> str:
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


@click.group()
def memory() -> None:
    """Working, episodic and semantic memory."""


@memory.command()
@click.argument("texts", nargs=-1, required=True)
@click.option("--tag", "tags", multiple=True, help="Tag (repeatable).")
@click.option("--kind", default=None, help="Kind of episode (default: note).")
@click.option("--session", "-s", help="Session id.")
@click.option("--importance", type=click.FloatRange(0, 1), help="0..1 (default 0.5).")
@click.option("--pinned", is_flag=True, help="Never forgotten automatically.")
@click.option("--metadata", help="A JSON object.")
@_namespace
@client_command
def remember(texts: tuple[str, ...], tags: tuple[str, ...], kind: str | None, session: str | None, importance: float | None,
             pinned: bool, metadata: str | None, namespace: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Store each TEXT as an episode; prints the ids (a text remembered already: its episode's)."""
    meta = None
    if metadata is not None:
        try:
            meta = json.loads(metadata)
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--metadata") from None
    items = [
        {k: v for k, v in {"text": t, "tags": list(tags) or None, "kind": kind, "session": session, "importance": importance,
                          "pinned": pinned or None, "metadata": meta}.items() if v is not None}
        for t in texts
    ]
    result = call(socket_path, timeout, "memory.remember", _params(namespace, items=items))
    Output(as_json).emit(result, lambda d: click.echo("\n".join(
        f"{i}  (already remembered)" if dup else i for i, dup in zip(d["ids"], d["duplicates"]))))


@memory.command()
@click.argument("query")
@click.option("-k", type=click.IntRange(min=1), default=10, show_default=True, help="Hits to return.")
@click.option("--activation", is_flag=True, help="Also rank episodes linked to concepts near the query.")
@_filter_options
@_namespace
@client_command
def recall(query: str, k: int, activation: bool, session: str | None, kinds: tuple[str, ...], tags: tuple[str, ...],
           since: str | None, until: str | None, namespace: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """The episodes best matching QUERY, best first, with their scores."""
    params = _params(namespace, query=query, k=k, filter=_filter(session, kinds, tags, since, until), activation=activation or None)
    result = call(socket_path, timeout, "memory.recall", params)

    def human(data: dict[str, Any]) -> None:
        if not data["hits"]:
            click.echo("no memories match")
        for hit in data["hits"]:
            p = hit["parts"]
            click.echo(f"{hit['score']:.3f}  {hit['id']}  {_short(hit['text'])}")
            click.echo(f"       vector {p['vector']:.2f} keyword {p['keyword']:.2f} recency {p['recency']:.2f} "
                       f"importance {p['importance']:.2f}" + (f" activation {p['activation']:.2f}" if activation else ""))
            for fact in hit["superseded"]:  # why the score was lowered
                click.echo(f"       superseded: {fact['src']} {fact['type']} {fact['dst']} (by {fact['superseded_by']})")

    Output(as_json).emit(result, human)


@memory.command()
@click.argument("ids", nargs=-1, required=True)
@click.option("--vectors", is_flag=True, help="Include the vectors.")
@_namespace
@client_command
def get(ids: tuple[str, ...], vectors: bool, namespace: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Episodes by id."""
    result = call(socket_path, timeout, "memory.get", _params(namespace, ids=list(ids), with_vectors=vectors or None))

    def human(data: dict[str, Any]) -> None:
        for e in data["episodes"]:
            tags = f"  [{', '.join(e['tags'])}]" if e["tags"] else ""
            archived = "  (archived)" if e.get("archived_at") is not None else ""
            click.echo(f"{e['id']}  {e['kind']}  importance {e['importance']:.2f}{tags}{archived}")
            click.echo(f"  {e['text']}")

    Output(as_json).emit(result, human)


@memory.command()
@click.argument("ids", nargs=-1)
@click.option("--all-in-namespace", "everything", is_flag=True, help="Forget the whole namespace (episodes, graph, working memory).")
@click.option("--include-pinned", is_flag=True, help="With a filter: forget pinned episodes too.")
@_filter_options
@_namespace
@client_command
def forget(ids: tuple[str, ...], everything: bool, include_pinned: bool, session: str | None, kinds: tuple[str, ...],
           tags: tuple[str, ...], since: str | None, until: str | None, namespace: str | None, socket_path: Path | None,
           as_json: bool, timeout: float) -> None:
    """Forget episodes by id, by filter (--session, --kind, --tag, --since, --until), or --all-in-namespace."""
    flt = _filter(session, kinds, tags, since, until)
    chosen = [bool(ids), flt is not None, everything]
    if sum(chosen) != 1:
        fail(EXIT_USAGE, "give episode ids, filter options, or --all-in-namespace (exactly one of them)")
    params = _params(namespace, ids=list(ids) or None, filter=flt, all=everything or None,
                     include_pinned=include_pinned or None)
    result = call(socket_path, timeout, "memory.forget", params)
    Output(as_json).emit(result, lambda d: click.echo(f"forgot {d['forgotten']} episodes" + (
        f", {d['relations']} relations" if d["relations"] else "") + (f", {d['concepts']} concepts" if d["concepts"] else "")))


@memory.command()
@_namespace
@client_command
def stats(namespace: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Counts of your namespace: episodes, graph, index, working memory, embedder."""
    result = call(socket_path, timeout, "memory.stats", _params(namespace))

    def human(d: dict[str, Any]) -> None:
        idx, emb = d["index"], d["embedder"]
        kinds = ", ".join(f"{k} {n}" for k, n in d["kinds"].items()) or "-"
        click.echo(f"namespace    {d['namespace']}")
        click.echo(f"episodes     {d['episodes']} ({kinds}); {d['sessions']} sessions; {d['pinned']} pinned"
                   + (f"; {d['archived']} archived" if d.get("archived") else ""))
        click.echo(f"graph        {d['concepts']} concepts, {d['relations']} relations ({d['relations_retracted']} retracted)")
        click.echo(f"index        {idx['kind']}, {idx['vectors']} vectors of {idx['dim'] or '-'} dims"
                   + (f", {idx['masked']} masked" if idx["masked"] else "") + (" (building HNSW)" if idx["building"] else ""))
        click.echo(f"working      {d['working']['sessions']} sessions, {d['working']['items']} items")
        click.echo(f"embedder     {emb['name'] or '-'}" + (f" ({emb['dim']} dims)" if emb["available"] else " (not available)"))

    Output(as_json).emit(result, human)


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


@memory.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--batch", type=click.IntRange(1, 100_000), default=256, show_default=True, help="Episodes per request.")
@_namespace
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), envvar="ENGRAM_SOCKET", help="Daemon socket.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
@click.option("--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait per batch.")
def import_(file: Path, batch: int, namespace: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Import episodes from FILE.jsonl (one JSON object per line); run it again to resume."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from engram.client import Client
    from engram.memory.importexport import LineError, import_jsonl

    size = file.stat().st_size
    columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
    with Progress(*columns, console=_console(), transient=as_json) as bar:
        task = bar.add_task("importing", total=size)

        def progress(read: int, summary: Any) -> None:
            bar.update(task, advance=read, description=f"imported {summary.imported}, skipped {summary.skipped}")

        try:
            with errors(), Client(socket_path, timeout=timeout) as client:
                summary = import_jsonl(file, client.call, namespace, batch, progress)
        except LineError as exc:
            bar.stop()
            fail(EXIT_USAGE, f"{file}: {exc}; the lines before it are imported; fix it and run the same command again")
        except OSError as exc:
            bar.stop()
            fail(EXIT_USAGE, f"{file}: {exc.strerror}")
    Output(as_json).emit(summary.as_dict(), lambda d: click.echo(
        f"{d['imported']} imported, {d['skipped']} already there, from {d['lines']} lines"))


@memory.command()
@click.argument("file", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--vectors", is_flag=True, help="Include vectors (exact backups; import without an embedder).")
@click.option("--page", type=click.IntRange(1, 100_000), default=500, show_default=True, help="Episodes per request.")
@_namespace
@click.option("--socket", "socket_path", type=click.Path(path_type=Path), envvar="ENGRAM_SOCKET", help="Daemon socket.")
@click.option("--json", "as_json", is_flag=True, help="Print a machine-readable summary (needs FILE).")
@click.option("--timeout", type=float, default=120.0, show_default=True, help="Seconds to wait per page.")
def export(file: Path | None, vectors: bool, page: int, namespace: str | None, socket_path: Path | None, as_json: bool,
           timeout: float) -> None:
    """Export your namespace's episodes as JSON Lines to FILE (default: standard output)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from engram.client import Client
    from engram.memory.importexport import export_jsonl

    to_stdout = file is None or str(file) == "-"
    out = sys.stdout if to_stdout else None
    tmp = None if to_stdout else file.with_name(file.name + ".part")  # type: ignore[union-attr]
    with Progress(TextColumn("exporting"), BarColumn(), MofNCompleteColumn(), console=_console(), transient=True) as bar:
        task = bar.add_task("export", total=None)

        def progress(summary: Any) -> None:
            bar.update(task, completed=summary.exported, total=summary.total)

        with errors(), Client(socket_path, timeout=timeout) as client:
            if out is not None:
                summary = export_jsonl(out, client.call, namespace, vectors, page, progress)
            else:
                assert tmp is not None and file is not None
                with open(tmp, "w", encoding="utf-8") as handle:
                    summary = export_jsonl(handle, client.call, namespace, vectors, page, progress)
                tmp.replace(file)
    if not to_stdout:
        Output(as_json).emit(summary.as_dict(), lambda d: click.echo(f"exported {d['exported']} episodes to {file}"))


# --- working memory --------------------------------------------------------------------------------


@memory.group()
def working() -> None:
    """Per-session working memory (RAM only)."""


@working.command("put")
@click.argument("session")
@click.argument("content")
@click.option("--key", help="Item key (default: a new one).")
@click.option("--importance", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--attention", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@_namespace
@client_command
def working_put(session: str, content: str, key: str | None, importance: float, attention: float, namespace: str | None,
                socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Hold CONTENT in SESSION's working memory."""
    result = call(socket_path, timeout, "memory.working.put",
                  _params(namespace, session=session, content=content, key=key, importance=importance, attention=attention))

    def human(d: dict[str, Any]) -> None:
        click.echo(d["key"])
        for e in d["evicted"]:
            promoted = f" -> remembered as {e['promoted_id']}" if e["promoted_id"] else ""
            click.echo(f"evicted {e['key']} ({e['reason']}){promoted}")

    Output(as_json).emit(result, human)


@working.command("get")
@click.argument("session")
@click.argument("key")
@_namespace
@client_command
def working_get(session: str, key: str, namespace: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """One item of SESSION."""
    result = call(socket_path, timeout, "memory.working.get", _params(namespace, session=session, key=key))
    Output(as_json).emit(result, lambda d: click.echo(d["item"]["content"]))


@working.command("list")
@click.argument("session")
@_namespace
@client_command
def working_list(session: str, namespace: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """SESSION's items, highest eviction score first."""
    result = call(socket_path, timeout, "memory.working.list", _params(namespace, session=session))

    def human(d: dict[str, Any]) -> None:
        for item in d["items"]:
            click.echo(f"{item['score']:.3f}  {item['key']:<12} {_short(item['content'], 60)}")

    Output(as_json).emit(result, human)


@working.command("clear")
@click.argument("session")
@click.argument("keys", nargs=-1)
@click.option("--promote", is_flag=True, help="Remember the important items first.")
@_namespace
@client_command
def working_clear(session: str, keys: tuple[str, ...], promote: bool, namespace: str | None, socket_path: Path | None,
                  as_json: bool, timeout: float) -> None:
    """Drop SESSION (or some KEYS of it)."""
    result = call(socket_path, timeout, "memory.working.clear",
                  _params(namespace, session=session, keys=list(keys) or None, promote=promote or None))
    Output(as_json).emit(result, lambda d: click.echo(f"cleared {d['cleared']}, promoted {len(d['promoted'])}"))


# --- semantic memory --------------------------------------------------------------------------------


@memory.group()
def graph() -> None:
    """Concepts and relations (semantic memory)."""


@graph.command("relate")
@click.argument("src")
@click.argument("type_")
@click.argument("dst")
@click.option("--weight", type=click.FloatRange(0, 1), default=1.0, show_default=True)
@click.option("--exclusive/--not-exclusive", default=None, help="One DST per SRC for this type: a newer fact ends the others' validity "
              "(default: whether TYPE is in memory.graph.functional_types).")
@click.option("--valid-from", help="When it began to hold (Unix seconds or ISO 8601).")
@click.option("--valid-to", help="When it stopped holding.")
@click.option("--source", "sources", multiple=True, help="Episode id it was learned from (repeatable).")
@_namespace
@client_command
def graph_relate(src: str, type_: str, dst: str, weight: float, exclusive: bool | None, valid_from: str | None,
                 valid_to: str | None, sources: tuple[str, ...], namespace: str | None, socket_path: Path | None,
                 as_json: bool, timeout: float) -> None:
    """Record that SRC TYPE DST (e.g. ada lives_in london)."""
    relation = {k: v for k, v in {"src": src, "type": type_, "dst": dst, "weight": weight, "exclusive": exclusive,
                                  "valid_from": valid_from, "valid_to": valid_to, "sources": list(sources) or None}.items()
                if v is not None}
    result = call(socket_path, timeout, "memory.graph.upsert", _params(namespace, relations=[relation]))

    def human(d: dict[str, Any]) -> None:
        for r in d["relations"]:
            click.echo(f"{r['id']}  {r['src']} {r['type']} {r['dst']}  ({r['status']})")
        for rid in d["retracted"]:
            click.echo(f"retracted {rid}")
        for rid in d["superseded"]:
            click.echo(f"validity ended: {rid}")

    Output(as_json).emit(result, human)


@graph.command("upsert")
@click.argument("file", type=click.File("r"))
@_namespace
@client_command
def graph_upsert(file: Any, namespace: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """Send FILE ('-': standard input), a JSON object {concepts: [...], relations: [...]}."""
    try:
        body = json.load(file)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="FILE") from None
    if not isinstance(body, dict):
        raise click.BadParameter("not a JSON object", param_hint="FILE")
    if namespace is not None:
        body["namespace"] = namespace
    Output(True).emit(call(socket_path, timeout, "memory.graph.upsert", body))


@graph.command("query")
@click.argument("concept")
@click.option("--depth", type=click.IntRange(1, 8), default=1, show_default=True)
@click.option("--direction", type=click.Choice(["out", "in", "both"]), default="both", show_default=True)
@click.option("--type", "types", multiple=True, help="Follow only this relation type (repeatable).")
@click.option("--to", help="Also list the paths to this concept.")
@click.option("--as-of", help="What engram believed at this time.")
@click.option("--valid-at", help="Only facts that held at this time.")
@_namespace
@client_command
def graph_query(concept: str, depth: int, direction: str, types: tuple[str, ...], to: str | None, as_of: str | None,
                valid_at: str | None, namespace: str | None, socket_path: Path | None, as_json: bool, timeout: float) -> None:
    """CONCEPT's neighbours up to --depth hops (and paths --to another)."""
    result = call(socket_path, timeout, "memory.graph.query",
                  _params(namespace, concept=concept, depth=depth, direction=direction, types=list(types) or None, to=to,
                          as_of=as_of, valid_at=valid_at))

    def human(d: dict[str, Any]) -> None:
        relations = {r["id"]: r for r in d["relations"]}
        for n in d["neighbours"]:
            via = " / ".join(f"{relations[r]['src']} {relations[r]['type']} {relations[r]['dst']}" for r in n["path"])
            click.echo(f"{n['depth']}  {n['weight']:.2f}  {n['concept']['name']:<24} {via}")
        for p in d["paths"]:
            click.echo(f"path {p['weight']:.2f}: {' -> '.join(p['concepts'])}")

    Output(as_json).emit(result, human)
