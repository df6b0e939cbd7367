import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlhf_lab import config
from rlhf_lab.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


def test_repo_params_load_and_match_defaults_shape():
    cfg = config.load(ROOT / "params.yaml")
    assert isinstance(cfg, Config)
    # Every key the file sets is a real field (no silent typos) — load() would have raised.
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert set(data) <= set(config.SECTIONS) | set(config.NAMED_ENTRIES)


def test_dvc_yaml_declares_only_existing_params():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    defaults = Config().to_dict()
    for name, stage in stages.items():
        for param in stage.get("params", []):
            section, _, key = param.partition(".")
            assert section in defaults, f"stage {name}: unknown section {section}"
            if key:
                assert key in defaults[section], f"stage {name}: unknown param {param}"


@pytest.mark.parametrize(
    "text, message",
    [
        ("sft:\n  lr: fast\n", "sft.lr: expected a number, got 'fast'"),
        ("sft:\n  epochs: 2.5\n", "sft.epochs: expected an integer, got 2.5"),
        ("sft:\n  epochs: true\n", "sft.epochs: expected an integer, got True"),
        ("sft:\n  epochs: 0\n", "sft.epochs: expected an integer >= 1, got 0"),
        ("sft:\n  learning_rate: 0.1\n", "sft.learning_rate: unknown key; allowed keys are: epochs"),
        ("sfft:\n  lr: 0.1\n", "sfft: unknown section"),
        ("model:\n  n_embd: 30\n  n_head: 4\n", "model.n_head: must divide model.n_embd"),
        ("task:\n  negation_prob: 1.5\n", "task.negation_prob: expected a probability in [0, 1], got 1.5"),
        ("sft: [1, 2]\n", "sft: expected a mapping of keys"),
        ("sft:\n  lr: [0.1\n", "not valid YAML (line"),
        ("ppo:\n  seeds: []\n", "ppo.seeds: expected a count >= 1 or a non-empty list of seeds, got ()"),
        ("ppo:\n  seeds: 0\n", "ppo.seeds: expected a count >= 1 or a list of seeds, got 0"),
        ("ppo:\n  seeds: [0, -1]\n", "ppo.seeds: expected seeds >= 0, got (0, -1)"),
        ("ppo:\n  seeds: [1, 2, 1]\n", "ppo.seeds: expected distinct seeds, got (1, 2, 1)"),
        ("ppo:\n  seeds: three\n", "ppo.seeds: expected an integer or a list of an integer, got 'three'"),
        ("ppo_runs:\n  a: {seeds: [3, 3]}\n", "ppo_runs.a.seeds: expected distinct seeds"),
        ("ppo:\n  reward_condition: dirty\n", "ppo.reward_condition: 'dirty' is not one of reward_conditions: clean"),
        ("ppo_runs:\n  a: {reward_condition: noisy}\n", "ppo_runs.a.reward_condition: 'noisy' is not one of"),
        ("reward_conditions:\n  noisy: {prefs: {flip_fraction: 0.2}}\n",
         "reward_conditions.noisy.prefs: unknown section; a condition overrides preferences and reward"),
        ("reward_conditions:\n  noisy: {preferences: {flip_fraction: 0.9}}\n",
         "reward_conditions.noisy.preferences.flip_fraction: expected a fraction in [0, 0.5], got 0.9"),
        ("reward_conditions: {}\n", "reward_conditions: expected a non-empty mapping"),
        ("sweep:\n  seeds: 0\n", "sweep.seeds: expected an integer >= 1, got 0"),
        ("reward:\n  label_smoothing: 0.5\n", "reward.label_smoothing: expected a number in [0, 0.5), got 0.5"),
        ("reward:\n  center_coef: -1\n", "reward.center_coef: expected a number >= 0, got -1"),
        ("report:\n  remedies: {centering: centered}\n", "report.remedies: expected {remedy: {setting: baseline setting}}"),
        ("ppo_runs:\n  b0: {beta: 0.0}\nreport:\n  remedies: {centering: {centred: b0}}\n",
         "report.remedies.centering: 'centred' is not a setting of ppo_runs"),
        ("ppo_runs:\n  b0: {beta: 0.0}\n  b1: {beta: 0.1}\nreport:\n  remedies: {adaptive_kl: {b0: b1}}\n",
         "report.remedies.adaptive_kl.b0: its baseline 'b1' must be a β = 0 single-RM setting"),
        ("report:\n  early_stop_patience: 0\n", "report.early_stop_patience: expected an integer >= 1, got 0"),
        ("ppo_runs:\n  w: {reward_objective: warm}\nreward:\n  warm: false\n",
         "ppo_runs.w.reward_objective: warm needs its condition's reward.warm: true"),
        ("reward:\n  member_init: pretrain-seed\n  backbone: gpt2\n",
         "reward.member_init: pretrain-seed trains each member's backbone from scratch: reward.backbone must be null"),
        ("reward:\n  member_init: pretrained\n", "reward.member_init: expected one of"),
        ("reward:\n  warm_members: 1\n", "reward.warm_members: expected an integer >= 2"),
        ("ppo_runs:\n  it: {rounds: 0}\n", "ppo_runs.it.rounds: expected an integer >= 1, got 0"),
        ("ppo_runs:\n  it: {rounds: 2, algorithm: dpo}\n", "ppo_runs.it.rounds: iterated RLHF samples from the policy: dpo is offline"),
        ("ppo_runs:\n  it: {rounds: 3}\npreferences:\n  pairs: 2\n",
         "ppo_runs.it.rounds: 3 rounds share a label budget of preferences.pairs = 2: fewer labels than rounds"),
        ("ppo_runs:\n  it: {rounds: 2}\nreward:\n  dataset: pairs.jsonl\n",
         "ppo_runs.it.rounds: iterated RLHF labels new pairs with the gold reward"),
        ("ppo:\n  gold_probe: -1\n", "ppo.gold_probe: expected an integer >= 0, got -1"),
        ("report:\n  early_stop: [proxy, oracle]\n", "report.early_stop: expected a list of proxy and/or gold"),
        ("report:\n  early_stop: [gold]\nppo:\n  gold_probe: 0\n",
         "report.early_stop: gold reads gold on ppo.gold_probe prompts, and ppo.gold_probe is 0"),
        ("report:\n  early_stop: [proxy]\nreward:\n  members: 1\n",
         "report.early_stop: proxy reads the reward members held out of the training objective, and "
         "reward_conditions.clean trains reward.members = 1"),
        ("ppo:\n  early_stop: oracle\n", "ppo.early_stop: expected one of"),
        ("ppo_runs:\n  d: {algorithm: dpo, reward_shaping: par}\n",
         "ppo_runs.d.reward_shaping: shapes the reward of sampled responses: dpo learns from pairs"),
        ("ppo_runs:\n  b0: {beta: 0.0}\n  es: {beta: 0.0, early_stop: gold}\nreport:\n  remedies: {early_stop_gold: {es: b0}}\n",
         "report.remedies.early_stop_gold: the name of the report's own early-stopping rule"),
        ("ppo:\n  early_stop_patience: 0\n", "ppo.early_stop_patience: expected an integer >= 1, got 0"),
        ("ppo_runs:\n  es: {early_stop: proxy, reward_objective: mean}\n",
         "ppo_runs.es.early_stop: proxy reads the reward members held out of the objective, and the mean objective "
         "reads every member"),
        ("ppo_runs:\n  es: {early_stop: proxy, members: 1}\n", "ppo_runs.es.early_stop: proxy reads the reward "
         "members held out of the objective, and the run has 1 member"),
        ("ppo_runs:\n  es: {early_stop: gold, gold_probe: 0}\n",
         "ppo_runs.es.early_stop: gold reads gold on ppo.gold_probe prompts, and ppo.gold_probe is 0"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        config.load(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_yaml_exponent_without_dot_is_a_float(tmp_path):
    cfg = config.load(write(tmp_path, "sft:\n  lr: 3e-4\n"))
    assert cfg.sft.lr == pytest.approx(3e-4)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="parameter file not found"):
        config.load(tmp_path / "nope.yaml")


def test_config_is_frozen_and_replace_validates():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.sft.lr = 1.0  # type: ignore[misc]
    assert cfg.replace(sft={"lr": 0.5}).sft.lr == 0.5
    with pytest.raises(ConfigError, match="sft.lr"):
        cfg.replace(sft={"lr": -1.0})


def test_resolved_config_round_trips(tmp_path):
    cfg = Config().replace(runtime={"devices": [0, 1]})
    config.save(cfg, tmp_path / "config.yaml")
    assert config.load(tmp_path / "config.yaml") == cfg


def test_stage_cli_prints_one_line_error_without_traceback(tmp_path, monkeypatch, capsys):
    from rlhf_lab.runtime.stage import stage_main

    path = write(tmp_path, "sft:\n  batch_size: -3\n")
    monkeypatch.setattr(sys, "argv", ["stage", "--params", str(path)])
    ran = []
    with pytest.raises(SystemExit) as exit_:
        stage_main(ran.append, "test stage")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "sft.batch_size" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert ran == []  # no work started


def test_replacing_dir_keeps_old_output_on_failure_and_merges(tmp_path):
    from rlhf_lab.runtime.stage import replacing_dir

    out = tmp_path / "out"
    out.mkdir()
    (out / "result.txt").write_text("old")
    (out / "README.md").write_text("keep me")
    with pytest.raises(RuntimeError):
        with replacing_dir(out) as tmp:
            (tmp / "result.txt").write_text("half")
            raise RuntimeError("killed")
    assert (out / "result.txt").read_text() == "old"
    with replacing_dir(out, merge=True) as tmp:
        (tmp / "result.txt").write_text("new")
        (tmp / "figures").mkdir()
    assert (out / "result.txt").read_text() == "new" and (out / "README.md").read_text() == "keep me"
    assert (out / "figures").is_dir() and not list(tmp_path.glob("*.partial"))
    with replacing_dir(out) as tmp:
        (tmp / "only.txt").write_text("x")
    assert [p.name for p in out.iterdir()] == ["only.txt"]


@pytest.mark.parametrize("user_setting, offline", [(None, True), ("0", False)])
def test_stages_are_offline_unless_the_user_says_otherwise(user_setting, offline):
    """huggingface_hub reads HF_HUB_OFFLINE once, at import: a stage run by a bare `dvc repro`
    (no Makefile exports) must still be offline, and a user's own setting must win."""
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    if user_setting is not None:
        env["HF_HUB_OFFLINE"] = user_setting
    probe = "import pipelines.sft, huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(offline)


def test_a_reward_condition_overrides_its_sections_and_has_its_own_folders():
    cfg = config.from_dict({
        "reward_conditions": {"clean": {}, "noisy": {"preferences": {"flip_fraction": 0.25}, "reward": {"bootstrap": True}}},
        "ppo_runs": {"a": {"reward_condition": "noisy"}, "b": {}},
    })  # fmt: skip
    noisy = cfg.for_condition("noisy")
    assert (noisy.paths.preferences, noisy.paths.reward) == ("data/preferences/noisy", "models/reward/noisy")
    assert noisy.preferences.flip_fraction == 0.25 and noisy.reward.bootstrap
    assert noisy.preferences.pairs == cfg.preferences.pairs  # the rest as in params.yaml
    assert cfg.for_condition().paths.reward == "models/reward/clean"  # the first condition
    assert cfg.ppo_run("a").for_condition().paths.reward == "models/reward/noisy"  # the run's own
    assert cfg.ppo_run("b").for_condition().reward.bootstrap is False
    with pytest.raises(ConfigError, match="reward_conditions.dirty: no such condition; defined conditions: clean, noisy"):
        cfg.for_condition("dirty")


def test_seeds_are_a_count_or_a_list():
    assert config.from_dict({"ppo": {"seeds": 3}}).ppo.seeds == (0, 1, 2)
    assert config.from_dict({"ppo": {"seeds": [4, 7]}}).ppo.seeds == (4, 7)
    cfg = config.from_dict({"ppo_runs": {"five": {"seeds": 5}}})
    assert cfg.ppo_run("five").ppo.seeds == (0, 1, 2, 3, 4) and cfg.ppo.seeds == (0, 1, 2)


def test_example_params_load_and_name_every_dvc_param():
    for path in sorted((ROOT / "examples").glob("*/params.yaml")):
        cfg = config.load(path)
        if path.parent.name not in ("study", "frontier", "remedies"):  # those run the built-in task
            assert cfg.task.gold and cfg.model.name_or_path  # a real setting: its own model and gold
        data = yaml.safe_load(path.read_text())
        assert set(data) == set(yaml.safe_load((ROOT / "params.yaml").read_text()))  # every section dvc.yaml reads


def test_the_study_is_the_default_experiment_with_more_seeds_in_two_disjoint_sets():
    study, default = config.load(ROOT / "examples" / "study" / "params.yaml"), config.load(ROOT / "params.yaml")
    a, b = study.to_dict(), default.to_dict()
    changed = {f"{section}.{key}" for section in a if isinstance(a[section], dict)
               for key in a[section] if a[section][key] != b[section].get(key)}
    assert changed == {"ppo.seeds", "report.seed_sets", "report.title", "sweep.n_trials", "sweep.seeds"}
    first, second = study.report.seed_sets
    assert len(first) >= 10 and len(second) >= 10 and not set(first) & set(second)
    assert set(first) | set(second) == set(study.ppo.seeds)


def test_the_remedies_study_is_the_default_experiment_with_ten_seeds_and_every_remedy_named():
    remedies, default = config.load(ROOT / "examples" / "remedies" / "params.yaml"), config.load(ROOT / "params.yaml")
    a, b = remedies.to_dict(), default.to_dict()
    changed = {f"{section}.{key}" for section in a if isinstance(a[section], dict) and section not in ("ppo_runs", "reward_conditions")
               for key in a[section] if a[section][key] != b[section].get(key)}  # fmt: skip
    assert changed == {"ppo.seeds", "report.title", "report.remedies", "sweep.n_trials", "sweep.iterations", "sweep.seeds"}
    assert len(remedies.ppo.seeds) >= 10
    named = {setting for pairs in remedies.report.remedies.values() for setting in pairs}
    assert named <= set(remedies.ppo_runs)
    both = [name for name, pairs in remedies.report.remedies.items() if not name.startswith("iterated_")]
    assert all(len(remedies.report.remedies[name]) == 2 for name in both)  # both conditions


def test_one_conditions_view_of_a_params_file_is_not_rechecked_across_its_settings():
    # The reward stage of a pretrain-seed condition derives that condition's config; the WARM setting of
    # another condition must not then be judged by the derived reward section (it was, and the stage stopped).
    remedies = config.load(ROOT / "examples" / "remedies" / "params.yaml")
    derived = remedies.for_condition("clean_pretrain").replace(runtime={"seed": 3})
    assert derived.reward.member_init == "pretrain-seed"
    assert remedies.ppo_run("warm_beta0").for_condition().replace(ppo={"seed": 1}).ppo.reward_objective == "warm"


def test_the_frontier_is_the_default_experiment_plus_every_optimiser():
    frontier, default = config.load(ROOT / "examples" / "frontier" / "params.yaml"), config.load(ROOT / "params.yaml")
    a, b = frontier.to_dict(), default.to_dict()
    changed = {f"{section}.{key}" for section in a if isinstance(a[section], dict) and section != "ppo_runs"
               for key in a[section] if a[section][key] != b[section].get(key)}  # fmt: skip
    assert changed == {"report.title"}
    assert all(frontier.ppo_runs[name] == overrides for name, overrides in default.ppo_runs.items())
    added = {frontier.ppo_run(name).ppo.algorithm for name in set(frontier.ppo_runs) - set(default.ppo_runs)}
    assert added == {"rloo", "grpo", "dpo", "ipo"}


@pytest.mark.parametrize("overrides, line", [
    ({"algorithm": "rloo", "samples_per_prompt": 1}, "ppo.samples_per_prompt: rloo needs k >= 2 responses per prompt"),
    ({"loss_type": "dapo"}, "ppo.loss_type: a key of grpo, set on a ppo setting"),
    ({"algorithm": "grpo", "samples_per_prompt": 3}, "ppo.batch_size: must be a multiple of samples_per_prompt (3)"),
    ({"algorithm": "ipo", "beta": 0.0}, "ppo.beta: IPO's target 1/(2β) needs β > 0"),
])  # fmt: skip
def test_an_algorithm_key_that_does_not_fit_is_one_line(tmp_path, overrides, line):
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["ppo"].update(overrides)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(config.ConfigError) as err:
        config.load(tmp_path / "params.yaml")
    assert str(err.value).startswith(f"{tmp_path / 'params.yaml'}: {line}")
