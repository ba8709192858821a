"""The operational schema (SQLAlchemy Core) and the portable ``churn_features`` view."""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "FEATURES_VIEW",
    "FEATURE_COLUMNS",
    "METADATA",
    "OPERATIONAL_TABLES",
    "STATE",
    "TABLES",
    "create_schema",
]

METADATA = sa.MetaData()
_Double: sa.Double[float] = sa.Double()

PLANS = sa.Table(
    "plans",
    METADATA,
    sa.Column("plan_id", sa.String(32), primary_key=True),
    sa.Column("valid_from_day", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("valid_from", sa.Date, nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("monthly_price", _Double, nullable=False),
    sa.Column("included_minutes", sa.Integer, nullable=False),
    sa.Column("includes_data", sa.Integer, nullable=False),
)

CUSTOMERS = sa.Table(
    "customers",
    METADATA,
    sa.Column("customer_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("signup_date", sa.Date, nullable=False),
    sa.Column("signup_day", sa.Integer, nullable=False),
    sa.Column("signup_period", sa.Integer, nullable=False),
    sa.Column("region", sa.String(32), nullable=False),
    sa.Column("payment_method", sa.String(32)),
    sa.Column("senior", sa.Integer, nullable=False),
    sa.Column("opening_balance", _Double, nullable=False),
)

CONTRACTS = sa.Table(
    "contracts",
    METADATA,
    sa.Column("contract_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.BigInteger, sa.ForeignKey("customers.customer_id"), nullable=False),
    sa.Column("contract_type", sa.String(32), nullable=False),
    sa.Column("plan_id", sa.String(32), nullable=False),
    sa.Column("start_date", sa.Date, nullable=False),
    sa.Column("start_day", sa.Integer, nullable=False),
    sa.Column("end_date", sa.Date),
    sa.Column("end_day", sa.Integer),
    sa.Index("ix_contracts_customer_start", "customer_id", "start_day"),
)

BILLING_PERIODS = sa.Table(
    "billing_periods",
    METADATA,
    sa.Column("period_idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("period_start", sa.DateTime, nullable=False),
    sa.Column("start_day", sa.Integer, nullable=False),
    sa.Column("end_day", sa.Integer, nullable=False),
)

MONTHLY_USAGE = sa.Table(
    "monthly_usage",
    METADATA,
    sa.Column(
        "customer_id", sa.BigInteger, sa.ForeignKey("customers.customer_id"), primary_key=True
    ),
    sa.Column("period_idx", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("period_start", sa.Date, nullable=False),
    sa.Column("days_active", sa.Integer, nullable=False),
    sa.Column("minutes", _Double),
    sa.Column("data_gb", _Double),
    sa.Column("charges", _Double, nullable=False),
    sa.Column("late_payment", sa.Integer, nullable=False),
)

SUPPORT_TICKETS = sa.Table(
    "support_tickets",
    METADATA,
    sa.Column("ticket_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.BigInteger, sa.ForeignKey("customers.customer_id"), nullable=False),
    sa.Column("opened_at", sa.DateTime, nullable=False),
    sa.Column("opened_day", sa.Integer, nullable=False),
    sa.Column("category", sa.String(32), nullable=False),
    sa.Column("resolution_hours", _Double, nullable=False),
    sa.Index("ix_support_tickets_customer_day", "customer_id", "opened_day"),
)

CHURN_EVENTS = sa.Table(
    "churn_events",
    METADATA,
    sa.Column(
        "customer_id",
        sa.BigInteger,
        sa.ForeignKey("customers.customer_id"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("churned_at", sa.DateTime, nullable=False),
    sa.Column("churn_day", sa.Integer, nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
)

STATE = sa.Table(
    "sim_state",
    METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("generator_version", sa.Integer, nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("start_date", sa.Date, nullable=False),
    sa.Column("last_day", sa.Integer, nullable=False),
    sa.Column("customers", sa.Integer, nullable=False),
    sa.Column("scenarios", sa.Text, nullable=False),  # JSON list of "NAME@DAY"
    sa.Column("updated_at", sa.DateTime, nullable=False),
)

# Insert order respects the foreign keys.
OPERATIONAL_TABLES: tuple[sa.Table, ...] = (
    PLANS,
    CUSTOMERS,
    CONTRACTS,
    BILLING_PERIODS,
    MONTHLY_USAGE,
    SUPPORT_TICKETS,
    CHURN_EVENTS,
)
TABLES: dict[str, sa.Table] = {t.name: t for t in OPERATIONAL_TABLES}

# One row per (customer, closed billing period): features as of the period's first day,
# the label from the period itself. Plain SQL that SQLite and PostgreSQL run identically:
# day numbers and period indexes stand in for date arithmetic.
FEATURES_VIEW = """
CREATE VIEW churn_features AS
SELECT
    c.customer_id AS customer_id,
    p.period_start AS observed_at,
    p.period_idx - c.signup_period AS tenure_months,
    k.contract_type AS contract_type,
    k.plan_id AS plan,
    c.payment_method AS payment_method,
    c.region AS region,
    c.senior AS senior,
    (SELECT u.charges FROM monthly_usage u
      WHERE u.customer_id = c.customer_id AND u.period_idx = p.period_idx - 1) AS monthly_charges,
    c.opening_balance + (SELECT COALESCE(SUM(u.charges), 0) FROM monthly_usage u
      WHERE u.customer_id = c.customer_id AND u.period_idx < p.period_idx) AS total_charges,
    (SELECT AVG(u.minutes) FROM monthly_usage u
      WHERE u.customer_id = c.customer_id
        AND u.period_idx BETWEEN p.period_idx - 3 AND p.period_idx - 1) AS avg_minutes,
    (SELECT AVG(u.data_gb) FROM monthly_usage u
      WHERE u.customer_id = c.customer_id
        AND u.period_idx BETWEEN p.period_idx - 3 AND p.period_idx - 1) AS data_gb,
    (SELECT COUNT(*) FROM support_tickets t
      WHERE t.customer_id = c.customer_id
        AND t.opened_day >= p.start_day - 90 AND t.opened_day < p.start_day) AS tickets_90d,
    p.start_day - (SELECT MAX(t.opened_day) FROM support_tickets t
      WHERE t.customer_id = c.customer_id AND t.opened_day < p.start_day)
      AS days_since_last_ticket,
    (SELECT COALESCE(SUM(u.late_payment), 0) FROM monthly_usage u
      WHERE u.customer_id = c.customer_id
        AND u.period_idx BETWEEN p.period_idx - 6 AND p.period_idx - 1) AS late_payments_6m,
    k.end_day - p.start_day AS contract_days_left,
    CASE WHEN e.churn_day IS NOT NULL AND e.churn_day < p.end_day THEN 1 ELSE 0 END AS churned
FROM billing_periods p
JOIN customers c ON c.signup_day < p.start_day
JOIN contracts k ON k.customer_id = c.customer_id
    AND k.start_day <= p.start_day AND (k.end_day IS NULL OR k.end_day > p.start_day)
LEFT JOIN churn_events e ON e.customer_id = c.customer_id
WHERE p.period_idx >= 1 AND (e.churn_day IS NULL OR e.churn_day >= p.start_day)
"""

FEATURE_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "observed_at",
    "tenure_months",
    "contract_type",
    "plan",
    "payment_method",
    "region",
    "senior",
    "monthly_charges",
    "total_charges",
    "avg_minutes",
    "data_gb",
    "tickets_90d",
    "days_since_last_ticket",
    "late_payments_6m",
    "contract_days_left",
    "churned",
)


def create_schema(conn: sa.Connection) -> None:
    """Create the tables, the state table and the view (inside the caller's transaction)."""
    METADATA.create_all(conn)
    conn.exec_driver_sql(FEATURES_VIEW)
