"""Run every bad input the cfgdiff CLI handles, for real, and print the tables (Markdown) of what each gets.

Run from the repository root:  OMP_NUM_THREADS=1 .venv/bin/python scripts/bad_inputs_table.py > table.md
It builds tiny fixtures in a temporary directory (a 3-step digits run, a gmm2d run, distilled students, a noisy
classifier, diffusers pipelines, bad data files) and calls ``cfgdiff.cli.main`` in-process for each case; it checks
that each refusal is exactly one line on stderr and prints the line with the temporary paths shortened.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import socket
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, os.getcwd())

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from cfgdiff.cli import main  # noqa: E402
from cfgdiff.runtime.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from cfgdiff.training import CHECKPOINT_FILE  # noqa: E402

ROOT = Path(tempfile.mkdtemp(prefix="cfgdiff-bad-"))
os.environ["CFGDIFF_CACHE_DIR"] = str(ROOT / "cache")
os.chdir(ROOT)
ROWS: dict[str, list[tuple[str, str, str]]] = {}
PROBLEMS: list[str] = []


def run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def short(text: str) -> str:
    if text == "":
        return '""'
    text = text.replace(str(ROOT) + "/", "").replace(str(ROOT), ".")
    text = text.replace("cfgdiff: error: ", "")
    return text if len(text) <= 170 else text[:167] + "…"


def case(area: str, what: str, argv, *, expect: int = 2, shown: str | None = None) -> None:
    code, _, err = run(argv)
    lines = [line for line in err.splitlines() if line.strip() and "warning:" not in line]
    if code != expect or (expect == 2 and (len(lines) != 1 or not lines[0].startswith("cfgdiff: error:"))):
        PROBLEMS.append(f"{area}: {what}: exit {code}: {err.strip()[:300]}")
    message = short(lines[-1]) if lines else ""
    command = shown or " ".join(short(str(a)) for a in argv)
    ROWS.setdefault(area, []).append((what, f"`cfgdiff {command}`", message.replace("|", "\\|"), code))


def build_fixtures():
    from cfgdiff.training import default_config, train

    digits = ROOT / "digits"
    train(default_config("digits", steps=3, batch_size=16, checkpoint_every=3, log_every=1,
                         model={"arch": "unet", "base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1,
                                "emb_dim": 32, "groups": 4}), digits)
    gmm = ROOT / "gmm"
    assert run(["train", "--data", "gmm2d", "--run-dir", gmm, "--steps", "4", "--batch-size", "16",
                "--no-progress"])[0] == 0
    tiny = ["--steps", "2", "--batch-size", "16", "--no-progress"]
    assert run(["distill", digits, "--w-range", "0,4", "--run-dir", ROOT / "stage1", *tiny])[0] == 0
    assert run(["distill", ROOT / "stage1", "--progressive", "--steps-from", "8", "--run-dir", ROOT / "stage2",
                *tiny])[0] == 0
    groups, meta = load_checkpoint(digits / CHECKPOINT_FILE)  # the same network declared for 16x16 images
    meta["model_config"]["image_shape"] = [1, 16, 16]
    meta["data_shape"] = [1, 16, 16]
    save_checkpoint(ROOT / "other" / CHECKPOINT_FILE, model=groups["model"], ema=groups.get("ema") or None,
                    metadata=meta)
    data = (digits / CHECKPOINT_FILE).read_bytes()
    (ROOT / "truncated").mkdir()
    (ROOT / "truncated" / CHECKPOINT_FILE).write_bytes(data[: len(data) // 2])
    (ROOT / "pickled").mkdir()
    (ROOT / "pickled" / CHECKPOINT_FILE).write_bytes(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94.")
    from safetensors.torch import save_file

    (ROOT / "foreign").mkdir()
    save_file({"w": torch.zeros(2)}, str(ROOT / "foreign" / CHECKPOINT_FILE))
    (ROOT / "empty").mkdir()
    (ROOT / "afile").write_text("not a directory\n")
    from cfgdiff.models.feature_classifier import FeatureClassifier, default_classifier_config, save_feature_classifier

    save_feature_classifier(FeatureClassifier(**default_classifier_config((3, 16, 16), 10)),
                            ROOT / "rgb-features" / "features.safetensors", {"data_name": "rgb"})
    (ROOT / "weights.pth").write_bytes(b"not used")
    assert run(["eval", digits, "--w", "0", "--n", "4", "--steps", "1", "--bootstrap", "0", "--out", ROOT / "sweep",
                "--no-progress"])[0] == 0
    (ROOT / "broken-sweep").mkdir()
    (ROOT / "broken-sweep" / "results.json").write_text("{not json")
    return digits


def data_cases():
    from tests.data.test_data_formats import (
        cifar_records,
        idx_bytes,
        make_set,
        png_bytes,
        write_cifar10,
        write_edm_zip,
        write_folder,
        write_hf,
        write_idx,
    )

    d = ROOT / "data"
    x, y, xt, yt = make_set(1, size=28)
    base = ["train", "--run-dir", ROOT / "never", "--steps", "1", "--no-progress", "--data"]
    A = "data"

    def bad(what, source, *extra):
        case(A, what, [*base, source, *extra], shown=f"train --data {short(str(source))} {' '.join(extra)}".strip())

    bad("not a built-in name and no such path", "mnist")
    bad("a Hugging Face hub name (nothing is downloaded)", "hf:fashion_mnist")
    root = write_idx(d / "idx-magic", x, y, xt, yt)
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x0d\x03" + bytes(100)))
    bad("IDX file with a wrong magic number", root)
    root = write_idx(d / "idx-cut", x, y, xt, yt, gz=False)
    path = root / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    bad("IDX file truncated", root)
    root = write_idx(d / "idx-count", x, y, xt, yt)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(yt[:-1].astype(np.uint8))))
    bad("IDX images and labels of different counts", root)
    root = write_idx(d / "idx-range", x, y, xt, yt)
    bad("a label outside the class names given", root, "--class-names", "a,b")
    bad("single IDX file instead of its folder", root / "train-images-idx3-ubyte.gz")
    np.savez(d / "neg.npz", x=x, y=np.where(y == 0, -1, y))
    bad("negative label (.npz)", d / "neg.npz")
    np.savez(d / "noclass.npz", x=x, y=y, class_names=np.array(["a", "b", "c", "d"]))
    bad("a named class without training images", d / "noclass.npz")
    root = write_folder(d / "folder-empty", x, y)
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    bad("image folder: a class folder without images", root)
    flat = d / "flat"
    flat.mkdir()
    (flat / "one.png").write_bytes(png_bytes(np.zeros((1, 4, 4), np.uint8)))
    bad("image folder without class sub-folders", flat)
    root = write_folder(d / "folder-corrupt", x, y)
    (root / "dog" / "9999.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    bad("a corrupt image (named)", root)
    bad("EDM zip without dataset.json labels", write_edm_zip(d / "unlabelled.zip", x, y, labels=False))
    path = write_edm_zip(d / "extra.zip", x, y)
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("extra/img.png", png_bytes(x[0]))
    bad("EDM zip: an image without a label", path)
    np.savez(d / "nox.npz", images=x, y=y)
    bad(".npz without an x array", d / "nox.npz")
    np.savez(d / "short.npz", x=x, y=y[:-1])
    bad(".npz with more images than labels", d / "short.npz")
    np.savez(d / "half.npz", x=x, y=y, x_test=x)
    bad(".npz with x_test but no y_test", d / "half.npz")
    np.savez(d / "obj.npz", x=x, y=y, class_names=np.array(["a", "b", None], dtype=object))
    bad(".npz object array (would need unpickling)", d / "obj.npz")
    folder = d / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(pickle.dumps({"data": [1, 2, 3]}))
    bad("CIFAR python (pickled) version", folder)
    (d / "stray.pkl").write_bytes(pickle.dumps([1, 2]))
    bad("any pickle file", d / "stray.pkl")
    xc, yc, _, _ = make_set(3)
    root = write_cifar10(d / "cifar-cut", xc, yc)
    (root / "data_batch_2.bin").write_bytes(cifar_records(xc[:2], yc[:2])[:-100])
    bad("CIFAR binary batch truncated", root)
    from PIL import Image

    for name, size in (("a", (8, 8)), ("b", (9, 8))):
        (d / "mixed" / name).mkdir(parents=True)
        Image.fromarray(np.zeros(size[::-1], np.uint8)).save(d / "mixed" / name / "im.png")
    bad("images of different sizes without --image-size", d / "mixed")
    (d / "notes.txt").write_text("hello")
    bad("a file of no known format", d / "notes.txt")
    try:
        hf = write_hf(d / "hf", xc, yc)
        bad("hf: a column that does not exist", f"hf:{hf}", "--label-column", "fine")
    except ImportError:
        pass
    good = write_idx(d / "idx-good", x, y, xt, yt)
    bad("--data-format that is no format", good, "--data-format", "tiff")
    bad("--test-fraction outside (0, 1)", good, "--test-fraction", "1")
    bad("--channels other than 1 or 3", good, "--channels", "2")
    bad("--class-names with a duplicate", good, "--class-names", "a,a,b")
    bad("--image-size 0", good, "--image-size", "0")
    case(A, "file options with a built-in data set", [*base, "digits", "--image-size", "8"],
         shown="train --data digits --image-size 8")
    case(A, "--hflip on 2-D points", [*base, "gmm2d", "--hflip"], shown="train --data gmm2d --hflip")
    case(A, "the noisy classifier on 2-D points", ["train-classifier", "--data", "gmm2d", "--run-dir", ROOT / "never"],
         shown="train-classifier --data gmm2d")
    case(A, "the feature classifier on 2-D points", ["train-features", "--data", "gmm2d", "--run-dir", ROOT / "never"],
         shown="train-features --data gmm2d")


def training_cases(digits):
    A = "training and resume"
    g = ["train", "--data", "gmm2d", "--run-dir", ROOT / "never", "--steps", "1", "--no-progress"]
    shown = "train --data gmm2d"
    for flag, value in (("--steps", "0"), ("--steps", "2.5"), ("--batch-size", "-4"), ("--lr", "0"),
                        ("--lr", "nan"), ("--p-uncond", "1.5"), ("--ema-decay", "1.5"), ("--warmup-steps", "-1"),
                        ("--grad-clip", "-1"), ("--checkpoint-every", "0"), ("--log-every", "0"), ("--seed", "x"),
                        ("--logsnr-schedule", "linear"), ("--model", "huge"), ("--keep", "-1"),
                        ("--save-every-minutes", "nan"), ("--skip-nonfinite", "-1"), ("--grad-accum", "0"),
                        ("--workers", "-1"), ("--loader", "disk"), ("--device", "mps"), ("--device", "cuda:7"),
                        ("--device", "nonsense")):
        case(A, f"{flag} {value}", [*g, flag, value], shown=f"{shown} {flag} {value}")
    case(A, "--grad-accum that does not divide the batch", [*g, "--batch-size", "16", "--grad-accum", "3"],
         shown=f"{shown} --batch-size 16 --grad-accum 3")
    case(A, "a U-Net knob for the 2-D MLP", [*g, "--dropout", "0.1"], shown=f"{shown} --dropout 0.1")
    u = ["train", "--data", "digits", "--run-dir", ROOT / "never", "--steps", "1", "--no-progress"]
    case(A, "attention at a level the U-Net lacks", [*u, "--attn-levels", "5"], shown="train --attn-levels 5")
    case(A, "a width multiplier < 1", [*u, "--channel-mults", "0,1"], shown="train --channel-mults 0,1")
    for value in ("0s", "ten minutes", "5y"):
        case(A, f"--time-budget {value}", ["train", "--data", "gmm2d", "--run-dir", ROOT / "never", "--time-budget",
                                           value], shown=f"{shown} --time-budget {value}")
    case(A, "--time-budget with --steps", [*g, "--time-budget", "10m"], shown=f"{shown} --steps 1 --time-budget 10m")
    case(A, "--lr-schedule that does not exist", [*g, "--lr-schedule", "linear"],
         shown=f"{shown} --lr-schedule linear")
    case(A, "--run-dir that is a file", [*g, "--run-dir", ROOT / "afile"], shown=f"{shown} --run-dir afile")
    case(A, "--run-dir under a file", [*g, "--run-dir", ROOT / "afile" / "x"], shown=f"{shown} --run-dir afile/x")
    gmm = ROOT / "gmm"
    r = ["train", "--run-dir", gmm, "--no-progress"]
    case(A, "a directory that already holds a run", [*r, "--data", "gmm2d", "--steps", "8"],
         shown="train --run-dir gmm --steps 8")
    case(A, "--resume where there is no run", ["train", "--run-dir", ROOT / "empty", "--resume"],
         shown="train --run-dir empty --resume")
    case(A, "--resume and --overwrite", [*r, "--resume", "--overwrite"],
         shown="train --run-dir gmm --resume --overwrite")
    case(A, "--resume with nothing left to train", [*r, "--resume"], shown="train --run-dir gmm --resume")
    for extra in (["--data", "digits"], ["--p-uncond", "0.5"], ["--seed", "3"], ["--logsnr-schedule", "uniform"],
                  ["--model", "small"]):
        case(A, f"{extra[0]} changed on --resume", [*r, "--resume", "--steps", "8", *extra],
             shown=f"train --run-dir gmm --resume --steps 8 {' '.join(extra)}")
    case(A, "--hflip changed on --resume", ["train", "--run-dir", digits, "--resume", "--steps", "8", "--hflip"],
         shown="train --run-dir digits --resume --steps 8 --hflip")
    case(A, "--resume of a truncated checkpoint", ["train", "--run-dir", ROOT / "truncated", "--resume"],
         shown="train --run-dir truncated --resume")
    saved = sys.modules.get("tensorboard")
    sys.modules["tensorboard"] = None  # as if the package were not installed
    try:
        case(A, "--tensorboard without the tensorboard package", [*g, "--tensorboard", "--run-dir", ROOT / "tb"],
             shown=f"{shown} --tensorboard")
    finally:
        if saved is None:
            sys.modules.pop("tensorboard", None)
        else:
            sys.modules["tensorboard"] = saved
    case(A, "train-classifier --resume and --overwrite",
         ["train-classifier", "--run-dir", ROOT / "never", "--resume", "--overwrite"],
         shown="train-classifier --resume --overwrite")
    # a loss that overflows: exit 1, the last good checkpoint kept
    case(A, "a non-finite loss (here: a learning rate of 1e30)",
         ["train", "--data", "gmm2d", "--run-dir", ROOT / "diverged", "--steps", "50", "--batch-size", "8",
          "--lr", "1e30", "--grad-clip", "0", "--warmup-steps", "0", "--no-progress"], expect=1,
         shown="train --data gmm2d --lr 1e30 --grad-clip 0 --warmup-steps 0")


def distill_cases(digits):
    A = "distillation"
    t = ["--steps", "2", "--no-progress"]
    run_dir = ROOT / "never"
    for extra, what in ((["--w-range", "4,0"], "a reversed w range"), (["--w-range", "1,1"], "an empty w range"),
                        (["--w-range", "0"], "one number for a range"),
                        (["--w-range", "0,4", "--steps-from", "8"], "--steps-from without --progressive"),
                        (["--progressive", "--steps-from", "8"], "--progressive from a plain run"),
                        (["--progressive", "--steps-from", "7"], "an odd --steps-from")):
        case(A, what, ["distill", digits, "--run-dir", run_dir, *extra, *t],
             shown=f"distill digits --run-dir D {' '.join(extra)}")
    case(A, "no teacher", ["distill", ROOT / "missing", "--w-range", "0,4", "--run-dir", run_dir, *t],
         shown="distill missing --w-range 0,4 --run-dir D")
    case(A, "stage 1 of a student", ["distill", ROOT / "stage1", "--w-range", "0,4", "--run-dir", run_dir, *t],
         shown="distill stage1 --w-range 0,4 --run-dir D")
    case(A, "stage 2 of a stage-1 student without --steps-from",
         ["distill", ROOT / "stage1", "--progressive", "--run-dir", run_dir, *t],
         shown="distill stage1 --progressive --run-dir D")
    case(A, "a w range outside the teacher's",
         ["distill", ROOT / "stage1", "--progressive", "--steps-from", "8", "--w-range", "0,5", "--run-dir", run_dir,
          *t], shown="distill stage1 --progressive --steps-from 8 --w-range 0,5 --run-dir D")
    case(A, "--steps-from other than the teacher's",
         ["distill", ROOT / "stage2", "--progressive", "--steps-from", "8", "--run-dir", run_dir, *t],
         shown="distill stage2 --progressive --steps-from 8 --run-dir D")
    case(A, "--w-range changed on --resume",
         ["distill", digits, "--w-range", "0,3", "--run-dir", ROOT / "stage1", "--resume", "--steps", "3",
          "--no-progress"], shown="distill digits --w-range 0,3 --run-dir stage1 --resume --steps 3")
    s = ["--out", ROOT / "never.png", "--no-progress"]
    case(A, "sample a student outside its w range", ["sample", ROOT / "stage1", "--w", "0,5", *s],
         shown="sample stage1 --w 0,5")
    case(A, "--interval with a student", ["sample", ROOT / "stage1", "--w", "1", "--interval", "0.1,1", *s],
         shown="sample stage1 --w 1 --interval 0.1,1")
    case(A, "another guidance method with a student",
         ["sample", ROOT / "stage1", "--w", "1", "--guidance", "rescale", *s], shown="sample stage1 --guidance rescale")
    case(A, "eval a student outside its w range",
         ["eval", ROOT / "stage1", "--w", "-1", "--n", "20", "--out", ROOT / "never", "--no-progress"],
         shown="eval stage1 --w=-1")


def sampling_cases(digits):
    A = "sampling and evaluation"
    s = ["sample", digits, "--out", ROOT / "never.png", "--no-progress", "--steps", "2"]
    for extra in (["--w", "0,nan"], ["--w", "1", "--guidance-scale", "2"], ["--classes", "10"], ["--classes", "-1"],
                  ["--classes", "cat"], ["--sampler", "euler_a"], ["--steps", "0"], ["--v-interp", "-0.5"],
                  ["--n-per-class", "0"], ["--batch-size", "0"], ["--eta", "0.5"], ["--interval", "1,0"],
                  ["--interval", "a"], ["--seed", "x"], ["--grid", "linear"]):
        case(A, " ".join(extra), [*s, *extra], shown=f"sample digits {' '.join(extra)}")
    case(A, "--out that is not a .png", ["sample", digits, "--out", ROOT / "grid.jpg", "--steps", "1"],
         shown="sample digits --out grid.jpg")
    case(A, "--out that is a directory", ["sample", digits, "--out", ROOT / "empty", "--steps", "1"],
         shown="sample digits --out empty")
    case(A, "--out under a file", ["sample", digits, "--out", ROOT / "afile" / "g.png", "--steps", "1"],
         shown="sample digits --out afile/g.png")
    case(A, "--n-per-class that cannot fit in memory", [*s, "--n-per-class", "100000000"],
         shown="sample digits --n-per-class 100000000")
    case(A, "--out in a folder that cannot be written", [*s[:2], "--out", "/proc/cfgdiff/grid.png", "--steps", "2"],
         shown="sample digits --out /proc/cfgdiff/grid.png")
    case(A, "eval --out in a folder that cannot be written",
         ["eval", digits, "--out", "/proc/cfgdiff/eval", "--n", "8", "--w", "0", "--steps", "2", "--no-progress"],
         shown="eval digits --out /proc/cfgdiff/eval")
    for name, what in (("missing", "no run there"), ("empty", "a directory without a checkpoint"),
                       ("truncated", "a truncated checkpoint"), ("pickled", "a pickle named .safetensors"),
                       ("foreign", "a safetensors file not written by cfgdiff")):
        case(A, what, ["sample", ROOT / name], shown=f"sample {name}")
    case(A, "neither RUN_DIR nor --diffusers", ["sample"], shown="sample")
    case(A, "RUN_DIR and --diffusers", ["sample", digits, "--diffusers", ROOT / "empty"],
         shown="sample digits --diffusers DIR")
    case(A, "--null-label with a cfgdiff run", ["sample", digits, "--null-label", "3"],
         shown="sample digits --null-label 3")
    e = ["eval", digits, "--out", ROOT / "never", "--no-progress", "--steps", "1"]
    for extra in (["--n", "1"], ["--bootstrap", "1"], ["--w", ""], ["--inception-weights", ROOT / "missing.pth"],
                  ["--features", ROOT / "missing"], ["--inception-weights", ROOT / "weights.pth", "--features", digits],
                  ["--features", ROOT / "rgb-features", "--n", "20"], ["--data", "digits"]):
        case(A, " ".join(short(str(a)) for a in extra), [*e, *extra],
             shown=f"eval digits {' '.join(short(str(a)) for a in extra)}")
    case(A, "a feature network for 2-D points", ["eval", ROOT / "gmm", "--features", ROOT / "rgb-features",
                                                 "--out", ROOT / "never", "--n", "20"],
         shown="eval gmm --features rgb-features")
    case(A, "eval --out that is a file", ["eval", digits, "--out", ROOT / "afile"], shown="eval digits --out afile")
    case(A, "eval of no run", ["eval", ROOT / "missing"], shown="eval missing")


def tune_cases(digits):
    A = "tuning"
    base = ["tune", digits, "--out", ROOT / "never", "--no-progress", "--steps", "1", "--n-min", "10", "--n-max", "20"]
    for extra in (["--guidance", "nope"], ["--search", "phi=0:1"], ["--search", "w=2:1"], ["--search", "w=0-2"],
                  ["--trials", "0"], ["--objective", "fidd"], ["--objective", "sw"], ["--objective", "pareto:fid"],
                  ["--objective", "precision@recall=2"], ["--n-min", "30"], ["--reduction", "1"],
                  ["--storage", "sqlite:////nonexistent/dir/study.db"], ["--storage", "postgresql://127.0.0.1:1/x"],
                  ["--tune-interval", "--interval", "0.1,2"], ["--tune-steps", "8"],
                  ["--tune-interval", "--search", "sigma_lo=0.1:5"]):
        case(A, " ".join(extra), [*base, *extra], shown=f"tune digits {' '.join(extra)}")


def guidance_cases(digits):
    A = "guidance"
    names = {"RUN": str(digits), "GMM": str(ROOT / "gmm"), "OTHER": str(ROOT / "other"),
             "NOWHERE": str(ROOT / "nowhere")}
    bad = [
        ["--guidance", "rescale", "--rescale-phi", "1.5"], ["--guidance", "thresholding", "--threshold-percentile",
                                                            "0"],
        ["--guidance", "apg", "--apg-r", "0"], ["--guidance", "apg", "--apg-beta", "nan"],
        ["--guidance", "cfg-zero", "--cfg-zero-steps", "-1"], ["--guidance", "cfgpp", "--w=-2,0"],
        ["--guidance", "bogus"], ["--rescale-phi", "0.5"], ["--guidance", "apg", "--guide-run", "RUN"],
        ["--guidance", "auto"], ["--guidance", "auto", "--guide-run", "GMM"],
        ["--guidance", "auto", "--guide-run", "OTHER"], ["--guidance", "auto", "--guide-run", "NOWHERE"],
        ["--guidance", "classifier"], ["--guidance", "classifier", "--classifier", "NOWHERE"],
        ["--guidance", "classifier", "--classifier", "RUN"],
        ["--guidance", "pag", "--pag-layers", "nope"], ["--guidance", "pag", "--pag-scale", "-1"],
        ["--guidance", "skip-layer", "--skip-layers", "up.0"], ["--pag-scale", "1"],
    ]
    for extra in bad:
        argv = ["sample", digits, "--steps", "2", "--n-per-class", "1", "--out", ROOT / "never.png", "--no-progress",
                *[names.get(a, a) for a in extra]]
        shown_extra = " ".join({"RUN": "digits", "GMM": "gmm", "OTHER": "other16x16", "NOWHERE": "nowhere"}.get(a, a)
                               for a in extra)
        case(A, shown_extra, argv, shown=f"sample|eval digits {shown_extra}")


def interop_cases():
    A = "interop (diffusers)"
    try:
        import diffusers  # noqa: F401

        import tests.adapters.test_adapters_diffusers as t
    except ImportError:
        return
    torch.manual_seed(2)
    vae = t.diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8), latent_channels=4,
        norm_num_groups=4, layers_per_block=1, sample_size=8)
    scheduler = t.diffusers.DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02, clip_sample=False,
                                          set_alpha_to_one=True)
    pipe = t.diffusers.DiTPipeline(transformer=t._tiny_dit(), vae=vae, scheduler=scheduler, id2label=t.ID2LABEL)
    pipe.register_to_config(id2label=t.ID2LABEL)
    dit = ROOT / "dit"
    pipe.save_pretrained(dit)
    unet = t._save_unet_pipeline(ROOT / "unet", t._tiny_unet(), "v_prediction")
    uncond = t.diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                     block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                     up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    t._save_unet_pipeline(ROOT / "uncond", uncond, "epsilon")
    pickled = ROOT / "pickled-pipe"
    (pickled / "unet").mkdir(parents=True)
    (pickled / "scheduler").mkdir()
    (pickled / "model_index.json").write_text((unet / "model_index.json").read_text())
    (pickled / "unet" / "config.json").write_text((unet / "unet" / "config.json").read_text())
    (pickled / "scheduler" / "scheduler_config.json").write_text(
        (unet / "scheduler" / "scheduler_config.json").read_text())
    (pickled / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not read")
    for argv, shown in (
        (["sample", "--diffusers", ROOT / "empty"], "sample --diffusers empty-dir"),
        (["sample", "--diffusers", "facebook/DiT-XL-2-256"], "sample --diffusers facebook/DiT-XL-2-256"),
        (["sample", "--diffusers", ROOT / "nowhere"], "sample --diffusers nowhere"),
        (["sample", "--diffusers", unet, "--w", "1"], "sample --diffusers unet-without-null --w 1"),
        (["sample", "--diffusers", dit, "--classes", "zebra"], "sample --diffusers dit --classes zebra"),
        (["sample", "--diffusers", dit, "--null-label", "5000"], "sample --diffusers dit --null-label 5000"),
        (["eval", "--diffusers", dit], "eval --diffusers dit"),
        (["eval", "--diffusers", dit, "--data", "digits"], "eval --diffusers dit --data digits"),
        (["sample", "--diffusers", ROOT / "uncond", "--w", "1"], "sample --diffusers unconditional-unet --w 1"),
        (["sample", "--diffusers", pickled, "--w", "0"], "sample --diffusers pipeline-with-.bin-weights"),
    ):
        case(A, shown.split(" ", 1)[1], [*argv, "--out", ROOT / "never.png"] if argv[0] == "sample" else argv,
             shown=shown)


def report_serve_cases(digits):
    A = "report and serve"
    out = ROOT / "never" / "p.html"
    for argv, shown in (
        (["report", ROOT / "nowhere", "--out", out], "report nowhere --out p.html"),
        (["report", ROOT / "sweep", "--out", ROOT / "never" / "p.png"], "report sweep --out p.png"),
        (["report", ROOT / "sweep", "--out", out, "--labels", "a,b"], "report sweep --out p.html --labels a,b"),
        (["report", ROOT / "sweep", ROOT / "broken-sweep", "--out", out], "report sweep broken --out p.html"),
        (["report", ROOT / "sweep"], "report sweep"),
        (["report", ROOT / "sweep", "--out", ROOT / "empty"], "report sweep --out a-directory"),
        (["serve", digits, "--port", "70000"], "serve digits --port 70000"),
        (["serve", digits, "--max-samples", "0"], "serve digits --max-samples 0"),
        (["serve", ROOT / "missing"], "serve missing"),
    ):
        case(A, shown.split(" ", 1)[1], argv, shown=shown)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        case(A, "a port in use", ["serve", digits, "--port", port], shown="serve digits --port BUSY")
    serve_requests(digits)


def serve_requests(digits):
    """The explorer's HTTP answers to bad requests (a live server on a free port)."""
    from cfgdiff.serve import Explorer, ExplorerServer, Limits
    from cfgdiff.training import load_model

    model = load_model(digits)
    explorer = Explorer(model, data_shape=model.data_shape, name="digits", class_names=model.class_names,
                        x_bound=model.x_bound, limits=Limits(max_samples=40, max_steps=20))
    server = ExplorerServer(explorer, host="127.0.0.1", port=0).start()
    rows = ROWS.setdefault("serve (HTTP requests to the explorer)", [])
    try:
        for query, method, headers in (
            ("api/grid?w=1&classes=12", "GET", {}), ("api/grid?w=1&classes=seven", "GET", {}),
            ("api/grid?w=1&classes=", "GET", {}), ("api/grid?w=1&classes=3,3", "GET", {}),
            ("api/grid?w=1&steps=0", "GET", {}), ("api/grid?w=1&steps=2.5", "GET", {}),
            ("api/grid?w=abc", "GET", {}), ("api/grid?w=nan", "GET", {}), ("api/grid?w=1e308", "GET", {}),
            ("api/grid?w=-11", "GET", {}), (f"api/grid?w=1&seed={10**29}", "GET", {}), ("api/grid", "GET", {}),
            ("api/grid?w=1&n=8", "GET", {}), ("api/grid?w=1&n=0", "GET", {}), ("api/grid?w=1&sampler=euler", "GET", {}),
            ("api/grid?w=1&method=magic", "GET", {}), ("api/grid?w=1&interval=2,1", "GET", {}),
            ("api/grid?w=1&interval=1", "GET", {}), ("api/grid?w=1&seed=-3", "GET", {}),
            ("api/grid?w=1&v_interp=2", "GET", {}), ("api/grid?w=1&p.phi=0.5", "GET", {}),
            ("api/grid?w=1&bogus=1", "GET", {}), ("api/grid?w=1&w=2", "GET", {}),
            ("api/grid?" + "&".join(f"x{i}=1" for i in range(40)), "GET", {}), ("nowhere", "GET", {}),
            ("api/grid?w=1", "POST", {}), ("api/info", "GET", {"Host": "attacker.example:80"}),
        ):
            request = urllib.request.Request(server.url + query, method=method, headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    status, body = response.status, response.read()
            except urllib.error.HTTPError as err:
                status, body = err.code, err.read()
            message = json.loads(body).get("error", "") if body.startswith(b"{") else body[:80].decode()
            shown = query if len(query) < 60 else query[:40] + "&x2=1…(40 fields)"
            what = f"{method} /{shown}" + (f" (Host: {headers['Host']})" if headers else "")
            rows.append((what, "", message.replace("|", "\\|"), status))
    finally:
        server.stop()


def config_and_info_cases(digits):
    A = "config files (--config)"

    def toml(name, text):
        path = ROOT / name
        path.write_text(text) if isinstance(text, str) else path.write_bytes(text)
        return path

    for name, text, what in (
        ("steps0.toml", "steps = 0\n", "a value the flag refuses"),
        ("stepz.toml", "stepz = 3\n", "an unknown key"),
        ("trian.toml", "[trian]\nsteps = 3\n", "an unknown table"),
        ("w-in-train.toml", "[train]\nw = [0, 1]\n", "a key the table's command lacks"),
        ("only-sample.toml", "[sample]\nsteps = 3\n", "no table for this command"),
        ("syntax.toml", "steps = \n", "not TOML"),
        ("dup.toml", "steps = 3\nsteps = 4\n", "a key given twice"),
        ("dash-underscore.toml", "batch-size = 8\nbatch_size = 9\n", "batch-size and batch_size"),
        ("switch.toml", "autocast = 1\n", "a number for a switch"),
        ("string.toml", "data = 3\n", "a number for a string option"),
        ("array.toml", 'data = ["a", "b"]\n', "an array for a one-value option"),
        ("bool.toml", "steps = true\n", "true/false for a value option"),
        ("nested.toml", 'config = "other.toml"\n', "a config file naming another"),
        ("binary.toml", b"steps = 3\n\xff\n", "not UTF-8"),
    ):
        content = text.decode("latin-1") if isinstance(text, bytes) else text
        content = " ⏎ ".join(line for line in content.splitlines() if line).replace("\xff", "\\xff").replace("|", "\\|")
        case(A, f"{what}: `{content}`", ["train", "--config", toml(name, text)], shown=f"train --config {name}")
    case(A, "no such file", ["train", "--config", ROOT / "none.toml"], shown="train --config none.toml")
    case(A, "a directory", ["train", "--config", ROOT / "empty"], shown="train --config empty")
    both = toml("both.toml", "w = [0]\nguidance-scale = [1]\n")
    case(A, "--w and --guidance-scale both in the file: `w = [0] ⏎ guidance-scale = [1]`",
         ["sample", digits, "--config", both], shown="sample RUN --config both.toml")
    A = "info"
    (ROOT / "empty" / "notes.txt").write_text("hello")
    for argv, shown in (
        (["info", ROOT / "missing"], "info missing"), (["info", ROOT / "afile"], "info afile"),
        (["info", ROOT / "empty"], "info empty-dir"), (["info", ROOT / "truncated"], "info truncated"),
        (["info", ROOT / "pickled"], "info pickled"), (["info", ROOT / "foreign"], "info foreign"),
        (["info", digits, "--losses", "0"], "info digits --losses 0"),
    ):
        case(A, shown.split(" ", 1)[1], argv, shown=shown)
    A = "command line"
    for argv in (["frobnicate"], ["train", "--frobnicate"], ["train", "--steps"], ["sample", "--w"]):
        case(A, " ".join(argv), argv, shown=" ".join(argv))
    case(A, "a file where toy's --out needs a directory",
         ["toy", "--w", "0", "--n-per-class", "5", "--steps", "1", "--out", ROOT / "afile" / "toy.png"],
         shown="toy --out afile/toy.png")
    code, _, err = run([])
    ROWS[A].insert(0, ("no command", "`cfgdiff`", "the usage and the list of commands (on stderr)", code))


def main_():
    digits = build_fixtures()
    config_and_info_cases(digits)
    data_cases()
    training_cases(digits)
    distill_cases(digits)
    sampling_cases(digits)
    guidance_cases(digits)
    tune_cases(digits)
    interop_cases()
    report_serve_cases(digits)
    order = ["command line", "config files (--config)", "data", "training and resume", "distillation",
             "sampling and evaluation", "guidance", "tuning", "interop (diffusers)", "report and serve",
             "serve (HTTP requests to the explorer)", "info"]
    for area in order:
        rows = ROWS.get(area, [])
        if not rows:
            continue
        print(f"\n#### {area[0].upper() + area[1:]}\n")
        if area.startswith("serve (HTTP"):
            print("| request | HTTP status | `error` in the JSON answer |\n|---|---|---|")
            for what, _, message, status in rows:
                print(f"| `{what}` | {status} | {message} |")
            continue
        print("| input | command | message (after `cfgdiff: error: `) | exit |\n|---|---|---|---|")
        for what, command, message, code in rows:
            print(f"| {what} | {command} | {message} | {code} |")
    if PROBLEMS:
        print("\nPROBLEMS (not one line / unexpected exit):", file=sys.stderr)
        for problem in PROBLEMS:
            print("  " + problem, file=sys.stderr)


if __name__ == "__main__":
    main_()
