"""Several agents of one orchestrate process publish at once, from worker threads."""

from __future__ import annotations

import threading
from pathlib import Path

from orchestrator.publish import PublishReport, publish_agent

from .test_publish_support import SUMMARY, check_ledger_matches_tree, make_request, write_files


def test_threads_publish_into_one_tree(tmp_path: Path) -> None:
    agents = [f"agent-{index}" for index in range(6)]
    requests = [make_request(tmp_path, agent) for agent in agents]
    for agent, request in zip(agents, requests, strict=True):
        files = {f"{agent}/file-{number}.txt": f"{agent} {number}\n" for number in range(40)}
        write_files(request.workspace, {**files, SUMMARY: f"## {agent}\n"})

    reports: dict[str, PublishReport] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(len(requests))

    def publish(request_index: int) -> None:
        start.wait()
        try:
            reports[agents[request_index]] = publish_agent(requests[request_index])
        except BaseException as exc:  # noqa: BLE001 - the assertion below reports it.
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    assert sorted(reports) == agents
    assert all(report.findings == [] for report in reports.values())
    summary = (tmp_path / "output" / SUMMARY).read_text()
    assert sorted(line for line in summary.splitlines() if line) == sorted(f"## {agent}" for agent in agents)
    check_ledger_matches_tree(tmp_path / "output")
