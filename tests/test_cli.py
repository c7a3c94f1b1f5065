"""The command line: help, clear errors for bad flags, documented exit codes."""

import subprocess
import sys

import pytest

from stream_node.cli import main


@pytest.mark.parametrize("command", ["demo", "source", "worker", "collector"])
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "exit codes" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["demo", "--frames", "0"], "must be > 0"),
    (["demo", "--shape", "512by1024"], "not like 512x1024"),
    (["demo", "--dtype", "complex64"], "invalid choice"),
    (["worker", "--input", "ipc:///tmp/x"], "required"),
    (["frobnicate"], "invalid choice"),
    (["source", "--control", "tcp://a:1", "--data", "tcp://a:2", "--peer-timeout", "-1"],
     "must be > 0"),
])
def test_wrong_flags_give_a_clear_error_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_bad_endpoint_is_a_one_line_error_not_a_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "stream_node", "source", "--control", "nonsense://x",
         "--data", "tcp://127.0.0.1:1", "--ready-timeout", "1"],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 5
    assert "Traceback" not in proc.stderr
    assert "nonsense://x" in proc.stderr


@pytest.mark.timeout(120)
def test_demo_command_prints_summary_and_exits_0(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "stream_node", "demo", "--frames", "50", "--shape", "64x128"],
        capture_output=True, text=True, timeout=100, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "50 written of 50 sent" in proc.stdout and "missing    0" in proc.stdout
    assert len(list(tmp_path.glob("stream-node-demo-*.h5"))) == 1


def test_version_is_importable_outside_the_tree(tmp_path):
    code = "import stream_node; print(stream_node.__version__)"
    proc = subprocess.run([sys.executable, "-c", code],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "0.1.0"
