"""The generative process of the churn world: pure numpy, no database.

The world is a deterministic function of ``(seed, start, customers, scenarios)`` and the day.
Every day draws from its own generators, derived from ``SeedSequence([seed, 1, day])``, so
the rows do not depend on how the days are chunked into ``simulate`` calls. Every generated
row carries ``_known``: the day it becomes known to the operational system (a signup, a ticket,
a churn recording, a closed billing period). The writer stores only rows known in the days it
appends. ``docs/simulator.md`` describes the process in words.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from flywheel.simulate._scenarios import Scenario

__all__ = ["CONTRACTS", "GENERATOR_VERSION", "PLANS", "WorldSpec", "generate"]

GENERATOR_VERSION = 1
DAYS_PER_MONTH = 30.44

REGIONS = np.array(["north", "south", "east", "west", "central"], dtype=object)
REGION_P = np.array([0.24, 0.22, 0.20, 0.18, 0.16])
PAYMENTS = np.array(
    ["credit_card", "bank_transfer", "electronic_check", "mailed_check"], dtype=object
)
PAYMENT_P = np.array([0.30, 0.25, 0.33, 0.12])
PAYMENT_RECORDED_P = 0.97

# plan_id, name, monthly list price, included minutes, includes data
PLANS: tuple[tuple[str, str, float, int, bool], ...] = (
    ("voice", "Voice only", 20.0, 300, False),
    ("basic", "Basic", 35.0, 300, True),
    ("standard", "Standard", 60.0, 800, True),
    ("premium", "Premium", 90.0, 2000, True),
)
PLAN_P = np.array([0.15, 0.30, 0.35, 0.20])
PLAN_IDS = np.array([p[0] for p in PLANS], dtype=object)
PLAN_PRICE = np.array([p[2] for p in PLANS])
PLAN_MINUTES = np.array([p[3] for p in PLANS], dtype=float)
PLAN_DATA = np.array([p[4] for p in PLANS])
OVERAGE_PER_MINUTE = 0.04

CONTRACTS = np.array(["month_to_month", "one_year", "two_year", "flex_monthly"], dtype=object)
TERM_DAYS = np.array([0, 365, 730, 0])
DISCOUNT = np.array([1.0, 0.95, 0.90, 0.92])
CONTRACT_P = np.array([0.55, 0.27, 0.18, 0.0])
CONTRACT_P_FLEX = np.array([0.35, 0.18, 0.12, 0.35])

TICKET_CATEGORIES = np.array(["billing", "network", "device", "account"], dtype=object)
TICKET_WEIGHTS = np.array([0.35, 0.30, 0.20, 0.15])
TICKET_HOURS = np.array([6.0, 20.0, 12.0, 4.0])

# Churn hazard: monthly log-odds, turned into a daily probability.
CHURN_BASE = -3.2
CHURN_CONTRACT = np.array([1.5, -0.3, -1.6, 0.4])
CHURN_TENURE = -0.6  # per log(1 + tenure months)
CHURN_CHARGES = 0.04  # per currency unit above 55
CHURN_TICKETS = 0.45  # per ticket in the last 90 days
CHURN_TICKETS_DRIFT = 1.1
CHURN_LATE = 0.5  # per late payment in the last 6 months
CHURN_ECHECK = 0.35
CHURN_SENIOR = 0.25
CHURN_FRAILTY = 0.4  # per unit of the unobserved frailty (sd 0.7)
CHURN_RENEWAL_WINDOW = 1.5  # fixed-term contract ends within 30 days
RELOCATION_MONTHLY = 0.003  # churn unrelated to anything observed
RECORD_LAG_P = 0.12  # share of churns recorded 1-30 days late
PRICE_RISE = 0.15
METER_OUTAGE_P = 0.02
LOST_CHURN_P = 0.6  # lost_churn_events: share of churns the CRM export never records
ARRIVALS_MONTHLY = 0.045  # new customers per month, as a share of the initial population


@dataclass(frozen=True)
class WorldSpec:
    """Everything the world depends on besides the day."""

    seed: int
    start: dt.date
    customers: int
    scenarios: tuple[Scenario, ...] = ()

    def scenario_day(self, name: str) -> int | None:
        """The day a scenario starts, or None when it is not part of this world."""
        days = [s.day for s in self.scenarios if s.name == name]
        return days[0] if days else None

    def active(self, name: str, day: int) -> bool:
        """Whether scenario ``name`` is in force on ``day``."""
        start = self.scenario_day(name)
        return start is not None and day >= start


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class _Calendar:
    """Calendar months as billing periods; month 0 contains the start date."""

    def __init__(self, start: dt.date) -> None:
        self.start = start

    def period_first(self, period: int) -> dt.date:
        months = self.start.month - 1 + period
        return dt.date(self.start.year + months // 12, months % 12 + 1, 1)

    def bounds(self, period: int) -> tuple[int, int]:
        """(first day, day after the last day) of a period, as day numbers."""
        first = (self.period_first(period) - self.start).days
        return first, (self.period_first(period + 1) - self.start).days

    def period_of(self, day: int) -> int:
        d = self.start + dt.timedelta(days=day)
        return (d.year - self.start.year) * 12 + d.month - self.start.month

    def is_period_end(self, day: int) -> bool:
        return (self.start + dt.timedelta(days=day + 1)).day == 1


def _or_none(keep: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` as Python objects, None where ``keep`` is False (a SQL NULL)."""
    out = values.astype(object)
    out[~keep] = None
    return out


def _days_to_dates(start: dt.date, days: np.ndarray) -> np.ndarray:
    return (np.datetime64(start, "D") + days.astype("timedelta64[D]")).astype(object)


def _days_to_times(start: dt.date, days: np.ndarray, seconds: np.ndarray) -> np.ndarray:
    base = np.datetime64(start, "s") + days.astype("timedelta64[D]").astype("timedelta64[s]")
    return (base + seconds.astype("timedelta64[s]")).astype(object)


@dataclass
class _Rows:
    """Generated rows of one table, as column chunks."""

    chunks: list[dict[str, np.ndarray]] = field(default_factory=list)

    def add(self, **columns: np.ndarray) -> None:
        self.chunks.append(columns)

    def frame(self) -> pd.DataFrame:
        if not self.chunks:
            return pd.DataFrame()
        names = list(self.chunks[0])
        return pd.DataFrame({n: np.concatenate([c[n] for c in self.chunks]) for n in names})


class _World:
    """Customer state as parallel numpy arrays (one slot per customer ever seen)."""

    def __init__(self, spec: WorldSpec) -> None:
        self.spec = spec
        self.seed = spec.seed % 2**63
        self.cal = _Calendar(spec.start)
        self.s: dict[str, np.ndarray] = {}
        self.rows: dict[str, _Rows] = {
            t: _Rows()
            for t in (
                "plans",
                "customers",
                "contracts",
                "billing_periods",
                "monthly_usage",
                "support_tickets",
                "churn_events",
            )
        }
        self.tickets_by_day: dict[int, np.ndarray] = {}
        self.late_by_period: dict[int, np.ndarray] = {}
        self.next_ticket = 1
        self.next_contract = 1

    # ----------------------------------------------------------------- customers
    def _draw_customers(
        self, rng: np.random.Generator, n: int, signup: np.ndarray, contract_p: np.ndarray
    ) -> dict[str, np.ndarray]:
        frailty = rng.normal(0.0, 0.7, n)
        pay = rng.choice(len(PAYMENTS), n, p=PAYMENT_P)
        senior = (rng.random(n) < 0.16).astype(np.int64)
        bad_payer = np.isin(pay, [2, 3]).astype(float)
        return {
            "signup_day": signup.astype(np.int64),
            "region": rng.choice(len(REGIONS), n, p=REGION_P),
            "pay": pay,
            "pay_recorded": rng.random(n) < PAYMENT_RECORDED_P,
            "senior": senior,
            "plan": rng.choice(len(PLANS), n, p=PLAN_P),
            "ctype": rng.choice(len(CONTRACTS), n, p=contract_p),
            "frailty": frailty,
            "minutes_lvl": rng.lognormal(math.log(400.0), 0.5, n),
            "data_lvl": rng.lognormal(math.log(8.0), 0.6, n),
            "ticket_rate": 0.0035 * np.exp(0.5 * frailty + rng.normal(0.0, 0.4, n)),
            "late_p": _sigmoid(-3.2 + 1.0 * bad_payer + 0.8 * frailty + 0.3 * senior),
            "balance_noise": rng.uniform(0.95, 1.05, n),
        }

    def _add_customers(self, new: dict[str, np.ndarray], day: int) -> None:
        n = len(new["signup_day"])
        first = len(self.s.get("signup_day", ()))
        ids = np.arange(first + 1, first + n + 1, dtype=np.int64)
        ctype, signup = new["ctype"], new["signup_day"]
        term = TERM_DAYS[ctype]
        cycles = np.where(term > 0, np.maximum(day - signup, 0) // np.maximum(term, 1), 0)
        cstart = signup + cycles * term
        new["cend"] = np.where(term > 0, cstart + term, -1)
        new["churn_day"] = np.full(n, -1, dtype=np.int64)
        price = PLAN_PRICE[new["plan"]] * DISCOUNT[ctype]
        new["last_charges"] = price
        months_before = np.maximum(-signup, 0) / DAYS_PER_MONTH
        balance = np.round(price * months_before * new.pop("balance_noise"), 2)
        new["late6"] = np.zeros(n, dtype=np.int64)
        new["tix90"] = np.zeros(n, dtype=np.int64)
        for key, arr in new.items():
            self.s[key] = np.concatenate([self.s[key], arr]) if key in self.s else arr
        known = np.maximum(signup, day)
        self.rows["customers"].add(
            customer_id=ids,
            signup_date=_days_to_dates(self.spec.start, signup),
            signup_day=signup,
            signup_period=np.array([self.cal.period_of(int(d)) for d in signup], dtype=np.int64),
            region=REGIONS[new["region"]],
            payment_method=_or_none(new["pay_recorded"], PAYMENTS[new["pay"]]),
            senior=new["senior"],
            opening_balance=balance,
            _known=known,
        )
        self._add_contracts(ids - 1, cstart, day)

    def _add_contracts(self, idx: np.ndarray, cstart: np.ndarray, day: int) -> None:
        n = len(idx)
        ids = np.arange(self.next_contract, self.next_contract + n, dtype=np.int64)
        self.next_contract += n
        cend = self.s["cend"][idx]
        self.rows["contracts"].add(
            contract_id=ids,
            customer_id=idx + 1,
            contract_type=CONTRACTS[self.s["ctype"][idx]],
            plan_id=PLAN_IDS[self.s["plan"][idx]],
            start_date=_days_to_dates(self.spec.start, cstart),
            start_day=cstart.astype(np.int64),
            end_date=_or_none(cend >= 0, _days_to_dates(self.spec.start, np.maximum(cend, 0))),
            end_day=_or_none(cend >= 0, cend),
            _known=np.full(n, day, dtype=np.int64),
        )

    def initial_population(self) -> None:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0]))
        n = self.spec.customers
        ago = 1 + np.floor(rng.exponential(18 * DAYS_PER_MONTH, n)).astype(np.int64)
        signup = -np.minimum(ago, 72 * 30)
        contract_p = CONTRACT_P_FLEX if self.spec.active("new_contract", 0) else CONTRACT_P
        self._add_customers(self._draw_customers(rng, n, signup, contract_p), 0)
        self._catalogue(0, 1.0)

    def _catalogue(self, day: int, factor: float) -> None:
        n = len(PLANS)
        self.rows["plans"].add(
            plan_id=PLAN_IDS,
            valid_from_day=np.full(n, day, dtype=np.int64),
            valid_from=_days_to_dates(self.spec.start, np.full(n, day)),
            name=np.array([p[1] for p in PLANS], dtype=object),
            monthly_price=np.round(PLAN_PRICE * factor, 2),
            included_minutes=PLAN_MINUTES.astype(np.int64),
            includes_data=PLAN_DATA.astype(np.int64),
            _known=np.full(n, day, dtype=np.int64),
        )

    # ----------------------------------------------------------------- one day
    def step(self, day: int) -> None:
        seq = np.random.SeedSequence([self.seed, 1, day])
        r_arrive, r_tickets, r_churn, r_renew, r_bill = (
            np.random.default_rng(s) for s in seq.spawn(5)
        )
        if day > 0 and self.spec.scenario_day("price_rise") == day:
            self._catalogue(day, 1.0 + PRICE_RISE)
        self._expire_tickets(day)
        self._arrivals(r_arrive, day)
        self._tickets(r_tickets, day)
        self._churn(r_churn, day)
        self._renewals(r_renew, day)
        if self.cal.is_period_end(day):
            self._bill(r_bill, day)

    def _active(self, day: int) -> np.ndarray:
        return np.flatnonzero((self.s["churn_day"] < 0) & (self.s["signup_day"] <= day))

    def _arrivals(self, rng: np.random.Generator, day: int) -> None:
        n = int(rng.poisson(self.spec.customers * ARRIVALS_MONTHLY / DAYS_PER_MONTH))
        if n == 0:
            return
        contract_p = CONTRACT_P_FLEX if self.spec.active("new_contract", day) else CONTRACT_P
        signup = np.full(n, day, dtype=np.int64)
        self._add_customers(self._draw_customers(rng, n, signup, contract_p), day)

    def _expire_tickets(self, day: int) -> None:
        old = self.tickets_by_day.pop(day - 91, None)
        if old is not None:
            np.subtract.at(self.s["tix90"], old, 1)

    def _tickets(self, rng: np.random.Generator, day: int) -> None:
        idx = self._active(day)
        weights = TICKET_WEIGHTS.copy()
        if self.spec.active("ticket_churn", day):
            weights[1] *= 1.5
        p = self.s["ticket_rate"][idx] * weights.sum() * (1.0 + 0.5 * (self.s["late6"][idx] > 0))
        hit = idx[rng.random(len(idx)) < p]
        k = len(hit)
        if k == 0:
            return
        cat = rng.choice(len(TICKET_CATEGORIES), k, p=weights / weights.sum())
        seconds = rng.integers(8 * 3600, 20 * 3600, k)
        hours = np.round(rng.lognormal(np.log(TICKET_HOURS[cat]), 0.7), 1)
        self.tickets_by_day[day] = hit
        np.add.at(self.s["tix90"], hit, 1)
        self.rows["support_tickets"].add(
            ticket_id=np.arange(self.next_ticket, self.next_ticket + k, dtype=np.int64),
            customer_id=hit + 1,
            opened_at=_days_to_times(self.spec.start, np.full(k, day), seconds),
            opened_day=np.full(k, day, dtype=np.int64),
            category=TICKET_CATEGORIES[cat],
            resolution_hours=hours,
            _known=np.full(k, day, dtype=np.int64),
        )
        self.next_ticket += k

    def _cancellation_tickets(self, who: np.ndarray, recorded: np.ndarray) -> None:
        """``cancellation_tickets``: each recorded churn gets an 'account' ticket, backdated to
        the eve of the billing period its churn is labelled in, known when the churn is. No
        draws, so the world itself (customers, churns, the rng) stays the one without."""
        k = len(who)
        first = np.array([self.cal.bounds(self.cal.period_of(int(d)))[0] for d in recorded])
        opened = np.maximum(first - 1, 0).astype(np.int64)
        self.rows["support_tickets"].add(
            ticket_id=np.arange(self.next_ticket, self.next_ticket + k, dtype=np.int64),
            customer_id=who + 1,
            opened_at=_days_to_times(self.spec.start, opened, np.full(k, 12 * 3600)),
            opened_day=opened,
            category=np.full(k, "account", dtype=object),
            resolution_hours=np.full(k, 0.5),
            _known=recorded.astype(np.int64),
        )
        self.next_ticket += k

    def _monthly_logit(self, idx: np.ndarray, day: int) -> np.ndarray:
        s = self.s
        tenure = np.maximum(day - s["signup_day"][idx], 0) / DAYS_PER_MONTH
        cend = s["cend"][idx]
        renewing = (cend >= 0) & (cend - day <= 30)
        b_tickets = CHURN_TICKETS_DRIFT if self.spec.active("ticket_churn", day) else CHURN_TICKETS
        return (
            CHURN_BASE
            + CHURN_CONTRACT[s["ctype"][idx]]
            + CHURN_TENURE * np.log1p(tenure)
            + CHURN_CHARGES * (s["last_charges"][idx] - 55.0)
            + b_tickets * s["tix90"][idx]
            + CHURN_LATE * s["late6"][idx]
            + CHURN_ECHECK * (s["pay"][idx] == 2)
            + CHURN_SENIOR * s["senior"][idx]
            + CHURN_RENEWAL_WINDOW * renewing
            + CHURN_FRAILTY * s["frailty"][idx]
        )

    def _churn(self, rng: np.random.Generator, day: int) -> None:
        idx = self._active(day)
        idx = idx[self.s["signup_day"][idx] < day]
        p_month = _sigmoid(self._monthly_logit(idx, day))
        daily = 1.0 - (1.0 - p_month) ** (1.0 / DAYS_PER_MONTH)
        relocate = RELOCATION_MONTHLY / DAYS_PER_MONTH
        u = rng.random(len(idx))
        gone = u < daily + relocate
        who, relocated = idx[gone], (u < relocate)[gone]
        k = len(who)
        if k == 0:
            return
        lag = np.where(rng.random(k) < RECORD_LAG_P, rng.integers(1, 31, k), 0)
        seconds = rng.integers(9 * 3600, 18 * 3600, k)
        self.s["churn_day"][who] = day
        recorded = day + lag
        if self.spec.active("lost_churn_events", day):  # drawn only then: other worlds unchanged
            kept = rng.random(k) >= LOST_CHURN_P
            who, relocated, recorded, seconds = (
                who[kept],
                relocated[kept],
                recorded[kept],
                seconds[kept],
            )
        if self.spec.active("cancellation_tickets", day):
            self._cancellation_tickets(who, recorded)
        self.rows["churn_events"].add(
            customer_id=who + 1,
            churned_at=_days_to_times(self.spec.start, recorded, seconds),
            churn_day=recorded.astype(np.int64),
            reason=self._reasons(who, relocated),
            _known=recorded.astype(np.int64),
        )

    def _reasons(self, who: np.ndarray, relocated: np.ndarray) -> np.ndarray:
        s = self.s
        reason = np.full(len(who), "competitor", dtype=object)
        reason[s["last_charges"][who] > 70] = "price"
        reason[s["late6"][who] >= 2] = "payment"
        reason[s["tix90"][who] >= 2] = "service"
        reason[relocated] = "relocation"
        return reason

    def _renewals(self, rng: np.random.Generator, day: int) -> None:
        s = self.s
        idx = np.flatnonzero((s["churn_day"] < 0) & (s["cend"] == day))
        if len(idx) == 0:
            return
        u = rng.random(len(idx))
        flex = self.spec.active("new_contract", day)
        to_flex = u < (0.20 if flex else 0.0)
        to_monthly = ~to_flex & (u < (0.50 if flex else 0.45))
        ctype = np.where(to_flex, 3, np.where(to_monthly, 0, s["ctype"][idx]))
        s["ctype"][idx] = ctype
        s["cend"][idx] = np.where(TERM_DAYS[ctype] > 0, day + TERM_DAYS[ctype], -1)
        self._add_contracts(idx, np.full(len(idx), day, dtype=np.int64), day)

    # ----------------------------------------------------------------- billing
    def _bill(self, rng: np.random.Generator, day: int) -> None:
        period = self.cal.period_of(day)
        first, after = self.cal.bounds(period)
        s = self.s
        churn = np.where(s["churn_day"] >= 0, s["churn_day"], after)
        lo = np.maximum(np.maximum(first, 0), s["signup_day"])
        hi = np.minimum(after, churn)
        idx = np.flatnonzero(hi > lo)
        self._bill_rows(rng, period, idx, lo[idx], hi[idx], after - first, day)
        first_date = self.cal.period_first(period)
        self.rows["billing_periods"].add(
            period_idx=np.array([period], dtype=np.int64),
            period_start=np.array([dt.datetime.combine(first_date, dt.time())], dtype=object),
            start_day=np.array([first], dtype=np.int64),
            end_day=np.array([after], dtype=np.int64),
            _known=np.array([day], dtype=np.int64),
        )

    def _price_factor(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        rise = self.spec.scenario_day("price_rise")
        if rise is None:
            return np.ones(len(lo))
        after = np.clip(hi - np.maximum(lo, rise), 0, None) / (hi - lo)
        return 1.0 + PRICE_RISE * after

    def _bill_rows(
        self,
        rng: np.random.Generator,
        period: int,
        idx: np.ndarray,
        lo: np.ndarray,
        hi: np.ndarray,
        period_days: int,
        day: int,
    ) -> None:
        s, k = self.s, len(idx)
        frac = (hi - lo) / period_days
        plan, ctype = s["plan"][idx], s["ctype"][idx]
        minutes = s["minutes_lvl"][idx] * rng.gamma(6.0, 1.0 / 6.0, k) * frac
        data = s["data_lvl"][idx] * rng.gamma(4.0, 0.25, k) * frac
        outage = rng.random(k) < METER_OUTAGE_P
        late = (rng.random(k) < s["late_p"][idx]).astype(np.int64)
        overage = OVERAGE_PER_MINUTE * np.maximum(minutes - PLAN_MINUTES[plan] * frac, 0.0)
        price = PLAN_PRICE[plan] * DISCOUNT[ctype] * self._price_factor(lo, hi) * frac
        charges = np.round(price + overage, 2)
        s["last_charges"][idx] = charges
        self._update_late(period, idx[late == 1])
        self.rows["monthly_usage"].add(
            customer_id=idx + 1,
            period_idx=np.full(k, period, dtype=np.int64),
            period_start=np.full(k, self.cal.period_first(period), dtype=object),
            days_active=(hi - lo).astype(np.int64),
            minutes=np.where(outage, np.nan, np.round(minutes, 1)),
            data_gb=np.where(PLAN_DATA[plan], np.round(data, 2), np.nan),
            charges=charges,
            late_payment=late,
            _known=np.full(k, day, dtype=np.int64),
        )

    def _update_late(self, period: int, late_idx: np.ndarray) -> None:
        self.late_by_period[period] = late_idx
        np.add.at(self.s["late6"], late_idx, 1)
        old = self.late_by_period.pop(period - 6, None)
        if old is not None:
            np.subtract.at(self.s["late6"], old, 1)

    def tables(self) -> dict[str, pd.DataFrame]:
        return {name: rows.frame() for name, rows in self.rows.items()}


def generate(spec: WorldSpec, through_day: int) -> dict[str, pd.DataFrame]:
    """Run the world from day 0 through ``through_day``; every row with its ``_known`` day."""
    world = _World(spec)
    world.initial_population()
    for day in range(through_day + 1):
        world.step(day)
    return world.tables()
