"""``cfgdiff info RUN_DIR``: what it reports is what the run's files hold (step, data sizes, parameters, losses,
checkpoints, resume changes), for every kind of run; a bad RUN_DIR is one line, exit 2."""

import json

import pytest

from cfgdiff.cli import main
from cfgdiff.data import load_dataset
from cfgdiff.runtime.checkpoint import read_metadata
from cfgdiff.training import CHECKPOINT_FILE, load_model

PREFIX = "cfgdiff: error: "
TINY = ["--batch-size", "8", "--no-progress"]


def _info(capsys, *argv):
    code = main(["info", *map(str, argv)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _info_json(capsys, path):
    return json.loads(_info(capsys, path, "--json"))


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory):
    """gmm2d: 3 steps, then resumed to 5 with another learning rate."""
    run_dir = tmp_path_factory.mktemp("info") / "gmm"
    assert main(["train", "--data", "gmm2d", "--run-dir", str(run_dir), "--steps", "3", "--log-every", "1", *TINY]) == 0
    assert main(["train", "--run-dir", str(run_dir), "--resume", "--steps", "5", "--lr", "0.002", *TINY]) == 0
    return run_dir


def test_diffusion_run_reports_what_its_files_hold(capsys, resumed_run):
    info = _info_json(capsys, resumed_run)
    assert info["run_dir"] == str(resumed_run) and len(info["runs"]) == 1
    run = info["runs"][0]
    meta = read_metadata(resumed_run / CHECKPOINT_FILE)
    assert run["kind"] == "diffusion" and (run["step"], run["steps"], run["complete"]) == (5, 5, True)
    train, test = load_dataset("gmm2d", "train"), load_dataset("gmm2d", "test")
    assert run["data"]["source"] == "gmm2d" and run["data"]["shape"] == [2]
    assert (run["data"]["train"], run["data"]["test"]) == (len(train), len(test))
    assert run["data"]["class_names"] == list(train.class_names) and run["data"]["num_classes"] == 3
    model = load_model(resumed_run)
    assert run["parameters"] == sum(p.numel() for p in model.parameters())
    assert run["network"] == meta["model_config"]
    assert run["config"] == json.loads((resumed_run / "config.json").read_text())
    log = [json.loads(line) for line in (resumed_run / "loss.jsonl").read_text().splitlines()]
    losses = [entry for entry in log if "event" not in entry]
    assert run["losses"] == losses[-5:] and run["steps_per_sec"] == losses[-1]["steps_per_sec"]
    assert run["events"] == [{"event": "resume", "step": 3, "changed": {"steps": [3, 5], "lr": [0.001, 0.002]}}]
    files = {c["file"]: c for c in run["checkpoints"]}
    on_disk = {p.name for p in resumed_run.glob("checkpoint*.safetensors")}
    assert set(files) == on_disk
    for name, entry in files.items():
        assert entry["bytes"] == (resumed_run / name).stat().st_size
        assert entry["step"] == read_metadata(resumed_run / name)["step"]
    assert files[CHECKPOINT_FILE]["latest"]
    assert files[CHECKPOINT_FILE]["same_as"] == "checkpoint-step-00000005.safetensors"
    assert run["resolved_config"] == str(resumed_run / "resolved_config.toml")

    text = _info(capsys, resumed_run)
    assert "step 5 of 5 (complete)" in text and "train 30000, test 30000" in text
    assert f"{run['parameters']:,} parameters" in text and "resumed at step 3: steps 3 -> 5, lr 0.001 -> 0.002" in text
    assert "checkpoint-step-00000003.safetensors" in text and "last losses:" in text and "steps/s" in text


def test_one_checkpoint_file_and_an_incomplete_run(capsys, resumed_run):
    run = _info_json(capsys, resumed_run / "checkpoint-step-00000003.safetensors")["runs"][0]
    assert (run["step"], run["steps"], run["complete"]) == (3, 3, True)  # that file's own config (its total)
    assert run["checkpoint"].endswith("checkpoint-step-00000003.safetensors")
    run = _info_json(capsys, resumed_run / "checkpoint-step-00000000.safetensors")["runs"][0]
    assert run["step"] == 0 and not run["complete"]


def test_digits_distilled_classifier_and_feature_runs(capsys, tmp_path, digits_run):
    shared = tmp_path / "shared"
    assert main(["train-classifier", "--run-dir", str(shared), "--steps", "2", "--base-channels", "8", *TINY]) == 0
    assert main(["train-features", "--run-dir", str(shared), "--steps", "2", "--width", "4", *TINY]) == 0
    distilled = tmp_path / "distilled"
    assert main(["distill", str(digits_run), "--w-range", "0,2", "--run-dir", str(distilled), "--steps", "2",
                 *TINY]) == 0
    capsys.readouterr()

    runs = {r["kind"]: r for r in _info_json(capsys, shared)["runs"]}
    assert set(runs) == {"noisy_classifier", "feature_classifier"}  # two kinds side by side in one directory
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    for run in runs.values():
        assert (run["step"], run["steps"]) == (2, 2)
        assert run["data"]["source"] == "digits" and run["data"]["shape"] == [1, 8, 8]
        assert (run["data"]["train"], run["data"]["test"]) == (len(train), len(test))
    classifier_meta = read_metadata(shared / "classifier.safetensors")
    assert runs["noisy_classifier"]["noisy_test_accuracy"] == classifier_meta["noisy_test_accuracy"]
    assert runs["feature_classifier"]["accuracy"]["test_count"] == len(test)
    assert runs["feature_classifier"]["extractor"] == str(shared / "features.safetensors")

    run = _info_json(capsys, distilled)["runs"][0]
    meta = read_metadata(distilled / CHECKPOINT_FILE)
    assert run["kind"] == "distilled" and run["distillation"] == meta["distillation"]
    assert run["data"]["class_names"] == [str(d) for d in range(10)]
    assert run["parameters"] == sum(p.numel() for p in load_model(distilled).parameters())
    text = _info(capsys, distilled)
    assert "distilled student (cfgdiff distill)" in text and "guidance stage" in text
    text = _info(capsys, shared)
    assert "noisy classifier" in text and "feature classifier" in text


def test_bad_run_dirs_are_one_line(capsys, tmp_path, resumed_run):
    def error(*argv):
        code = main(["info", *map(str, argv)])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith(PREFIX) and "Traceback" not in err, err
        return lines[0]

    assert "no such file" in error(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no cfgdiff run" in error(empty)
    (empty / "notes.txt").write_text("hello")
    assert "not a checkpoint" in error(empty / "notes.txt")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    data = (resumed_run / CHECKPOINT_FILE).read_bytes()
    (truncated / CHECKPOINT_FILE).write_bytes(data[:100])
    assert "not a readable safetensors checkpoint" in error(truncated)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / CHECKPOINT_FILE).write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.")
    assert "safetensors" in error(foreign)
    assert "--losses must be >= 1" in error(resumed_run, "--losses", "0")
