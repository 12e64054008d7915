"""`actmax session create`'s shared-rig warning names the rig's other sessions as `session list` does: the names the
server escaped to ASCII for its header are shown, and escaped again only where the console cannot encode them."""

from __future__ import annotations

import io
import sys

import pytest

from server import client_cli
from server.cli import main
from tests.server.conftest import session_config
from tests.test_cli_recording_day import cli_against


@pytest.mark.parametrize("name", ["実験", "Café", "back\\slash \\u5b9f", "tab\there", "it's \"quoted\"", "🧪\u200b"])
def test_a_header_name_escaped_by_ascii_reads_as_repr_shows_it(name):
    """Printable characters come back; a backslash of the name, a control and a zero-width character stay escaped."""
    header = f"rig 'rig-A' already has active session(s) 1 {ascii(name)}: it shows the images of each in turn"
    assert client_cli.unescaped(header) == header.replace(ascii(name), repr(name))


def test_create_warns_with_the_other_sessions_names_readable(tmp_path, monkeypatch, capsys):
    """It printed ``1 'Caf\\xe9 \\u5b9f\\u9a13'`` where ``session list`` printed ``Café 実験``."""
    with cli_against(tmp_path, monkeypatch, capsys) as cli:
        first = cli.http.post("/sessions", json=session_config(name="Café 実験", rig="rig-A")).json()
        config = tmp_path / "second.yaml"
        config.write_text("name: second\nrig: rig-A\nthreads:\n"
                          "  - {name: t, generator: dcgan-faces, optimizer: cma, objective: {channels: [0]}}\n")
        code, out, err = cli("session", "create", str(config))
        assert code == 0, err
        assert f"actmax session: warning: rig 'rig-A' already has active session(s) {first['id']} 'Café 実験': " in err

        console = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")  # a console without 実験 (but with é)
        monkeypatch.setattr(sys, "stderr", console)
        assert main(["session", "create", str(config)]) == 0
        console.flush()
        assert f"(s) {first['id']} 'Café \\u5b9f\\u9a13', " in console.buffer.getvalue().decode("latin-1")
