"""DVC reruns what changed and only that: each stage depends on exactly the project code it imports
(scripts/stage_deps.py), and wall-clock measurements stay out of every hash."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("stage_deps", ROOT / "scripts" / "stage_deps.py")
stage_deps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stage_deps)


def test_the_import_closure_follows_lazy_imports_and_skips_inert_package_files(tmp_path):
    (tmp_path / "rlhf_lab" / "sub").mkdir(parents=True)
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "rlhf_lab" / "__init__.py").write_text('"""Docstring only."""\n__version__ = "1"\n')
    (tmp_path / "rlhf_lab" / "sub" / "__init__.py").write_text("from rlhf_lab.sub.a import f\n")
    (tmp_path / "rlhf_lab" / "sub" / "a.py").write_text("def f():\n    from rlhf_lab.sub import b\n")
    (tmp_path / "rlhf_lab" / "sub" / "b.py").write_text("import numpy\n")
    (tmp_path / "rlhf_lab" / "unused.py").write_text("")
    (tmp_path / "pipelines" / "__init__.py").write_text("")
    (tmp_path / "pipelines" / "stage.py").write_text("from rlhf_lab.sub import a\n")
    files = stage_deps.closure("pipelines.stage", tmp_path)
    assert stage_deps.code_deps(files, tmp_path) == ["pipelines/stage.py", "rlhf_lab/sub/__init__.py",
                                                    "rlhf_lab/sub/a.py", "rlhf_lab/sub/b.py"]  # fmt: skip


def test_every_stage_depends_on_exactly_the_code_it_imports():
    for stage, module in stage_deps.stage_modules().items():
        assert stage_deps.declared_code_deps(stage) == stage_deps.code_deps(stage_deps.closure(module)), stage


def test_a_report_only_statistic_reruns_the_report_and_no_run():
    stats = "rlhf_lab/analysis/stats.py"
    dependents = [stage for stage in stage_deps.stage_modules() if stats in stage_deps.declared_code_deps(stage)]
    assert dependents == ["report"]
    for stage in ("ppo", "best_of_n"):  # the seeds' summary needs the intervals alone
        assert "rlhf_lab/analysis/intervals.py" in stage_deps.declared_code_deps(stage)


def test_wall_clock_costs_and_run_ids_are_outside_every_hash():
    for name in ("cost.json", "mlflow_run_id"):
        path = f"runs/ppo/beta0/seeds/seed_0/{name}"
        done = subprocess.run([sys.executable, "-m", "dvc", "check-ignore", path], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0 and path in done.stdout, (name, done.stdout, done.stderr)
    kept = subprocess.run([sys.executable, "-m", "dvc", "check-ignore", "runs/ppo/beta0/seeds/seed_0/metrics.json"],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert kept.returncode == 1  # the run's results are hashed


def test_each_example_runs_as_the_overrides_dvc_applies_to_params_yaml(tmp_path):
    """The examples run as DVC experiments (`make study`): DVC's own override machinery, applied to
    params.yaml, must give each example's params exactly."""
    import shutil

    import yaml
    from dvc.utils.hydra import apply_overrides

    spec = importlib.util.spec_from_file_location("experiment_overrides", ROOT / "scripts" / "experiment_overrides.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.hydra_value({"a": "x y: z", "b": [1, None], "c": 1e-05}) == "{a:'x y: z',b:[1,null],c:1.0e-05}"
    base = yaml.safe_load((ROOT / "params.yaml").read_text())
    for example in ("study", "frontier", "remedies"):
        target = yaml.safe_load((ROOT / "examples" / example / "params.yaml").read_text())
        shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
        apply_overrides(tmp_path / "params.yaml", module.overrides(base, target))
        assert yaml.safe_load((tmp_path / "params.yaml").read_text()) == target, example
