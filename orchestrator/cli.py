"""The `orchestrate` command: parse arguments, call the package, render the result.

Exit codes: 0 success, 1 an agent failed or timed out, 2 invalid manifest or
usage, 3 a violation stopped the run, 4 environment problem (Docker
unreachable, image missing), 70 internal error, 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer

from . import __version__
from .errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EnvironmentProblem, ImageMissing, OrchestrateError, PlanError

if TYPE_CHECKING:
    from .git_merge import MergeReport
    from .runtime.docker import DockerRuntime

app = typer.Typer(
    help="Run AI coding agents in parallel, each in its own hardened container.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
images_app = typer.Typer(help="Build the sandbox images.", no_args_is_help=True)
app.add_typer(images_app, name="images")
audit_app = typer.Typer(help="Check a run's audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

_options = {"debug": False, "json": False}

ManifestArgument = Annotated[
    Path, typer.Argument(help="The manifest file, such as configs/agents.example.yaml.", show_default=False)
]
RunsDirOption = Annotated[
    Path, typer.Option("--runs-dir", help="Folder that receives one folder per run (workspaces, logs).")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of text.")]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"orchestrate {__version__}")
        raise typer.Exit(0)


@app.callback()
def _global(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print warnings and errors only.")] = False,
    show_version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    _options["debug"] = debug
    level = logging.INFO
    if quiet:
        level = logging.WARNING
    if debug:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("orchestrate: %(message)s"))
    root = logging.getLogger("orchestrator")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def _guarded(action: Callable[[], int]) -> NoReturn:
    """Run a command body; turn the project's errors into a message and an exit code."""
    try:
        code = action()
    except OrchestrateError as exc:
        if _options["debug"]:
            raise
        typer.echo(f"orchestrate: error: {exc}", err=True)
        code = exc.exit_code
        if _options["json"]:
            # A pipeline that parses stdout still gets one JSON document.
            error = {"error": str(exc), "exit_code": code}
            # JSON lines stay one record per line, so a reader of `run --json` never sees a broken line.
            lines = _options.get("json_lines")
            typer.echo(json.dumps({"kind": "error", **error}) if lines else json.dumps(error, indent=2))
    except KeyboardInterrupt:
        typer.echo("orchestrate: interrupted", err=True)
        code = EXIT_INTERRUPTED
    except Exception as exc:
        if _options["debug"]:
            raise
        typer.echo(
            f"orchestrate: internal error: {type(exc).__name__}: {exc}; "
            "run again with --debug and report the traceback",
            err=True,
        )
        code = EXIT_INTERNAL
    raise typer.Exit(code)


def _runtime() -> DockerRuntime:
    from .runtime.docker import DockerRuntime

    return DockerRuntime()


@app.command()
def run(
    manifest: ManifestArgument,
    runs_dir: RunsDirOption = Path("runs"),
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the run's events as JSON lines; the last line is the result.")
    ] = False,
    grace: Annotated[
        float, typer.Option("--grace", min=0, help="Seconds between SIGTERM and SIGKILL when stopping agents.")
    ] = 3.0,
    live: Annotated[
        bool | None,
        typer.Option("--live/--no-live", help="Show a live table of the agents; on by default on a terminal.",
                     show_default=False),
    ] = None,
    attach: Annotated[
        str | None,
        typer.Option("--attach", help="Connect this terminal to the named interactive agent from its start; "
                                      "Ctrl-P Ctrl-Q detaches and leaves the run going.", show_default=False),
    ] = None,
) -> None:
    """Start every agent of MANIFEST in its own hardened container and wait for all of them.

    Exit codes: 0 every agent succeeded, 1 one did not, 2 invalid manifest, 3 a violation stopped the run,
    4 Docker or an image is missing, 130 interrupted.
    """

    _options["json"] = json_output
    _options["json_lines"] = json_output

    def body() -> int:
        from .attach import terminal_for
        from .attached_log import hold_warnings, release_warnings
        from .errors import InputError
        from .liveview import JsonLines, LiveTable
        from .manifest import load_manifest
        from .render import result_text
        from .runner import execute, plan_manifest

        # The manifest is checked before Docker is touched, so a typo is exit 2 even without an engine.
        loaded = load_manifest(manifest)
        runtime = _runtime()
        try:
            plan = plan_manifest(loaded, runtime, runs_root=runs_dir)
        except PlanError as exc:
            raise _for_run(exc) from exc
        if attach is not None and json_output:
            raise InputError("--attach and --json exclude each other: both would write to this terminal; drop one")
        terminal = terminal_for(plan, attach) if attach is not None else None
        show_live = sys.stderr.isatty() and terminal is None if live is None else live
        table = LiveTable() if show_live and not json_output else None
        if table is not None:
            handler = table.handler()
            handler.setFormatter(logging.Formatter("orchestrate: %(message)s"))
            logging.getLogger("orchestrator").handlers[:] = [handler]
        listener = JsonLines() if json_output else None
        # Warn-level violation lines would be drawn over the attached program's screen; they are counted instead.
        held = hold_warnings() if terminal is not None else None
        try:
            result = execute(plan, runtime, grace=grace, listener=listener, table=table,
                             terminal_size=_terminal_size() if terminal else None,
                             control_ready=terminal.start if terminal else None)
        finally:
            if terminal is not None:
                terminal.close()
            if held is not None:
                release_warnings(held)
        held_line = held.summary(plan.run_dir) if held is not None else None
        if held_line:
            typer.echo(f"orchestrate: {held_line}", err=True)
        if json_output:
            typer.echo(json.dumps({"kind": "result", **result.to_json()}, sort_keys=True))
        else:
            typer.echo(result_text(result))
        return result.exit_code

    _guarded(body)


@app.command()
def plan(
    manifest: ManifestArgument,
    runs_dir: RunsDirOption = Path("runs"),
    json_output: JsonOption = False,
) -> None:
    """Show the exact container spec of every agent, and check it, without starting anything."""

    _options["json"] = json_output

    def body() -> int:
        from .manifest import load_manifest
        from .render import plan_text
        from .runner import plan_manifest

        loaded = load_manifest(manifest)
        resolved = plan_manifest(loaded, _runtime(), runs_root=runs_dir)
        if json_output:
            typer.echo(json.dumps(resolved.model_dump(mode="json"), indent=2))
        else:
            typer.echo(plan_text(resolved))
        return 0

    _guarded(body)


@app.command()
def agents(json_output: JsonOption = False) -> None:
    """List the agent profiles a manifest can name with `profile:`: image, network, hosts and secrets."""
    _options["json"] = json_output

    def body() -> int:
        from .profiles import list_profiles
        from .render import agents_text

        profiles = list_profiles()
        if json_output:
            records = [{**profile.model_dump(mode="json"), "secrets": profile.secrets} for profile in profiles]
            typer.echo(json.dumps(records, indent=2))
        else:
            typer.echo(agents_text(profiles))
        return 0

    _guarded(body)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the manifest."""

    def body() -> int:
        from .manifest import manifest_schema

        typer.echo(json.dumps(manifest_schema(), indent=2))
        return 0

    _guarded(body)


@app.command()
def cleanup(
    run_id: Annotated[str | None, typer.Argument(help="The run to clean up; all runs when omitted.")] = None,
    remove_files: Annotated[
        bool, typer.Option("--remove-files", help="Also delete the run's folder under --runs-dir.")
    ] = False,
    runs_dir: RunsDirOption = Path("runs"),
) -> None:
    """Stop and remove containers left by runs (found by their labels, never by name)."""

    def body() -> int:
        from .cleanup import clean

        report = clean(_runtime(), run_id=run_id, runs_root=runs_dir, remove_files=remove_files)
        typer.echo(report)
        return 0

    _guarded(body)


@app.command()
def publish(
    run_id: Annotated[str, typer.Argument(help="The run whose agents' workspaces are published.", show_default=False)],
    agent: Annotated[str | None, typer.Argument(help="Publish only this agent.")] = None,
    runs_dir: RunsDirOption = Path("runs"),
    json_output: JsonOption = False,
    force: Annotated[
        bool, typer.Option("--force", help="Also publish agents that did not exit cleanly in the run.")
    ] = False,
) -> None:
    """Publish agents' workspaces of a finished run into its output tree again."""
    _options["json"] = json_output

    def body() -> int:
        from .publishing import publish_run

        reports = publish_run(runs_dir, run_id, agent, force=force)
        if json_output:
            typer.echo(json.dumps([report.to_json() for report in reports], indent=2))
        for report in reports if not json_output else []:
            changed = sum(item.action != "unchanged" for item in report.published)
            typer.echo(
                f"{report.agent}: published {changed} file(s), {len(report.published) - changed} unchanged, "
                f"{len(report.findings)} finding(s)"
            )
            for finding in report.findings:
                typer.echo(f"  {finding.kind}: {finding.path}: {finding.detail}")
            for notice in report.notices:
                typer.echo(f"  note: {notice}")
        return 1 if any(report.findings for report in reports) else 0

    _guarded(body)


@app.command()
def diff(
    run_id: Annotated[str, typer.Argument(help="A run whose source mode was copy.", show_default=False)],
    agent: Annotated[str | None, typer.Argument(help="Show only this agent.")] = None,
    stat: Annotated[bool, typer.Option("--stat", help="List changed files with counts instead of the diff.")] = False,
    runs_dir: RunsDirOption = Path("runs"),
) -> None:
    """Show each agent's changes to its source copy as a unified diff against the copies' starting commit.

    Exit 0, or 2 for an unknown run or agent or a run without copies.
    """

    def body() -> int:
        from .diffing import diff_run, terminal_safe

        diffs = diff_run(runs_dir, run_id, agent, stat=stat)
        output = sys.stdout.buffer
        # A pipe gets the exact bytes, for `git apply`; a terminal gets agent-written control bytes escaped.
        shown = terminal_safe if sys.stdout.isatty() else bytes
        for item in diffs:
            if len(diffs) > 1 or stat:
                output.write(f"# agent {item.agent}: {item.base[:12]}..{item.commit[:12]}\n".encode())
            output.write(shown(item.text) if item.text else b"(no changes)\n")
        output.flush()
        return 0

    _guarded(body)


@app.command()
def merge(
    run_id: Annotated[str, typer.Argument(help="A finished run whose source was a git repository.",
                                          show_default=False)],
    branch: Annotated[
        str | None,
        typer.Option("--branch", help="Branch that receives one commit per agent; created from the run's starting "
                                      "commit when missing. Default: orchestrate/RUN-merged."),
    ] = None,
    branches: Annotated[
        bool, typer.Option("--branches", help="Leave one branch per agent, orchestrate/RUN/AGENT, for review.")
    ] = False,
    runs_dir: RunsDirOption = Path("runs"),
    json_output: JsonOption = False,
) -> None:
    """Apply each agent's changes, in manifest order, as commits on a branch; skip those that conflict.

    The checkout, index and working tree of the repository are never touched. Exit codes: 0 every agent
    applied (or had no changes), 1 some agents were skipped for conflicts (their files are listed), 2 invalid
    input, such as a branch that a worktree has checked out.
    """
    _options["json"] = json_output

    def body() -> int:
        from .git_merge import merge_run

        report = merge_run(runs_dir, run_id, branch=branch, branches=branches)
        if json_output:
            typer.echo(json.dumps(report.to_json(), indent=2))
            return report.exit_code
        for line in _merge_lines(report):
            typer.echo(line)
        return report.exit_code

    _guarded(body)


def _merge_lines(report: MergeReport) -> list[str]:
    from .results import printable

    lines = []
    for item in report.items:
        commit = (item.commit or "")[:12]
        if item.outcome == "applied":
            lines.append(f"{item.agent}: applied as {commit} on {report.target}")
        elif item.outcome == "unchanged":
            lines.append(f"{item.agent}: no changes to apply")
        elif item.outcome == "branch":
            lines.append(f"{item.agent}: branch {item.branch} at {commit}")
        elif item.outcome == "exists":
            lines.append(f"{item.agent}: skipped: branch {item.branch} already exists at {commit}; "
                         "delete it with `git branch -D` to make it again")
        else:
            files = ", ".join(printable(path) for path in item.files)
            lines.append(f"{item.agent}: skipped: conflicts in {files}")
    skipped = sum(item.outcome in ("conflict", "exists") for item in report.items)
    if report.target is not None:
        lines.append(f"{len(report.items) - skipped} of {len(report.items)} agent(s) merged onto {report.target}"
                     + (f"; {skipped} skipped" if skipped else ""))
    return lines


@app.command()
def provenance(
    path: Annotated[str, typer.Argument(help="A file in the output tree, relative to it or absolute.")],
    output: Annotated[Path, typer.Option("--output", help="The output tree to look in.")] = Path("generated"),
    json_output: JsonOption = False,
) -> None:
    """Show who published a file of the output tree, and when."""

    def body() -> int:
        from .provenance import history

        records = history(output, path)
        if not records:
            typer.echo(
                f"no publish of {path} is recorded in {output}; give the path relative to the output tree, "
                "such as SUMMARY.md, or pass --output with the tree",
                err=True,
            )
        if json_output:
            typer.echo(json.dumps(records, indent=2))
            return 0 if records else 1
        if not records:
            return 1
        for record in records:
            typer.echo(
                f"{record.get('time')}  {record.get('action'):<8}  run {record.get('run')}  "
                f"agent {record.get('agent')}  sha256 {str(record.get('sha256'))[:16]}  {record.get('size')} bytes"
            )
        return 0

    _guarded(body)


@audit_app.command("verify")
def audit_verify(
    run_folder: Annotated[Path, typer.Argument(help="The run folder (runs/<run-id>) or an audit log file.")],
    head: Annotated[
        str | None, typer.Option("--head", help="The head hash printed at the end of the run, kept elsewhere.")
    ] = None,
) -> None:
    """Check that a run's audit log is intact: exit 0 if it is, 1 naming the first bad record if not."""

    def body() -> int:
        from .audit_check import check_run_log

        ok, message = check_run_log(run_folder, expected_head=head)
        typer.echo(message, err=not ok)
        return 0 if ok else 1

    _guarded(body)


@app.command()
def status(
    run_id: Annotated[
        str | None, typer.Argument(help="Show this run agent by agent; every run in the runs folder when omitted.")
    ] = None,
    runs_dir: RunsDirOption = Path("runs"),
    json_output: JsonOption = False,
    engine_wide: Annotated[
        bool, typer.Option("--all", help="Also list runs of other runs folders that still have containers.")
    ] = False,
) -> None:
    """List the runs in the runs folder: active, finished or dead, and their containers; or one run's agents."""
    _options["json"] = json_output

    def body() -> int:
        from .plan import LABEL_RUN
        from .status import run_statuses

        if run_id is not None:
            return _status_of_run(run_id, runs_dir, json_output=json_output)

        runtime = _runtime()
        containers = runtime.client.api.containers(all=True, filters={"label": LABEL_RUN})
        statuses = run_statuses(runs_dir, containers)
        elsewhere = [item for item in statuses if item.state == "unknown folder"]
        if not engine_wide:
            statuses = [item for item in statuses if item.state != "unknown folder"]
        if not runs_dir.is_dir():
            typer.echo(f"orchestrate: no runs folder at {runs_dir}; pass --runs-dir with the folder of your runs",
                       err=True)
        if json_output:
            typer.echo(json.dumps([item.to_json() for item in statuses], indent=2))
            return 0
        if not statuses:
            typer.echo(f"no run in {runs_dir}")
            return 0
        rows = [("RUN", "STATE", "AGENTS", "CONTAINERS", "RUNNING", "EXIT")]
        for item in statuses:
            exit_code = "-" if item.exit_code is None else str(item.exit_code)
            rows.append((item.run_id, item.state, str(item.agents), str(item.containers), str(item.running), exit_code))
        _echo_table(rows)
        dead = [item.run_id for item in statuses if item.state == "dead" and item.containers]
        for dead_id in dead:
            typer.echo(f"run {dead_id} died and left containers; remove them with `orchestrate cleanup {dead_id}`")
        if elsewhere and not engine_wide:
            typer.echo(f"{len(elsewhere)} run(s) of other runs folders still have containers; list them with --all")
        return 0

    _guarded(body)


def _status_of_run(run_id: str, runs_dir: Path, *, json_output: bool) -> int:
    from .errors import InputError
    from .plan import LABEL_RUN, RUN_ID_PATTERN
    from .status import run_detail

    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise InputError(f"invalid run id '{run_id}'; copy it from `orchestrate status --runs-dir {runs_dir}`")
    # The low-level list, because the SDK's containers.list inspects each container and fails on one that
    # its run removes in between.
    containers = _runtime().client.api.containers(all=True, filters={"label": f"{LABEL_RUN}={run_id}"})
    detail = run_detail(runs_dir, run_id, containers)
    if detail is None:
        raise InputError(
            f"run {run_id} is unknown: {runs_dir / run_id} does not exist and no container carries its label; "
            f"list the runs with `orchestrate status --runs-dir {runs_dir}`, or pass --runs-dir with the folder "
            "that holds the run"
        )
    if json_output:
        typer.echo(json.dumps(detail.to_json(), indent=2))
        return 0

    if detail.state == "active":
        headline = f"active (orchestrate PID {'unknown' if detail.pid is None else detail.pid})"
    elif detail.state == "finished":
        headline = f"finished with exit code {'unknown' if detail.exit_code is None else detail.exit_code}"
    elif detail.state == "dead":
        headline = "dead (no orchestrate process holds its lock, and it wrote no result.json)"
    else:
        headline = f"no folder in {runs_dir}, only containers with its label"
    typer.echo(f"run {run_id}: {headline}")
    rows = [("AGENT", "CONTAINER", "CONTAINER STATE", "AGENT STATE")]
    for agent in detail.agents:
        rows.append((agent.agent, agent.container_id or "-", agent.container_state or "-", agent.state or "-"))
    _echo_table(rows)
    if detail.state != "active" and any(agent.container_id for agent in detail.agents):
        typer.echo(f"containers of run {run_id} are left; remove them with `orchestrate cleanup {run_id}`")
    return 0


def _echo_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@app.command()
def stop(
    run_id: Annotated[str | None, typer.Argument(help="The run to stop.", show_default=False)] = None,
    all_runs: Annotated[
        bool,
        typer.Option(
            "--all", help="Stop every active run in the runs folder and the running containers of its dead runs."
        ),
    ] = False,
    now: Annotated[
        bool, typer.Option("--now", help="Kill the agents at once instead of giving them the run's grace period.")
    ] = False,
    wait_seconds: Annotated[
        float,
        typer.Option(
            "--timeout", min=0,
            help="Seconds to wait for the run's orchestrate process to end before its containers are killed directly.",
        ),
    ] = 30.0,
    runs_dir: RunsDirOption = Path("runs"),
    json_output: JsonOption = False,
) -> None:
    """Stop a run as Ctrl-C would, or kill the containers of a run whose orchestrate died.

    Exit 0 when nothing of the run still runs, 1 when a container or its orchestrate may still run, 2 for a bad RUN.
    """
    _options["json"] = json_output

    def body() -> int:
        from .errors import InputError
        from .stopping import stop as stop_runs

        if all_runs and run_id is not None:
            raise InputError("give either a RUN or --all, not both")
        if not all_runs and run_id is None:
            raise InputError("name the RUN to stop (list runs with `orchestrate status`), or pass --all")
        reports = stop_runs(_runtime, runs_dir, run_id, now=now, wait_seconds=wait_seconds)
        if json_output:
            documents = [report.to_json() for report in reports]
            typer.echo(json.dumps(documents if all_runs else documents[0], indent=2))
        elif not reports:
            typer.echo(f"no active run in {runs_dir} and no running container of any run")
        for report in reports if not json_output else []:
            for message in report.messages:
                typer.echo(message)
        return 0 if all(report.ok for report in reports) else 1

    _guarded(body)


@app.command()
def version() -> None:
    """Print the version of orchestrate."""
    typer.echo(f"orchestrate {__version__}")


@images_app.command("build")
def images_build(
    offline: Annotated[
        bool, typer.Option("--offline", help="Never use a registry: bootstrap the base with mmdebstrap.")
    ] = False,
    pull: Annotated[bool, typer.Option("--pull", help="Pull the base image from a registry.")] = False,
    mirror: Annotated[
        str | None, typer.Option("--mirror", help="Debian mirror URL for the offline bootstrap.")
    ] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every layer.")] = False,
    profiles: Annotated[
        list[str] | None,
        typer.Option("--profile", help="Also build the image of this agent profile, such as claude-code; repeatable."),
    ] = None,
    all_profiles: Annotated[
        bool, typer.Option("--all-profiles", help="Also build the image of every agent profile that has one.")
    ] = False,
) -> None:
    """Build the sandbox images. Without --pull, a missing base image is bootstrapped offline.

    Profile images are built only when asked for: their packages are fetched on this machine with
    npm, pip or apt-get first, so their RUN steps need no network.
    """

    def body() -> int:
        from .errors import InputError
        from .images import build_all
        from .profile_images import build_profile_images, profile_images

        if offline and pull:
            raise InputError("--offline and --pull exclude each other; choose one")
        runtime = _runtime()
        mode = "auto"
        if offline:
            mode = "offline"
        elif pull:
            mode = "pull"
        built = build_all(runtime.client, mode=mode, mirror=mirror, no_cache=no_cache)
        for tag in built:
            typer.echo(f"built {tag}")
        wanted = sorted(profile_images()) if all_profiles else list(dict.fromkeys(profiles or []))
        for image in build_profile_images(runtime.client, wanted, no_cache=no_cache):
            typer.echo(f"built {image.tag} in {image.seconds:.0f} s, {image.size / 1e6:.0f} MB")
        return 0

    _guarded(body)


@app.command()
def validate(
    run_id: Annotated[
        str | None, typer.Argument(help="The run to check; every running container of any run when omitted.")
    ] = None,
    runs_dir: RunsDirOption = Path("runs"),
    json_output: JsonOption = False,
) -> None:
    """Check every security invariant of the running agent containers, from inspect and from /proc.

    Nothing runs inside the containers, so a live run goes on undisturbed.
    Exit codes: 0 every check passed, 1 a check failed or no container was running, 2 a bad RUN.
    """
    _options["json"] = json_output

    def body() -> int:
        from .validate import report_rows, report_summary
        from .validate import validate as validate_containers

        report = validate_containers(_runtime(), run_id=run_id, runs_root=runs_dir)
        if json_output:
            typer.echo(json.dumps(report.to_json(), indent=2))
            return report.exit_code
        if report.containers:
            _echo_table(report_rows(report))
        for line in report_summary(report):
            typer.echo(line, err=not report.containers)
        return report.exit_code

    _guarded(body)


@app.command()
def demo(json_output: JsonOption = False) -> None:
    """Show each boundary of the sandbox holding, with a canary server of the demo's own, in about 30 s.

    Nothing leaves this machine: every probe aims at the canary container the demo starts on a Docker
    network it creates, and removes at the end. Exit codes: 0 every boundary held, 1 one did not, 4 Docker
    or the base image is missing.
    """
    _options["json"] = json_output

    def body() -> int:
        from .demo import run_demo

        result = run_demo(_runtime(), on_line=None if json_output else typer.echo)
        if json_output:
            typer.echo(json.dumps(result.to_json(), indent=2))
        return 0 if result.ok else 1

    _guarded(body)


@app.command()
def doctor(runs_dir: RunsDirOption = Path("runs"), json_output: JsonOption = False) -> None:
    """Check that this machine can run agents: Docker, runtimes, base image, seccomp, inotify, disk.

    Prints one line per check (ok, warn or fail) and the command that fixes each problem.
    Exit 1 when orchestrate cannot run here (no engine, no base image, a broken seccomp profile), 0 otherwise.
    """
    _options["json"] = json_output

    def body() -> int:
        from .doctor import gather_facts, report_text, run_checks

        report = run_checks(gather_facts(runs_dir))
        typer.echo(json.dumps(report.to_json(), indent=2) if json_output else report_text(report))
        return report.exit_code

    _guarded(body)



@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(help="The run, such as example-20261204-211053-e34722.", show_default=False)],
    agent: Annotated[str | None, typer.Argument(help="One agent; every agent of the run when omitted.")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the agents exit.")] = False,
    runs_dir: RunsDirOption = Path("runs"),
) -> None:
    """Print an agent's output: from the engine while it runs, from the run folder after the run.

    With several agents each line starts with the agent's name. Exit 0, or 2 for an unknown run or agent.
    """

    def body() -> int:
        import threading

        from .logs import agent_sources, show
        from .terminal_filter import TerminalFilter, reset_sequence

        runtime = _runtime()
        sources = agent_sources(runtime, runs_dir, run_id, agent)
        lock = threading.Lock()
        output = sys.stdout.buffer
        prefix = len(sources) > 1
        # A terminal gets each agent's output through a filter of its own, as `attach` does; a pipe gets every byte.
        filters = {source.agent: TerminalFilter() for source in sources} if output.isatty() else {}

        def write(name: str, line: bytes) -> None:
            with lock:
                text = filters[name].feed(line) if filters else line
                output.write((name.encode() + b" | " if prefix else b"") + text)
                output.flush()

        try:
            show(runtime, sources, write, follow=follow)
        finally:
            if filters:
                output.write(reset_sequence(filters.values()))
                output.flush()
        return 0

    _guarded(body)


def _for_run(error: PlanError) -> OrchestrateError:
    """Return the error that `run` and `shell` raise for a plan problem."""
    from .plan import ENVIRONMENT_CAUSES

    # For a run, a missing image or runtime is the machine's problem, not the manifest's: exit 4.
    if all(problem.cause in ENVIRONMENT_CAUSES for problem in error.problems):
        if all(problem.cause == "image-missing" for problem in error.problems):
            return ImageMissing(str(error))
        return EnvironmentProblem(str(error))
    return error


def _terminal_size() -> tuple[int, int] | None:
    from .terminal import window_size

    return window_size(0)


@app.command()
def shell(
    command: Annotated[
        list[str] | None, typer.Argument(help="The command to run instead of the image's shell, after `--`.")
    ] = None,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", help="Take the sandbox's settings from this manifest's --agent.")
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="The agent of --manifest to open.")] = None,
    source: Annotated[
        Path | None, typer.Option("--source", help="The folder mounted read-only at /workspace/src; default: here.")
    ] = None,
    profile: Annotated[
        str | None, typer.Option("--profile", help="The agent profile that sets the image and egress broker; "
                                                   "default custom.")
    ] = None,
    timeout: Annotated[
        str | None, typer.Option("--timeout", help="End the sandbox after this long, such as 90m; default 8h.")
    ] = None,
    runs_dir: RunsDirOption = Path("runs"),
) -> None:
    """Open a terminal in one hardened sandbox: the source read-only, a fresh workspace, the monitor and audit log.

    Leaving the shell ends the run and removes the container; the workspace is published when the shell exits 0.
    The exit code is the shell's (or COMMAND's), or 2 invalid options, 3 a violation stopped it, 4 Docker or an
    image is missing, 130 stopped by a signal or `orchestrate stop`.
    """

    def body() -> int:
        from .attach import LocalTerminal
        from .attached_log import hold_warnings, release_warnings
        from .errors import InputError
        from .runner import execute, plan_manifest
        from .shell import (
            SHELL_AGENT,
            ShellRequest,
            discard_run_folder,
            for_shell_options,
            prepare_shell_manifest,
            shell_banner,
            shell_exit_code,
        )

        if not sys.stdin.isatty():
            raise InputError("orchestrate shell needs a terminal on standard input; run it from a terminal, or use "
                             "`orchestrate run` for a batch agent")
        request = ShellRequest(runs_dir=runs_dir, command=tuple(command or ()), manifest=manifest, agent=agent,
                               source=source, profile=profile, timeout=timeout)
        runtime = _runtime()
        loaded, run_id = prepare_shell_manifest(request, cwd=Path.cwd())
        try:
            plan = plan_manifest(loaded, runtime, runs_root=runs_dir, run_id=run_id)
        except OrchestrateError as exc:
            discard_run_folder(loaded.path.parent)
            if isinstance(exc, PlanError):
                raise _for_run(for_shell_options(exc, request, loaded.path)) from exc
            raise
        name = plan.agents[0].name if manifest is not None else SHELL_AGENT
        typer.echo(f"orchestrate: run {plan.run_id}: {shell_banner(plan)}; leave the shell to end the run", err=True)
        # The run's progress lines would land in the middle of the shell's screen; warnings still show.
        orchestrator_log = logging.getLogger("orchestrator")
        if orchestrator_log.level == logging.INFO:
            orchestrator_log.setLevel(logging.WARNING)
        terminal = LocalTerminal(name, detach=False)
        held = hold_warnings()
        try:
            result = execute(plan, runtime, terminal_size=_terminal_size(), control_ready=terminal.start)
        finally:
            terminal.close()
            release_warnings(held)
        held_line = held.summary(plan.run_dir)
        if held_line:
            typer.echo(f"orchestrate: {held_line}", err=True)
        outcome = result.agents[0]
        typer.echo(f"orchestrate: run {plan.run_id} ended: {outcome.describe()}; its folder is {plan.run_dir}, "
                   f"its audit log head {result.audit_head}", err=True)
        return shell_exit_code(result.exit_code, outcome.exit_code, outcome.state)

    _guarded(body)


@app.command()
def attach(
    run_id: Annotated[str, typer.Argument(help="The run, as `orchestrate status` lists it.", show_default=False)],
    agent: Annotated[str, typer.Argument(help="The interactive agent to connect to.", show_default=False)],
    runs_dir: RunsDirOption = Path("runs"),
) -> None:
    """Connect this terminal to an interactive agent of a running run; Ctrl-P Ctrl-Q detaches and leaves it running.

    Exit codes: the agent program's exit code when it ends while attached, 0 after a detach, 2 an unknown run or
    agent, 4 the run is not active.
    """

    def body() -> int:
        from .attach import attach_agent

        end = attach_agent(runs_dir, run_id, agent)
        if end.detached:
            typer.echo(f"\ndetached from agent {agent}; it keeps running. Attach again with "
                       f"`orchestrate attach {run_id} {agent} --runs-dir {runs_dir}`", err=True)
            return 0
        if end.exit_code is None:
            typer.echo(f"\nthe run {run_id} ended", err=True)
            return 0
        return end.exit_code

    _guarded(body)


@app.command("exec")
def exec_(
    run_id: Annotated[str, typer.Argument(help="The run, as `orchestrate status` lists it.", show_default=False)],
    agent: Annotated[str, typer.Argument(help="The running agent to run the command in.", show_default=False)],
    command: Annotated[list[str], typer.Argument(help="The command and its arguments, after `--`.",
                                                 show_default=False)],
    tty: Annotated[
        bool | None,
        typer.Option("--tty/--no-tty", help="Give the command a terminal; by default when stdin and stdout are one.",
                     show_default=False),
    ] = None,
    runs_dir: RunsDirOption = Path("runs"),
) -> None:
    """Run a command inside a running agent's sandbox, as the agent's user, recorded in the run's audit log.

    Exit codes: the command's own, 1 when it could not run or its end was not seen, 2 an unknown run or agent,
    4 the run is not active.
    """

    def body() -> int:
        from .attach import exec_command

        return exec_command(runs_dir, run_id, agent, command, tty=tty)

    _guarded(body)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        # A Ctrl-C while typer still parses the arguments ends with exit code 130 and no traceback.
        # Once a command's body runs, the command handles Ctrl-C itself.
        sys.stderr.write("orchestrate: interrupted\n")
        raise SystemExit(130) from None
