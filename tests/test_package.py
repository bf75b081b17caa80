"""scimae as an installed package: the wheel, the command, self-documenting configs, seeds, extras, the
Hugging Face conventions."""
import importlib
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from scimae import pipelines
from scimae.core.config import describe, load_config, parse_cli
from scimae.core.errors import DataError, MissingDependency, require

TINY_CARDIAC = ["model.dim=32", "model.depth=1", "model.heads=4", "model.decoder_dim=32", "model.decoder_depth=1",
                "model.decoder_heads=4", "train.epochs=1", "train.max_steps=2", "train.batch_size=4",
                "train.figure_every=0", "data.synthetic.records=8", "data.synthetic.seconds=20"]


def _run(args, cwd, env=None, check=True):
    out = subprocess.run(args, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{args} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def _pipeline_configs():
    for module in pkgutil.iter_modules(pipelines.__path__):
        mod = importlib.import_module(f"scimae.pipelines.{module.name}")
        if hasattr(mod, "Config"):
            yield module.name, mod


@pytest.mark.slow
def test_wheel_holds_only_scimae_and_runs_without_the_checkout(tmp_path):
    src = tmp_path / "src"
    files = _run(["git", "ls-files", "-co", "--exclude-standard"], ROOT).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(src)], tmp_path)
    wheel = next((tmp_path / "dist").glob("scimae-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"scimae", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "scimae/configs/cardiac_pretrain.yaml" in names and "scimae/pipelines/cardiac_pretrain.py" in names

    venv = tmp_path / "venv"  # a fresh environment: the wheel, and this environment's dependencies by a .pth
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index", str(wheel)],
         tmp_path)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    work = tmp_path / "work"
    work.mkdir()
    out = _run([str(python), "-c", "import scimae; from scimae.domains.cardiac.api import CardiacFoundationModel; "
                                   "print(scimae.__file__)"], work)
    assert Path(out.stdout.strip()).is_relative_to(venv)
    _run([str(venv / "bin" / "scimae"), "pretrain", "cardiac", "train.epochs=1"], work,
         {"SCIMAE_CACHE": str(tmp_path / "cache")})
    export = next((work / "runs" / "cardiac_pretrain").glob("*/export"))
    assert json.loads((export / "config.json").read_text())["training"]["pipeline"] == "cardiac_pretrain"


def test_scimae_command_runs_pipelines_and_describes_runs(tmp_path):
    scimae = [sys.executable, "-m", "scimae"]
    usage = _run(scimae + ["--help"], tmp_path).stdout
    assert "scimae pretrain {brats,cardiac,geo,nerf,pointcloud,skeleton}" in usage and "scimae info EXPORT" in usage
    assert "data.synthetic.records" in _run(scimae + ["pretrain", "cardiac", "--help"], tmp_path).stdout
    bad = _run(scimae + ["finetune", "nerf"], tmp_path, check=False)
    assert bad.returncode != 0 and "no finetune pipeline for 'nerf'" in bad.stderr
    _run(scimae + ["pretrain", "cardiac", *TINY_CARDIAC, f"data.synthetic.folder={tmp_path / 'data'}",
                   "train.run_name=a"], tmp_path)
    info = _run(scimae + ["info", "runs/cardiac_pretrain/a/export"], tmp_path).stdout
    assert "domain      cardiac" in info and "I, II, III, aVR" in info and "zero mean, unit variance" in info
    assert "written by  cardiac_pretrain at step 2" in info and "parameters" in info
    listed = _run(scimae + ["list"], tmp_path).stdout
    assert "runs/cardiac_pretrain/a  [export]" in listed and "step=2" in listed
    missing = _run(scimae + ["info", str(tmp_path / "nothing")], tmp_path, check=False)
    assert missing.returncode == 2 and missing.stderr.startswith("error: ") and "config.json" in missing.stderr


def test_help_lists_every_config_key_with_type_default_and_description(capsys):
    for name, mod in _pipeline_configs():
        rows = describe(mod.Config, load_config(mod.Config, mod.DEFAULT))
        assert rows and all(note for *_, note in rows), (name, [key for key, *_, note in rows if not note])
        with pytest.raises(SystemExit):
            parse_cli(mod.Config, mod.DEFAULT, "", ["--help"])
        shown = capsys.readouterr().out
        for key, tp, value, note in rows:
            assert key in shown and note in shown, (name, key)
    assert re.search(r"\n  train\.seed +int = 0\n +seeds model initialisation", shown)


@pytest.mark.parametrize("path", ["tiles #2", "null", "[a, b]", "on", "1e3", "x: y"])
def test_path_flags_are_taken_as_typed_never_as_yaml(path):
    from scimae.pipelines import cardiac_pretrain

    cfg = parse_cli(cardiac_pretrain.Config, cardiac_pretrain.DEFAULT, "",
                    ["--data", f"/d/{path}", "--init-from", path, "train.epochs=3"])
    assert (cfg.data.root, cfg.train.init_from, cfg.train.epochs) == (f"/d/{path}", path, 3)


def test_resume_starts_from_the_runs_own_config_and_refuses_other_settings(tmp_path):
    from scimae.core import DataError
    from scimae.core.config import save_config
    from scimae.pipelines import cardiac_pretrain

    def cli(*args):
        return parse_cli(cardiac_pretrain.Config, cardiac_pretrain.DEFAULT, "", list(args))

    run = tmp_path / "run #2"  # a path, not YAML
    run.mkdir()
    save_config(cli("train.batch_size=3", "model.dim=64"), run / "config.yaml")
    with pytest.raises(DataError, match=r"run #2: found no last.pt; expected a run folder"):
        cli("--resume", str(run))
    with pytest.raises(DataError, match=r"gone: found no such file or folder"):
        cli("--resume", str(tmp_path / "gone"))
    assert not (tmp_path / "gone").exists()
    (run / "last.pt").write_bytes(b"")
    cfg = cli("--resume", str(run / "last.pt"), "train.epochs=30")
    assert (cfg.train.batch_size, cfg.model.dim, cfg.train.epochs, cfg.train.resume) == (3, 64, 30, str(run / "last.pt"))
    with pytest.raises(ValueError, match=r"model.dim is 64 in .*config.yaml, not 128; a resumed run may change only "
                                         r"train.epochs, train.max_steps"):
        cli("--resume", str(run), "model.dim=128")
    with pytest.raises(ValueError, match="with --resume: a resumed run reads its own config.yaml"):
        cli("--resume", str(run), "--config", str(run / "config.yaml"))


@pytest.mark.parametrize("override, message", [
    ("model.depth=0", "model.depth must be >= 1, got 0"),
    ("model.dim=30", "model.dim 30 must be a multiple of model.heads 4"),
    ("model.drop_path=1.0", r"model.drop_path must be in \[0, 1\), got 1.0"),
    ("model.mode=simmim", "model.mode must be drop or mask_token, got 'simmim'"),
    ("train.grad_clip=0", r"train.grad_clip must be > 0 or null \(no clipping\), got 0"),
    ("train.layer_decay=1.5", r"train.layer_decay must be in \(0, 1\], got 1.5"),
    ("train.lr=-1e-3", "train.lr must be > 0 or null, got -0.001"),
    ("train.betas=[0.9, 1.0]", r"train.betas must be two numbers in \[0, 1\)"),
    ("train.num_workers=-1", "train.num_workers must be >= 0, got -1"),
])
def test_config_values_are_checked_against_their_ranges(override, message):
    from scimae.pipelines import cardiac_pretrain

    with pytest.raises(ValueError, match=message):
        load_config(cardiac_pretrain.Config, cardiac_pretrain.DEFAULT, [override])


def test_print_config_and_duplicate_keys(tmp_path, capsys):
    from scimae.pipelines import cardiac_pretrain

    with pytest.raises(SystemExit) as stop:
        parse_cli(cardiac_pretrain.Config, cardiac_pretrain.DEFAULT, "", ["--print-config", "train.epochs=3"])
    assert stop.value.code == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    assert load_config(cardiac_pretrain.Config, printed) == load_config(cardiac_pretrain.Config, cardiac_pretrain.DEFAULT,
                                                                         ["train.epochs=3"])
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  epochs: 2\n  batch_size: 4\n  epochs: 3\n")
    with pytest.raises(DataError, match=r"line 4, column 3: duplicate key 'epochs'"):
        load_config(cardiac_pretrain.Config, dup)


def test_same_seed_same_export_other_seed_other_weights(tmp_path):
    from safetensors.torch import load_file
    from scimae.pipelines import cardiac_pretrain

    def run(name, seed):
        cardiac_pretrain.main(TINY_CARDIAC + [f"data.synthetic.folder={tmp_path / 'data'}", f"train.out_dir={tmp_path}",
                                              f"train.run_name={name}", f"train.seed={seed}"])
        return tmp_path / name / "export"

    a, b, c = run("a", 0), run("b", 0), run("c", 1)
    for name in ("model.safetensors", "config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    wa, wc = load_file(a / "model.safetensors"), load_file(c / "model.safetensors")
    assert not torch.equal(wa["encoder.blocks.blocks.0.attn.qkv.weight"], wc["encoder.blocks.blocks.0.attn.qkv.weight"])


def test_a_missing_extra_is_one_line_naming_it(tmp_path):
    require("remote sensing", "geo", "rasterio")  # installed here: nothing to say
    with pytest.raises(MissingDependency, match=r'^remote sensing needs not_a_module_0: pip install "scimae\[geo\]"$'):
        require("remote sensing", "geo", "rasterio", "not_a_module_0")
    code = ("import sys; sys.modules['rasterio'] = None; sys.argv = ['geo_pretrain']; "
            "from scimae.core.config import run_cli\n"
            "def main():\n    from scimae.pipelines import geo_pretrain\n    geo_pretrain.main()\n"
            "run_cli(main)")
    out = _run([sys.executable, "-c", code], tmp_path, check=False)
    assert out.returncode == 2
    assert out.stderr.strip() == 'error: remote sensing needs rasterio: pip install "scimae[geo]"'


def test_sysdeps_without_apt_says_what_to_install(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "grep", "id", "echo"):  # no apt-get and no ldconfig here
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    out = _run([shutil.which("make"), "-s", "-C", str(ROOT), "sysdeps"], tmp_path, {"PATH": str(bin_dir)}, check=False)
    assert out.returncode == 0, out.stderr
    assert "libusb" in out.stdout and "apt" not in out.stderr


def test_from_pretrained_takes_a_hub_repo_id(tmp_path, monkeypatch):
    """A repo id goes through huggingface_hub (here a stand-in that serves a local folder); offline, or with the
    package missing, the error names the id and says what to do."""
    from scimae.core.checkpoint import resolve_export
    from scimae.domains.cardiac.api import CardiacFoundationModel
    from scimae.domains.cardiac.data import CardiacDataConfig
    from scimae.domains.cardiac.model import (
        CardiacModelConfig,
        build_cardiac_mae,
        export_config,
    )

    hub = pytest.importorskip("huggingface_hub")
    cfg = CardiacModelConfig(dim=32, depth=1, heads=4, decoder_dim=32, decoder_depth=1, decoder_heads=4)
    mae = build_cardiac_mae(cfg, 2500, 100)
    mae.export_config = export_config(cfg, CardiacDataConfig())
    mae.save_pretrained(tmp_path / "snapshot")
    calls = []

    def snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, tuple(allow_patterns)))
        return str(tmp_path / "snapshot")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub, "snapshot_download", snapshot_download)
    model = CardiacFoundationModel.from_pretrained("scimae-org/ecg-tiny", device="cpu")
    assert calls == [("scimae-org/ecg-tiny", ("config.json", "model.safetensors"))]
    assert isinstance(model, torch.nn.Module) and not model.training and model.device.type == "cpu"
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in mae.parameters())
    model.save_pretrained(tmp_path / "again")
    again = CardiacFoundationModel.from_pretrained(tmp_path / "again", device="cpu")
    for (k, a), (_, b) in zip(model.mae.state_dict().items(), again.mae.state_dict().items()):
        assert torch.equal(a, b), k

    def offline(repo_id, allow_patterns):
        raise hub.errors.LocalEntryNotFoundError("offline and not in the cache")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    with pytest.raises(DataError, match=r"^scimae-org/ecg-tiny: found no such local folder, and the Hugging Face Hub"):
        resolve_export("scimae-org/ecg-tiny")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(DataError, match=r'pip install "scimae\[hub\]"'):
        resolve_export("scimae-org/ecg-tiny")


def test_every_domain_model_saves_and_loads_with_the_hf_names(tmp_path):
    """save_pretrained writes what each domain's loader reads back, weight for weight."""
    from scimae.domains.brain_mri.model import (
        BrainModelConfig,
        build_brain_mae,
        load_brain_mae,
    )
    from scimae.domains.brain_mri.model import export_config as brain_export
    from scimae.domains.remote_sensing.data import GeoDataConfig, band_layout
    from scimae.domains.remote_sensing.model import (
        GeoModelConfig,
        build_geo_mae,
        load_geo_mae,
    )
    from scimae.domains.remote_sensing.model import export_config as geo_export

    small = dict(dim=24, depth=1, heads=2, decoder_dim=24, decoder_depth=1, decoder_heads=2)
    brain_cfg = BrainModelConfig(**small)
    brain = build_brain_mae(brain_cfg, (32, 32, 32))
    brain.export_config = brain_export(brain_cfg, (32, 32, 32), (2.0, 2.0, 2.0))
    geo_cfg, data = GeoModelConfig(**small), GeoDataConfig()
    geo = build_geo_mae(geo_cfg, band_layout([b.name for b in data.bands], data.groups), data.window, data.patch)
    geo.export_config = geo_export(geo_cfg, data)
    for name, model, load in (("brain", brain, load_brain_mae), ("geo", geo, load_geo_mae)):
        model.save_pretrained(tmp_path / name)
        again, config = load(tmp_path / name)
        assert again.export_config == config
        for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
            assert torch.equal(a, b), (name, k)
    with pytest.raises(ValueError, match="no export_config"):
        build_brain_mae(brain_cfg, (32, 32, 32)).save_pretrained(tmp_path / "x")
