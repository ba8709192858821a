"""Settings: precedence, derived defaults, validation errors naming the key, masking."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.config import Settings, load_settings, mask_url
from flywheel.errors import ConfigError


def test_embedded_defaults_live_under_home(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path)
    assert s.source.url == f"sqlite:///{tmp_path}/source.db"
    assert s.store.url == str(tmp_path / "store")
    assert s.tracking.uri == f"sqlite:///{tmp_path}/mlflow.db"
    assert s.registry.audit_url == f"sqlite:///{tmp_path}/audit.db"
    assert s.contracts_dir == tmp_path / "contracts"


def test_env_beats_yaml_beats_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text("seed: 7\nsource:\n  dataset: fromyaml\n  target: y\n")
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(cfg))
    monkeypatch.setenv("FLYWHEEL_SOURCE__TARGET", "fromenv")
    s = load_settings()
    assert s.seed == 7
    assert s.source.dataset == "fromyaml"
    assert s.source.target == "fromenv"


@pytest.mark.parametrize(
    ("env", "value", "key"),
    [
        ("FLYWHEEL_SEED", "abc", "seed"),
        ("FLYWHEEL_SOURCE__URL", "mysql://x/y", "source.url"),
        ("FLYWHEEL_STORE__URL", "ftp://bucket", "store.url"),
        ("FLYWHEEL_SOURCE__DATASET", "bad name!", "source.dataset"),
        ("FLYWHEEL_REGISTRY__PARITY_TOLERANCE", "-1", "registry.parity_tolerance"),
        ("FLYWHEEL_RETRAIN__WINDOW", "0d", "retrain.window"),
    ],
)
def test_bad_value_fails_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, key: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert info.value.details["key"] == key
    assert key in str(info.value)


def test_a_bad_value_is_shown_and_a_password_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_MONITORING__EVERY", "3x")
    with pytest.raises(ConfigError, match="got '3x'"):
        load_settings()
    monkeypatch.delenv("FLYWHEEL_MONITORING__EVERY")
    monkeypatch.setenv("FLYWHEEL_STORE__URL", "ftp://me:hunter2@host/x")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "hunter2" not in str(info.value) and "me:***@host" in str(info.value)


def test_unknown_yaml_key_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "flywheel.yaml"
    cfg.write_text("sourse:\n  url: sqlite:///x.db\n")
    monkeypatch.setenv("FLYWHEEL_CONFIG", str(cfg))
    with pytest.raises(ConfigError, match="sourse"):
        load_settings()


def test_show_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLYWHEEL_SOURCE__URL", "postgresql://app:hunter2@db:5432/prod")
    monkeypatch.setenv("FLYWHEEL_ADMIN_TOKEN", "s3cr3t")
    shown = load_settings().show()
    text = repr(shown)
    assert "hunter2" not in text and "s3cr3t" not in text
    assert shown["source"]["url"] == "postgresql://app:***@db:5432/prod"
    assert shown["admin_token"] == "***"


def test_mask_url_leaves_plain_urls() -> None:
    assert mask_url("sqlite:///a/b.db") == "sqlite:///a/b.db"
    assert mask_url("s3://bucket/prefix") == "s3://bucket/prefix"


def test_every_setting_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    missing = [key for key in _keys(Settings) if f"`{key}`" not in doc]
    assert not missing, f"undocumented settings in docs/configuration.md: {missing}"


def _keys(model: type, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    keys: list[str] = []
    for name, field in model.model_fields.items():  # type: ignore[attr-defined]
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys
