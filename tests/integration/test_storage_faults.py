"""Storage folders changed under a running server: records land inside the storage root or
nowhere, and the client is told which."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import requests

from tests.conftest import NOBODY, RunningServer, start_server, unprivileged


def ask(server: RunningServer, conversation_id: str | None = None) -> requests.Response:
    body = {"query": "hello"}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    return requests.post(f"{server.url}/v1/query", json=body, timeout=30)


def files_under(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def test_a_conversation_folder_swapped_for_a_symlink_out_of_the_root_is_refused(
    server: RunningServer,
) -> None:
    first = ask(server)
    assert first.status_code == 200, first.text
    conversation_id = first.json()["conversation_id"]
    (user_folder,) = (server.root / "transcripts").iterdir()
    outside = server.root / "outside"
    outside.mkdir()
    shutil.rmtree(user_folder / conversation_id)
    (user_folder / conversation_id).symlink_to(outside)

    response = ask(server, conversation_id)

    assert response.status_code == 500, response.text
    detail = response.json()["detail"]
    assert "leads outside" in detail["cause"]
    assert files_under(outside) == []
    assert "Traceback" not in server.log()


def test_a_folder_made_read_only_answers_500_saying_why(shared_tmp: Path) -> None:
    prefix = unprivileged()
    root = shared_tmp / "server"
    root.mkdir()
    if prefix:
        os.chown(root, NOBODY, NOBODY)
    server = start_server(root, prefix=prefix)
    try:
        assert ask(server).status_code == 200
        (user_folder,) = (server.root / "transcripts").iterdir()
        user_folder.chmod(0o500)

        response = ask(server)

        assert response.status_code == 500, response.text
        cause = response.json()["detail"]["cause"]
        assert cause.startswith("Failed to store transcript at directory: ")
        assert cause.endswith(": Permission denied")
        assert "Permission denied" in server.log()
        assert [path for path in (server.root / "transcripts").rglob("*.tmp")] == []
    finally:
        server.stop()
        for folder in (server.root / "transcripts").iterdir():
            folder.chmod(0o700)
