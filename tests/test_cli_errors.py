"""`exvae`: bad paths and refused data files are one-line errors with exit status 2."""
from __future__ import annotations

from exvae_fast.cli import main

from test_run_table import make_run, metrics_of


def one_line_error(capsys, command: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"exvae {command}: error:"), err
    return err


def test_an_output_path_that_is_a_folder(tmp_path, capsys):
    make_run(tmp_path / "runs", "a", ["prior.name=standard"], metrics_of(-90.0))
    capsys.readouterr()
    assert main(["table", str(tmp_path / "runs"), "--out", str(tmp_path)]) == 2
    assert "Is a directory" in one_line_error(capsys, "table")


def test_an_output_path_under_a_file(tmp_path, capsys):
    make_run(tmp_path / "runs", "a", ["prior.name=standard"], metrics_of(-90.0))
    (tmp_path / "file").write_text("x")
    capsys.readouterr()
    assert main(["table", str(tmp_path / "runs"), "--csv", str(tmp_path / "file" / "t.csv")]) == 2
    one_line_error(capsys, "table")


def test_a_refused_pickle_is_reported_in_one_line(tmp_path, capsys):
    path = tmp_path / "freyfaces.pkl"
    path.write_bytes(b"cos\nsystem\n(S'true'\ntR.")
    status = main(["train", "--set", "data.name=frey-faces", "--set", f"data.root={path}", "--epochs", "1",
                   "--no-eval", "--no-progress", "--out-dir", str(tmp_path / "runs")])
    assert status == 2
    assert "refused global 'os.system'" in one_line_error(capsys, "train")



def test_train_shortcuts_set_their_config_fields():
    from exvae_fast.cli import _train_config
    from exvae_fast.cli_parser import build_parser
    args = build_parser().parse_args(["train", "--compile", "--epochs", "4", "--seed", "2", "--device", "cpu",
                                      "--backend", "torch", "--name", "x", "--out-dir", "o"])
    cfg = _train_config(args)
    assert (cfg.train.compile, cfg.train.epochs, cfg.train.seed, cfg.train.device, cfg.prior.backend,
            cfg.name, cfg.out_dir) == (True, 4, 2, "cpu", "torch", "x", "o")
    assert _train_config(build_parser().parse_args(["train"])).train.compile is False
