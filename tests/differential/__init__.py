"""Differential tests: postwarden's ``config show`` against the real postconf(1).

Security: inputs are corpus files in this directory and hypothesis-generated files, all
written to per-test temporary directories; postconf runs without a shell.
Standards: postconf(1), postconf(5), master(5) as implemented by Postfix 3.7.
"""
