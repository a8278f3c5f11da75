"""docs/protocol.md and the Node client's protocol module are generated from dsu.protocol: a change
to the spec (what the worker validates and sends) without regenerating them fails here."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_protocol_files_are_up_to_date():
    check = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_protocol.py"), "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_doc_names_every_command_message_and_error_code():
    from dsu.errors import CODES
    from dsu import protocol as spec

    doc = (ROOT / "docs" / "protocol.md").read_text()
    for name in [*spec.COMMANDS, *spec.ALIASES]:
        assert f"`{name}`" in doc
    for command in spec.COMMANDS.values():
        assert f"### `{command.name}`" in doc
        for field in command.fields:
            assert f"`{field.name}`" in doc
    for status in spec.MESSAGES:
        assert f"### `{status}`" in doc
    for code in CODES:
        assert f"| `{code}` |" in doc
