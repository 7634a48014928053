"""convzoo.runtime's inference runtimes and their one chooser, inference_model (PyTorch fp32 / bf16, ONNX Runtime
fp32 / int8, OpenVINO fp32 / bf16 / int8), convzoo.data.calibration's calibration images, the accuracy
guard against fp32, and the command line's use of them: predict's and eval's --runtime, --precision and
--calibration (each bad input one line, exit 2), eval's guard printout (exit 1 when it fails), and bf16
forced where the CPU has no bf16 arithmetic (one warning line; the hardware answer is faked).

The guard's figures are asserted on a small trained model: ``convzoo train --recipe fast --set epochs=3 --set warmup_epochs=1``
(xception_cifar_tiny on the embedded CIFAR-10 subset, about 20 s on 2 idle cores), evaluated on the
held-out split the run recorded (``train_val_split(embedded_cifar10(), 0.1, 0)``, 508 images).
"""

import json
import os
import re
import subprocess
import sys
import warnings
from string import Template
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import convzoo
import convzoo.optimize
import convzoo.predict as predict_module
import convzoo.runtime.inference as inference_module
import convzoo.train.evaluate as evaluate_module
from convzoo import hardware
from convzoo.cli import main
from convzoo.data import BatchLoader, embedded_cifar10, train_val_split
from convzoo.data.calibration import calibration_images, find_calibration_files
from convzoo.data.transforms import ImageTransform
from convzoo.errors import AccuracyGuardError, ConfigError, ConvzooWarning, DataError, MissingDependencyError
from convzoo.runtime import (PRECISIONS, RUNTIME_PRECISIONS, RUNTIMES, GuardResult, OnnxRuntimeModel, OpenVinoModel,
                             TorchModel, calibration_set, compare_predictors, default_precision, inference_model)
from convzoo.predict import predict_files
from convzoo.preprocess import mode_stats

from bad_inputs import CLASSES10, ENV, error_line, run_in_fresh_process, run_in_process, train_argv, write_cifar_bin

AVX2_ONLY = hardware.CpuInfo("GenuineIntel", "Intel(R) Xeon(R) CPU E5-2686 v4", 2, frozenset({"avx2"}), "test")
XEON_AMX = hardware.CpuInfo("GenuineIntel", "Intel(R) Xeon(R) Platinum 8481C", 2,
                            frozenset({"avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}), "test")
BUILT = {"eager": TorchModel, "onnxruntime": OnnxRuntimeModel, "openvino": OpenVinoModel}


@pytest.fixture(scope="module")
def split():
    return train_val_split(embedded_cifar10(), 0.1, 0)


def loader(ds, batch_size=128):
    mean, std, _ = mode_stats("cifar")
    return BatchLoader(ds, batch_size, mean=mean, std=std)


@pytest.fixture(scope="module")
def tiny():
    """An untrained xception_cifar_tiny in eval mode (its BatchNorms keep their initial statistics)."""
    torch.manual_seed(0)
    return convzoo.create_model("xception_cifar_tiny").eval()


@pytest.fixture(scope="module")
def calibration(split):
    return calibration_set(loader(split[0], 64), 256)


# --- bad input ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("missing, precision", [("openvino", "fp32"), ("nncf", "int8")])
def test_openvino_missing_is_one_line_error(monkeypatch, tiny, calibration, missing, precision):
    if missing == "nncf":
        pytest.importorskip("openvino")
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import <missing>` raise ImportError
    with pytest.raises(MissingDependencyError,
                       match=r"the openvino runtime needs {}, which is not installed: pip install 'convzoo\[openvino\]'"
                       .format(missing)) as exc:
        inference_model(tiny, "openvino", precision, calibration)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("calibration_given", [None, []])
def test_int8_without_calibration_images_is_config_error(tiny, runtime, calibration_given):
    with pytest.raises(ConfigError, match="--precision int8 needs calibration images"):
        inference_model(tiny, runtime, "int8", calibration_given)


@pytest.mark.parametrize("runtime, precision", [("eager", "int8"), ("onnxruntime", "bf16"), ("openvino", "fp16"),
                                                ("tensorrt", "fp32")])
def test_precisions_a_runtime_does_not_run_are_refused(tiny, runtime, precision):
    with pytest.raises(ConfigError, match="runtime") as exc:
        inference_model(tiny, runtime, precision, [torch.zeros(1, 3, 32, 32)])
    assert "\n" not in str(exc.value)


def test_unreadable_calibration_images_are_data_error(tmp_path, tiny):
    folder = tmp_path / "calib"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"not a jpeg at all")
    (folder / "sub" / "b.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning besides the error
        with pytest.raises(DataError, match=r"found 2 file\(s\), none readable \(first: .*a\.jpg") as exc:
            calibration_images(tiny, folder)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("make", ["empty", "missing", "text_only"])
def test_no_calibration_images_is_data_error(tmp_path, make):
    source = tmp_path / "calib"
    if make != "missing":
        source.mkdir()
    if make == "text_only":
        (source / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="calibration image"):
        find_calibration_files(source)


def test_calibration_images_are_read_as_the_model_takes_them(tmp_path, tiny, split):
    images = split[1].images[:5]
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.warns(ConvzooWarning, match=r"calibration: skipped 1 unreadable of 6 files \(first: .*broken\.png") as rec:
        batches = calibration_images(tiny, [tmp_path], batch_size=2)
    assert len(rec) == 1 and [b.shape[0] for b in batches] == [2, 2, 1]
    expected = ImageTransform.from_model(tiny)(sorted(tmp_path.glob("[0-9].png")))
    torch.testing.assert_close(torch.cat(batches), expected)
    # More files than the limit: evenly spaced over the sorted files.
    assert torch.equal(torch.cat(calibration_images(tiny, tmp_path, limit=2)), expected[[0, 3]])


def test_calibration_set_takes_pairs_or_tensors_up_to_the_limit(split):
    got = calibration_set(loader(split[0], 64), 100)
    assert [x.shape[0] for x in got] == [64, 36] and got[0].dtype == torch.float32
    assert sum(x.shape[0] for x in calibration_set([torch.zeros(3, 3, 8, 8)] * 5, 7)) == 7
    with pytest.raises(DataError, match="found none"):
        calibration_set([])
    with pytest.raises(DataError, match="found shape"):
        calibration_set([torch.zeros(3, 8, 8)])


def test_bf16_on_a_cpu_without_bf16_warns_then_runs(monkeypatch, tiny):
    monkeypatch.setattr(hardware, "cpu_info", lambda: AVX2_ONLY)
    with pytest.warns(UserWarning, match="will be slow") as rec:
        model = TorchModel(tiny, "bf16")
    assert len(rec) == 1 and "\n" not in str(rec[0].message)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tiny(x), atol=0.1, rtol=0.05)


def test_openvino_bf16_on_a_cpu_without_bf16_warns_then_runs(monkeypatch, tiny):
    pytest.importorskip("openvino")
    monkeypatch.setattr(hardware, "cpu_info", lambda: AVX2_ONLY)
    with pytest.warns(UserWarning, match="will be slow"):
        model = OpenVinoModel.from_model(tiny, "bf16")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("cpu, rest", [(None, None), (AVX2_ONLY, "f32")])
def test_openvino_int8_runs_the_rest_in_bf16_only_where_bf16_pays(monkeypatch, tiny, cpu, rest):
    pytest.importorskip("nncf")
    if cpu is not None:
        monkeypatch.setattr(hardware, "cpu_info", lambda: cpu)
    rest = rest or ("bf16" if hardware.bf16_pays(torch.device("cpu")) else "f32")
    model = OpenVinoModel.from_model(tiny, "int8", [torch.randn(8, 3, 32, 32)])
    assert model.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == rest
    fp32 = OpenVinoModel.from_model(tiny, "fp32")  # OpenVINO's own default would be bf16 on a bf16 CPU
    assert fp32.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"


# --- the chooser ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("precision", PRECISIONS)
def test_inference_model_builds_each_runtime_in_each_precision_it_runs(tiny, runtime, precision):
    """Every (runtime, precision): the runtime it names, logits near fp32's, or one ConfigError line."""
    calibration = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    if precision not in RUNTIME_PRECISIONS[runtime]:
        with pytest.raises(ConfigError, match=f"the {runtime} runtime runs precision .*, got '{precision}'") as exc:
            inference_model(tiny, runtime, precision, calibration)
        assert "\n" not in str(exc.value)
        return
    if runtime == "openvino":
        pytest.importorskip("nncf")
    model = inference_model(tiny, runtime, precision, calibration)
    assert isinstance(model, BUILT[runtime]) and model.precision == precision
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = tiny(x)
    out = model(x)
    assert out.dtype == torch.float32 and out.device.type == "cpu" and out.shape == (4, 10)
    # Random weights and random calibration: only the scale of the logits is comparable in int8.
    tolerance = {"fp32": 1e-4, "bf16": 0.05, "int8": 0.5}[precision] * float(ref.abs().max())
    assert (out - ref).abs().max() <= tolerance


@pytest.mark.parametrize("cpu, eager, onnxruntime, openvino", [(XEON_AMX, "bf16", "fp32", "bf16"),
                                                             (AVX2_ONLY, "fp32", "fp32", "fp32")])
def test_default_precision_is_bf16_where_it_pays(monkeypatch, tiny, cpu, eager, onnxruntime, openvino):
    monkeypatch.setattr(hardware, "cpu_info", lambda: cpu)
    cpu_device = torch.device("cpu")
    assert [default_precision(r, cpu_device) for r in RUNTIMES] == [eager, onnxruntime, openvino]
    assert inference_model(tiny).precision == eager  # the model's device, the eager runtime, its default
    with pytest.raises(ConfigError, match="runtime must be one of eager, onnxruntime, openvino, got 'tvm'"):
        default_precision("tvm", cpu_device)


def test_inference_model_refuses_cpu_runtimes_on_another_device(tiny):
    with pytest.raises(ConfigError, match="the onnxruntime runtime runs on the CPU, got device cuda"):
        inference_model(tiny, "onnxruntime", "fp32", device="cuda")
    with pytest.raises(ConfigError, match="runtime must be one of"):
        inference_model(torch.nn.Identity(), "tensorrt")


def test_torch_model_gives_the_main_logits_of_a_model_with_an_auxiliary_head():
    model = convzoo.create_model("inception_v3", aux_logits=True, depth_multiplier=0.05, min_depth=4).eval()
    x = torch.randn(2, 3, 299, 299)
    with torch.no_grad():
        main = model(x)[0]
    for runtime in ("eager", "onnxruntime"):
        torch.testing.assert_close(inference_model(model, runtime, "fp32")(x), main, atol=1e-4, rtol=1e-4)


def test_bf16_weights_compute_what_autocast_computes(tiny):
    """TorchModel's bf16 (weights cast once) against bf16 autocast of the same folded model."""
    x = torch.randn(4, 3, 32, 32)
    fast = convzoo.optimize.optimize_for_inference(tiny)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = fast(x.contiguous(memory_format=torch.channels_last)).float()
    model = TorchModel(tiny, "bf16")
    assert {p.dtype for p in model.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in tiny.parameters()} == {torch.float32}  # the model is left as it is
    ours = model(x)
    torch.testing.assert_close(ours, autocast, atol=0.02 * float(autocast.abs().max()), rtol=0)


def test_predict_runs_openvino_through_the_chooser(tmp_path, capsys, split):
    """predict's --runtime openvino (OpenVINO's default precision here) and predict_files in fp32 match eager fp32."""
    pytest.importorskip("openvino")
    torch.manual_seed(1)
    model = convzoo.create_model("xception_cifar_tiny").eval()
    ckpt = convzoo.save_checkpoint(model, tmp_path / "tiny.safetensors", class_names=[f"c{i}" for i in range(10)])
    paths = []
    for i, im in enumerate(split[1].images[:3]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(paths[-1])
    eager = predict_files(model, paths, runtime="eager", precision="fp32")
    torch.testing.assert_close(predict_files(model, paths, runtime="openvino", precision="fp32"), eager,
                               atol=1e-4, rtol=1e-4)
    assert main(["predict", "--weights", str(ckpt), *map(str, paths), "--runtime", "openvino", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in rows] == list(map(str, paths))
    for row, probs in zip(rows, eager):
        assert row["predictions"][0]["probability"] == pytest.approx(float(probs.max()), abs=0.02)


# --- the runtimes compute the model's function ---------------------------------------------------------------

@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fp32_runtimes_match_the_model(tiny, runtime):
    if runtime == "openvino":
        pytest.importorskip("openvino")
    x = torch.randn(3, 3, 32, 32)
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    with torch.no_grad():
        ref = tiny(x)
    model = inference_model(tiny, runtime, "fp32")
    assert isinstance(model, BUILT[runtime]) and model.precision == "fp32"
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)
    assert model(x[:1]).shape == (1, 10)  # dynamic batch
    assert not tiny.training and tiny.state_dict().keys() == state.keys()  # the model is left as it was
    assert all(torch.equal(v, state[k]) for k, v in tiny.state_dict().items())


# --- the accuracy guard --------------------------------------------------------------------------------------

def flip_every(k: int, reference):
    """A broken candidate: ``reference``'s logits with the top class of every ``k``-th image moved to the
    next class."""
    def candidate(x):
        logits = reference(x).clone()
        rows = torch.arange(0, x.shape[0], k)
        top = logits[rows].argmax(1)
        logits[rows, (top + 1) % logits.shape[1]] = logits[rows].max(1).values + 1
        return logits
    return candidate


def test_guard_measures_and_refuses_a_broken_candidate(tiny, split):
    reference = TorchModel(tiny)
    batches = list(loader(split[1], 100))  # 508 images: batches of 100, 100, 100, 100, 100, 8
    ok = compare_predictors(reference, reference, batches)
    assert (ok.agreement, ok.top1_candidate, ok.n, ok.passed) == (100.0, ok.top1_fp32, 508, True)
    broken = compare_predictors(reference, flip_every(10, reference), batches)
    # Every 10th image of each batch changes class: 10 per full batch and 1 of the last 8.
    assert broken.agreement == pytest.approx(100 * (1 - 51 / 508))
    assert not broken.passed
    with pytest.raises(AccuracyGuardError, match=r"openvino int8 fails the accuracy guard on 508 images: .*"
                                                 r"top-1 agreement with fp32 89\.96% \(at least 98% needed, "
                                                 r"8\.04 points short\)") as exc:
        broken.check("openvino int8")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("fp32, cand, agree, passed", [(70.0, 69.5, 98.0, True), (70.0, 69.4, 99.0, False),
                                                       (70.0, 72.0, 98.0, True), (70.0, 70.0, 97.9, False)])
def test_guard_limits(fp32, cand, agree, passed):
    result = GuardResult(fp32, cand, agree, 1000)
    assert result.passed is passed
    assert bool(result.shortfalls()) is not passed
    if not passed:
        with pytest.raises(AccuracyGuardError):
            result.check()


def test_guard_refuses_mismatched_logits(tiny, split):
    with pytest.raises(DataError, match="expected logits"):
        compare_predictors(TorchModel(tiny), lambda x: torch.zeros(x.shape[0], 3), loader(split[1]))
    with pytest.raises(DataError, match="found none"):
        compare_predictors(TorchModel(tiny), TorchModel(tiny), [])


# --- the guard on a trained model (slow: trains for about 20 s) -----------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """The run folder of xception_cifar_tiny after the fast recipe's first 3 epochs, through the command line."""
    run = tmp_path_factory.mktemp("lowp") / "run"
    subprocess.run([sys.executable, "-m", "convzoo", "train", "--recipe", "fast", "--set", "epochs=3", "--set",
                    "warmup_epochs=1", "--out", str(run)], check=True, capture_output=True, env={**os.environ})
    return run


@pytest.fixture(scope="module")
def trained(trained_run):
    """The trained run's last checkpoint."""
    return convzoo.load_checkpoint(trained_run / "last").eval()


@pytest.fixture(scope="module")
def held_out(split):
    return list(loader(split[1]))


@pytest.mark.slow
@pytest.mark.parametrize("runtime, precision", [("eager", "bf16"), ("onnxruntime", "int8"), ("openvino", "fp32"),
                                                ("openvino", "bf16"), ("openvino", "int8")])
def test_lower_precisions_pass_the_guard_on_a_trained_model(trained, held_out, calibration, runtime, precision):
    if runtime == "openvino":
        pytest.importorskip("nncf")
    result = compare_predictors(TorchModel(trained), inference_model(trained, runtime, precision, calibration), held_out)
    assert result.n == 508 and result.top1_fp32 > 30.0  # the model learnt something (chance: 10%)
    assert result.drop <= 0.5, result.shortfalls()
    assert result.agreement >= 98.0, result.shortfalls()
    result.check(f"{runtime} {precision}")


@pytest.mark.slow
def test_int8_calibrated_on_the_wrong_images_fails_the_guard(trained, held_out):
    """int8 ranges taken from blank images clip every real activation: the guard says by how much."""
    bad = OnnxRuntimeModel.from_model(trained, "int8", [torch.zeros(16, 3, 32, 32)])
    result = compare_predictors(TorchModel(trained), bad, held_out)
    assert not result.passed and result.agreement < 98.0
    with pytest.raises(AccuracyGuardError, match=r"onnxruntime int8 fails the accuracy guard on 508 images: "
                                                 r".*points short"):
        result.check("onnxruntime int8")


# --- the command line: predict and eval's --runtime, --precision, --calibration; the trainer's --bf16 ---------

SLOW_BF16 = re.compile(r"convzoo: warning: bf16 on this CPU \(Intel\(R\) Xeon\(R\) CPU E5-2686 v4\) will be slow: "
                       r"the CPU has no AMX-BF16 or AVX512-BF16 arithmetic.*; fp32 is faster here")


@pytest.fixture(scope="module")
def files(tmp_path_factory, split):
    """What the command-line tests feed the verbs: a checkpoint of the untrained tiny model (CIFAR-10's
    classes), four photos, a CIFAR-10 folder (200 training, 40 test images), calibration folders (five
    photos and a broken file; only unreadable files; none)."""
    root = tmp_path_factory.mktemp("cli")
    torch.manual_seed(2)
    model = convzoo.create_model("xception_cifar_tiny").eval()
    ckpt = convzoo.save_checkpoint(model, root / "tiny.safetensors", class_names=list(CLASSES10))
    photos, calib, bad, empty = (root / name for name in ("photos", "calib", "bad", "empty"))
    for folder in (photos, calib, bad, empty):
        folder.mkdir()
    for folder, images in ((photos, split[1].images[:4]), (calib, split[0].images[:5])):
        for i, im in enumerate(images):
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(folder / f"{i}.png")
    (calib / "broken.png").write_bytes(b"\x89PNG broken")
    (bad / "a.jpg").write_bytes(b"not a jpeg at all")
    (bad / "b.png").write_bytes(b"")
    cifar = write_cifar_bin(root / "cifar", 200, 40)
    return SimpleNamespace(root=root, model=model, ckpt=ckpt, photos=sorted(photos.glob("*.png")), calib=calib,
                           bad=bad, empty=empty, cifar=cifar)


def verb_argv(verb: str, files) -> list[str]:
    """predict of the first photo, or eval on the CIFAR folder's 40 test images, with the tiny checkpoint."""
    if verb == "predict":
        return ["predict", "--weights", str(files.ckpt), str(files.photos[0]), "--device", "cpu"]
    return ["eval", str(files.ckpt), "--data", str(files.cifar), "--device", "cpu"]


@pytest.fixture
def calibrated(monkeypatch):
    """The calibration batches ONNX Runtime's int8 quantization receives, one tensor (N, 3, H, W) per model."""
    seen = []
    quantize = inference_module.quantize_onnx

    def spy(src, dst, calibration):
        seen.append(torch.cat(list(calibration)))
        return quantize(src, dst, calibration)

    monkeypatch.setattr(inference_module, "quantize_onnx", spy)
    return seen


INT8 = ["--runtime", "onnxruntime", "--precision", "int8"]
BAD_INPUT = {
    "openvino-not-installed": (["--runtime", "openvino"],
                               "the openvino runtime needs openvino, which is not installed: "
                               "pip install 'convzoo[openvino]'"),
    "int8-without-calibration": (INT8, "--precision int8 needs calibration images (--calibration DIR|GLOB"),
    "calibration-of-unreadable-images": ([*INT8, "--calibration", "$bad"], "found 2 file(s), none readable"),
    "calibration-folder-empty": ([*INT8, "--calibration", "$empty"], "expected calibration images"),
    "calibration-glob-of-nothing": ([*INT8, "--calibration", "$empty/*.jpg"], "expected calibration images"),
    "bf16-in-onnxruntime": (["--runtime", "onnxruntime", "--precision", "bf16"],
                            "the onnxruntime runtime runs precision fp32 | int8, got 'bf16' (bf16 runs in --runtime "
                            "eager or openvino)"),
    "int8-in-eager": (["--precision", "int8", "--calibration", "$calib"],
                      "(int8 runs in --runtime onnxruntime or openvino)"),
    "calibration-without-int8": (["--precision", "fp32", "--calibration", "$calib"],
                                 "--calibration images calibrate --precision int8; they have no use in fp32"),
    "bf16-and-precision": (["--bf16", "--precision", "fp32"], "--precision: not allowed with argument --bf16"),
    "unknown-precision": (["--precision", "fp16"], "invalid choice: 'fp16'"),
}


@pytest.mark.parametrize("case", BAD_INPUT)
@pytest.mark.parametrize("verb", ["predict", "eval"])
def test_runtime_flags_bad_input_is_one_line(verb, case, files, capsys, monkeypatch):
    flags, expected = BAD_INPUT[case]
    if case == "openvino-not-installed":
        monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    flags = [Template(flag).substitute(bad=files.bad, empty=files.empty, calib=files.calib) for flag in flags]
    error_line(run_in_process([*verb_argv(verb, files), *flags], capsys), expected)


def test_openvino_not_installed_in_a_fresh_process(files, tmp_path):
    """A fresh process whose ``import openvino`` fails, as where it is not installed."""
    (tmp_path / "openvino").mkdir()
    (tmp_path / "openvino" / "__init__.py").write_text("raise ImportError('No module named openvino')\n")
    shown = run_in_fresh_process([*verb_argv("predict", files), "--runtime", "openvino"],
                                 env={"PYTHONPATH": os.pathsep.join([str(tmp_path), ENV["PYTHONPATH"]])})
    error_line(shown, "the openvino runtime needs openvino, which is not installed: pip install 'convzoo[openvino]'")


@pytest.mark.parametrize("source, n, warned", [("folder", 5, True), ("glob", 3, False)])
def test_predict_int8_calibrates_on_the_named_images(source, n, warned, files, calibrated, capsys):
    """The images of --calibration (a folder, or a glob) read as the photos are, unreadable ones skipped with
    one warning line."""
    named = str(files.calib) if source == "folder" else str(files.calib / "[0-2].png")
    shown = run_in_process(["predict", "--weights", str(files.ckpt), *map(str, files.photos), "--json", *INT8,
                            "--calibration", named], capsys)
    assert shown.code == 0, shown.err
    assert len(shown.out.splitlines()) == len(files.photos)
    expected = ImageTransform.from_model(files.model)(sorted(files.calib.glob("[0-9].png"))[:n])
    assert len(calibrated) == 1
    torch.testing.assert_close(calibrated[0], expected)
    skipped = r"convzoo: warning: calibration: skipped 1 unreadable of 6 files \(first: .*broken\.png: .*\)\n"
    assert re.fullmatch(skipped, shown.err) if warned else shown.err == ""


@pytest.fixture(scope="module")
def small_run(files, tmp_path_factory):
    """A run of the tiny model (one epoch) on the CIFAR folder: 180 training images, 20 held out."""
    run = tmp_path_factory.mktemp("small") / "run"
    assert main(train_argv(files.cifar, run, 1, "--no-bf16")) == 0
    return run


def test_int8_of_a_run_checkpoint_calibrates_on_its_training_data(small_run, files, calibrated, capsys):
    """Without --calibration, predict and eval of a run's checkpoint calibrate on the run's training split."""
    n_train = json.loads((small_run / "config.json").read_text())["train_images"]
    shown = run_in_process(["predict", "--weights", str(small_run / "best"), str(files.photos[0]), *INT8], capsys)
    assert shown.code == 0, shown.err
    shown = run_in_process(["eval", str(small_run), *INT8, "--json"], capsys)
    result = json.loads(shown.out)
    assert shown.code == (0 if result["guard"]["passed"] else 1), shown.err
    assert (result["runtime"], result["precision"], result["guard"]["n"]) == ("onnxruntime", "int8", 20)
    assert result["guard"]["top1_candidate"] == pytest.approx(100 * result["top1"])
    assert n_train == 180 and [x.shape for x in calibrated] == [(n_train, 3, 32, 32)] * 2


def test_eval_says_when_the_guard_fails_by_how_much_and_exits_1(files, capsys, monkeypatch):
    """A broken candidate (fp32 with the top class of every third image moved) against fp32 on 40 images:
    14 of them differ, so the agreement is 65% (33 points short of 98%)."""
    build = evaluate_module.inference_model

    def broken(model, runtime, precision, *args, **kwargs):
        return build(model, runtime, precision, *args, **kwargs) if precision == "fp32" else \
            flip_every(3, build(model, runtime, "fp32", *args, **kwargs))

    monkeypatch.setattr(evaluate_module, "inference_model", broken)
    argv = [*verb_argv("eval", files), "--precision", "bf16", "--batch-size", "40"]
    shown = run_in_process(argv, capsys)
    assert shown.code == 1
    assert "accuracy guard, bf16 against fp32 on 40 images: FAILED" in shown.out.splitlines()
    assert "  top-1 agreement with fp32 65.00% (at least 98% needed)" in shown.out.splitlines()
    assert re.fullmatch(r"convzoo: error: eager bf16 fails the accuracy guard on 40 images: (.*; )?top-1 agreement "
                        r"with fp32 65\.00% \(at least 98% needed, 33\.00 points short\)\n", shown.err)
    shown = run_in_process([*argv, "--json"], capsys)
    guard = json.loads(shown.out)["guard"]
    assert shown.code == 1 and (guard["agreement"], guard["passed"], guard["n"]) == (65.0, False, 40)


@pytest.mark.parametrize("flag", [("--precision", "bf16"), ("--bf16",)])
@pytest.mark.parametrize("verb", ["predict", "eval"])
def test_bf16_forced_on_a_cpu_without_it_warns_one_line_then_runs(verb, flag, files, capsys, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: AVX2_ONLY)
    shown = run_in_process([*verb_argv(verb, files), *flag, "--json"], capsys)
    lines = shown.err.splitlines()
    assert SLOW_BF16.fullmatch(lines[0]) and not any("warning" in line for line in lines[1:]), shown.err
    result = json.loads(shown.out.splitlines()[0])
    if verb == "predict":
        assert shown.code == 0 and len(result["predictions"]) == 5
    else:
        assert result["precision"] == "bf16" and shown.code == (0 if result["guard"]["passed"] else 1)


@pytest.mark.parametrize("cpu, precision", [(AVX2_ONLY, "fp32"), (XEON_AMX, "bf16")])
def test_predict_and_eval_default_to_bf16_where_it_pays(cpu, precision, files, capsys, monkeypatch):
    """The default precision follows the hardware rule (faked here), without a guard or a warning."""
    monkeypatch.setattr(hardware, "cpu_info", lambda: cpu)
    built = []
    build = predict_module.inference_model
    monkeypatch.setattr(predict_module, "inference_model",
                        lambda model, runtime, chosen, *a, **k: built.append(chosen) or build(model, runtime, chosen,
                                                                                              *a, **k))
    shown = run_in_process([*verb_argv("predict", files), "--json"], capsys)
    assert (shown.code, shown.err, built) == (0, "", [precision])
    shown = run_in_process([*verb_argv("eval", files), "--json"], capsys)
    result = json.loads(shown.out)
    assert (shown.code, shown.err, result["precision"], result["guard"]) == (0, "", precision, None)


@pytest.mark.parametrize("cpu, flags, bf16, warned", [
    (AVX2_ONLY, ["--bf16"], True, True), (AVX2_ONLY, [], False, False),
    (XEON_AMX, [], True, False), (XEON_AMX, ["--no-bf16"], False, False)])
def test_trainer_bf16_follows_the_cpu_and_warns_when_forced_where_slow(cpu, flags, bf16, warned, files, tmp_path,
                                                                     capsys, monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: cpu)
    shown = run_in_process(train_argv(files.cifar, tmp_path / "run", 1, *flags), capsys)
    assert shown.code == 0, shown.err
    assert json.loads((tmp_path / "run" / "config.json").read_text())["bf16"] is bf16
    warned_lines = [line for line in shown.err.splitlines() if "warning" in line.lower()]
    assert len(warned_lines) == warned and all(SLOW_BF16.fullmatch(line) for line in warned_lines), shown.err


# --- the guard through eval on a trained model (slow: trains for about 20 s) --------------------------------

GUARD_LINES = re.compile(r"accuracy guard, (\w+) against fp32 on 508 images: passed\n"
                         r"  top-1 (\d+\.\d\d)% against fp32's (\d+\.\d\d)%: ([+-]\d+\.\d\d) points "
                         r"\(at most 0\.5 below allowed\)\n"
                         r"  top-1 agreement with fp32 (\d+\.\d\d)% \(at least 98% needed\)\n")


@pytest.mark.slow
@pytest.mark.parametrize("runtime, precision", [("onnxruntime", "int8"), ("eager", "bf16"), ("openvino", "int8")])
def test_eval_prints_the_guard_of_a_trained_model(trained_run, capsys, runtime, precision):
    """eval in a lower precision (int8 calibrated on the run's training data) prints both top-1 figures, their
    difference and the agreement, within the guard, and the fp32 figure is eval's own in fp32."""
    if runtime == "openvino":
        pytest.importorskip("nncf")
    argv = ["eval", str(trained_run), "--checkpoint", "last"]
    fp32 = run_in_process([*argv, "--precision", "fp32", "--json"], capsys)
    assert fp32.code == 0, fp32.err
    shown = run_in_process([*argv, "--runtime", runtime, "--precision", precision], capsys)
    assert shown.code == 0 and shown.err == "", shown.err
    found = GUARD_LINES.search(shown.out)
    assert found, shown.out
    named, top1, top1_fp32, diff, agreement = found.group(1), *map(float, found.groups()[1:])
    top1_shown = float(re.search(r"^top-1 (\d\.\d{4})", shown.out, re.MULTILINE).group(1))
    assert named == precision and f"runtime {runtime}, precision {precision}" in shown.out
    assert top1_fp32 == pytest.approx(100 * json.loads(fp32.out)["top1"], abs=0.005)
    assert top1 == pytest.approx(100 * top1_shown, abs=0.01) and diff == pytest.approx(top1 - top1_fp32, abs=0.011)
    assert top1_fp32 > 30.0 and diff >= -0.5 and agreement >= 98.0


@pytest.mark.slow
def test_eval_of_int8_calibrated_on_the_wrong_images_fails_the_guard(trained_run, tmp_path, capsys):
    """Calibration images of one flat colour (the data's mean: inputs of zeros) clip every real activation."""
    mean = tuple(round(m) for m in mode_stats("cifar")[0])
    for i in range(16):
        Image.new("RGB", (32, 32), mean).save(tmp_path / f"{i}.png")
    shown = run_in_process(["eval", str(trained_run), "--checkpoint", "last", *INT8, "--calibration", str(tmp_path)],
                           capsys)
    assert shown.code == 1
    assert "accuracy guard, int8 against fp32 on 508 images: FAILED" in shown.out
    assert re.fullmatch(r"convzoo: error: onnxruntime int8 fails the accuracy guard on 508 images: .*top-1 agreement "
                        r"with fp32 \d+\.\d\d% \(at least 98% needed, \d+\.\d\d points short\)\n", shown.err)
