"""The reporting area: an optimization's final report (the best and the initial prompt scored on the
held-out test split) and a dataset's leaderboard, with their jobs `final_report_job` and
`leaderboard_job`, which the loop area's iteration sensor launches by name."""
