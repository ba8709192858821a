"""The seeded churn world on SQLite: determinism, appends, drift, missing values, atomicity."""

from __future__ import annotations

import datetime as dt
import inspect
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

import flywheel.simulate as sim
from flywheel.config import Settings, load_settings
from flywheel.errors import ConfigError, DataError, NotFound, SourceError
from flywheel.simulate import (
    FEATURE_COLUMNS,
    SCENARIOS,
    Scenario,
    feature_rows,
    parse_scenario,
    simulate,
    world_exists,
)

START = dt.date(2025, 1, 1)
TABLES = (
    "plans",
    "customers",
    "contracts",
    "billing_periods",
    "monthly_usage",
    "support_tickets",
    "churn_events",
)


def _settings(tmp_path: Path, name: str, seed: int = 42) -> Settings:
    return load_settings(home=tmp_path / name, seed=seed)


def _db(settings: Settings) -> Path:
    assert settings.source.url is not None
    return Path(settings.source.url.removeprefix("sqlite:///"))


def _frame(settings: Settings, sql: str) -> pd.DataFrame:
    with sqlite3.connect(_db(settings)) as conn:
        return pd.read_sql_query(sql, conn)


def _sorted(settings: Settings, table: str) -> pd.DataFrame:
    df = _frame(settings, f"SELECT * FROM {table}")
    return df.sort_values(list(df.columns[:2])).reset_index(drop=True)


def _features(settings: Settings) -> pd.DataFrame:
    return _sorted(settings, "churn_features")


# ------------------------------------------------------------------ public API
def test_public_api_is_listed() -> None:
    assert set(sim.__all__) == {
        "FEATURE_COLUMNS",
        "SCENARIOS",
        "SOURCE_ONLY",
        "Scenario",
        "SimulationReport",
        "WorldInfo",
        "feature_rows",
        "parse_scenario",
        "simulate",
        "world_exists",
        "world_info",
    }
    assert set(SCENARIOS) == {
        "price_rise",
        "new_contract",
        "ticket_churn",
        "lost_churn_events",
        "cancellation_tickets",
    }
    assert set(sim.SOURCE_ONLY) <= set(SCENARIOS)
    # the CLI's help names them all (written out: the CLI does not import the simulator)
    from flywheel import cli, cli_loop

    assert all(name in cli_loop.SCENARIO_NAMES for name in SCENARIOS)
    for command in (cli.simulate, cli_loop.replay):
        assert "SCENARIO_NAMES" in inspect.getsource(command)


def test_world_info_reads_the_stored_world(settings: Settings) -> None:
    from flywheel.errors import NotFound

    with pytest.raises(NotFound, match="flywheel run"):
        sim.world_info(settings)
    simulate(settings, days=40, customers=200, scenarios=["price_rise@100"])
    info = sim.world_info(settings)
    assert (info.seed, info.customers, info.last_day) == (settings.seed, 200, 39)
    assert info.scenarios == ("price_rise@100",)
    assert info.last_date.isoformat() == "2025-02-09"


def _second_source(settings: Settings, path: Path) -> Settings:
    """The same settings with their SQL source in another SQLite file: a second world."""
    url = f"sqlite:///{path.as_posix()}"
    return settings.model_copy(update={"source": settings.source.model_copy(update={"url": url})})


def test_lost_churn_events_drops_recorded_churns_from_its_day_only(
    settings: Settings, tmp_path: Path
) -> None:
    other = _second_source(settings, tmp_path / "lost.db")
    simulate(settings, days=150, customers=1500)
    simulate(other, days=150, customers=1500, scenarios=["lost_churn_events@90"])
    q = "SELECT customer_id, churn_day FROM churn_events ORDER BY 1"
    plain, lost = _frame(settings, q), _frame(other, q)
    # before the day the worlds agree row for row; after it about 60% of churns go missing
    before = [f[f.churn_day < 90].reset_index(drop=True) for f in (plain, lost)]
    assert before[0].equals(before[1])
    after_plain = int((plain.churn_day >= 120).sum())
    after_lost = int((lost.churn_day >= 120).sum())
    assert after_plain > 50
    assert 0.2 * after_plain < after_lost < 0.6 * after_plain


def test_cancellation_tickets_leak_the_label_into_the_source_and_change_nothing_else(
    settings: Settings, tmp_path: Path
) -> None:
    other = _second_source(settings, tmp_path / "leak.db")
    simulate(settings, days=181, customers=1500)
    simulate(other, days=181, customers=1500, scenarios=["cancellation_tickets@90"])
    q = "SELECT * FROM churn_features ORDER BY customer_id, observed_at"
    plain, leak = _frame(settings, q), _frame(other, q)
    # the same world (customers, churns, usage): only the ticket columns differ
    assert plain.drop(columns=["tickets_90d", "days_since_last_ticket"]).equals(
        leak.drop(columns=["tickets_90d", "days_since_last_ticket"])
    )
    changed = (plain.tickets_90d != leak.tickets_90d).to_numpy()
    assert changed.sum() > 20
    # ... on churners' rows only, and only from the scenario's month: one ticket, the day before
    assert (leak.churned[changed] == 1).all()
    assert (leak.observed_at[changed] >= "2025-04-01").all()
    assert ((leak.tickets_90d - plain.tickets_90d)[changed] == 1).all()
    assert (leak.days_since_last_ticket[changed] == 1).all()
    # and on most of them: a leak a model can learn
    after = (leak.churned == 1) & (leak.observed_at >= "2025-05-01")
    assert changed[after.to_numpy()].mean() > 0.9


def test_feature_relation_matches_the_configured_defaults(settings: Settings) -> None:
    simulate(settings, days=70, customers=300)
    df = _frame(settings, "SELECT * FROM churn_features LIMIT 5")
    assert tuple(df.columns) == FEATURE_COLUMNS
    src = settings.source
    assert src.table == "churn_features" and src.target in df.columns
    assert src.timestamp_column in df.columns and set(src.key_columns) <= set(df.columns)


# ------------------------------------------------------------------ scenarios
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("price_rise@180", Scenario(180, "price_rise")),
        ("new_contract@2025-07-01", Scenario(181, "new_contract")),
        (" ticket_churn @ 0 ", Scenario(0, "ticket_churn")),
    ],
)
def test_parse_scenario(spec: str, expected: Scenario) -> None:
    assert parse_scenario(spec, START) == expected
    assert parse_scenario(expected.spec(), START) == expected


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("price_drop@10", "Unknown drift scenario 'price_drop'"),
        ("price_rise", "expected NAME@DAY"),
        ("price_rise@soon", "Bad day 'soon'"),
        ("price_rise@2024-12-31", "before the world's start date 2025-01-01"),
        ("price_rise@-3", "Bad day '-3'"),
    ],
)
def test_bad_scenario_names_the_value_and_the_valid_names(spec: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_scenario(spec, START)
    assert needle in err.value.message
    if "Unknown" in needle or "expected" in needle:
        assert "price_rise, new_contract, ticket_churn" in err.value.message


# ------------------------------------------------------------------ determinism
def test_same_seed_same_rows_and_chunking_does_not_matter(tmp_path: Path) -> None:
    once, twice = _settings(tmp_path, "once"), _settings(tmp_path, "twice")
    simulate(once, days=75, customers=400, scenarios=["price_rise@40"])
    first = simulate(twice, days=31, customers=400, scenarios=["price_rise@40"])
    second = simulate(twice, days=44)
    assert first.last_day == dt.date(2025, 1, 31) and second.first_day == dt.date(2025, 2, 1)
    assert second.last_day == dt.date(2025, 3, 16)
    for table in (*TABLES, "churn_features"):
        pd.testing.assert_frame_equal(_sorted(once, table), _sorted(twice, table))
    assert len(_features(once)) > 0


def test_a_scenario_added_when_appending_equals_one_given_up_front(tmp_path: Path) -> None:
    upfront, later = _settings(tmp_path, "upfront"), _settings(tmp_path, "later")
    simulate(upfront, days=70, customers=300, scenarios=["ticket_churn@50"])
    simulate(later, days=40, customers=300)
    report = simulate(later, days=30, scenarios=["ticket_churn@50"])
    assert report.scenarios == ["ticket_churn@50"]
    pd.testing.assert_frame_equal(
        _sorted(upfront, "support_tickets"), _sorted(later, "support_tickets")
    )
    pd.testing.assert_frame_equal(_features(upfront), _features(later))


def test_another_seed_gives_another_world(tmp_path: Path) -> None:
    a, b = _settings(tmp_path, "a", seed=1), _settings(tmp_path, "b", seed=2)
    simulate(a, days=40, customers=200)
    simulate(b, days=40, customers=200)
    assert not _sorted(a, "customers").equals(_sorted(b, "customers"))


# ------------------------------------------------------------------ appending
def test_append_continues_from_the_last_day(settings: Settings) -> None:
    first = simulate(settings, days=59, customers=300, start=dt.date(2025, 3, 1))
    assert first.created and first.first_day == dt.date(2025, 3, 1)
    assert first.last_day == dt.date(2025, 4, 28)
    assert first.rows["billing_periods"] == 1  # March closed, April not yet
    rows_before = feature_rows(settings)
    second = simulate(settings, days=2)
    assert not second.created and second.start == dt.date(2025, 3, 1)
    assert (second.first_day, second.last_day) == (dt.date(2025, 4, 29), dt.date(2025, 4, 30))
    assert second.rows["billing_periods"] == 1 and second.rows["customers"] < 50
    assert second.feature_rows > rows_before == first.feature_rows
    assert feature_rows(settings) == second.feature_rows
    state = _frame(settings, "SELECT * FROM sim_state")
    assert state.loc[0, "last_day"] == 60 and state.loc[0, "seed"] == 42


def test_labels_arrive_late_only_closed_months_appear(settings: Settings) -> None:
    simulate(settings, days=75, customers=300)  # through 2025-03-16: Jan and Feb closed
    observed = set(
        _frame(settings, "SELECT DISTINCT observed_at FROM churn_features")["observed_at"].str[:10]
    )
    assert observed == {"2025-02-01"}  # Jan has no history before it; March is still open


def test_features_reflect_the_operational_tables(settings: Settings) -> None:
    simulate(settings, days=120, customers=300)
    df = _features(settings)
    assert df.duplicated(["customer_id", "observed_at"]).sum() == 0
    churned = _frame(settings, "SELECT customer_id, churned_at FROM churn_events")
    positives = df.loc[df.churned == 1, ["customer_id", "observed_at"]]
    merged = positives.merge(churned, on="customer_id")
    assert len(merged) == len(positives)
    assert (merged.churned_at.str[:7] == merged.observed_at.str[:7]).all()
    # nobody is observed after the month they churned in
    last_seen = df.groupby("customer_id").observed_at.max()
    assert (last_seen.loc[positives.customer_id] == positives.observed_at.values).all()


# ------------------------------------------------------------------ realism
@pytest.fixture(scope="module")
def year_world(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    home = tmp_path_factory.mktemp("year")
    s = load_settings(home=home, seed=42)
    simulate(
        s,
        days=365,
        customers=1500,
        scenarios=["price_rise@181", "new_contract@2025-07-01", "ticket_churn@181"],
    )
    return _features(s)


def test_missing_values_are_genuine_and_limited(year_world: pd.DataFrame) -> None:
    share = year_world.isna().mean()
    for col in ("payment_method", "data_gb", "days_since_last_ticket", "contract_days_left"):
        assert 0.005 < share[col] < 0.8, col
    assert share["avg_minutes"] > 0
    for col in ("customer_id", "observed_at", "contract_type", "tenure_months", "churned"):
        assert share[col] == 0, col
    voice = year_world[year_world.plan == "voice"]
    assert voice.data_gb.isna().all()
    open_ended = year_world.contract_type.isin(["month_to_month", "flex_monthly"])
    assert year_world.contract_days_left[open_ended].isna().all()


def test_label_rate_is_sane_and_follows_the_hazard(year_world: pd.DataFrame) -> None:
    assert 0.02 < year_world.churned.mean() < 0.10
    by_contract = year_world.groupby("contract_type").churned.mean()
    assert by_contract["month_to_month"] > 2 * by_contract["one_year"] > by_contract["two_year"]
    late = year_world.late_payments_6m > 0
    assert year_world.churned[late].mean() > 1.5 * year_world.churned[~late].mean()


def test_drift_shifts_the_distributions_after_the_day(year_world: pd.DataFrame) -> None:
    before = year_world[year_world.observed_at < "2025-07-01"]
    after = year_world[year_world.observed_at >= "2025-08-01"]  # first fully risen bills
    for plan in ("basic", "standard"):  # same plan and contract: only the price changed

        def charges(df: pd.DataFrame, plan: str = plan) -> float:
            same = (df.plan == plan) & (df.contract_type == "month_to_month")
            return float(df.monthly_charges[same].median())

        assert charges(after) > 1.1 * charges(before)
    assert "flex_monthly" not in set(before.contract_type)
    assert (after.contract_type == "flex_monthly").mean() > 0.02
    assert after.tickets_90d.mean() > before.tickets_90d.mean()

    def ticket_lift(df: pd.DataFrame) -> float:
        with_tickets = df.churned[df.tickets_90d >= 1].mean()
        return float(with_tickets / df.churned[df.tickets_90d == 0].mean())

    assert ticket_lift(after) > 1.5 * ticket_lift(before)


def test_price_rise_is_in_the_catalogue(settings: Settings) -> None:
    simulate(settings, days=40, customers=100, scenarios=["price_rise@30"])
    plans = _frame(settings, "SELECT * FROM plans ORDER BY plan_id, valid_from_day")
    basic = plans[plans.plan_id == "basic"]
    assert list(basic.valid_from_day) == [0, 30]
    assert basic.monthly_price.iloc[1] == pytest.approx(1.15 * basic.monthly_price.iloc[0])


# ------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("days", [0, -5])
def test_days_must_be_positive(settings: Settings, days: int) -> None:
    with pytest.raises(ConfigError, match=rf"days must be a positive .* got {days}"):
        simulate(settings, days=days)
    assert not world_exists(settings)
    assert not _db(settings).exists()


def test_unknown_scenario_writes_nothing(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="Valid names: price_rise, new_contract, ticket_churn"):
        simulate(settings, days=10, customers=50, scenarios=["churn_storm@3"])
    assert not world_exists(settings)


def test_existing_world_refuses_a_disagreeing_start_seed_or_history_rewrite(
    settings: Settings, tmp_path: Path
) -> None:
    simulate(settings, days=30, customers=50, scenarios=["price_rise@100"])
    with pytest.raises(ConfigError, match="starts on 2025-01-01; got start=2025-02-01"):
        simulate(settings, days=5, start=dt.date(2025, 2, 1))
    with pytest.raises(ConfigError, match="would rewrite history"):
        simulate(settings, days=5, scenarios=["ticket_churn@10"])
    with pytest.raises(ConfigError, match="already scheduled for day 100"):
        simulate(settings, days=5, scenarios=["price_rise@120"])
    other_seed = load_settings(home=settings.home, seed=7)
    with pytest.raises(ConfigError, match=r"seed 42; settings\.seed is 7"):
        simulate(other_seed, days=5)
    again = simulate(settings, days=5, start=START, scenarios=["price_rise@100"])
    assert again.last_day == dt.date(2025, 2, 4)


def test_feature_rows_without_a_world_is_not_found(settings: Settings) -> None:
    with pytest.raises(NotFound, match="run `flywheel simulate` first"):
        feature_rows(settings)


def test_a_foreign_database_is_refused_untouched(settings: Settings) -> None:
    _db(settings).parent.mkdir(parents=True)
    with sqlite3.connect(_db(settings)) as conn:
        conn.execute("CREATE TABLE customers (id TEXT)")
    with pytest.raises(DataError, match=r"already has tables \['customers'\] but no sim_state"):
        simulate(settings, days=10, customers=50)
    with sqlite3.connect(_db(settings)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    assert names == ["customers"]


# ------------------------------------------------------------------ atomicity
def _counts(settings: Settings) -> dict[str, int]:
    engine = sa.create_engine(str(settings.source.url))
    with engine.connect() as conn:
        counts = {
            t: conn.exec_driver_sql(f"SELECT COUNT(*) FROM {t}").scalar_one()
            for t in (*TABLES, "churn_features")
        }
        counts["last_day"] = conn.exec_driver_sql("SELECT last_day FROM sim_state").scalar_one()
    engine.dispose()
    return counts


def test_a_failed_append_leaves_the_source_as_it_was(settings: Settings) -> None:
    simulate(settings, days=40, customers=300)
    before = _counts(settings)
    # A real database failure part-way through: churn_events is written after every other
    # table, and this trigger rejects its rows from day 45 on.
    with sqlite3.connect(_db(settings)) as conn:
        conn.execute(
            "CREATE TRIGGER boom BEFORE INSERT ON churn_events WHEN NEW.churn_day > 45 "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END"
        )
    with pytest.raises(SourceError, match=r"nothing was written: .*disk on fire"):
        simulate(settings, days=30)
    assert _counts(settings) == before
    with sqlite3.connect(_db(settings)) as conn:
        conn.execute("DROP TRIGGER boom")
    assert simulate(settings, days=30).last_day == dt.date(2025, 3, 11)


def test_a_failed_first_run_leaves_no_tables(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel.simulate import _core

    real_write = _core._write

    def write_then_fail(*args: object, **kwargs: object) -> dict[str, int]:
        real_write(*args, **kwargs)  # type: ignore[arg-type]
        raise sa.exc.OperationalError("INSERT", {}, Exception("connection lost"))

    monkeypatch.setattr(_core, "_write", write_then_fail)
    with pytest.raises(SourceError, match="connection lost"):
        simulate(settings, days=20, customers=50)
    with sqlite3.connect(_db(settings)) as conn:
        assert list(conn.execute("SELECT name FROM sqlite_master")) == []
    assert not world_exists(settings)


@pytest.mark.slow
def test_signal_is_learnable_but_not_trivial(tmp_path: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score

    s = _settings(tmp_path, "auc")
    simulate(s, days=365, customers=4000)
    df = _features(s)
    x = df.drop(columns=["customer_id", "observed_at", "churned"])
    for col in ("contract_type", "plan", "payment_method", "region"):
        x[col] = x[col].fillna("").astype("category")
    train = df.observed_at < "2025-09"
    model = HistGradientBoostingClassifier(categorical_features="from_dtype", random_state=0)
    model.fit(x[train], df.churned[train])
    auc = roc_auc_score(df.churned[~train], model.predict_proba(x[~train])[:, 1])
    assert 0.72 < auc < 0.92
