"""convzoo.runtime's inference runtimes and their one chooser, inference_model (PyTorch fp32 / bf16, ONNX Runtime
fp32 / int8, OpenVINO fp32 / bf16 / int8), convzoo.data.calibration's calibration images, and the accuracy
guard against fp32.

The guard's figures are asserted on a small trained model: ``convzoo train --recipe fast --set epochs=3 --set warmup_epochs=1``
(xception_cifar_tiny on the embedded CIFAR-10 subset, about 20 s on 2 idle cores), evaluated on the
held-out split the run recorded (``train_val_split(embedded_cifar10(), 0.1, 0)``, 508 images).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

import convzoo
import convzoo.optimize
from convzoo import hardware
from convzoo.cli import main
from convzoo.data import BatchLoader, embedded_cifar10, train_val_split
from convzoo.data.calibration import calibration_images, find_calibration_files
from convzoo.data.transforms import ImageTransform
from convzoo.errors import AccuracyGuardError, ConfigError, DataError, MissingDependencyError
from convzoo.runtime import (PRECISIONS, RUNTIME_PRECISIONS, RUNTIMES, GuardResult, OnnxRuntimeModel, OpenVinoModel,
                             TorchModel, calibration_set, compare_predictors, default_precision, inference_model)
from convzoo.predict import predict_files
from convzoo.preprocess import mode_stats

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


def test_unreadable_calibration_images_are_data_error(tmp_path, tiny, caplog):
    folder = tmp_path / "calib"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(b"not a jpeg at all")
    (folder / "sub" / "b.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"found 2 file\(s\), none readable") as exc:
        calibration_images(tiny, folder)
    assert "\n" not in str(exc.value)
    assert "skipped" in caplog.text


@pytest.mark.parametrize("make", ["empty", "missing", "text_only"])
def test_no_calibration_images_is_data_error(tmp_path, make):
    source = tmp_path / "calib"
    if make != "missing":
        source.mkdir()
    if make == "text_only":
        (source / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="calibration image"):
        find_calibration_files(source)


def test_calibration_images_are_read_as_the_model_takes_them(tmp_path, tiny, split, caplog):
    images = split[1].images[:5]
    for i, im in enumerate(images):
        Image.fromarray(im.permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    batches = calibration_images(tiny, [tmp_path], batch_size=2)
    assert [b.shape[0] for b in batches] == [2, 2, 1] and "broken.png" in caplog.text
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
def trained(tmp_path_factory):
    """xception_cifar_tiny after the fast recipe's first 3 epochs, through the command line."""
    run = tmp_path_factory.mktemp("lowp") / "run"
    subprocess.run([sys.executable, "-m", "convzoo", "train", "--recipe", "fast", "--set", "epochs=3", "--set", "warmup_epochs=1",
                    "--out", str(run)], check=True, capture_output=True, env={**os.environ})
    return convzoo.load_checkpoint(run / "last").eval()


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
