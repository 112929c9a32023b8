"""Configs that cannot run on the hardware at hand are refused before anything is built, with
the setting and its fix named; ``s2bnn doctor`` reports every piece with its fix."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from s2bnn_plugin.solo_learn.locate import configs_dir
from s2bnn_plugin.solo_learn.preflight import ConfigError, check_run_config, cpu_processes

CPU_OK = {"accelerator": "cpu", "devices": "1", "strategy": "auto", "sync_batchnorm": False}


def test_a_cpu_config_passes():
    check_run_config(CPU_OK, gpus=0)
    check_run_config({**CPU_OK, "accelerator": "auto", "devices": "1"}, gpus=0)
    check_run_config({**CPU_OK, "devices": "2", "strategy": "ddp"}, gpus=0)  # DDP on CPU works


def test_sync_batchnorm_with_several_cpu_processes():
    cfg = {**CPU_OK, "devices": "2", "strategy": "ddp", "sync_batchnorm": True}
    with pytest.raises(ConfigError, match="set sync_batchnorm=False"):
        check_run_config(cfg, gpus=0)
    check_run_config({**cfg, "devices": "1"}, gpus=0)  # one process: Lightning never converts
    with pytest.raises(ConfigError, match="sync_batchnorm"):
        check_run_config({**cfg, "devices": "1", "num_nodes": 2}, gpus=0)


def test_gpu_settings_without_a_gpu():
    with pytest.raises(ConfigError, match="accelerator=gpu but torch sees no CUDA GPU"):
        check_run_config({"accelerator": "gpu", "devices": [0]}, gpus=0)
    with pytest.raises(ConfigError, match="devices=\\[0\\] lists GPU indices"):
        check_run_config({"accelerator": "auto", "devices": [0]}, gpus=0)
    with pytest.raises(ConfigError, match="names GPUs this machine does not have"):
        check_run_config({"accelerator": "gpu", "devices": [0, 1]}, gpus=1)
    check_run_config({"accelerator": "gpu", "devices": [0, 1], "sync_batchnorm": True}, gpus=2)


def test_cpu_processes():
    assert cpu_processes(3) == 3 and cpu_processes("2") == 2 and cpu_processes("auto") == 1
    for bad in ([0], "0", 0):
        with pytest.raises(ConfigError):
            cpu_processes(bad)


def test_missing_input_files_are_named(tmp_path):
    cfg = {
        **CPU_OK,
        "data": {"dataset": "custom", "train_path": str(tmp_path / "nope"), "val_path": None},
        "method_kwargs": {"teacher": {"ckpt": str(tmp_path / "teacher.ckpt")}},
    }
    with pytest.raises(ConfigError) as e:
        check_run_config(OmegaConf.create(cfg), gpus=0)
    assert "data.train_path" in str(e.value) and "method_kwargs.teacher.ckpt" in str(e.value)
    (tmp_path / "nope").mkdir()
    (tmp_path / "teacher.ckpt").write_bytes(b"x")
    check_run_config(OmegaConf.create(cfg), gpus=0)


def test_the_shipped_gpu_configs_are_refused_on_a_cpu_and_the_custom_ones_pass():
    cifar = OmegaConf.load(configs_dir() / "pretrain" / "cifar" / "s2bnn.yaml")
    with pytest.raises(ConfigError, match="accelerator=gpu"):
        check_run_config(cifar, gpus=0)
    custom = OmegaConf.load(configs_dir() / "pretrain" / "custom" / "s2bnn.yaml")
    with pytest.raises(ConfigError, match="data.train_path is not set: set data.train_path="):
        check_run_config(custom, gpus=0)  # ??? until given on the command line
    custom.data.train_path = str(configs_dir())  # any folder
    check_run_config(custom, gpus=0)


def test_devices_as_an_int_is_refused_with_the_forms_solo_learn_takes():
    """solo-learn's parse_cfg scales the learning rate by ``len(cfg.devices)``: an int (what
    ``devices=1`` on the command line gives) has no len, a list or a string has."""
    for accelerator, gpus in (("cpu", 0), ("gpu", 1), ("auto", 0)):
        with pytest.raises(ConfigError) as e:
            check_run_config({**CPU_OK, "accelerator": accelerator, "devices": 1}, gpus=gpus)
        message = str(e.value)
        assert message.startswith("devices=1 is an int, which solo-learn cannot take")
        assert "devices=[0]" in message and "'devices=\"1\"' on the command line" in message
    check_run_config({**CPU_OK, "accelerator": "gpu", "devices": [0]}, gpus=1)
    check_run_config({**CPU_OK, "devices": "1"}, gpus=0)


def test_a_linear_config_without_its_checkpoint_says_what_to_set():
    lin = OmegaConf.load(configs_dir() / "linear" / "custom" / "reactnet_a.yaml")
    lin.merge_with({"accelerator": "cpu", "data": {"train_path": ".", "val_path": "."}})
    with pytest.raises(ConfigError) as e:
        check_run_config(lin, gpus=0)  # ??? in the shipped config
    assert str(e.value) == (
        "pretrained_feature_extractor is not set: set pretrained_feature_extractor=PATH, the "
        "checkpoint of the pretraining run to evaluate (its .ckpt under "
        "checkpoint.dir/<method>/<run>/, with args.json beside it)"
    )
    lin.pretrained_feature_extractor = None
    with pytest.raises(ConfigError, match="^pretrained_feature_extractor is not set: set"):
        check_run_config(lin, gpus=0)


def test_a_linear_config_with_a_packed_file_is_refused(tmp_path):
    lin = OmegaConf.load(configs_dir() / "linear" / "custom" / "reactnet_a.yaml")
    packed = tmp_path / "student.s2bnn"
    packed.write_bytes(b"PK")
    lin.merge_with(
        {
            "accelerator": "cpu",
            "data": {"train_path": ".", "val_path": "."},
            "pretrained_feature_extractor": str(packed),
        }
    )
    with pytest.raises(ConfigError) as e:
        check_run_config(lin, gpus=0)
    assert "main_linear.py reads a training checkpoint (.ckpt, .pth, .pt)" in str(e.value)
    assert ".s2bnn packed files are for the CPU engine" in str(e.value)
    ckpt = tmp_path / "student.ckpt"
    ckpt.write_bytes(b"x")
    lin.pretrained_feature_extractor = str(ckpt)
    check_run_config(lin, gpus=0)


# --------------------------------------------------------------------------------- doctor


def test_doctor_reports_each_missing_piece_with_its_fix(monkeypatch, capsys):
    from s2bnn_plugin import doctor
    from s2bnn_plugin.cli import main
    from s2bnn_plugin.data import fashion_mnist
    from s2bnn_plugin.solo_learn import locate

    def no_data(*_):
        raise fashion_mnist.FashionMNISTNotFound("Fashion-MNIST not found: apt-get install ...")

    monkeypatch.setattr(fashion_mnist, "find_fashion_mnist", no_data)
    monkeypatch.setattr(locate, "solo_checkout", lambda: None)
    monkeypatch.setattr(doctor, "_version", lambda m: None if m == "matplotlib" else "1.0")
    checks = {c.name: c for c in doctor.diagnose()}
    assert not checks["solo-learn"].ok and checks["solo-learn"].fix == "s2bnn setup-solo"
    assert not checks["matplotlib"].ok and "pip install matplotlib" in checks["matplotlib"].fix
    assert not checks["fashion-mnist"].ok and "apt-get" in checks["fashion-mnist"].fix
    assert checks["numba"].ok and "CPU target" in checks["numba"].found
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "NO  solo-learn" in out and "fix: s2bnn setup-solo" in out
    assert out.rstrip().splitlines()[-1].startswith("missing for the README's commands:")


def test_doctor_names_the_kernel_variant_or_why_a_forced_one_cannot_run(monkeypatch):
    """The numba line names the variant the engine will run; a forced variant the CPU cannot
    run (or no such variant) fails the check, with the reason and the fix."""
    from s2bnn_plugin.kernels import variants

    from s2bnn_plugin import doctor

    monkeypatch.delenv(variants.ENV, raising=False)
    check = doctor._numba()
    assert check.ok and f"kernel variant {variants.best().name}" in check.found
    monkeypatch.setenv(variants.ENV, "no_such_variant")
    check = doctor._numba()
    assert not check.ok and "no kernel variant 'no_such_variant'" in check.found
    assert variants.ENV in check.fix


def test_doctor_passes_when_everything_is_there(monkeypatch):
    from s2bnn_plugin import doctor

    monkeypatch.setattr(doctor, "_solo", lambda: [doctor.Check("solo-learn", True, "here")])
    monkeypatch.setattr(doctor, "_fashion_mnist", lambda _: doctor.Check("data", True, "here"))
    checks = doctor.diagnose()
    gpu = next(c for c in checks if c.name == "gpu")
    assert not gpu.required  # a GPU is reported, never required
    assert all(c.ok or not c.required for c in checks)
    assert doctor.render(checks).endswith("everything the README's commands need is here")


def test_doctor_says_whether_the_kernels_are_compiled_and_its_fix_removes_only_old_ones(
    monkeypatch, tmp_path
):
    """The report's pasted fix deletes the folders of other kernel versions and keeps the one
    this install loads."""
    import subprocess

    from s2bnn_plugin.kernels import cache

    from s2bnn_plugin import doctor

    monkeypatch.setattr(cache, "_roots", lambda: [str(tmp_path / "my cache")])  # a space
    current = cache.cache_dir()  # <root>/s2bnn_kernels/<version>/<cpu>
    version = current.parent
    for folder in (current, version.parent / ("0" * 32) / "cpu", version.parent / ("f" * 32)):
        folder.mkdir(parents=True)
        (folder / "bitpack.tap_sums-131.py311.1.nbc").write_bytes(b"x" * 2**20)
    (kernels, old) = doctor._kernels()
    assert (kernels.name, kernels.ok, kernels.required) == ("kernels", False, False)
    assert str(current) in kernels.found and cache.FIRST_COMPILE in kernels.fix
    assert (old.name, old.ok, old.required) == ("old kernels", False, False)
    assert "2 MB in 2 folders" in old.found
    subprocess.run(["bash", "-c", old.fix], check=True)
    assert [p.name for p in version.parent.iterdir()] == [version.name]
    (current / "bconv.binary_conv_fused-300.py311.nbi").write_bytes(b"")
    (kernels,) = doctor._kernels()
    assert kernels.ok and str(current) in kernels.found


def test_the_commands_print_the_plugins_notices_above_a_progress_bar(monkeypatch, capsys):
    """A notice logged while a bar runs (the first packed run's "compiling" line) comes out as a
    line of its own, the bar cleared first and redrawn after; and once the command is done the
    plugin's logger is as it was."""
    import logging
    import sys

    from tqdm import tqdm

    from s2bnn_plugin import cli

    def command(args):
        with tqdm(total=2, desc="bench", file=sys.stderr) as bar:
            bar.update(1)
            logging.getLogger("s2bnn_plugin.runtime.network").warning("compiling the kernels")
            bar.update(1)
        return 0

    monkeypatch.setattr(cli, "_cmd_configs", command)
    logger = logging.getLogger("s2bnn_plugin")
    before = (list(logger.handlers), logger.propagate)
    assert cli.main(["configs"]) == 0
    lines = capsys.readouterr().err.split("\n")
    (line,) = [ln for ln in lines if "compiling the kernels" in ln]
    assert line.rsplit("\r", 1)[-1] == "compiling the kernels"  # not glued to the bar
    assert "bench" in lines[-1] or "bench" in lines[-2]  # the bar goes on below it
    assert (list(logger.handlers), logger.propagate) == before
