"""The seeded churn world: customers, plans, usage, tickets, churn events, drift scenarios."""
