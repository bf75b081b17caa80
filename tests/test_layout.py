import ast
import re
import subprocess
import sys

from conftest import ROOT


def test_import_core_pulls_no_domain_library():
    code = ("import sys, scimae.core.mae, scimae.core.engine, scimae.core.heads, scimae.core.checkpoint, "
            "scimae.core.config, scimae.core.losses, scimae.core.metrics, scimae.core.files, scimae.core.progress;"
            "print([m for m in ('monai', 'nibabel', 'rasterio', 'wfdb', 'open3d', 'pytorch3d', 'sklearn', 'sksurv', "
            "'scimae.domains') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def _imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_core_imports_no_domain_and_domains_import_no_other_domain():
    for path in (ROOT / "core").rglob("*.py"):
        assert not [m for m in _imports(path) if m.startswith("scimae.domains")], path
    for domain in (ROOT / "domains").iterdir():
        if not domain.is_dir() or domain.name.startswith("_"):
            continue
        for path in domain.rglob("*.py"):
            others = [m for m in _imports(path) if m.startswith("scimae.domains.") and m.split(".")[2] != domain.name]
            assert not others, (path, others)


def test_everything_imports_through_the_scimae_package():
    """No module imports the top-level folders by their bare names (which an installed wheel does not have)."""
    for folder in ("core", "domains", "pipelines", "benchmarks", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            bare = [m for m in _imports(path) if m.split(".")[0] in ("core", "domains", "pipelines")]
            assert not bare, (path, bare)


def test_no_cuda_calls_or_unsafe_loading():
    for folder in ("core", "domains", "pipelines"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert ".cuda()" not in text, path
            assert not re.search(r"import pickle|(?<![.\w])eval\(|yaml\.load\(|weights_only=False", text), path


def test_every_pipeline_config_reloads_from_its_saved_copy(tmp_path):
    """The config.yaml a run writes reads back to the same config (what --resume and a rerun rely on)."""
    import importlib.util

    from scimae.core.config import load_config, save_config

    for path in sorted((ROOT / "pipelines").glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"pipeline_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not hasattr(module, "Config"):  # tools that read a run's export, not a config
            continue
        cfg = load_config(module.Config, module.DEFAULT)
        save_config(cfg, tmp_path / f"{path.stem}.yaml")
        assert load_config(module.Config, tmp_path / f"{path.stem}.yaml") == cfg, path.stem


def test_every_domain_uses_the_common_file_names_and_stays_small():
    """io, transforms, data, model, finetune, figures and synthetic in each domain (inference.py, api.py and a
    second native format's reader, hdf4.py, where the domain has them), none much over 250 lines."""
    common = {"__init__", "io", "transforms", "data", "model", "finetune", "figures", "synthetic"}
    for domain in (ROOT / "domains").iterdir():
        if not domain.is_dir() or domain.name.startswith("_"):
            continue
        names = {p.stem for p in domain.glob("*.py")}
        assert common <= names and names - common <= {"inference", "api", "hdf4"}, (domain.name, sorted(names ^ common))
        for path in domain.glob("*.py"):
            assert len(path.read_text().splitlines()) <= 260, path


def test_pipelines_and_benchmarks_import_no_pipeline():
    """Pipelines stand alone; benchmarks call domains and core, and run pipelines as a user does (a process)."""
    for path in [*(ROOT / "pipelines").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        assert not [m for m in _imports(path) if m.startswith("scimae.pipelines")], path


def test_pipelines_take_their_export_config_from_the_domain():
    for path in (ROOT / "pipelines").glob("*.py"):
        assert not re.search(r"export_config = \{", path.read_text()), path


def test_every_domain_model_speaks_the_core_contracts():
    """Each domain's tokenizer and target meet core's Tokenizer and Target protocols, and the group names
    are the tokenizer's alone: the encoder and the loss names read them from it."""
    from scimae.core.tokens import Target, Tokenizer
    from scimae.domains.brain_mri.model import BrainModelConfig, build_brain_mae
    from scimae.domains.cardiac.model import CardiacModelConfig, build_cardiac_mae
    from scimae.domains.remote_sensing.model import GeoModelConfig, build_geo_mae
    from scimae.domains.scene3d.model import NerfModelConfig, PointModelConfig, build_nerf_mae, build_point_mae
    from scimae.domains.skeleton.model import SkeletonModelConfig, build_skeleton_mae

    small = {"dim": 32, "depth": 1, "heads": 2, "decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2}
    models = {"brain_mri": build_brain_mae(BrainModelConfig(**small), (32, 32, 32)),
              "cardiac": build_cardiac_mae(CardiacModelConfig(**small), 500, 50),
              "remote_sensing": build_geo_mae(GeoModelConfig(**small), {"visible": ["R", "G", "B"], "nir": ["NIR"]}, 32, 8),
              "point_cloud": build_point_mae(PointModelConfig(**small), 8, 8),
              "nerf": build_nerf_mae(NerfModelConfig(**small), (16, 16, 16), 4),
              "skeleton": build_skeleton_mae(SkeletonModelConfig(**small), 16)}
    for name, mae in models.items():
        tok = mae.encoder.tokenizer
        assert isinstance(tok, Tokenizer) and isinstance(mae.target, Target), name
        assert mae.group_names == list(tok.group_names) and tok.group_names, name
    assert models["remote_sensing"].group_names == ["visible", "nir"]
