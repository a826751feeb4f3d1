"""Run configuration: TOML loading, overrides, validation, JSON snapshots, configs/ files."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exvae_fast.train import config
from exvae_fast.train import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    load_config_json,
    save_config_json,
    validate_config,
)

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CONFIG_FILES = sorted(CONFIGS.rglob("*.toml"))


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_valid_and_match_the_paper():
    cfg = RunConfig()
    validate_config(cfg)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.early_stopping_patience) == (5e-4, 100, 50)
    assert (cfg.model.latent_dim, cfg.prior.k, cfg.eval.iw_samples) == (40, 10, 5000)
    assert cfg.prior.num_exemplars is None and cfg.model.likelihood is None


def test_enumerations_match_the_library_registries():
    from exvae_fast.data import DATASET_NAMES
    from exvae_fast.data.splits import LIKELIHOODS as DATA_LIKELIHOODS
    from exvae_fast.models import MODEL_NAMES
    from exvae_fast.ops.dispatch import KNOWN_BACKENDS

    assert set(config.DATASETS) == set(DATASET_NAMES)
    assert set(config.MODELS) == set(MODEL_NAMES)
    assert set(config.LIKELIHOODS) == set(DATA_LIKELIHOODS)
    assert set(config.BACKENDS) == {"auto", *KNOWN_BACKENDS}


def test_load_config_reads_sections_and_widens_ints_to_float(tmp_path):
    path = write(tmp_path, """
name = "x"
out_dir = "out"
[data]
name = "synthetic"
synthetic_size = 123
[prior]
mode = "exact"
num_exemplars = 77
leave_one_out = false
init_log_var = -1
[train]
lr = 1
epochs = 3
""")
    cfg = load_config(path)
    assert (cfg.name, cfg.out_dir, cfg.data.name, cfg.data.synthetic_size) == ("x", "out", "synthetic", 123)
    assert (cfg.prior.mode, cfg.prior.num_exemplars, cfg.prior.leave_one_out) == ("exact", 77, False)
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert isinstance(cfg.prior.init_log_var, float) and cfg.prior.init_log_var == -1.0
    assert cfg.train.epochs == 3 and cfg.train.batch_size == 100  # omitted key keeps the default


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_config(missing)


def test_toml_syntax_error_names_the_file(tmp_path):
    path = write(tmp_path, "[train\nepochs = 3\n", name="broken.toml")
    with pytest.raises(ConfigError, match=r"broken\.toml: TOML syntax error"):
        load_config(path)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("[trian]\nepochs = 3\n", r"unknown section or key 'trian'.*\[train\]"),
        ("[train]\nepoch = 3\n", r"unknown key 'train\.epoch'; valid keys in \[train\]: epochs, batch_size"),
        ("seed = 3\n", r"unknown section or key 'seed'"),
        ("train = 3\n", r"\[train\] must be a table, got int"),
        ('[train]\nepochs = "3"\n', r"train\.epochs: expected int, got str"),
        ("[train]\nepochs = 3.0\n", r"train\.epochs: expected int, got float"),
        ("[train]\nepochs = true\n", r"train\.epochs: expected int, got bool"),
        ("[train]\nlr = true\n", r"train\.lr: expected float, got bool"),
        ('[prior]\nleave_one_out = "yes"\n', r"prior\.leave_one_out: expected bool, got str"),
        ("[prior]\nnum_exemplars = [1]\n", r"prior\.num_exemplars: expected int, got list"),
        ('[prior]\nmode = "exat"\n', r"prior\.mode: expected one of 'exact', 'retrieval', got 'exat'"),
    ],
)
def test_load_config_rejects_bad_files(tmp_path, text, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(write(tmp_path, text))


def test_apply_overrides_parses_by_field_type_and_copies():
    base = RunConfig()
    cfg = apply_overrides(base, [
        "train.epochs=3", "prior.mode=exact", "prior.num_exemplars=1000", "prior.num_exemplars=none",
        "train.lr=1e-3", "train.tensorboard=YES", "prior.leave_one_out=0", "data.name=omniglot", "data.root=/tmp/data",
        "model.likelihood=null", "train.steps_per_epoch=7", "name=my-run", "train.device=cuda:1",
    ])
    assert cfg.train.epochs == 3 and cfg.prior.mode == "exact" and cfg.prior.num_exemplars is None
    assert cfg.train.lr == 1e-3 and cfg.train.tensorboard is True and cfg.prior.leave_one_out is False
    assert cfg.data.root == "/tmp/data" and cfg.model.likelihood is None and cfg.train.steps_per_epoch == 7
    assert cfg.name == "my-run" and cfg.train.device == "cuda:1"
    assert base == RunConfig()  # the input is not modified


@pytest.mark.parametrize("text, value", [("true", True), ("1", True), ("yes", True), ("False", False),
                                         ("0", False), ("no", False)])
def test_bool_override_spellings(text, value):
    assert apply_overrides(RunConfig(), [f"train.tensorboard={text}"]).train.tensorboard is value


@pytest.mark.parametrize(
    "item, pattern",
    [
        ("train.epochs", r"expected section\.key=value"),
        ("epochs=3", r"unknown key 'epochs'"),
        ("trian.epochs=3", r"unknown section 'trian'"),
        ("train.epoch=3", r"unknown key 'train\.epoch'; valid keys in \[train\]"),
        ("train.epochs=abc", r"train\.epochs: cannot parse 'abc' as int"),
        ("train.epochs=2.5", r"train\.epochs: cannot parse '2\.5' as int"),
        ("train.epochs=none", r"train\.epochs: cannot parse 'none' as int"),
        ("prior.num_exemplars=many", r"prior\.num_exemplars: cannot parse 'many' as int or none"),
        ("train.tensorboard=maybe", r"train\.tensorboard: cannot parse 'maybe' as bool"),
        ("train.lr=fast", r"train\.lr: cannot parse 'fast' as float"),
        ("prior.mode=exat", r"prior\.mode: expected one of 'exact', 'retrieval', got 'exat'"),
        ("train.epochs=0", r"train\.epochs: expected >= 1, got 0"),
        ("train.batch_size=-5", r"train\.batch_size: expected >= 1"),
        ("train.lr=0", r"train\.lr: expected a finite number > 0"),
        ("train.lr=inf", r"train\.lr: expected a finite number > 0"),
        ("train.lr=nan", r"train\.lr: expected a finite number > 0"),
        ("prior.k=0", r"prior\.k: expected >= 1"),
        ("eval.iw_samples=0", r"eval\.iw_samples: expected >= 1"),
        ("eval.active_unit_threshold=0", r"eval\.active_unit_threshold: expected a finite number > 0"),
        ("train.device=gpu", r"train\.device: expected 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
        ("train.device=cuda:x", r"train\.device"),
        ("train.warmup_epochs=-1", r"train\.warmup_epochs: expected >= 0"),
        ("train.steps_per_epoch=0", r"train\.steps_per_epoch: expected >= 1"),
        ("data.name=cifar", r"data\.name: expected one of 'mnist-5k'"),
        ("data.name=mnist", r"data\.root: required for data set 'mnist'"),
        ("data.root=/data", r"data\.root: data set 'mnist-5k' takes no root, got '/data'"),
        ("data.num_bits=6", r"data\.num_bits: expected one of 5, 8, got 6"),
        ("model.name=resnet", r"model\.name: expected one of 'vae'"),
        ("model.likelihood=gaussian", r"model\.likelihood: expected one of 'bernoulli', 'logistic'"),
        ("model.name=celeba", r"'celeba' model and the 'celeba' data set go together"),
        ("prior.name=flow", r"prior\.name: expected one of 'standard', 'mog', 'vamp', 'exemplar'"),
        ("prior.backend=cuda", r"prior\.backend: expected one of 'auto', 'torch', 'triton', 'cpp'"),
        ("prior.init_log_var=inf", r"prior\.init_log_var: expected a finite number"),
        ("prior.retrieval_mixture=all", r"prior\.retrieval_mixture: expected one of 'union', 'own'"),
        ("name=a/b", r"name: expected a non-empty name without path separators"),
        ("out_dir=", r"out_dir: expected a non-empty path"),
    ],
)
def test_apply_overrides_errors_name_the_key(item, pattern):
    with pytest.raises(ConfigError, match=pattern):
        apply_overrides(RunConfig(), [item])


@pytest.mark.parametrize("items, pattern", [
    (["prior.num_exemplars=1", "prior.mode=exact"],
     r"prior\.num_exemplars: expected at least 2 with prior\.leave_one_out, got 1"),
    (["prior.num_exemplars=10"], r"prior\.k: expected at most prior\.num_exemplars - 1 \(leave-one-out\) = 9, got 10"),
    (["prior.num_exemplars=5", "prior.leave_one_out=false"], r"prior\.k: expected at most prior\.num_exemplars = 5, got 10"),
])
def test_an_exemplar_subsample_too_small_for_its_rows_is_refused(items, pattern):
    with pytest.raises(ConfigError, match=pattern):
        apply_overrides(RunConfig(), items)


def test_exemplar_subsample_settings_that_leave_every_row_components():
    for items in (["prior.num_exemplars=11"], ["prior.num_exemplars=10", "prior.leave_one_out=false"],
                  ["prior.num_exemplars=2", "prior.mode=exact"], ["prior.num_exemplars=1", "prior.name=standard"]):
        apply_overrides(RunConfig(), items)


def test_own_neighbour_mixtures_need_the_exemplar_retrieval_mode():
    from exvae_fast.priors.exemplar import RETRIEVAL_MIXTURES
    from exvae_fast.train import config

    assert config.RETRIEVAL_MIXTURES == RETRIEVAL_MIXTURES
    cfg = apply_overrides(RunConfig(), ["prior.retrieval_mixture=own"])
    from exvae_fast.train.builder import build_prior, load_data

    assert build_prior(cfg, load_data(cfg)).retrieval_mixture == "own"
    for other in ("prior.mode=exact", "prior.name=vamp"):
        with pytest.raises(ConfigError, match=r"prior\.retrieval_mixture: 'own' applies to the exemplar prior's "
                                              r"retrieval mode only"):
            apply_overrides(RunConfig(), ["prior.retrieval_mixture=own", other])


def test_components_per_step_must_not_exceed_num_components():
    cfg = apply_overrides(RunConfig(), ["prior.name=vamp", "prior.num_components=100", "prior.components_per_step=50"])
    assert cfg.prior.components_per_step == 50
    with pytest.raises(ConfigError, match=r"prior\.components_per_step: expected <= prior\.num_components \(100\)"):
        apply_overrides(cfg, ["prior.components_per_step=101"])


def test_validate_config_catches_wrong_types_set_in_code():
    cfg = RunConfig()
    cfg.train.epochs = "3"
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got str"):
        validate_config(cfg)
    cfg = RunConfig()
    cfg.prior = {"name": "exemplar"}
    with pytest.raises(ConfigError, match=r"prior: expected PriorConfig, got dict"):
        validate_config(cfg)


def test_dict_round_trip_and_strictness():
    cfg = apply_overrides(RunConfig(), ["prior.num_exemplars=300", "data.name=synthetic", "train.lr=0.002"])
    d = config_to_dict(cfg)
    assert d["prior"]["num_exemplars"] == 300 and d["model"]["likelihood"] is None
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    with pytest.raises(ConfigError, match=r"unknown key 'eval\.samples'"):
        config_from_dict({"eval": {"samples": 3}})
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got NoneType"):
        config_from_dict({"train": {"epochs": None}})
    with pytest.raises(ConfigError, match=r"expected a table/dict at the top level"):
        config_from_dict([1, 2])


def test_save_config_json_is_atomic_and_round_trips(tmp_path):
    cfg = apply_overrides(RunConfig(), ["name=json-run", "train.epochs=9", "model.likelihood=logistic"])
    path = tmp_path / "run" / "config.json"  # the folder is created
    save_config_json(cfg, path)
    save_config_json(cfg, path)  # overwriting an existing snapshot
    assert sorted(os.listdir(path.parent)) == ["config.json"]  # no temp file left behind
    assert json.loads(path.read_text())["train"]["epochs"] == 9
    assert load_config_json(path) == cfg
    path.write_text("{not json")
    with pytest.raises(ConfigError, match=r"config\.json: JSON syntax error"):
        load_config_json(path)
    with pytest.raises(FileNotFoundError, match="other.json"):
        load_config_json(tmp_path / "other.json")


@settings(max_examples=50, deadline=None)
@given(
    epochs=st.integers(1, 10**6),
    lr=st.floats(1e-8, 10.0, allow_nan=False),
    num_exemplars=st.none() | st.integers(1001, 10**6),  # room for every k drawn
    k=st.integers(1, 1000),
    mode=st.sampled_from(["exact", "retrieval"]),
    tensorboard=st.booleans(),
    device=st.sampled_from(["cpu", "cuda"]) | st.integers(0, 15).map(lambda i: f"cuda:{i}"),
)
def test_override_text_and_json_round_trip(epochs, lr, num_exemplars, k, mode, tensorboard, device):
    items = [f"train.epochs={epochs}", f"train.lr={lr!r}", f"prior.num_exemplars={num_exemplars}",
             f"prior.k={k}", f"prior.mode={mode}", f"train.tensorboard={tensorboard}", f"train.device={device}"]
    cfg = apply_overrides(RunConfig(), items)
    assert (cfg.train.epochs, cfg.train.lr, cfg.prior.num_exemplars) == (epochs, lr, num_exemplars)
    assert (cfg.prior.k, cfg.prior.mode, cfg.train.tensorboard, cfg.train.device) == (k, mode, tensorboard, device)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


# --- configs/ -------------------------------------------------------------------------

def test_configs_exist_for_every_paper_table_entry():
    expected = {f"{ds}/{model}-{prior}.toml"
                for ds in ("mnist", "fashion-mnist", "omniglot")
                for model in ("vae", "hvae", "convhvae", "pixelhvae")
                for prior in ("standard", "vamp", "exemplar")}
    expected |= {"celeba/celeba-standard.toml", "celeba/celeba-exemplar.toml", "mnist-5k-demo.toml"}
    expected |= {f"omniglot/table5-{s}.toml" for s in (
        "standard", "mog", "vamp-nosub1000", "vamp-sub1000", "vamp-sub2000", "vamp-sub5000", "exemplar-sub11500")}
    found = {p.relative_to(CONFIGS).as_posix() for p in CONFIG_FILES}
    assert found == expected


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_every_config_file_loads_and_validates(path):
    cfg = load_config(path)
    validate_config(cfg)
    assert config_from_dict(json.loads(json.dumps(config_to_dict(cfg)))) == cfg


def test_config_names_are_unique():
    names = [load_config(p).name for p in CONFIG_FILES]
    assert len(names) == len(set(names))


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES if p.name != "mnist-5k-demo.toml"],
                         ids=lambda p: p.relative_to(CONFIGS).as_posix())
def test_paper_configs_use_the_paper_hyper_parameters(path):
    cfg = load_config(path)
    t = cfg.train
    assert (t.lr, t.batch_size, t.early_stopping_patience, t.epochs) == (5e-4, 100, 50, 2000)
    assert cfg.eval.iw_samples == 5000 and cfg.eval.active_unit_threshold == 0.01
    celeba = cfg.data.name == "celeba"
    assert cfg.model.latent_dim == (128 if celeba else 40)
    assert cfg.model.likelihood == ("logistic" if celeba else "bernoulli")
    if celeba:
        assert cfg.data.num_bits == 8 and cfg.model.name == "celeba"
    if cfg.prior.name == "exemplar":
        assert cfg.prior.leave_one_out and cfg.prior.k == (5 if celeba else 10)
        if "table5" in path.name:
            assert cfg.prior.num_exemplars == 11500
        else:  # half the training set; kNN retrieval for the convolutional models (L.2)
            expected_mode = "exact" if cfg.model.name in ("vae", "hvae") else "retrieval"
            assert cfg.prior.mode == expected_mode and cfg.prior.num_exemplars is None
    if cfg.prior.name == "vamp":
        table5_k = {"vamp-nosub1000": 1000, "vamp-sub1000": 1000, "vamp-sub2000": 2000, "vamp-sub5000": 5000}
        stem = path.stem.removeprefix("table5-")
        expected_k = table5_k.get(stem, 1000 if cfg.data.name == "omniglot" else 500)
        assert cfg.prior.num_components == expected_k
        sub = stem.startswith("vamp-sub")
        assert cfg.prior.components_per_step == (expected_k // 2 if sub else None)


def test_demo_config_is_small():
    cfg = load_config(CONFIGS / "mnist-5k-demo.toml")
    assert cfg.data.name == "mnist-5k" and cfg.model.name == "vae"
    assert cfg.prior.name == "exemplar" and cfg.prior.mode == "retrieval"
    assert cfg.train.epochs <= 30 and cfg.train.warmup_epochs <= cfg.train.epochs  # ~1.5 min on 2 CPU cores
    assert cfg.eval.iw_samples <= 1000 and cfg.train.device == "cpu"
