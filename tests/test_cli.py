"""The command line: listing, one-line errors, exit codes."""

import subprocess
import sys

from benchmark.cli import main


def test_list_shows_methods_datasets_and_tables(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for word in ("ae", "Baur", "table1", "ra-table3a", "phantom"):
        assert word in out


def test_unknown_table_is_one_clear_line(capsys):
    assert main(["table", "no-such-table", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown table 'no-such-table'" in err[0]


def test_module_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "benchmark", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "phbench" in out.stdout
