"""What reads runs afterwards, without Lightning: the records (results.json or W&B), table
cells, the paper's tables and figures, one run's summary, sweeps and their local runner, the
shared W&B report.

None of these modules imports Lightning (`tests/test_layout.py` checks each one in a fresh
interpreter), so a table or a sweep starts in seconds and runs where Lightning is not installed.
"""
