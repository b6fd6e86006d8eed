"""`mdagent dashboard`: a read-only web view of the runs, their attempts and sweeps (docs/dashboard.md)."""
