"""`open_vlm.errors.run_main`: one line and an exit status per failure; the traceback in the run's log file."""

import logging

from open_vlm.errors import ConfigError, DataError, run_main, usage_errors
from open_vlm.runfolder import setup_logging


def failing(err: Exception):
    def main(argv):
        raise err

    return main


def last_line(capsys) -> str:
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_exit_status_and_one_line_per_kind_of_error(capsys):
    assert run_main(failing(ConfigError("data.batch_size: -4 is out of range\n  (it must be >= 1)"))) == 2
    assert last_line(capsys) == "error: data.batch_size: -4 is out of range (it must be >= 1)"
    assert run_main(failing(DataError("data.sources[0]: no sample decodes"))) == 1
    assert last_line(capsys) == "error: data.sources[0]: no sample decodes"
    # another module's error that says its own exit status (launch/instances.py LaunchError does)
    launch_error = type("LaunchError", (Exception,), {"exit_code": 2})
    assert run_main(failing(launch_error("no IAM role"))) == 2
    assert last_line(capsys) == "error: no IAM role"
    # nobody explained this one: its type, its first line, and how to see more
    assert run_main(failing(RuntimeError("stream 0: a whole epoch\nwithout one good sample"))) == 1
    assert last_line(capsys) == "error: RuntimeError: stream 0: a whole epoch (OPEN_VLM_DEBUG=1 shows the traceback)"


def test_usage_errors_are_config_errors(capsys):
    def main(argv):
        with usage_errors(FileNotFoundError):
            raise FileNotFoundError("no complete checkpoint at x")

    assert run_main(main) == 2
    assert last_line(capsys) == "error: no complete checkpoint at x"


def test_traceback_goes_to_the_log_file_not_the_console(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPEN_VLM_DEBUG", raising=False)
    log_path = setup_logging(tmp_path, "p", "train")
    try:
        assert run_main(failing(KeyError("loss"))) == 1
    finally:
        for handler in list(logging.getLogger().handlers):
            logging.getLogger().removeHandler(handler)
            handler.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().endswith(
        "error: KeyError: 'loss' (OPEN_VLM_DEBUG=1 shows the traceback)"
    )
    logged = log_path.read_text()
    assert "Traceback" in logged and "KeyError: 'loss'" in logged and "in main" in logged
