"""Issue #18 item 7.2: a topology file that is not UTF-8 text.

TOML is UTF-8 by definition; a file saved as Latin-1 (an accented host comment, say) must be a
configuration error naming the file, the line and the byte, not a UnicodeDecodeError traceback.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from stream_node.model.errors import ExitCode


@pytest.mark.timeout(60)
def test_check_of_a_file_that_is_not_utf8_names_the_file_line_and_byte(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "t"\n\n# salle d\'expérience\n[nodes.a]\nhost = "x"\n'
                     .encode("latin-1"))
    proc = subprocess.run([sys.executable, "-m", "stream_node", "check", str(path)],
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == ExitCode.CONFIG, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and "1 problem(s)" in lines[1], proc.stderr  # as for any problem
    assert lines[0].startswith(f"{path}:3: "), lines[0]
    assert "UTF-8" in lines[0] and "0xe9" in lines[0], lines[0]
