"""Postfix and Dovecot logs: one parser feeding summaries, detectors, bans, alerts and metrics."""
